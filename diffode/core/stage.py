"""The stage hook of two-evaluation steps: where a step takes its second network evaluation (AMED).

A hook is a callable

    hook(i, sigma_cur, sigma_next, x) -> Stage | Tensor

that a solver calls once per step i, right after the step's first evaluation at sigma_cur (x is the
state there). A bare tensor means Stage(sigma=tensor). It is passed as the solver option `midpoints`
(sample(D, x_T, solver="ipndm", nfe=6, midpoints=hook)); every solver that takes it treats the three
fields of a Stage the same way:

  sigma  the stage point s, strictly between sigma_next and sigma_cur: a 0-d tensor (one point for the
         batch) or shape [B] (one per sample, e.g. from a predictor that reads each sample's features).
  c      direction scale (None: 1). It scales the model terms of the update that uses the stage's
         evaluation: written x_to = L + M, with L the part of the update that holds no model output,
         the update becomes L + c M (`directed`). This is the official AMED-Plugin's convention
         (zju-pi/diff-sampler, amed-solver-main), solver by solver:
           euler/ddim, ipndm, amed, dpm_solver_2 (and heun, which has no official plugin): the update is
           x_from + (step) * (slopes d = (x - D)/sigma), all model terms, so L = x_from and c stretches the
           whole step: x_from + c (x_to - x_from);
           dpmpp_2m (data prediction): the sub-step s -> sigma_next is (sigma_next/s) x_s + sum_j w_j D_j,
           so L = (sigma_next/s) x_s is left alone and c scales only the D terms (the official
           `dpm_pp_update(..., scale=c)`).
  a      conditioning scale (None: 1). The network at the stage is called at a * s (a times the
         decoupled conditioning sigma under LD3's net_sigmas); the update coefficients still use s.

Which update "uses the stage's evaluation": the whole step for single-step solvers (amed, heun,
dpm_solver_2: x_from = x at sigma_cur), the sub-step s -> sigma_next for solvers into whose grid the
stage is inserted as an extra node (euler, ipndm, dpmpp_2m: x_from = x at s). dpm_solver_3 has two
inner points: its hook returns a pair of stages (s1, s2); s2's evaluation is used by the whole step,
s1's by the update to the second inner state. None (not 1.0) is the default so that a hook without
scales reproduces the base solver bit for bit.

Features: a hook with the attribute `needs_features = True` is called by sample() as
hook(i, sigma_cur, sigma_next, x, features=f), f the bottleneck features of the step's first
evaluation (denoisers that offer `forward_with_features`, e.g. a ModelDenoiser around the UNet),
detached, or None where that evaluation was the analytic first step (AFS) or the denoiser has none.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor


@dataclass(frozen=True)
class Stage:
    sigma: Tensor
    c: Tensor | None = None
    a: Tensor | None = None


def get_stage(hook: Callable | None, default: Callable, i: int, sigma_cur: Tensor, sigma_next: Tensor,
              x: Tensor) -> Stage:
    """The stage of step i: the hook's answer, or the solver's default point (c = a = 1)."""
    out = (hook or default)(i, sigma_cur, sigma_next, x)
    return out if isinstance(out, Stage) else Stage(out)


def condition(stage: Stage, sigma_net: Tensor) -> Tensor:
    """The sigma the network is conditioned on at the stage: a * (its conditioning sigma)."""
    return sigma_net if stage.a is None else stage.a * sigma_net


def directed(stage: Stage, base: Tensor, x_to: Tensor) -> Tensor:
    """base + c (x_to - base): the stage's update x_to with its model terms x_to - base scaled by c
    (base: the part of the update that holds no model output, see the module docstring)."""
    if stage.c is None:
        return x_to
    c = stage.c.to(dtype=base.dtype)  # 0-d, or [B]: one per sample (as solvers/_common.coef)
    c = c.reshape(-1, *([1] * (base.ndim - 1))) if c.ndim == 1 else c
    return base + c * (x_to - base)


def geometric_point(r: float | Tensor = 0.5) -> Callable:
    """A hook giving s = sigma_next^r sigma_cur^(1 - r) (r = 1/2: the lambda midpoint), c = a = 1."""

    def hook(i, sigma_cur, sigma_next, x):
        return sigma_next ** r * sigma_cur ** (1 - r)

    return hook
