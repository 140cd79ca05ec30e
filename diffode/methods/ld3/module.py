"""LD3 (Tong et al., ICLR 2025): learn the time steps of a solver by distilling a many-step teacher.

The student is `solver` at `nfe` on a LearnedGrid; its loss is d(student(x'_T), teacher x_0) where
x'_T may move inside an L2 ball of radius r sigma_T around the teacher's x_T (r = gamma dim / N^2;
r = 0 is the hard loss). Manual optimisation, as LD3's trainer: per batch one backward through
every solver step gives the gradients of the logits, the shifts and x'_T; x'_T takes one projected
SGD step (kept only where it lowered the loss, carried across rounds); the logits take an RMSprop
step and the shifts an SGD step, both clipped to norm 1. Rounds 0..rounds_logits-1 move the logits
only, later rounds also the shifts. Validation (hard loss on held-out pairs) every `val_every`
steps keeps the best grid; `patience` validations without improvement restore it and decay the
learning rates.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from diffode.config import cache_dir
from diffode.core.learned_grid import LearnedGrid, ball_radius, logits_for_grid, project_ball
from diffode.metrics.distance import make_distance
from diffode.models import schedule_spec

from .options import LD3Config
from .teacher import cached_pairs, make_pairs


def steps_for_nfe(cfg: LD3Config) -> int:
    """The grid's N: the step count at which the solver makes exactly `nfe` denoiser calls."""
    from diffode.core.sample import steps_for_nfe as _steps

    name, options = cfg.solver_spec()
    return _steps(name, cfg.nfe, **options)


class Checkpointed(nn.Module):
    """Recompute the network's activations in backward instead of storing them: the memory of a
    backward through the whole solve is then the solver states, not NFE x batch activations."""

    def __init__(self, denoiser: nn.Module):
        super().__init__()
        self.denoiser = denoiser

    def forward(self, x, sigma):
        return checkpoint(self.denoiser, x, sigma, use_reentrant=False)


# -- the LightningModule --------------------------------------------------------------------

