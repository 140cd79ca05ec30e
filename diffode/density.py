"""`diffode.likelihood(model, x)`: NLL and bits/dim of data under a model's PF-ODE, batched, with intervals.

The math is diffode/core/likelihood.py (one batch); this adds what a data set needs: the model's sigma
range, uniform dequantization of discrete data (diffode/data/dequantize.py: the digits' 17 levels have
bins of 1/8, + 3 bits), batches with a progress bar, noise and probes drawn for the whole set up front
(so a point's result does not depend on the batch size, up to rk45's batch-wide error control), and the
summary every table shows:

    nll  = -(log p(y) + d log Delta) / d   nats per dimension (Delta = 1 for continuous data)
    bpd  = nll / ln 2                      bits per dimension
    each with a 95% Student-t interval over the data points (probe noise is part of their spread).

Cost is counted per data point: nfe (augmented denoiser calls), forwards (network passes; one per call)
and vjps (backward passes: one per probe, or d for the exact trace).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .core.likelihood import check_likelihood_config, log_likelihood, rademacher, resolve_trace
from .data.dequantize import bin_width as dataset_bin_width
from .data.dequantize import dequantize


@dataclass
class LikelihoodResult:
    logp: Tensor  # [N] nats: log-density of each (dequantized) point, in VE coordinates at sigma_min
    d: int  # coordinates per point
    bin_width: float | None  # None: continuous data
    nfe: float  # augmented denoiser calls per point (exact for fixed-NFE solvers, the mean for rk45)
    forwards: float  # network forward passes per point
    vjps: float  # network backward passes per point
    seconds: float
    info: dict = field(default_factory=dict)  # solver, trace, probes, sigma range

    @property
    def nll(self) -> Tensor:
        """Nats per dimension of each point (of the discrete datum when bin_width is set)."""
        offset = 0.0 if self.bin_width is None else math.log(self.bin_width)
        return -(self.logp + self.d * offset) / self.d

    @property
    def bpd(self) -> Tensor:
        return self.nll / math.log(2.0)

    def summary(self, level: float = 0.95) -> dict:
        """nll, bpd with nll_lo / nll_hi, bpd_lo / bpd_hi (Student-t interval over the points), and the cost."""
        out = {"n_points": int(self.logp.numel())}
        for name, v in (("nll", self.nll), ("bpd", self.bpd)):
            mean, (lo, hi) = float(v.mean()), mean_interval(v, level)
            out.update({name: mean, f"{name}_lo": lo, f"{name}_hi": hi})
        out.update(nfe=self.nfe, forwards=self.forwards, vjps=self.vjps, seconds=self.seconds)
        return out


def mean_interval(v: Tensor, level: float = 0.95) -> tuple[float, float]:
    """The Student-t interval of the mean of v (NaN for fewer than two values)."""
    n = v.numel()
    if n < 2:
        return math.nan, math.nan
    from scipy.stats import t

    half = float(t.ppf(0.5 + level / 2, n - 1)) * float(v.double().std()) / math.sqrt(n)
    m = float(v.double().mean())
    return m - half, m + half


def likelihood(model, x: Tensor, *, solver: str = "rk45", nfe: int | None = None, grid="logsnr", trace: str = "auto",
               probes: int = 1, bin_width="auto", seed: int = 0, batch_size: int | None = None,
               progress: bool | str = False, sigma_min: float | None = None, sigma_max: float | None = None,
               prior=None, **solver_options) -> LikelihoodResult:
    """The PF-ODE log-likelihood of the data x [N, ...] (values in the model's data space, e.g. [-1, 1]).

    model: a diffode Model (load_model; its sigma range and dataset are used) or a denoiser D(x, sigma)
    with sigma_min / sigma_max given. solver (rk45 by default, rtol = atol = 1e-5; any deterministic
    solver of the zoo with its nfe and grid), trace (auto | exact | hutchinson) and probes as in
    core.likelihood.log_likelihood. bin_width: the data's bin width for uniform dequantization ("auto":
    the model's dataset's, diffode/data/dequantize.py; None: continuous data). seed draws the
    dequantization noise and the probes. progress: a bar over the batches (a string names it)."""
    check_likelihood_config(solver, trace, probes)
    denoiser = getattr(model, "denoiser", model)
    lo = sigma_min if sigma_min is not None else getattr(model, "sigma_min", None)
    hi = sigma_max if sigma_max is not None else getattr(model, "sigma_max", None)
    if lo is None or hi is None:
        raise ValueError("likelihood of a bare denoiser needs sigma_min and sigma_max (the range of its PF-ODE); "
                         "pass them, or pass a Model from diffode.load_model.")
    if bin_width == "auto":
        bin_width = dataset_bin_width(getattr(model, "dataset", ""))
    d = math.prod(x.shape[1:])
    mode = resolve_trace(trace, d)
    schedule = solver_options.pop("schedule", getattr(model, "schedule", None))  # grids in the model's time
    g = torch.Generator().manual_seed(int(seed))
    y = dequantize(x.to(torch.float64).cpu(), bin_width, g).to(x.device)
    v = rademacher((probes, *x.shape), g, torch.float64).to(x.device) if mode == "hutchinson" else None
    from tqdm import tqdm

    n = x.shape[0]
    bs = int(batch_size or n)
    starts = range(0, n, bs)
    bar = tqdm(starts, desc=progress if isinstance(progress, str) else "likelihood", unit="batch",
               disable=not progress)
    logps, calls, fwd, back = [], 0.0, 0.0, 0.0
    t0 = time.perf_counter()
    for s in bar:
        yb = y[s:s + bs]
        lp, info = log_likelihood(denoiser, yb, sigma_min=lo, sigma_max=hi, solver=solver, nfe=nfe, grid=grid,
                                  schedule=schedule,
                                  trace=mode, probes=v[:, s:s + bs] if v is not None else probes, prior=prior,
                                  return_info=True, **solver_options)
        logps.append(lp.cpu())
        w = yb.shape[0] / n  # calls on a batch serve each of its points once
        calls, fwd, back = calls + w * info["nfe"], fwd + w * info["forwards"], back + w * info["vjps"]
    seconds = time.perf_counter() - t0
    return LikelihoodResult(torch.cat(logps), d, bin_width, calls, fwd, back, seconds,
                            dict(solver=solver, nfe_setting=nfe, grid=str(grid) if not isinstance(grid, Tensor)
                                 else "tensor", trace=mode, probes=probes if mode == "hutchinson" else 0,
                                 sigma_min=float(lo), sigma_max=float(hi), seed=int(seed)))
