"""AMEDModule: train AMED's predictor data-free from the sampler's own trajectories (Zhou et al. 2024, Sec. 4).

Each batch: fresh x_T = sigma_max z (seeded by batch and rank: no data, and resumable), the teacher
(the same solver family, `teacher_solver`, on the (M+1)-refined grid, under no_grad) gives the
points x*_n at the student's grid sigmas. Then for every interval n of the student's N: the student
takes that one interval with the predictor as its `midpoints` hook, the loss is
|x_student - x*_{n+1}|^2 summed over dimensions and averaged over the batch, and Adam takes one step
(N optimizer steps per batch). Gradients reach the predictor through the stage point, and through the
frozen network's second evaluation at (x_s, a s).

Where each interval starts:
- single-step students (amed, euler, dpm_solver_2) restart from the teacher's point x*_n (the paper's
  "slightly better" choice): one call of the solver on the grid [sigma_n, sigma_{n+1}];
- multistep students (ipndm, dpmpp_2m) continue from their own detached state and history. They are
  run on the whole grid with the stages of the earlier intervals replayed as the constants they were
  when those intervals were trained, and stopped after interval n; the earlier intervals take no
  gradient (no input needs one), so this is exactly the paper's detached continuation, paid for by
  re-running the earlier intervals' forward passes.
AFS (analytic first step) only in interval 0, whose predictor then sees zero features.

Data-parallel: the loader yields batch indices, each rank draws its own batch_per_rank latents, the
loss is each rank's batch mean and Lightning's DDP averages the gradients, so every rank takes the
same Adam step and ends with the same predictor (tests/test_amed_method.py). Losses are kept in
buffers of fixed shape (they come back from ddp_spawn's workers with the weights, and resume).
"""
from __future__ import annotations

import copy
import math

import lightning as L
import torch
from torch import Tensor, nn

from diffode.core.sample import prior_sample, sample
from diffode.core.solvers import get_solver
from diffode.core.stage import Stage

from .options import FID_SELECTS, AMEDConfig
from .predictor import AMEDPredictor

VAL_SEED = 2_000_000_000  # held-out latents: far from the training seeds and from the seeds 0.. of diffode eval
VAL_FID_SEED = 2_100_000_000  # select=fid: the held-out FID's latents, seeded one per sample from here


def batch_distance(name: str, l2_weight: float = 0.0):
    """distance -> (a, b) -> the batch mean of the per-sample distance (diffode.metrics.distance; the paper's is
    l2_sum, |a - b|^2), plus l2_weight x the mean squared error per dimension; and the network it carries (or None)."""
    from diffode.metrics.distance import make_distance

    d = make_distance(name)
    if l2_weight:
        return (lambda a, b: d(a, b).mean() + l2_weight * (a - b).pow(2).mean()), d.net
    return (lambda a, b: d(a, b).mean()), d.net


def teacher_indices(sigmas: Tensor, teacher_sigmas: Tensor) -> list[int] | None:
    """Where each student sigma (after the first) sits in the teacher's grid, or None if one is missing."""
    out = []
    for s in sigmas[1:]:
        j = int((teacher_sigmas - s).abs().argmin())
        if abs(float(teacher_sigmas[j] - s)) > 1e-9 * float(sigmas[0]):
            return None
        out.append(j)
    return out


def students() -> list[str]:
    """The registry solvers AMED trains a stage predictor for: those that take the stage hook `midpoints`
    (diffode/core/stage.py) and spend two calls per step with it: the AMED-Solver `amed` and the plugins."""
    from diffode.core.solvers import SOLVERS, get_solver

    get_solver("amed")  # registers every solver
    return sorted(n for n, s in SOLVERS.items() if "midpoints" in s.defaults and s.n_calls(1, midpoints=True) == 2)


def _detached(st: Stage) -> Stage:
    return Stage(*(None if v is None else v.detach() for v in (st.sigma, st.c, st.a)))