class LD3Module(L.LightningModule):
    def __init__(self, denoiser: nn.Module, shape, schedule, sigma_min: float, sigma_max: float,
                 model_id: dict, cfg: LD3Config, init_sigmas: Tensor | None = None):
        super().__init__()
        self.automatic_optimization = False
        self.cfg, self.shape, self.schedule, self.model_id = cfg, tuple(shape), schedule, model_id
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.steps = steps_for_nfe(cfg)
        self.solver_name, self.solver_options = cfg.solver_spec()
        for p in denoiser.parameters():
            p.requires_grad_(False)
        self.denoiser = denoiser.eval()
        self.student_denoiser = Checkpointed(denoiser) if cfg.checkpointing else denoiser
        self.grid = LearnedGrid(self.steps, sigma_min, sigma_max, cfg.space, schedule, init=init_sigmas,
                                decoupled=cfg.decoupled, win_rate=cfg.win_rate)
        self.dist = make_distance(cfg.distance, lpips_net=cfg.lpips_net, random_backbone=cfg.lpips_random_backbone)
        self.distance_net = self.dist.net  # a network distance's net: a submodule, so it follows the device
        self.lpips = getattr(self.dist, "net", None)  # a submodule, so it follows the module's device
        self.radius = ball_radius(cfg.gamma, math.prod(self.shape), self.steps)
        self.history: list[dict] = []
        self.best = {"val": math.inf}
        self.bad_vals = 0
        self.updates = 0  # LD3 updates (Lightning's global_step counts each optimizer's steps)
        self.lr_latent = cfg.lr_latent / self.steps

    # -- data --------------------------------------------------------------------------
    def teacher_spec(self) -> dict:
        c = self.cfg
        return {"model": self.model_id, "teacher": asdict(c.teacher), "seed": c.seed, "count": c.n_pairs,
                "shape": list(self.shape), "sigma_min": self.sigma_min, "sigma_max": self.sigma_max,
                "schedule": schedule_spec(self.schedule)}

    def on_fit_start(self):
        self.fit_started = time.perf_counter()  # the training time the artifact records includes the teacher pairs
        # Here (not in setup) the model is already on its device, so the teacher runs there.
        if hasattr(self, "z"):
            return
        rank, world = self.global_rank, self.trainer.world_size
        barrier = self.trainer.strategy.barrier if world > 1 else None
        teacher = asdict(self.cfg.teacher)
        make = lambda: make_pairs(self.denoiser, self.shape, self.cfg.n_pairs, self.cfg.seed, teacher,  # noqa: E731
                                  self.schedule, self.sigma_min, self.sigma_max, rank, world, self.all_gather,
                                  device=self.device)
        z, x0, self.pairs_path = cached_pairs(self.cfg.cache_dir or cache_dir("ld3_pairs"), self.teacher_spec(), make, rank, barrier)
        self.set_pairs(z, x0)
        if self.cfg.init_grid == "best":
            self.init_from_best()

    @torch.no_grad()
    def init_from_best(self):
        """Start from whichever of the uniform grid and the hand-crafted candidates has the lowest
        validation loss (so training starts at least as well as the best of them)."""
        from diffode.core.grids import make_grid

        cands = {"uniform": torch.zeros_like(self.grid.xi)}
        for name in self.cfg.init_candidates:
            g = make_grid(name, self.steps, self.schedule, sigma_min=self.sigma_min, sigma_max=self.sigma_max)
            cands[name] = logits_for_grid(g, self.cfg.space, self.schedule).to(self.grid.xi)
        scores = {}
        for name, xi in cands.items():
            self.grid.xi.copy_(xi)
            scores[name] = self.val_loss()
        chosen = min(scores, key=scores.get)
        self.grid.xi.copy_(cands[chosen])
        self.init_choice = {"chosen": chosen, "val": scores}

    def set_pairs(self, z: Tensor, x0: Tensor):
        n_val = int(round(self.cfg.val_fraction * z.shape[0]))
        n_train = z.shape[0] - n_val
        if n_train < 1 or n_val < 1:
            raise ValueError(f"{z.shape[0]} pairs with val_fraction={self.cfg.val_fraction} leave an empty split")
        self.z, self.x0 = z[:n_train], x0[:n_train]
        self.z_val, self.x0_val = z[n_train:], x0[n_train:]
        self.z_soft = self.z.clone()  # x'_T / sigma_max, optimised inside the ball, kept across rounds

    def train_dataloader(self):
        g = torch.Generator().manual_seed(self.cfg.seed)
        return torch.utils.data.DataLoader(torch.arange(self.z.shape[0]), batch_size=self.cfg.batch_size,
                                           shuffle=True, generator=g)

    # -- the student -------------------------------------------------------------------
    def solve(self, z: Tensor, sigmas: Tensor, net_sigmas: Tensor | None) -> Tensor:
        from diffode.core.sample import sample

        # Checkpointing only pays when a graph is kept; validation and teacher-free solves skip it.
        den = self.student_denoiser if torch.is_grad_enabled() else self.denoiser
        return sample(den, self.sigma_max * z, solver=self.solver_name, nfe=self.cfg.nfe,
                      grid=sigmas, net_sigmas=net_sigmas if self.cfg.decoupled else None,
                      schedule=self.schedule, sigma_min=self.sigma_min, sigma_max=self.sigma_max,
                      **self.solver_options)

    def loss(self, z: Tensor, x0: Tensor) -> Tensor:
        """Per-sample d(student(sigma_max z), x0) on the current grid."""
        sigmas, net_sigmas = self.grid()
        return self.dist(self.solve(z.to(self.device), sigmas, net_sigmas), x0.to(self.device))

    # -- optimisation ------------------------------------------------------------------
    def configure_optimizers(self):
        c = self.cfg
        opt_xi = torch.optim.RMSprop([self.grid.xi], lr=c.lr_logits, momentum=c.momentum)
        opt_c = torch.optim.SGD([self.grid.xi_c], lr=c.lr_shift / self.steps)
        return [opt_xi, opt_c]

    def joint_phase(self) -> bool:
        return self.cfg.decoupled and self.current_epoch >= self.cfg.rounds_logits

    def training_step(self, idx, batch_idx):
        opt_xi, opt_c = self.optimizers()
        idx = idx.cpu()
        soft = self.radius > 0
        z = self.z_soft[idx].clone().to(self.device).requires_grad_(soft)
        per = self.loss(z, self.x0[idx])
        loss = per.mean()
        opt_xi.zero_grad()
        opt_c.zero_grad()
        self.manual_backward(loss)
        torch.nn.utils.clip_grad_norm_([self.grid.xi], self.cfg.clip)
        opt_xi.step()
        if self.joint_phase():
            torch.nn.utils.clip_grad_norm_([self.grid.xi_c], self.cfg.clip)
            opt_c.step()
        if soft:
            self.update_latents(idx, z.detach() - self.lr_latent * z.grad, per.detach())
        self.updates += 1
        self.log("train_loss", loss.detach(), prog_bar=True, batch_size=len(idx))
        self.history.append({"step": self.updates, "round": self.current_epoch, "train": float(loss.detach())})
        if (batch_idx + 1) % self.cfg.val_every == 0:
            self.validate_and_schedule()

    @torch.no_grad()
    def update_latents(self, idx: Tensor, z_new: Tensor, loss_before: Tensor):
        """Project the SGD step into the ball; keep it only for samples whose loss went down."""
        z_new = project_ball(z_new, self.z[idx].to(z_new), self.radius)
        better = self.loss(z_new, self.x0[idx]) < loss_before
        self.z_soft[idx[better.cpu()]] = z_new[better].to(self.z_soft)

    @torch.no_grad()
    def val_loss(self) -> float:
        per = [self.loss(z, x0) for z, x0 in zip(self.z_val.split(self.cfg.val_batch_size),
                                                 self.x0_val.split(self.cfg.val_batch_size))]
        return float(torch.cat(per).mean())

    def validate_and_schedule(self, log: bool = True):
        c = self.cfg
        val = self.val_loss()
        self.history[-1]["val"] = val
        if log:
            self.log("val_loss", val, prog_bar=True)
        if val < self.best["val"]:
            self.best = {"val": val, "xi": self.grid.xi.detach().clone(), "xi_c": self.grid.xi_c.detach().clone(),
                         "z_soft": self.z_soft.clone(), "step": self.updates}
            self.bad_vals = 0
            return
        self.bad_vals += 1
        if self.bad_vals < c.patience:
            return
        # Plateau: back to the best grid and latents, smaller steps.
        self.restore_best()
        self.bad_vals = 0
        opt_xi, opt_c = self.optimizers()
        for opt, floor, on in ((opt_xi, c.lr_floor_logits, True), (opt_c, c.lr_floor_shift, self.joint_phase())):
            for group in (opt.optimizer if hasattr(opt, "optimizer") else opt).param_groups:
                if on:
                    group["lr"] = max(group["lr"] * c.lr_decay, floor)

    @torch.no_grad()
    def restore_best(self):
        if "xi" in self.best:
            self.grid.xi.copy_(self.best["xi"])
            self.grid.xi_c.copy_(self.best["xi_c"])
            self.z_soft.copy_(self.best["z_soft"])

    def on_train_start(self):
        if not self.history:  # the starting grid is the first "best"
            self.history.append({"step": 0, "round": 0, "train": None})
            self.validate_and_schedule(log=False)

    def on_train_end(self):
        self.restore_best()

    # -- artifact ----------------------------------------------------------------------
    @property
    def val_first(self) -> float | None:
        """The validation loss before the first update (of the initial grid)."""
        return next((h["val"] for h in self.history if h.get("val") is not None), None)

    def save(self, out_dir, condition: dict | None = None):
        """The learned grid as an artifact (diffode.artifacts), kind ld3; `condition`: the teacher's (Model.condition)."""
        from diffode.artifacts import save_artifact

        sigmas, net_sigmas = self.grid()
        c = self.cfg
        train_seconds = time.perf_counter() - self.fit_started if hasattr(self, "fit_started") else None
        return save_artifact(
            out_dir, kind="ld3", solver=c.solver, solver_options=self.solver_options, nfe=c.nfe, sigmas=sigmas,
            net_sigmas=net_sigmas if c.decoupled else None, schedule=self.schedule, model=self.model_id,
            training={**asdict(c), "pairs": {"count": c.n_pairs, "seed": c.seed, "n_val": int(self.z_val.shape[0])},
                      "init": getattr(self, "init_choice", {"chosen": c.init_grid})},
            metrics={"val_distance": c.distance, "val_first": self.val_first, "val_best": self.best["val"],
                     "best_step": self.best.get("step"), "train_seconds": train_seconds},
            history=self.history, condition=condition)
