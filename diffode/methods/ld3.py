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

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from diffode.core.learned_grid import LearnedGrid, ball_radius, logits_for_grid, project_ball
from diffode.core.schedules import DTYPE

from .ld3_teacher import DEFAULT_TEACHER, cached_pairs, make_pairs, schedule_spec

DISTANCES = ("lpips", "l2", "l1")


@dataclass
class LD3Config:
    solver: str = "dpmpp_3m"
    nfe: int = 5
    solver_options: dict = field(default_factory=dict)
    teacher: dict = field(default_factory=lambda: dict(DEFAULT_TEACHER))
    n_pairs: int = 100
    val_fraction: float = 0.5
    seed: int = 100_000_000  # pair i uses noise seed + i: never one of the seeds 0.. diffode eval uses
    distance: str = "lpips"
    lpips_net: str = "vgg"
    lpips_random_backbone: bool = False  # tests only: LPIPS with an untrained backbone, never for results
    gamma: float = 0.001  # soft-loss radius r = gamma dim / N^2; 0 gives the hard loss
    decoupled: bool = True
    win_rate: float = 0.5
    space: str = "lambda"  # 'lambda' (logSNR) or 't' (the schedule's time)
    # 'best': the lowest validation loss among uniform-in-`space` and init_candidates (LD3 moves the grid
    # only locally, so a good start matters); 'uniform' (LD3's own init); or any make_grid name.
    init_grid: str = "best"
    init_candidates: list = field(default_factory=lambda: ["time_uniform", "logsnr", "edm"])  # for 'best'
    init_grid_options: dict = field(default_factory=dict)
    rounds_logits: int = 2
    rounds_joint: int = 5
    batch_size: int = 2
    lr_logits: float = 5e-3
    momentum: float = 0.9
    lr_shift: float = 0.1  # divided by N
    lr_latent: float = 12.0  # divided by N
    clip: float = 1.0
    patience: int = 5
    lr_decay: float = 0.8
    lr_floor_logits: float = 5e-5
    lr_floor_shift: float = 1e-6
    val_every: int = 5
    val_batch_size: int = 50
    checkpointing: bool = False  # torch.utils.checkpoint around every network call
    cache_dir: str | None = None
    artifact: str | None = None


def steps_for_nfe(solver: str, nfe: int, options: dict | None = None) -> int:
    """The grid's N: the step count at which `solver` makes exactly `nfe` denoiser calls."""
    from diffode.core.sample import steps_for_nfe as _steps

    return _steps(solver, nfe, **(options or {}))


class Checkpointed(nn.Module):
    """Recompute the network's activations in backward instead of storing them: the memory of a
    backward through the whole solve is then the solver states, not NFE x batch activations."""

    def __init__(self, denoiser: nn.Module):
        super().__init__()
        self.denoiser = denoiser

    def forward(self, x, sigma):
        return checkpoint(self.denoiser, x, sigma, use_reentrant=False)


# -- distances ----------------------------------------------------------------------------

def make_distance(name: str, lpips_net: str = "vgg", random_backbone: bool = False):
    """d(a, b) -> per-sample distance [B]."""
    if name == "l2":
        return lambda a, b: (a - b).flatten(1).pow(2).mean(1)
    if name == "l1":
        return lambda a, b: (a - b).flatten(1).abs().mean(1)
    if name == "lpips":
        # diffode.metrics.lpips gives 3 channels and >= 32x32 to small/grey images, and refuses to run
        # without the pretrained backbone unless random_backbone (tests only) is asked for.
        from diffode.metrics.lpips import LPIPS

        net = LPIPS(lpips_net, random_backbone=random_backbone)

        def d(a, b):
            if a.ndim != 4:
                raise ValueError(f"LPIPS needs images [B, C, H, W], got shape {tuple(a.shape)}; use distance=l2 or l1")
            return net(a, b).to(a.dtype)

        d.net = net
        return d
    raise ValueError(f"unknown distance {name!r}; choose one of {DISTANCES}")


