"""ProgressiveDistillationModule: students that halve the DDIM step count, stage after stage.

Stage k (k = 0 .. S-1) trains a student of N_k = n0 / 2^(k+1) steps against a teacher of 2 N_k steps
(stage 0's teacher is the checkpoint, later ones the previous student), for `updates_per_stage`
updates (one count for all stages, or one per stage) with Adam whose learning rate falls linearly to 0 within the stage and whose state starts
fresh at each stage (Salimans & Ho: one optimizer per halving, grad clip 1, no EMA). The stage is a
pure function of the global step, so one Lightning fit runs every stage and a resumed job continues
mid-stage exactly: the checkpoint holds the student, the teacher and the stage counter, and every
step's randomness (which training images, grid points, noise) comes from a generator seeded by
(seed, step, rank). The data loader only paces the loop (its batch sets the batch size): Lightning
resumes its epochs with a stale batch counter, so batches drawn from it would not repeat.
At the end of stage k the student is written to <out_dir>/students/<N_k>.ckpt (a denoiser
checkpoint) and copied into the teacher.
"""
from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar

from ...core import distillation as pd
from ...core.conditioning import bind
from ...core.denoisers import ModelDenoiser
from ...core.grids import make_grid
from ...core.schedules import DTYPE
from ...spec import build
from ..batch import condition_for, split_batch
from ..student import choose_output, make_student, save_student_checkpoint

log = logging.getLogger(__name__)


