"""ReflowModule: rectify a teacher's PF-ODE into straighter paths, then distil the result to k Euler steps.

Liu, Gong & Liu (ICLR 2023, "Flow straight and fast"), and InstaFlow (Liu et al., ICLR 2024):

1. pairs (z, x0): x0 = the teacher's ODE solve from x_T = sigma_max z (many steps; cached like LD3's pairs);
2. reflow ("2-rectified flow"): a flow model u(x_t, t) trained by flow matching on the COUPLED pairs,
   x_t = (1 - t) x0 + t z, target z - x0. Its ODE transports z to (nearly) the same x0 on paths that cross
   less, so they are straighter and few Euler steps follow them;
3. distillation to k steps: pairs re-made by the reflowed model's own solve (InstaFlow), and a student per k
   trained with the same loss at the k-step Euler grid's start times only (Liu et al.'s k-step distillation;
   k = 1 is their one-step distillation, E |(z - x0) - u(z, t_max)|^2): on a straight coupling the student's
   Euler steps stay on the line from z to x0.

Stages are a pure function of the global step (stage 0: reflow for `reflow_updates`; stage 1 + j: student of
distill_steps[j] for `distill_updates`; Adam, its learning rate falling linearly to 0 within each stage, no EMA),
as in progressive distillation, so one fit runs them all and a resumed
job continues mid-stage: the checkpoint holds the student, the reflowed model and the stage counter, and every
step's pair indices and times come from a generator seeded by (seed, step, rank). Each stage starts Adam afresh;
each distillation stage starts from the reflowed model's weights. Students are written to <out_dir>/students/.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import lightning as L
import torch

from ...core.denoisers import ModelDenoiser
from ...core.grids import make_grid
from ...core.schedules import DTYPE
from ...models import tensor_sha1
from ...spec import build
from ..denoiser.losses import velocity_loss
from ..ld3.teacher import cached_pairs, make_pairs
from ..student import save_student_checkpoint
from . import stage_updates

log = logging.getLogger(__name__)


def draw_times(schedule, n: int, generator: torch.Generator, sampling: str, p_mean: float, p_std: float,
               times=None) -> torch.Tensor:
    """Training times: one of `times` (a distillation stage's grid times) uniformly, else uniform on
    [t_min, t_max] or log-normal VE sigma (p_mean, p_std: SD3's logit-normal t under the flow schedule)."""
    if times is not None:
        return times[torch.randint(0, times.numel(), (n,), generator=generator)]
    if sampling == "uniform":
        u = torch.rand(n, dtype=DTYPE, generator=generator)
        return schedule.t_min + (schedule.t_max - schedule.t_min) * u
    s = torch.exp(p_mean + p_std * torch.randn(n, dtype=DTYPE, generator=generator))
    return schedule.t_from_ve_sigma(s.clamp(schedule.sigma_min, schedule.sigma_max))


class ReflowModule(L.LightningModule):
    """student: the ModelDenoiser spec of the flow student (velocity, flow schedule) and its initial weights
    (None: fresh); teacher: the teacher's D(x, sigma) (frozen), shape, sigma range and identity."""

    def __init__(self, student_spec: dict, teacher_id: dict, shape, sigma_min: float, sigma_max: float, *,
                 teacher: dict, n_pairs: int, val_pairs: int, seed: int, reflow_updates: int, distill_updates: int,
                 distill_steps, rectified_steps, regenerate_pairs: bool, grid: str, grid_options: dict, t_sampling: str,
                 p_mean: float, p_std: float, batch_size: int, lr: float, betas, grad_clip: float,
                 cache_dir: str | None = None, out_dir: str | None = None, student_state: dict | None = None,
                 teacher_denoiser=None, run_seed: int = 0):
        super().__init__()
        self.save_hyperparameters(ignore=["student_state", "teacher_denoiser", "out_dir"])
        self.student: ModelDenoiser = build(copy.deepcopy(student_spec))
        if student_state is not None:
            self.student.load_state_dict(student_state)
        self.student.train().requires_grad_(True)
        self.rectified = copy.deepcopy(self.student).eval().requires_grad_(False)  # the 2-RF, once stage 0 is done
        object.__setattr__(self, "teacher_denoiser", teacher_denoiser)  # not a submodule: not saved, not trained
        self.teacher_schedule = None  # the teacher's schedule (its grid for the pair solves), set by the builder
        self.updates = stage_updates(reflow_updates, distill_updates, distill_steps)
        self.starts = [sum(self.updates[:k]) for k in range(len(self.updates))]
        self.register_buffer("stage", torch.zeros((), dtype=torch.long))  # stages finished (in checkpoints)
        self.out_dir = Path(out_dir) if out_dir else None
        self.pairs = {}  # "teacher" / "rectified" -> (z, x0), train and validation splits

    # -- the plan ------------------------------------------------------------------------------
    @property
    def total_updates(self) -> int:
        return sum(self.updates)

    def stage_of(self, step: int) -> int:
        return max([k for k in range(len(self.updates)) if step >= self.starts[k]] or [0])

    def student_grid(self, k: int) -> torch.Tensor:
        hp = self.hparams
        return make_grid(hp.grid, int(k), self.student.schedule, sigma_min=hp.sigma_min, sigma_max=hp.sigma_max,
                         **dict(hp.grid_options))

    def stage_times(self, stage: int):
        """None for the reflow stage; the k-step grid's start times for a distillation stage."""
        if stage == 0:
            return None
        k = int(self.hparams.distill_steps[stage - 1])
        return self.student.schedule.t_from_ve_sigma(self.student_grid(k)[:-1])

    def students_dir(self) -> Path:
        return (self.out_dir or Path(self.trainer.default_root_dir)) / "students"

    # -- pairs ---------------------------------------------------------------------------------
    def pair_spec(self, which: str) -> dict:
        hp = self.hparams
        spec = {"model": hp.teacher_id, "teacher": dict(hp.teacher), "seed": hp.seed, "count": hp.n_pairs + hp.val_pairs,
                "shape": list(hp.shape), "sigma_min": hp.sigma_min, "sigma_max": hp.sigma_max, "which": which}
        if which == "rectified":  # made by this run's reflowed model: keyed by its weights
            spec["weights"] = tensor_sha1(*self.rectified.state_dict().values())
        return spec

    def load_pairs(self, which: str) -> None:
        hp = self.hparams
        if which in self.pairs:
            return
        den = self.teacher_denoiser if which == "teacher" else self.rectified
        sch = self.rectified.schedule if which == "rectified" else self.teacher_schedule
        make = lambda: make_pairs(den, tuple(hp.shape), hp.n_pairs + hp.val_pairs, hp.seed, dict(hp.teacher),  # noqa: E731
                                  sch, hp.sigma_min, hp.sigma_max, device=self.device)
        where = hp.cache_dir if which == "teacher" and hp.cache_dir else (self.out_dir or Path(self.trainer.default_root_dir))
        z, x0, _ = cached_pairs(where, self.pair_spec(which), make)
        self.pairs[which] = (z[:hp.n_pairs], x0[:hp.n_pairs], z[hp.n_pairs:], x0[hp.n_pairs:])
        log.info("reflow: %d + %d %s pairs", hp.n_pairs, hp.val_pairs, which)

    def pairs_of(self, stage: int):
        which = "teacher" if stage == 0 or not self.hparams.regenerate_pairs else "rectified"
        self.load_pairs(which)
        return self.pairs[which]

    # -- stages --------------------------------------------------------------------------------
    def _finish_stage(self) -> None:
        """Save the stage's model; after reflow it becomes the rectified flow; the next student starts from it."""
        k = int(self.stage)
        name = "rectified" if k == 0 else f"{int(self.hparams.distill_steps[k - 1])}"
        if k == 0:
            self.rectified.load_state_dict(self.student.state_dict())
        if self._trainer is None or self.trainer.is_global_zero:
            save_student_checkpoint(self.student, self.hparams_for_checkpoint(), self.students_dir() / f"{name}.ckpt",
                                    global_step=int(self.global_step), reflow={"stage": k, "name": name})
            log.info("reflow stage %d/%d done: %s saved", k + 1, len(self.updates), name)
        self.student.load_state_dict(self.rectified.state_dict())  # each distillation starts from the 2-RF
        if self._trainer is not None and self.trainer.optimizers:
            self.trainer.optimizers[0].state.clear()
        self.stage.fill_(k + 1)

    def hparams_for_checkpoint(self) -> dict:
        """The plain net / schedule / data / prediction record load_denoiser rebuilds the student from."""
        spec = self.hparams.student_spec
        return {"net": copy.deepcopy(spec["net"]), "schedule": copy.deepcopy(spec["schedule"]),
                "data": {"name": self.hparams.teacher_id.get("dataset") or self.hparams.teacher_id.get("name"),
                         "shape": list(self.hparams.shape)},
                "prediction": "velocity", "sigma_data": 0.5}

    def on_train_batch_start(self, batch, batch_idx):
        while int(self.stage) < self.stage_of(int(self.global_step)):
            self._finish_stage()

    def on_train_end(self):
        if int(self.global_step) >= self.total_updates and int(self.stage) == len(self.updates) - 1:
            self._finish_stage()

    # -- the loss ------------------------------------------------------------------------------
    def _generator(self, step: int, rank: int, salt: int = 5) -> torch.Generator:
        return torch.Generator().manual_seed(((self.hparams.run_seed * 1_000_003 + step) * 4099 + rank) * 7 + salt)

    def loss(self, z, x0, t) -> torch.Tensor:
        """Flow matching on coupled pairs: |u(x_t, t) - (z - x0)|^2 with x_t = alpha x0 + sigma z."""
        net, sch = self.student.net, self.student.schedule
        dt = self.student.net_dtype
        return velocity_loss(net, sch, x0.to(self.device, dt), t, z.to(self.device, dt))

    def training_step(self, batch, batch_idx):
        hp = self.hparams
        step = int(self.global_step)
        k = self.stage_of(step)
        z, x0, _, _ = self.pairs_of(k)
        g = self._generator(step, self.global_rank)
        idx = torch.randint(0, z.shape[0], (hp.batch_size,), generator=g)
        t = draw_times(self.student.schedule, hp.batch_size, g, hp.t_sampling, hp.p_mean, hp.p_std, self.stage_times(k))
        loss = self.loss(z[idx], x0[idx], t)
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(f"non-finite reflow loss at step {step} (stage {k + 1}); lower method.lr "
                                     f"(now {hp.lr:g}) and resume from last.ckpt.")
        self.log("train/loss", loss.float(), prog_bar=True, on_step=True, on_epoch=False)
        self.log("reflow/stage", float(k), on_step=True, on_epoch=False)
        return loss

    @torch.no_grad()
    def val_loss(self, denoiser: ModelDenoiser, stage: int, n_t: int = 8) -> float:
        """The stage's loss on held-out pairs (Liu et al.'s straightness for stage 0: E_t |(z - x0) - u(x_t, t)|^2
        over n_t evenly spaced t, on the pairs the stage trains on)."""
        _, _, z, x0 = self.pairs_of(stage)
        if z.shape[0] == 0:
            return float("nan")
        times = self.stage_times(stage)
        if times is None:
            sch = denoiser.schedule
            times = torch.linspace(sch.t_min, sch.t_max, n_t + 2, dtype=DTYPE)[1:-1]
        net, sch = denoiser.net, denoiser.schedule
        dt = denoiser.net_dtype
        total = 0.0
        for t in times:
            total += float(velocity_loss(net, sch, x0.to(self.device, dt), t.expand(z.shape[0]), z.to(self.device, dt)))
        return total / len(times)

    # -- optimisation --------------------------------------------------------------------------
    epoch_updates = 100  # an epoch paces this many updates: checkpoints (at epoch ends) come that often

    def train_dataloader(self):
        # paces the loop only: every step draws its pair indices from its own generator (resume-exact)
        return torch.utils.data.DataLoader(torch.arange(max(min(self.total_updates, self.epoch_updates), 1)),
                                           batch_size=1)

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.Adam(self.student.parameters(), lr=hp.lr, betas=tuple(hp.betas))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, self.lr_factor),
                                                   "interval": "step"}}

    def lr_factor(self, step: int) -> float:
        """Linear from 1 to 0 within each stage (as progressive distillation's); each stage starts again at 1."""
        k = self.stage_of(step)
        return 1.0 - (step - self.starts[k]) / max(self.updates[k], 1)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        self.clip_gradients(optimizer, gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="norm")
