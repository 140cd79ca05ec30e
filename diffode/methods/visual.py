"""Sample grids and 2-D scatter plots drawn during training (rank 0 only)."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)


@torch.no_grad()
def draw_samples(denoiser, shape, n: int, schedule, seed: int = 0, nfe: int = 35, solver: str = "heun",
                 grid: str = "edm") -> torch.Tensor | None:
    """Deterministic reference samples: x_T = sigma_max z with a fixed seed, then a high-NFE ODE solve."""
    from ..core.sample import sample

    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    p = next(denoiser.parameters())
    x_T = (schedule.sigma_max * z).to(p.device)
    x0 = sample(denoiser, x_T, solver=solver, nfe=nfe, grid=grid, schedule=schedule)
    return x0.float().cpu()


def image_grid(x: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> uint8 [H', W', C] grid (C = 1 or 3)."""
    from torchvision.utils import make_grid

    nrow = int(math.ceil(math.sqrt(x.shape[0])))
    g = make_grid((x.clamp(-1, 1) + 1) / 2, nrow=nrow, padding=1, pad_value=1.0)
    arr = (g.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    return arr[..., :1] if x.shape[1] == 1 else arr


def scatter_over_density(x: torch.Tensor, gmm, path: Path, title: str = "") -> np.ndarray:
    """2-D samples over the exact log-density of the mixture; saves a PNG and returns it as an array."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = x.numpy()
    lim = float(max(np.abs(gmm.mu.numpy()).max() + 4 * float(gmm.lam.sqrt().max()), 1.0))
    u = torch.linspace(-lim, lim, 200, dtype=torch.float64)
    X, Y = torch.meshgrid(u, u, indexing="xy")
    logp = gmm.log_prob(torch.stack([X.reshape(-1), Y.reshape(-1)], -1)).reshape(200, 200)
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.contourf(X.numpy(), Y.numpy(), logp.exp().numpy(), levels=30, cmap="Blues")
    ax.scatter(pts[:, 0], pts[:, 1], s=2, c="tab:red", alpha=0.6, label=f"{len(pts)} samples")
    ax.set_xlim(-lim, lim), ax.set_ylim(-lim, lim), ax.set_aspect("equal"), ax.legend(loc="upper right")
    ax.set_title(title or "samples over the true density")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    fig.canvas.draw()
    arr = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return arr


def save_png(arr: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(path)


def log_image(loggers, key: str, arr: np.ndarray, step: int) -> None:
    """Send an HxWxC uint8 image to every logger that takes images (W&B, TensorBoard)."""
    for lg in loggers:
        name = type(lg).__name__
        try:
            if name == "WandbLogger":
                lg.log_image(key=key, images=[arr], step=step)
            elif name == "TensorBoardLogger":
                lg.experiment.add_image(key, arr, step, dataformats="HWC")
        except Exception as e:  # a logging failure must not kill training
            log.warning("could not log %s to %s: %s", key, name, e)
