"""GITSModule: the GITS search (diffode/core/gits.py) as a LightningModule, so it runs through the one
runner like every method. Nothing is trained: one epoch over the warm-up batches runs the teacher and
adds up the cost matrix, and the epoch's end solves the DP for every requested (solver, NFE).

Each batch is a block of warm-up seeds (noise seeded seed + i, drawn per sample, so the costs do not
depend on the batch size or the number of processes); under DDP the ranks take alternate batches and
the summed costs are reduced before the DP.
"""
from __future__ import annotations

from dataclasses import asdict

import lightning as L
import torch
from torch import Tensor, nn

from diffode.core.gits import cost_matrix, gits_dp, path_cost, teacher_trajectory
from diffode.core.grids import make_grid

from .options import GITSConfig


def warmup_noise(seeds, shape, sigma_max: float) -> Tensor:
    """x_T = sigma_max z_i, z_i from its own generator seeded by seed i (float64)."""
    return float(sigma_max) * torch.stack([torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s)),
                                                       dtype=torch.float64) for s in seeds])


def student_steps(solver: str, nfe: int, extra: dict) -> int:
    from diffode.config import solver_config
    from diffode.core.sample import steps_for_nfe

    reg, opts = solver_config(solver)
    return steps_for_nfe(reg, nfe, **{**opts, **extra})


class GITSModule(L.LightningModule):
    def __init__(self, denoiser: nn.Module, shape, schedule, sigma_min: float, sigma_max: float, model_id: dict,
                 cfg: GITSConfig):
        super().__init__()
        self.automatic_optimization = False
        self.cfg, self.shape, self.schedule, self.model_id = cfg, tuple(shape), schedule, model_id
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        for p in denoiser.parameters():
            p.requires_grad_(False)
        self.denoiser = denoiser.eval()
        t = cfg.teacher
        self.fine = make_grid(t.grid, t.steps, schedule, sigma_min=sigma_min, sigma_max=sigma_max, **t.grid_options)
        self.cost_sum = torch.zeros(len(self.fine), len(self.fine), dtype=torch.float64)
        self.count = 0
        self.results: dict = {}  # (solver, nfe) -> {indices, sigmas, cost}

    def train_dataloader(self):
        starts = list(range(0, self.cfg.n_warmup, self.cfg.batch_size))
        return torch.utils.data.DataLoader(torch.tensor(starts), batch_size=1, shuffle=False)

    def configure_optimizers(self):
        return None  # a search: nothing to optimise

    @torch.no_grad()
    def training_step(self, start, batch_idx):
        if batch_idx % self.trainer.world_size != self.global_rank:
            return None
        a = int(start[0])
        seeds = range(self.cfg.seed + a, self.cfg.seed + min(a + self.cfg.batch_size, self.cfg.n_warmup))
        x_T = warmup_noise(seeds, self.shape, self.sigma_max).to(self.device)
        t = self.cfg.teacher
        from diffode.config import solver_config

        reg, opts = solver_config(t.solver)
        xs, ds = teacher_trajectory(self.denoiser, x_T, self.fine.to(self.device), reg, **{**opts, **t.options})
        n = x_T.shape[0]
        C = cost_matrix(xs, ds, self.fine.to(self.device), self.cfg.metric).cpu()
        finite = torch.isfinite(C)
        self.cost_sum[finite] += n * C[finite]
        self.cost_sum[~finite] = float("inf")
        self.count += n
        return None

    def on_train_epoch_end(self):
        total = torch.tensor([float(self.count)], dtype=torch.float64)
        finite = torch.isfinite(self.cost_sum)
        summed = torch.where(finite, self.cost_sum, torch.zeros_like(self.cost_sum))
        if self.trainer.world_size > 1:
            summed = self.trainer.strategy.reduce(summed.to(self.device), reduce_op="sum").cpu()
            total = self.trainer.strategy.reduce(total.to(self.device), reduce_op="sum").cpu()
        self.cost = torch.where(finite, summed / total, torch.full_like(summed, float("inf")))
        for solver, nfe in self.cfg.pairs():
            K = student_steps(solver, nfe, self.cfg.solver_options)
            idx = gits_dp(self.cost, K, self.cfg.coeff)
            self.results[(solver, nfe)] = {"indices": idx, "sigmas": self.fine[idx],
                                           "cost": path_cost(self.cost, idx, self.cfg.coeff)}

    def save(self, out_dir, train_seconds: float | None = None, condition: dict | None = None) -> dict:
        """One artifact (kind gits) per (solver, NFE): out_dir/<solver>_nfe<k>."""
        from pathlib import Path

        from diffode.artifacts import save_artifact
        from diffode.config import solver_config

        out = {}
        for (solver, nfe), r in self.results.items():
            opts = {**solver_config(solver)[1], **self.cfg.solver_options}
            out[f"{solver}_nfe{nfe}"] = str(save_artifact(
                Path(out_dir) / f"{solver}_nfe{nfe}", kind="gits", solver=solver, solver_options=opts, nfe=nfe,
                sigmas=r["sigmas"], schedule=self.schedule, model=self.model_id,
                training={**asdict(self.cfg), "n_samples": self.count, "teacher_sigmas": self.fine.tolist()},
                metrics={"dp_cost": r["cost"], "metric": self.cfg.metric, "coeff": self.cfg.coeff,
                         "train_seconds": train_seconds},
                extra={"gits": {"indices": r["indices"], "teacher_steps": len(self.fine) - 1}}, condition=condition))
        return out