# -- the LightningModule --------------------------------------------------------------------

class LD3Module(L.LightningModule):
    def __init__(self, denoiser: nn.Module, shape, schedule, sigma_min: float, sigma_max: float,
                 model_id: dict, cfg: LD3Config | dict | None = None, init_sigmas: Tensor | None = None):
        super().__init__()
        self.automatic_optimization = False
        cfg = cfg if isinstance(cfg, LD3Config) else LD3Config(**(cfg or {}))
        self.cfg, self.shape, self.schedule, self.model_id = cfg, tuple(shape), schedule, model_id
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.steps = steps_for_nfe(cfg.solver, cfg.nfe, cfg.solver_options)
        for p in denoiser.parameters():
            p.requires_grad_(False)
        self.denoiser = denoiser.eval()
        self.student_denoiser = Checkpointed(denoiser) if cfg.checkpointing else denoiser
        self.grid = LearnedGrid(self.steps, sigma_min, sigma_max, cfg.space, schedule, init=init_sigmas,
                                decoupled=cfg.decoupled, win_rate=cfg.win_rate)
        self.dist = make_distance(cfg.distance, cfg.lpips_net, cfg.lpips_random_backbone)
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
        return {"model": self.model_id, "teacher": dict(c.teacher), "seed": c.seed, "count": c.n_pairs,
                "shape": list(self.shape), "sigma_min": self.sigma_min, "sigma_max": self.sigma_max,
                "schedule": schedule_spec(self.schedule)}

    def on_fit_start(self):
        # Here (not in setup) the model is already on its device, so the teacher runs there.
        if hasattr(self, "z"):
            return
        rank, world = self.global_rank, self.trainer.world_size
        barrier = self.trainer.strategy.barrier if world > 1 else None
        make = lambda: make_pairs(self.denoiser, self.shape, self.cfg.n_pairs, self.cfg.seed, self.cfg.teacher,  # noqa: E731
                                  self.schedule, self.sigma_min, self.sigma_max, rank, world, self.all_gather,
                                  device=self.device)
        z, x0, self.pairs_path = cached_pairs(self.cfg.cache_dir, self.teacher_spec(), make, rank, barrier)
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
        return sample(den, self.sigma_max * z, solver=self.cfg.solver, nfe=self.cfg.nfe,
                      grid=sigmas, net_sigmas=net_sigmas if self.cfg.decoupled else None,
                      schedule=self.schedule, sigma_min=self.sigma_min, sigma_max=self.sigma_max,
                      **dict(self.cfg.solver_options))

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
        if self.cfg.artifact and self.global_rank == 0:
            self.save_artifact(self.cfg.artifact)

    # -- artifact ----------------------------------------------------------------------
    def artifact(self) -> dict:
        sigmas, net_sigmas = self.grid()
        c = self.cfg
        return {
            "format": "diffode.learned_grid/1",
            "method": "ld3",
            "sigmas": sigmas.detach().cpu().tolist(),
            "net_sigmas": net_sigmas.detach().cpu().tolist(),
            "solver": c.solver,
            "solver_options": dict(c.solver_options),
            "nfe": c.nfe,
            "steps": self.steps,
            "schedule": schedule_spec(self.schedule),
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "model": self.model_id,
            "teacher": dict(c.teacher),
            "pairs": {"count": c.n_pairs, "seed": c.seed, "n_val": int(self.z_val.shape[0])},
            "config": json.loads(json.dumps(asdict(c), default=str)),
            "init": getattr(self, "init_choice", {"chosen": c.init_grid}),
            "val_metric": {"distance": c.distance, "value": self.best["val"], "best_step": self.best.get("step")},
            "history": self.history,
        }

    def save_artifact(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.artifact(), indent=1))
        return path


def grid_tensors(artifact: dict) -> tuple[Tensor, Tensor]:
    return (torch.tensor(artifact["sigmas"], dtype=DTYPE), torch.tensor(artifact["net_sigmas"], dtype=DTYPE))
