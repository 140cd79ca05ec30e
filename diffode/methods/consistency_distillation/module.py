"""Consistency distillation (Song et al., ICML 2023, Alg. 2) as one LightningModule.

Three sets of weights (consistency.md, pitfall 6): the online student theta (trained), the target
theta^- (an EMA of theta with decay mu; mu = 0 is the online network itself under stop-gradient, the
CIFAR-10 setting, and then no copy is kept), and the slow evaluation EMA (what is sampled, exported and
scored). Per step, for a batch x0 of data:

    n ~ U{0..N-2} per sample, z ~ N(0, I), x_n = x0 + sigma_n z
    x_hat = one step of the teacher's ODE solver (zoo: heun by default) from sigma_n to sigma_{n+1}
    loss  = mean d(f_theta(x_n, sigma_n), stopgrad f_theta^-(x_hat, sigma_{n+1}))

with f the boundary-exact consistency function around the student denoiser (core/consistency.py),
which starts as a copy of the teacher's EMA weights. The online and target calls share a dropout mask
(the same torch seed before each). Every step's randomness is a pure function of (seed, step, rank), and
all three weight sets live in the checkpoint, so a resumed run continues exactly. Validation computes,
with fixed noise, the consistency loss of the EMA student and its distillation error: the l2 distance
(per-pixel mean) of its 1-step sample to the teacher's reference solve (Heun, `reference_nfe` calls)
from the same x_T.
"""
from __future__ import annotations

import copy
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch
from torch import Tensor, nn

from diffode.core import consistency as cm
from diffode.core.conditioning import bind
from diffode.core.distances import l2
from diffode.core.sample import sample
from diffode.core.schedules import DTYPE

from diffode.metrics.distance import make_distance

from ..batch import condition_for, split_batch
from ..callbacks import EMAUpdate
from .options import CDConfig, Optimizer

OPTIMIZERS = tuple(Optimizer.__members__)


def sampling_sigmas(cfg: CDConfig, k: int, sigma_min: float, sigma_max: float) -> Tensor:
    """The k-step sampling grid: sample_sigmas[k] if given, else k + 1 Karras points (rho = cfg.rho)."""
    given = (cfg.sample_sigmas or {}).get(k, (cfg.sample_sigmas or {}).get(str(k)))
    if given is not None:
        return torch.as_tensor([float(s) for s in given], dtype=DTYPE)
    return cm.karras_grid(k + 1, sigma_min, sigma_max, cfg.rho)


