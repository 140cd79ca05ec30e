"""Denoiser training as one LightningModule; the loss follows the network's parameterization.

    prediction eps | x0 | v : MSE to that target at t ~ U[t_min, t_max] (DDPM; a discrete
    | velocity                schedule draws its integer steps), or log-normal VE sigma
                              when t_sampling='lognormal' (the default for the EDM schedule).
                              velocity under schedule=flow is flow matching; lognormal with
                              p_mean=m, p_std=s is then SD3's logit-normal t (losses.py).
    prediction edm          : EDM loss (log-normal sigma, weight (s^2+sd^2)/(s sd)^2) through
                              ModelDenoiser(prediction='edm'); the schedule then only sets the
                              sampling range.

score_order 2 or 3 adds Lu et al. (2022)'s high-order DSM terms (diffode/core/hdsm.py) at the same noise
level and noise, weighted by hdsm_weight (the paper: 1): the first-order loss above fits the score, they
fit its Jacobian (and the gradient of its trace), which the ODE's likelihood needs. hdsm_trace_only keeps
the trace term of the second order alone. Validation reports the first-order loss only, so runs of every
order share one val/loss. dequantize adds uniform noise of the data's bin width (diffode/data/dequantize.py)
to every training batch, as likelihood-trained models are (the 8x8 digits: bins of 1/8).

Every step's randomness (noise levels, noise, dropout) is a pure function of (seed, step,
rank), so a run resumed from a checkpoint continues exactly as an uninterrupted one.
The checkpoint's hyper_parameters are plain data (net and schedule `_target_` specs),
enough for `load_denoiser` to rebuild D(x, sigma) with torch.load(weights_only=True).
"""
from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch

from ...core.denoisers import PREDICTIONS, ModelDenoiser
from ...core.schedules import Schedule
from ...spec import build
from .. import visual
from ..batch import condition_for, drop_labels, split_batch
from . import losses

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    pass


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Noise drawn on x's device, seeded from the (CPU) step generator."""
    if generator is None or x.device.type == "cpu":
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    g = torch.Generator(device=x.device).manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
    return torch.randn(x.shape, generator=g, dtype=x.dtype, device=x.device)