class ProgressiveDistillationModule(L.LightningModule):
    """teacher: plain hyper-parameters of a denoiser checkpoint (net, schedule, data, prediction,
    sigma_data); teacher_state: its (EMA) ModelDenoiser state_dict. grid / grid_options: a grid family
    of diffode.core.grids whose grids nest under halving (checked here)."""

    def __init__(self, teacher: dict, n0: int, n_final: int, updates_per_stage, grid: str, grid_options: dict,
                 weighting: str, student_output: str, lr: float, betas, grad_clip: float, sigma_min: float,
                 sigma_max: float, seed: int = 0, out_dir: str | None = None,
                 teacher_state: dict | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["teacher_state", "out_dir"])
        self.steps = pd.stage_steps(n0, n_final)  # the students' N, one per stage
        pd.loss_weight(torch.ones(1, dtype=DTYPE), weighting)  # unknown weightings fail here
        self.updates = pd.stage_updates(updates_per_stage, len(self.steps))
        self.starts = [sum(self.updates[:k]) for k in range(len(self.steps))]  # first global step of each stage
        schedule = build(teacher["schedule"])
        net = ModelDenoiser(build(teacher["net"]), schedule, teacher["prediction"], teacher.get("sigma_data", 0.5))
        if teacher_state is not None:
            net.load_state_dict(teacher_state)
        self.output = choose_output(teacher["prediction"], student_output)
        self.student = make_student(net, self.output)
        self.teacher = net.eval().requires_grad_(False)
        self.register_buffer("stage", torch.zeros((), dtype=torch.long))  # stages finished (in checkpoints)
        self.grids = [self.grid(2 * n) for n in self.steps]  # the teacher's grid of each stage
        pd.check_nested(self.grid, self.steps, what=f"grid {grid!r} {dict(grid_options)}")
        self.out_dir = Path(out_dir) if out_dir else None

    def grid(self, n: int) -> torch.Tensor:
        hp = self.hparams
        return make_grid(hp.grid, n, self.teacher.schedule, sigma_min=hp.sigma_min, sigma_max=hp.sigma_max,
                         **dict(hp.grid_options))

    @property
    def total_updates(self) -> int:
        return sum(self.updates)

    def stage_of(self, step: int) -> int:
        return max(k for k in range(len(self.steps)) if k == 0 or step >= self.starts[k])

    # -- stages -----------------------------------------------------------------------------
    def students_dir(self) -> Path:
        return (self.out_dir or Path(self.trainer.default_root_dir)) / "students"

    def _finish_stage(self) -> None:
        """Write the stage's student, make it the next teacher and restart Adam."""
        k = int(self.stage)
        if self.trainer.is_global_zero:
            path = save_student_checkpoint(self.student, dict(self.hparams.teacher), self.students_dir() /
                                           f"{self.steps[k]}.ckpt", global_step=int(self.global_step),
                                           distilled=self.record(k))
            log.info("stage %d/%d done: %d-step student saved to %s", k + 1, len(self.steps), self.steps[k], path)
        self.teacher.load_state_dict(self.student.state_dict())
        self.teacher.prediction = self.student.prediction
        if self.trainer.optimizers:
            self.trainer.optimizers[0].state.clear()  # Adam's moments start fresh, as a new optimizer would
        self.stage.fill_(k + 1)

    def record(self, k: int) -> dict:
        """What a student file records of how it was made (plain data)."""
        hp = self.hparams
        return {"method": "progressive_distillation", "steps": self.steps[k], "teacher_steps": 2 * self.steps[k],
                "n0": hp.n0, "stage": k + 1, "updates": self.updates[k], "grid": hp.grid,
                "grid_options": dict(hp.grid_options), "sigmas": [float(s) for s in self.grid(self.steps[k])],
                "weighting": hp.weighting, "teacher_prediction": hp.teacher["prediction"], "output": self.output}

    def on_train_batch_start(self, batch, batch_idx):
        if int(self.stage) > 0:  # a resumed run: the teacher is a student (its prediction is not saved)
            self.teacher.prediction = self.student.prediction
        while int(self.stage) < self.stage_of(int(self.global_step)):
            self._finish_stage()
        self.teacher.eval()

    def on_train_end(self):
        if int(self.global_step) >= self.total_updates and int(self.stage) == len(self.steps) - 1:
            self._finish_stage()

    # -- the loss ---------------------------------------------------------------------------
    def _generator(self, step: int, rank: int) -> torch.Generator:
        return torch.Generator().manual_seed(((self.hparams.seed * 1_000_003 + step) * 4099 + rank) * 7 + 3)

    def on_fit_start(self):
        dm = getattr(self.trainer, "datamodule", None)
        self.dataset = getattr(dm, "train_set", None) if dm is not None else None
        if self.dataset is None:
            self.dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        if self.output != self.hparams.teacher["prediction"]:
            log.info("the teacher predicts %s; the student outputs %s (method.student_output=%s)",
                     self.hparams.teacher["prediction"], self.output, self.hparams.student_output)

    def draw_batch(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """n training samples (and their labels, when the dataset has them) drawn uniformly (with replacement)
        by the step's generator."""
        idx = torch.randint(0, len(self.dataset), (n,), generator=generator)
        items = [split_batch(self.dataset[int(i)]) for i in idx]
        labels = None if items[0][1] is None else torch.stack([torch.as_tensor(y) for _, y in items])
        return torch.stack([x for x, _ in items]), labels

    def loss(self, x0: torch.Tensor, generator: torch.Generator, k: int, labels=None) -> torch.Tensor:
        """The stage-k loss; a class-conditional teacher and its student see each sample's label."""
        x0 = x0.to(DTYPE)
        cond = condition_for(self.teacher, labels)
        st, sm, ss = pd.draw_points(self.grids[k], x0.shape[0], generator)
        eps = torch.randn(x0.shape, generator=generator, dtype=DTYPE).to(x0.device)
        return pd.pd_loss(bind(self.student, cond), bind(self.teacher, cond), x0, eps, st.to(x0.device),
                          sm.to(x0.device), ss.to(x0.device), self.hparams.weighting)

    def training_step(self, batch, batch_idx):
        step = int(self.global_step)
        k = self.stage_of(step)
        g = self._generator(step, self.global_rank)
        x0, labels = split_batch(batch)
        if getattr(self, "dataset", None) is not None:
            x0, labels = self.draw_batch(x0.shape[0], g)
        x0 = x0.to(self.device)
        loss = self.loss(x0, g, k, None if labels is None else labels.to(self.device))
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(f"non-finite distillation loss at step {step} (stage {k + 1}, {self.steps[k]} "
                                     f"steps); lower method.lr (now {self.hparams.lr:g}) and resume from last.ckpt.")
        self.log("train/loss", loss.float(), prog_bar=True, on_step=True, on_epoch=False)
        self.log("pd/steps", float(self.steps[k]), on_step=True, on_epoch=False)
        return loss

    # -- optimisation ------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.Adam(self.student.parameters(), lr=hp.lr, betas=tuple(hp.betas))
        anneal = torch.optim.lr_scheduler.LambdaLR(opt, self.lr_factor)

        return {"optimizer": opt, "lr_scheduler": {"scheduler": anneal, "interval": "step"}}

    def lr_factor(self, step: int) -> float:
        """Linear from 1 to 0 within each stage (the paper's anneal); a new stage starts again at 1."""
        k = self.stage_of(step)
        return 1.0 - (step - self.starts[k]) / self.updates[k]

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        self.clip_gradients(optimizer, gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="norm")

    def configure_callbacks(self):
        if isinstance(self.trainer.progress_bar_callback, TQDMProgressBar):
            return [StageProgressBar()]
        return []


class StageProgressBar(TQDMProgressBar):
    """One bar per distillation stage ('stage 2/7: 64 -> 32 steps'), instead of one per epoch."""

    def on_train_epoch_start(self, trainer, *_):
        pass

    def _stage(self, trainer, pl_module):
        step = int(trainer.global_step)
        k = pl_module.stage_of(step)
        return k, step - pl_module.starts[k]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        k, done = self._stage(trainer, pl_module)
        bar = self.train_progress_bar
        if getattr(self, "_bar_stage", None) != k:
            self._bar_stage = k
            bar.reset(total=pl_module.updates[k])
            bar.initial = 0
            n = pl_module.steps[k]
            bar.set_description(f"stage {k + 1}/{len(pl_module.steps)}: {2 * n} -> {n} steps")
            _move_to(bar, done)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        k, done = self._stage(trainer, pl_module)
        bar = self.train_progress_bar
        if k != getattr(self, "_bar_stage", None):  # the last update of a stage
            done = pl_module.updates[k - 1] if k > 0 else done
        if self.is_enabled and (done % self.refresh_rate == 0 or done == bar.total):
            _move_to(bar, done)
            bar.set_postfix(self.get_metrics(trainer, pl_module))


def _move_to(bar, n: int) -> None:
    """Set a tqdm bar's count (tqdm's public n + refresh)."""
    if not bar.disable:
        bar.n = n
        bar.refresh()
