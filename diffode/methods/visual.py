"""Sample grids and 2-D scatter plots drawn during training (rank 0 only); diffode.pictures draws them."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..pictures import figure, readable, save_png  # noqa: F401 (save_png: the denoiser's module saves grids)
from ..pictures import image_grid as _grid

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


def image_grid(x: torch.Tensor, title: str = "") -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> an RGB uint8 grid at least 512 px wide (nearest-neighbour), titled."""
    return readable(_grid(x), title)


def scatter_over_density(x: torch.Tensor, gmm, path: Path, title: str = "") -> np.ndarray:
    """2-D samples over the exact log-density of the mixture; saves a PNG and returns it as an array."""
    pts = x.numpy()
    lim = float(max(np.abs(gmm.mu.numpy()).max() + 4 * float(gmm.lam.sqrt().max()), 1.0))
    u = torch.linspace(-lim, lim, 200, dtype=torch.float64)
    X, Y = torch.meshgrid(u, u, indexing="xy")
    logp = gmm.log_prob(torch.stack([X.reshape(-1), Y.reshape(-1)], -1)).reshape(200, 200)
    fig = figure(figsize=(5, 5), dpi=100)
    ax = fig.add_subplot()
    ax.contourf(X.numpy(), Y.numpy(), logp.exp().numpy(), levels=30, cmap="Blues")
    ax.scatter(pts[:, 0], pts[:, 1], s=2, c="tab:red", alpha=0.6, label=f"{len(pts)} samples")
    ax.set_xlim(-lim, lim), ax.set_ylim(-lim, lim), ax.set_aspect("equal"), ax.legend(loc="upper right")
    ax.set_title(title or "samples over the true density")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


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