class _Replay:
    """The hook of a multistep student at interval n: the recorded stages before n, the predictor at n."""

    def __init__(self, predictor: AMEDPredictor, n: int, recorded: list):
        self.predictor, self.n, self.recorded = predictor, n, recorded
        self.needs_features = predictor.needs_features

    def __call__(self, i, sigma_cur, sigma_next, x, features=None):
        if i < self.n:
            return self.recorded[i]
        st = self.predictor(i, sigma_cur, sigma_next, x, features)
        self.recorded.append(_detached(st))
        return st


class AMEDModule(L.LightningModule):
    def __init__(self, denoiser: nn.Module, shape, sigmas: Tensor, teacher_sigmas: Tensor, cfg: AMEDConfig,
                 feature_shape=None, val_sigmas: Tensor | None = None):
        super().__init__()
        self.automatic_optimization = False
        self.cfg, self.shape = cfg, tuple(shape)
        for p in denoiser.parameters():
            p.requires_grad_(False)
        self.denoiser = denoiser.eval()
        pc = cfg.predictor
        self.predictor = AMEDPredictor(feature_shape, cfg.scale_dir, cfg.scale_time, pc["hidden"],
                                       pc["time_channels"], pc["feature_channels"], cfg.prior, cfg.first_at_start)
        # the state with the lowest held-out endpoint RMSE so far (the start included), a frozen copy
        # that travels with the weights (ddp_spawn, resume); exported unless cfg.select == "last"
        self.best = copy.deepcopy(self.predictor).requires_grad_(False)
        self.register_buffer("best_score", torch.tensor(math.inf, dtype=torch.float64))  # RMSE, or FID (select=fid)
        self.register_buffer("best_batch", torch.tensor(-1, dtype=torch.long))
        self.register_buffer("sigmas", sigmas.to(torch.float64), persistent=False)
        self.register_buffer("teacher_sigmas", teacher_sigmas.to(torch.float64), persistent=False)
        # the held-out target: the teacher on a finer grid (val_refine), so that the exported state can be
        # chosen by its distance to (nearly) the exact ODE solution rather than to the training teacher's
        self.register_buffer("val_sigmas", (teacher_sigmas if val_sigmas is None else val_sigmas).to(torch.float64),
                             persistent=False)
        self.teacher_at = teacher_indices(self.sigmas, self.teacher_sigmas)
        self.val_at = teacher_indices(self.sigmas, self.val_sigmas)
        if self.teacher_at is None or self.val_at is None:
            raise ValueError("the teacher grid does not contain every student sigma")
        self.n_batches = math.ceil(cfg.n_trajectories / cfg.batch)
        n_evals = 1 + math.ceil(self.n_batches / cfg.val_every)
        # history: per batch and interval the training loss; held-out loss and endpoint RMSE before
        # training and every val_every batches (NaN where not reached)
        self.register_buffer("train_loss", torch.full((self.n_batches, self.n_losses), math.nan, dtype=torch.float64))
        self.register_buffer("val_loss", torch.full((n_evals,), math.nan, dtype=torch.float64))
        self.register_buffer("val_rmse", torch.full((n_evals,), math.nan, dtype=torch.float64))
        self.register_buffer("val_fid", torch.full((n_evals,), math.nan, dtype=torch.float64))
        self.distance, self.distance_net = batch_distance(cfg.distance, cfg.l2_weight)  # the net: a submodule, follows the device
        self._val = None
        self._fid_x_T = None  # select=fid: its held-out latents, drawn once
        self.fid = None  # select=fid: samples -> FID (the builder sets it from the model's FID features)

    # -- data ---------------------------------------------------------------------------------
    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.arange(self.n_batches), batch_size=1, shuffle=False)

    def batch_per_rank(self) -> int:
        world = self.trainer.world_size if self._trainer is not None else 1
        return self.cfg.batch // world

    def latents(self, index: int, n: int, rank: int = 0, world: int = 1) -> Tensor:
        g = torch.Generator().manual_seed(self.cfg.seed + index * world + rank)
        return prior_sample((n, *self.shape), float(self.sigmas[0]), generator=g).to(self.sigmas.device)

    # -- teacher and student ------------------------------------------------------------------
    @torch.no_grad()
    def teacher_points(self, x_T: Tensor, held_out: bool = False) -> list[Tensor]:
        """x*_n at the student's sigmas[n], n = 0..N (x*_0 = x_T), on the training teacher's grid or the
        held-out target's finer one."""
        grid, at = (self.val_sigmas, self.val_at) if held_out else (self.teacher_sigmas, self.teacher_at)
        _, traj = sample(self.denoiser, x_T, self.cfg.teacher, nfe=None, grid=grid, return_trajectory=True,
                         **self.cfg.teacher_options)
        return [x_T] + [traj[j - 1] for j in at]  # traj[i]: the state at grid[i + 1]

    def student_interval(self, n: int, x_start: Tensor, x_T: Tensor, recorded: list) -> Tensor:
        """The student's state at sigmas[n + 1] after interval n (graph through the predictor at n)."""
        c = self.cfg
        if not get_solver(c.student).multistep:
            return sample(self.denoiser, x_start, c.student, nfe=None, grid=self.sigmas, start=n, stop=n + 1,
                          afs=c.afs and n == 0, midpoints=self.predictor, **c.student_options)
        return sample(self.denoiser, x_T, c.student, nfe=None, grid=self.sigmas, stop=n + 1, afs=c.afs,
                      midpoints=_Replay(self.predictor, n, recorded), **c.student_options)

    @property
    def n_losses(self) -> int:
        """Losses (and Adam steps) per batch: one per interval, or one for the endpoint objective."""
        return 1 if self.cfg.objective == "endpoint" else self.cfg.steps

    def _update(self, loss: Tensor):
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(loss)
        for p in self.predictor.parameters():
            if p.grad is not None:
                torch.nan_to_num_(p.grad, nan=0.0, posinf=0.0, neginf=0.0)
        opt.step()

    def interval_losses(self, x_T: Tensor, teacher: list[Tensor], update: bool) -> list[Tensor]:
        """The losses on one batch (n_losses of them); with update, one optimizer step after each.
        objective interval: per interval n, d(x_student(sigma_{n+1}), x*_{n+1}) (module docstring);
        endpoint: d(x_student(sigma_N), x*_N) of the whole student solve, the gradient through every step;
        d: cfg.distance (the paper's |a - b|^2 by default)."""
        sq = self.distance
        if self.cfg.objective == "endpoint":
            loss = sq(self.sample(x_T), teacher[-1])
            if update:
                self._update(loss)
            return [loss.detach()]
        recorded: list[Stage] = []
        losses = []
        for n in range(self.cfg.steps):
            loss = sq(self.student_interval(n, teacher[n], x_T, recorded), teacher[n + 1])
            if update:
                self._update(loss)
            losses.append(loss.detach())
        return losses

    def training_step(self, batch, batch_idx):
        index = int(batch.reshape(-1)[0])
        rank, world = self.global_rank, self.trainer.world_size
        x_T = self.latents(index, self.batch_per_rank(), rank, world)
        teacher = self.teacher_points(x_T)
        losses = torch.stack(self.interval_losses(x_T, teacher, update=True))
        if world > 1:  # the global batch's losses, so every rank records (and checkpoints) the same history
            losses = self.trainer.strategy.reduce(losses, reduce_op="mean")
        self.train_loss[index] = losses.to(self.train_loss)
        total = losses.sum()
        self.log("train/loss", total, prog_bar=True, on_step=True, sync_dist=False)
        if (index + 1) % self.cfg.val_every == 0 or index + 1 == self.n_batches:
            self.record_validation(1 + index // self.cfg.val_every)

    def configure_optimizers(self):
        return torch.optim.Adam(self.predictor.parameters(), lr=self.cfg.lr, betas=(0.9, 0.999), eps=1e-8)

    # -- held-out loss ------------------------------------------------------------------------
    def heldout(self) -> tuple[Tensor, list[Tensor]]:
        if self._val is None:
            x_T = prior_sample((self.cfg.n_val, *self.shape), float(self.sigmas[0]),
                               generator=torch.Generator().manual_seed(VAL_SEED)).to(self.sigmas.device)
            self._val = (x_T, self.teacher_points(x_T, held_out=True))
        return self._val

    def val_metrics(self) -> tuple[float, float]:
        """(held-out training objective summed over intervals, endpoint RMSE of the full student
        solve against the teacher's endpoint), with the current predictor, no update."""
        x_T, teacher = self.heldout()
        with torch.no_grad():
            x0 = self.sample(x_T)
            if self.cfg.objective == "endpoint":  # the objective is this solve's own distance: no second solve
                loss = float(self.distance(x0, teacher[-1]))
            else:
                loss = float(torch.stack(self.interval_losses(x_T, teacher, update=False)).sum())
        rmse = float((x0 - teacher[-1]).pow(2).mean().sqrt())
        return loss, rmse

    def sample(self, x_T: Tensor, predictor: AMEDPredictor | None = None) -> Tensor:
        """The trained sampler: the student with the predictor (default: the one being trained), NFE cfg.nfe."""
        c = self.cfg
        return sample(self.denoiser, x_T, c.student, nfe=c.nfe, grid=self.sigmas, afs=c.afs,
                      midpoints=self.predictor if predictor is None else predictor,
                      **c.student_options)

    def heldout_fid(self) -> float:
        """select=fid: the FID of the student's samples from val_fid_n held-out latents (seeds VAL_FID_SEED..,
        one per sample as `diffode eval` draws them, never a table's seeds), in batches of cfg.batch."""
        from diffode.models import initial_noise

        if self._fid_x_T is None:
            self._fid_x_T = initial_noise(self.shape, range(VAL_FID_SEED, VAL_FID_SEED + self.cfg.val_fid_n),
                                          float(self.sigmas[0]))
        with torch.no_grad():
            x0 = torch.cat([self.sample(xb.to(self.sigmas.device)).cpu() for xb in self._fid_x_T.split(self.cfg.batch)])
        return float(self.fid(x0.float()))

    def record_validation(self, slot: int):
        loss, rmse = self.val_metrics()
        self.val_loss[slot], self.val_rmse[slot] = loss, rmse
        score = rmse
        if self.cfg.select in FID_SELECTS:
            score = self.heldout_fid()
            self.val_fid[slot] = score
            self.log("val/fid", score, sync_dist=False)
            if self.cfg.select == "fid_rmse" and slot > 0 and rmse > float(self.val_rmse[0]):
                score = math.inf  # fid_rmse: never a state with a larger solver error than the start's
        if score < float(self.best_score):  # strictly lower: ties keep the earlier state
            self.best.load_state_dict(self.predictor.state_dict())
            self.best_score.fill_(score)
            self.best_batch.fill_(min(slot * self.cfg.val_every, self.n_batches))
        self.log("val/loss", loss, prog_bar=True, sync_dist=False)
        self.log("val/endpoint_rmse", rmse, sync_dist=False)

    def on_train_start(self):
        if math.isnan(float(self.val_loss[0])):  # not on resume
            self.record_validation(0)

    def exported(self) -> AMEDPredictor:
        """The predictor the artifact gets: the best held-out state (select=best or fid) or the last one."""
        return self.best if self.cfg.select != "last" and int(self.best_batch) >= 0 else self.predictor

    def history(self) -> dict:
        val = []
        for i, (a, b, f) in enumerate(zip(self.val_loss, self.val_rmse, self.val_fid)):
            if not math.isnan(float(a)):
                val.append({"batch": min(i * self.cfg.val_every, self.n_batches), "loss": float(a),
                            "endpoint_rmse": float(b), **({} if math.isnan(float(f)) else {"fid": float(f)})})
        rows = [[float(x) for x in row] for row in self.train_loss if not math.isnan(float(row[0]))]
        return {"train_loss": rows, "val": val}