class DenoiserModule(L.LightningModule):
    def __init__(self, net: dict, schedule: dict, data: dict, *, prediction: str, lr: float, weight_decay: float,
                 betas, warmup_steps: int, t_sampling: str, p_mean: float, p_std: float, sigma_data: float,
                 n_samples: int, sample_nfe: int, sample_seed: int, p_uncond: float, ema: dict | None = None,
                 seed: int = 0, out_dir: str | None = None, score_order: int = 1, hdsm_trace_only: bool = False,
                 hdsm_weight: float = 1.0, dequantize: bool = False, init_checkpoint: str | None = None):
        # Option defaults: conf/method/denoiser.yaml only (diffode.config.method_defaults("denoiser")).
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown method.prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")
        if t_sampling not in ("auto", "uniform", "lognormal"):
            raise ValueError(f"unknown method.t_sampling {t_sampling!r}; choose auto, uniform or lognormal")
        self.save_hyperparameters(ignore=["out_dir"])
        self.schedule: Schedule = build(schedule)
        self.denoiser = ModelDenoiser(build(net), self.schedule, prediction, sigma_data)
        if t_sampling == "auto":
            t_sampling = "lognormal" if type(self.schedule).__name__ == "EDM" else "uniform"
        self.t_sampling = t_sampling
        self.out_dir = Path(out_dir) if out_dir else None
        self.analytic = None  # set by train.py for GMM data (plots over the true density)

    @property
    def net(self):
        return self.denoiser.net

    # -- the loss -------------------------------------------------------------------------
    def loss(self, x0: torch.Tensor, generator: torch.Generator | None = None, cond=None,
             first_only: bool = False) -> torch.Tensor:
        """The denoising loss of a batch; cond: the labels of a class-conditional net (None: unconditional);
        first_only: the first-order DSM term alone (validation), whatever score_order is."""
        hp, n = self.hparams, x0.shape[0]
        if hp.dequantize and not first_only:
            from ...data.dequantize import bin_width, dequantize

            x0 = dequantize(x0, bin_width(hp.data["name"]), generator)
        if hp.prediction == "edm":
            sigma = losses.sample_sigma_lognormal(n, generator, hp.p_mean, hp.p_std)
            eps = _randn_like(x0, generator)
            first = losses.edm_loss(self.denoiser, x0, sigma, eps, hp.sigma_data, cond=cond)
        else:
            if self.t_sampling == "lognormal":
                t = losses.t_lognormal(self.schedule, n, generator, p_mean=hp.p_mean, p_std=hp.p_std)
            else:
                t = losses.sample_t_uniform(self.schedule, n, generator)
            eps = _randn_like(x0, generator)
            first = losses.LOSSES[hp.prediction](self.net, self.schedule, x0, t, eps, cond)
            sigma = self.schedule.ve_sigma(t)  # the same point in VE coordinates: x_t / alpha = x0 + sigma eps
        if hp.score_order == 1 or first_only:
            return first
        from ...core.conditioning import bind
        from ...core.hdsm import hdsm_losses
        from ...core.likelihood import rademacher

        v = rademacher(x0.shape, generator, x0.dtype).to(x0.device)
        terms = hdsm_losses(bind(self.denoiser, cond), x0, sigma.to(x0.device), eps, v, int(hp.score_order), hp.hdsm_trace_only)
        self.terms = {"dsm1": first.detach(), **{k: t.detach() for k, t in terms.items()}}
        return first + hp.hdsm_weight * sum(terms.values())

    def _step_generator(self, step: int, rank: int, salt: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(((self.hparams.seed * 1_000_003 + step) * 4099 + rank) * 7 + salt)

    def training_condition(self, labels, step: int, rank: int):
        """The labels a class-conditional net trains on, each dropped to the null label with probability
        p_uncond (its own generator, so an unconditional run's randomness is untouched); None otherwise."""
        cond = condition_for(self.denoiser, labels)
        if cond is None:
            return None
        return drop_labels(cond, self.hparams.p_uncond, self.denoiser.num_classes, self._step_generator(step, rank, 2))

    def training_step(self, batch, batch_idx):
        x0, labels = split_batch(batch)
        cond = self.training_condition(labels, self.global_step, self.global_rank)
        g = self._step_generator(self.global_step, self.global_rank)
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=g)))  # dropout
        loss = self.loss(x0, g, cond)
        self._check_finite(loss)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        for k, t in getattr(self, "terms", {}).items():  # high-order DSM: each term on its own
            self.log(f"train/{k}", t, on_step=True, on_epoch=False)
        return loss

    def _check_finite(self, loss: torch.Tensor) -> None:
        bad = not bool(torch.isfinite(loss))
        if self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            raise NonFiniteLossError(
                f"non-finite training loss ({float(loss)}) at step {self.global_step}: training stopped before the "
                f"optimizer step, the last checkpoint (if any) is the last good state. Lower method.lr (now "
                f"{self.hparams.lr:g}), set trainer.gradient_clip_val, or check the data, then resume with "
                f"ckpt_path=<run dir>/checkpoints/last.ckpt.")

    def validation_step(self, batch, batch_idx):
        x0, labels = split_batch(batch)
        g = self._step_generator(batch_idx, self.global_rank, salt=1)  # same noise at every validation
        cond = condition_for(self.denoiser, labels)  # the conditional loss (no label dropout)
        self.log("val/loss", self.loss(x0, g, cond, first_only=True), sync_dist=True, on_epoch=True,
                 batch_size=x0.shape[0])
        # Here, between WeightAveraging's swaps at validation epoch start and end, the module
        # holds the EMA weights (its epoch-end hook runs before the module's): EMA samples.
        if batch_idx == 0 and self.trainer.is_global_zero and self.hparams.n_samples > 0:
            self.log_samples(self.global_step)

    def log_samples(self, step: int) -> None:
        hp = self.hparams
        if hp.n_samples <= 0:  # method.n_samples=0: no sample grids
            return
        self.denoiser.eval()
        # a class-conditional net: one row per class (its conditional samples, no guidance)
        K = self.denoiser.num_classes
        labels = None if K is None else visual.class_rows(K, hp.n_samples)
        x = visual.draw_samples(self.denoiser, tuple(hp.data["shape"]), hp.n_samples, self.schedule,
                                seed=hp.sample_seed, nfe=hp.sample_nfe, cond=labels)
        self.denoiser.train(self.training)
        if x is None:
            return
        out = (self.out_dir or Path(self.trainer.default_root_dir)) / "samples"
        if x.ndim == 2 and x.shape[1] == 2 and self.analytic is not None:
            arr = visual.scatter_over_density(x, self.analytic, out / f"scatter_{step:07d}.png", f"step {step}")
        elif x.ndim == 4:
            rows = "" if K is None else ", one row per class 0..%d" % (K - 1)
            arr = visual.image_grid(x, f"step {step}: heun/edm, NFE {hp.sample_nfe}{rows}",
                                    nrow=None if K is None else len(labels) // K)
            visual.save_png(arr, out / f"grid_{step:07d}.png")
        else:
            return
        visual.log_image(self.loggers, "samples", arr, step)

    # -- optimisation ---------------------------------------------------------------------
    def configure_callbacks(self):
        from ..callbacks import EMA

        ema = self.hparams.ema
        return [EMA(**ema)] if ema and ema.get("decay", 0) > 0 else []

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.Adam(self.parameters(), lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay)
        if hp.warmup_steps <= 0:
            return opt
        warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / hp.warmup_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": warm, "interval": "step"}}
