"""Metrics of a model on data instead of its samples, per sweep cell (a deterministic solver x grid x NFE):

- metric=nll: the PF-ODE log-likelihood of held-out data (diffode.likelihood): `bpd` and `nll` (nats/dim)
  with 95% intervals over the data points, the cost per point (nfe, forwards, vjps), and `bpd_err`, the
  cell's distance to a reference solve (rk45, score_sde's rtol = atol = 1e-5) on the same points,
  dequantization noise and probes, so it is the solver's own error, free of data and probe noise.
- metric=reconstruction: encode the data with the cell's solver (x0 -> x_T, diffode.encode) and sample
  back with the same solver, grid and NFE; `recon_rmse` and `recon_max` against the data (DDIM
  inversion and its higher-order successors; NFE is per direction).

The data (`data_points`): the digits' held-out split, the test split of cifar10 / mnist (torchvision, no
download), or fresh exact samples of a mixture.
"""
from __future__ import annotations

import logging

import torch
from torch import Tensor

from diffode.models import Model

log = logging.getLogger(__name__)

DATA_METRICS = ("nll", "reconstruction")


def data_points(model: Model, dcfg) -> Tensor:
    split, n = str(dcfg.get("split", "heldout")), dcfg.get("n")
    if model.gmm is not None:
        return model.gmm.sample(int(n or 1000), torch.Generator().manual_seed(2_000_003 + int(dcfg.get("seed", 0))))
    if model.dataset == "digits":
        from diffode.data.digits import load_digits_tensors

        x = load_digits_tensors(split)[0]
    elif model.dataset in ("cifar10", "mnist"):
        from diffode.data.torchvision_data import CIFAR10DataModule, MNISTDataModule

        dm = (CIFAR10DataModule if model.dataset == "cifar10" else MNISTDataModule)(download=False, hflip=False)
        ds = dm._make(split == "train", False)
        x = torch.stack([ds[i][0] for i in range(min(len(ds), int(n or len(ds))))])
    else:
        raise ValueError(f"metric=nll / reconstruction has no data for dataset {model.dataset!r}; use the digits UNet, "
                         "a cifar10 / mnist model or a mixture (source=gmm2d).")
    return x if n is None else x[: int(n)]


def describe(model: Model, dcfg, repeats: int = 1) -> str:
    what = "fresh exact samples of the mixture" if model.gmm is not None else f"{model.dataset} {dcfg.get('split')} split"
    return what + (f", each {repeats} times with independent dequantization" if repeats > 1 else "")


def check_data_metric(kind: str, model: Model, cfg, cells) -> None:
    """Before any compute: the cells a data metric can measure, and its settings (ValueError naming the fix)."""
    from diffode.core.likelihood import check_likelihood_config
    from diffode.core.solvers import get_solver

    if model.num_classes is not None:
        raise ValueError(f"metric={kind} measures an unconditional model's PF-ODE, but model {model.label} is "
                         f"class-conditional ({model.num_classes} classes); evaluate an unconditional checkpoint.")
    learned = sorted({c.label for c in cells if c.sampler is not None})
    if learned:
        raise ValueError(f"metric={kind} measures training-free solver cells; the learned sampler(s) {learned} have no "
                         "encoding; drop sweep.learned.")
    for c in cells:
        spec = get_solver(c.solver_name)
        if spec.stochastic or spec.adaptive:
            what = "stochastic" if spec.stochastic else "adaptive (its NFE is not a cell's)"
            ref = " (rk45 is the reference every nll cell is compared with: nll.reference)" if kind == "nll" else ""
            raise ValueError(f"metric={kind}: solver {c.solver!r} is {what}; the cells need deterministic, fixed-NFE "
                             f"solvers (ddim, heun, dpmpp_2m, dpmpp_3m, unipc_bh1, ...){ref}.")
    if cfg.afs or cfg.denoise_to_zero:
        raise ValueError(f"metric={kind} integrates from sigma_min up to sigma_max: afs and denoise_to_zero do not "
                         "apply; set afs=false denoise_to_zero=false.")
    dcfg = cfg.data_points
    if model.gmm is None and model.dataset == "digits" and str(dcfg.split) not in ("train", "heldout", "test", "val", "all"):
        raise ValueError(f"data_points.split={dcfg.split!r}: the digits have train, heldout (test, val) and all.")
    if kind == "nll":
        n = cfg.nll
        check_likelihood_config("rk45", str(n.trace), n.probes)
        if isinstance(n.repeats, bool) or not isinstance(n.repeats, int) or n.repeats < 1:
            raise ValueError(f"nll.repeats={n.repeats!r} must be an integer >= 1 (dequantization draws per point).")
        bw = n.bin_width
        if bw not in (None, "auto") and not (isinstance(bw, (int, float)) and bw > 0):
            raise ValueError(f"nll.bin_width={bw!r} must be auto, null (continuous data) or a positive number.")


