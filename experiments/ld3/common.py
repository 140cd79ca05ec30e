"""Shared pieces of the LD3 studies: train a grid through the Hydra entry, score grids on held-out noise."""
from __future__ import annotations

import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from diffode.core.sample import sample
from diffode.ld3 import CONF_DIR, run

GMM = {
    "gmm2d": ["model.gmm.dim=2", "model.gmm.layout=ring", "model.gmm.components=8"],
    "gmm16d": ["model.gmm.dim=16", "model.gmm.layout=random", "model.gmm.components=8"],
}
HAND_GRIDS = ["time_uniform", "logsnr", "edm"]


def model_overrides(model: str) -> list[str]:
    """'gmm2d' / 'gmm16d' (exact mixtures) or a checkpoint path."""
    return GMM[model] if model in GMM else [f"model.ckpt={model}"]


def train_grid(model: str, out_dir: Path, overrides: list[str], threads: int) -> tuple[dict, float, object]:
    """One LD3 training with conf/ld3.yaml + overrides; returns (artifact, wall seconds, cfg)."""
    ov = model_overrides(model) + [f"out_dir={out_dir}", f"threads={threads}", "+trainer.enable_progress_bar=false"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="ld3", overrides=ov + overrides)
    t0 = time.perf_counter()
    art = run(cfg)
    return art, time.perf_counter() - t0, cfg


@torch.no_grad()
def solve_grid(denoiser, x_T, solver, nfe, grid, schedule, sigma_min=None, sigma_max=None, batch_size=2000,
               **solver_options):
    """grid: a hand-crafted grid name or an LD3 artifact dict; solved in batches."""
    if isinstance(grid, dict):
        kw = dict(grid=torch.tensor(grid["sigmas"], dtype=torch.float64),
                  net_sigmas=torch.tensor(grid["net_sigmas"], dtype=torch.float64))
    else:
        kw = dict(grid=grid, sigma_min=sigma_min, sigma_max=sigma_max)
    out = [sample(denoiser, xb, solver=solver, nfe=nfe, schedule=schedule, **kw, **solver_options)
           for xb in x_T.split(batch_size)]
    return torch.cat(out)


class DigitsFID:
    """FID with the project's digits feature net against the digits training split (the protocol
    of `diffode eval`: diffode.evaluation.models.FIDMetrics)."""

    def __init__(self):
        from omegaconf import OmegaConf

        from diffode.evaluation.models import FIDMetrics, Model

        fcfg = OmegaConf.create({"reference": "digits", "features": "digits", "batch_size": 2000})
        self.metrics = FIDMetrics(Model(None, (1, 8, 8), None, 0, 0, "digits"), fcfg)

    def __call__(self, samples):
        return self.metrics(samples.float(), None)["fid"]