class ConsistencyDistillationModule(L.LightningModule):
    """student_spec: the `_target_` spec of the student ConsistencyFunction (what artifacts rebuild);
    student_state: its initial weights (the teacher's EMA weights), or None for a fresh network."""

    def __init__(self, teacher: nn.Module, student_spec: dict, student_state: dict | None, shape, sigma_min: float,
                 sigma_max: float, cfg: CDConfig, seed: int = 0, teacher_solver: str | None = None,
                 teacher_options: dict | None = None, out_dir: str | None = None):
        super().__init__()
        from diffode.spec import build

        self.cfg, self.seed, self.shape = cfg, int(seed), tuple(shape)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.save_hyperparameters({"cd": asdict(cfg), "student_spec": student_spec, "seed": self.seed})
        self.teacher = teacher.eval().requires_grad_(False)
        # the registry solver and options of the config name cfg.teacher_solver (diffode.config.solver_config)
        self.teacher_solver = teacher_solver or cfg.teacher_solver
        self.teacher_options = dict(teacher_options or {})
        self.student_spec = student_spec
        self.student: cm.ConsistencyFunction = build(student_spec)
        if student_state is not None:
            self.student.load_state_dict(student_state)
        self.student.requires_grad_(True)
        self.target = None if cfg.mu == 0 else copy.deepcopy(self.student).requires_grad_(False)
        self.ema = copy.deepcopy(self.student).eval().requires_grad_(False)
        self.ema_rule = EMAUpdate(cfg.ema_decay)
        self.register_buffer("sigmas", cm.karras_grid(cfg.N, sigma_min, sigma_max, cfg.rho), persistent=False)
        self.distance = make_distance(cfg.distance, huber_c=cfg.huber_c, lpips_net=cfg.lpips_net,
                                      random_backbone=cfg.lpips_random_backbone)
        self.distance_net = self.distance.net  # a network distance's net: a submodule, so it follows the device
        self.out_dir = Path(out_dir) if out_dir else None
        self._val_cache = None

    # -- modes: the teacher and the evaluation EMA never train (no dropout, fixed statistics) --------
    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        self.ema.eval()
        return self

    def _generator(self, step: int, rank: int, salt: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(((self.seed * 1_000_003 + step) * 4099 + rank) * 7 + salt)

    # -- the loss ----------------------------------------------------------------------------------
    def consistency_loss(self, x0: Tensor, g: torch.Generator, online: nn.Module, target: nn.Module | None,
                         labels: Tensor | None = None) -> Tensor:
        """mean d(f_online(x_n, sigma_n), stopgrad f_target(x_hat, sigma_{n+1})); target None = online. A
        class-conditional teacher and its students see each sample's label (core/conditioning.py)."""
        cond = condition_for(self.teacher, labels)
        teacher, online = bind(self.teacher, cond), bind(online, cond)
        target = None if target is None else bind(target, cond)
        hi, lo = cm.sample_pairs(self.sigmas.cpu(), x0.shape[0], g)
        hi, lo = hi.to(x0.device), lo.to(x0.device)
        z = torch.randn(x0.shape, generator=g, dtype=x0.dtype).to(x0.device)
        x_n = x0 + hi.to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1))) * z
        with torch.no_grad():
            x_hat = cm.teacher_step(teacher, x_n, hi, lo, solver=self.teacher_solver, **self.teacher_options)
        dropout_seed = int(torch.randint(0, 2**62, (1,), generator=g))
        torch.manual_seed(dropout_seed)
        f_online = online(x_n, hi)
        with torch.no_grad():
            torch.manual_seed(dropout_seed)  # the same dropout mask as the online call
            f_target = (target if target is not None else online)(x_hat, lo)
        return self.distance(f_online, f_target.detach()).mean()

    def training_step(self, batch, batch_idx):
        x0, labels = split_batch(batch)
        loss = self.consistency_loss(x0, self._generator(self.global_step, self.global_rank), self.student,
                                     self.target, labels)
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(f"non-finite consistency loss ({float(loss)}) at step {self.global_step}; lower "
                                     f"method.lr (now {self.cfg.lr:g}) or set trainer.gradient_clip_val, then resume "
                                     "from <run dir>/checkpoints/last.ckpt.")
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=x0.shape[0])
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        # after the optimizer step: theta^- <- mu theta^- + (1 - mu) theta, and the evaluation EMA
        if self.target is not None:
            cm.ema_update(self.target, self.student, self.cfg.mu)
        cm.ema_update(self.ema, self.student, self.ema_rule.decay_at(self.global_step - 1))
        every = int(self.cfg.snapshot_every)
        if every > 0 and self.global_step % every == 0 and self.trainer.is_global_zero:
            self.save_snapshot()

    def save_snapshot(self) -> Path:
        """The evaluation EMA at this step, for FID-vs-updates curves (<out dir>/snapshots/)."""
        out = (self.out_dir or Path(self.trainer.default_root_dir)) / "snapshots"
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"ema_step{self.global_step:07d}.pt"
        torch.save({"step": self.global_step, "spec": self.student_spec,
                    "state_dict": {k: v.detach().cpu() for k, v in self.ema.state_dict().items()}}, path)
        return path

    # -- validation: fixed noise, the EMA student ------------------------------------------------------
    def reference(self, device) -> tuple[Tensor, Tensor]:
        """(x_T, the teacher's reference solve from it): n_val fixed noises, computed once."""
        if self._val_cache is None:
            g = torch.Generator().manual_seed(10_000_019 + self.seed)
            x_T = self.sigma_max * torch.randn((self.cfg.n_val, *self.shape), generator=g, dtype=DTYPE)
            with torch.no_grad():
                ref = sample(self.teacher, x_T.to(device), solver="heun", nfe=self.cfg.reference_nfe, grid="edm",
                             sigma_min=self.sigma_min, sigma_max=self.sigma_max)
            self._val_cache = (x_T.to(device), ref)
        return self._val_cache

    @torch.no_grad()
    def distillation_error(self, f: nn.Module, steps: int = 1) -> float:
        """l2 (per-coordinate mean) of the `steps`-step consistency sample to the teacher's reference solve."""
        x_T, ref = self.reference(self.device)
        sig = sampling_sigmas(self.cfg, steps, self.sigma_min, self.sigma_max).to(x_T.device)
        x = sample(f, x_T.to(torch.float32), solver="consistency", nfe=steps, grid=sig,
                   generator=torch.Generator().manual_seed(7), clip=self.cfg.clip)
        return float(l2(x.to(DTYPE), ref).mean())

    def validation_step(self, batch, batch_idx):
        x0, labels = split_batch(batch)
        g = self._generator(batch_idx, self.global_rank, salt=1)  # the same noise at every validation
        with torch.no_grad():
            loss = self.consistency_loss(x0, g, self.ema, self.ema, labels)
        self.log("val/loss", loss, sync_dist=True, on_epoch=True, batch_size=x0.shape[0])
        if batch_idx == 0:
            self.log("val/distill_l2", self.distillation_error(self.ema), sync_dist=True, on_epoch=True)

    # -- optimisation -------------------------------------------------------------------------------
    def configure_optimizers(self):
        cfg = self.cfg
        opt_cls = {"radam": torch.optim.RAdam, "adam": torch.optim.Adam}[cfg.optimizer]
        opt = opt_cls(self.student.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
        if cfg.warmup_steps <= 0:
            return opt
        warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": warm, "interval": "step"}}