class NLLMetrics:
    primary = "bpd"
    names = ("bpd", "nll", "bpd_err")

    def __init__(self, model: Model, cfg):
        self.ncfg = cfg.nll
        x = data_points(model, cfg.data_points)
        self.what = describe(model, cfg.data_points, int(self.ncfg.repeats))
        self.x = x.repeat(int(self.ncfg.repeats), *([1] * (x.ndim - 1)))
        self.batch_size = int(cfg.batch_size)
        self.exact = None
        if model.gmm is not None:  # the data's own density, smoothed to sigma_min, on the same points
            d = self.x[0].numel()
            self.exact = -model.gmm.log_prob(self.x.to(torch.float64), 1.0, model.sigma_min) / d
        self.ref = None
        r = self.ncfg.reference
        if r.get("enabled", True):
            log.info("nll reference: rk45 (rtol %g) on %d points", float(r.rtol), self.x.shape[0])
            self.ref = self._likelihood(model, "rk45", None, "logsnr", {}, dict(rtol=float(r.rtol), atol=float(r.atol)),
                                        progress="nll reference")

    def _likelihood(self, model, solver, nfe, grid, grid_options, solver_options, progress=False):
        from diffode.density import likelihood

        bw = self.ncfg.bin_width
        return likelihood(model, self.x.to(next(iter(model.denoiser.parameters()), torch.empty(0)).device),
                          solver=solver, nfe=nfe, grid=grid, grid_options=grid_options, trace=str(self.ncfg.trace),
                          probes=int(self.ncfg.probes), bin_width="auto" if bw == "auto" else bw,
                          seed=int(self.ncfg.seed), batch_size=self.batch_size, progress=progress,
                          schedule=model.schedule, **solver_options)

    def measure(self, cell, model: Model, x_T: Tensor, cfg, cond=None) -> tuple[dict, None]:
        r = self._likelihood(model, cell.solver_name, cell.nfe, cell.grid_name, cell.grid_options, cell.solver_options)
        if not bool(torch.isfinite(r.logp).all()):
            raise FloatingPointError(f"{int((~torch.isfinite(r.logp)).sum())} of {r.logp.numel()} log-likelihoods are "
                                     "NaN/Inf")
        out = {**r.summary(), "n_samples": int(r.logp.numel()), "wall_time": r.seconds}
        out["nfe_per_point"] = out.pop("nfe")
        out.pop("seconds")
        out.pop("n_points")
        if self.ref is not None:
            out["bpd_err"] = abs(float((r.bpd - self.ref.bpd).mean()))
        return out, None

    def summary(self) -> dict:
        out = {"cells_note": f"Every cell measured the same {int(self.x.shape[0])} data points ({self.what}) with the same "
                             "dequantization noise and Hutchinson probes; nll is in nats per dimension, bpd in bits per "
                             "dimension (the dequantization's -log2(bin width) included), +- half the 95% interval over "
                             "the points; bpd_err is the distance to the reference solve on the same points.",
               "nll_points": int(self.x.shape[0]), "nll_trace": str(self.ncfg.trace), "nll_probes": int(self.ncfg.probes),
               "nll_repeats": int(self.ncfg.repeats)}
        if self.exact is not None:
            from diffode.density import mean_interval

            lo, hi = mean_interval(self.exact)
            out.update({"nll_exact_density": float(self.exact.mean()), "nll_exact_density_lo": lo,
                        "nll_exact_density_hi": hi, "nll_exact_note": "the mixture's own -log p_{sigma_min} / d on the "
                        "same points (nats/dim): the floor every model's nll is compared with"})
        if self.ref is not None:
            s = self.ref.summary()
            out.update({"nll_reference": f"rk45 rtol {float(self.ncfg.reference.rtol):g}",
                        "nll_reference_bpd": s["bpd"], "nll_reference_bpd_lo": s["bpd_lo"],
                        "nll_reference_bpd_hi": s["bpd_hi"], "nll_reference_nll": s["nll"],
                        "nll_reference_nfe": s["nfe"], "nll_reference_seconds": s["seconds"],
                        "nll_bin_width": self.ref.bin_width})
        return out


class ReconstructionMetrics:
    primary = "recon_rmse"
    names = ("recon_rmse", "recon_max")

    def __init__(self, model: Model, cfg):
        self.x = data_points(model, cfg.data_points)
        self.what = describe(model, cfg.data_points)
        self.batch_size = int(cfg.batch_size)

    def measure(self, cell, model: Model, x_T: Tensor, cfg, cond=None) -> tuple[dict, Tensor]:
        import time

        opts = dict(solver=cell.solver_name, nfe=cell.nfe, grid=cell.grid_name, grid_options=cell.grid_options,
                    **cell.solver_options)
        x = self.x.to(torch.float64).to(x_T.device)
        t0 = time.perf_counter()
        z = model.sample(x, self.batch_size, direction="encode", **opts)
        back = model.sample(z, self.batch_size, **opts)
        wall = time.perf_counter() - t0
        if not bool(torch.isfinite(back).all()):
            raise FloatingPointError(f"{int((~torch.isfinite(back)).sum())} NaN/Inf values after encode-decode")
        err = (back - x).reshape(x.shape[0], -1)
        return {"recon_rmse": float(err.square().mean().sqrt()), "recon_max": float(err.abs().max()),
                "n_samples": int(x.shape[0]), "wall_time": wall}, back

    def summary(self) -> dict:
        return {"cells_note": f"Every cell encoded the same {int(self.x.shape[0])} data points ({self.what}) to sigma_max and "
                              "sampled them back with the same solver, grid and NFE (NFE per direction); recon_rmse and "
                              "recon_max are the RMS and largest coordinate error in data units.",
                "reconstruction_points": int(self.x.shape[0])}


def make_data_metrics(kind: str, model: Model, cfg):
    return NLLMetrics(model, cfg) if kind == "nll" else ReconstructionMetrics(model, cfg)
