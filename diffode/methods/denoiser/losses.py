"""Denoiser training losses as plain functions of (net, x0, noise level, eps).

x_t = alpha x0 + sigma eps. eps_loss / x0_loss / v_loss regress the network output on the
target of that parameterization with a plain mean (DDPM's "simple" loss); edm_loss is
Karras et al. (2022) eq. 2 with the EDM preconditioning of ModelDenoiser(prediction='edm'),
so training and sampling share one definition of D. Schedules are float64; the per-sample
coefficients are cast to the data dtype before they touch the batch.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ...core.denoisers import ModelDenoiser, v_from_x0_eps
from ...core.schedules import DTYPE, DiscreteVP, Schedule

P_MEAN, P_STD = -1.2, 1.2


def _b(v: Tensor, x: Tensor) -> Tensor:
    return v.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def sample_t_uniform(schedule: Schedule, n: int, generator: torch.Generator | None = None) -> Tensor:
    """t ~ U[t_min, t_max] (float64, CPU); a discrete schedule draws its integer steps uniformly."""
    if isinstance(schedule, DiscreteVP):
        i = torch.randint(0, schedule.N, (n,), generator=generator)
        return schedule.ts[i]
    u = torch.rand(n, dtype=DTYPE, generator=generator)
    return schedule.t_min + (schedule.t_max - schedule.t_min) * u


def sample_sigma_lognormal(n: int, generator: torch.Generator | None = None, p_mean: float = P_MEAN,
                           p_std: float = P_STD) -> Tensor:
    """EDM's ln(sigma) ~ N(P_mean, P_std^2) (float64, CPU)."""
    return torch.exp(p_mean + p_std * torch.randn(n, dtype=DTYPE, generator=generator))


def t_lognormal(schedule: Schedule, n: int, generator: torch.Generator | None = None, **kw) -> Tensor:
    """Times whose VE sigma is log-normal, clamped to the schedule's range."""
    s = sample_sigma_lognormal(n, generator, **kw).clamp(schedule.sigma_min, schedule.sigma_max)
    return schedule.t_from_ve_sigma(s).clamp(schedule.t_min, schedule.t_max)


def _forward(net, schedule: Schedule, x0: Tensor, t: Tensor, eps: Tensor, cond=None):
    alpha, sigma = _b(schedule.alpha(t), x0), _b(schedule.sigma(t), x0)
    x_t = alpha * x0 + sigma * eps
    kw = {} if cond is None else {"cond": cond}  # a class-conditional net's labels (None: an unconditional net)
    out = net(x_t, schedule.noise_cond(t).to(device=x0.device, dtype=x0.dtype), **kw)
    return out, alpha, sigma


def eps_loss(net, schedule: Schedule, x0: Tensor, t: Tensor, eps: Tensor, cond=None) -> Tensor:
    out, _, _ = _forward(net, schedule, x0, t, eps, cond)
    return (out - eps).square().mean()


def x0_loss(net, schedule: Schedule, x0: Tensor, t: Tensor, eps: Tensor, cond=None) -> Tensor:
    out, _, _ = _forward(net, schedule, x0, t, eps, cond)
    return (out - x0).square().mean()


def v_loss(net, schedule: Schedule, x0: Tensor, t: Tensor, eps: Tensor, cond=None) -> Tensor:
    out, alpha, sigma = _forward(net, schedule, x0, t, eps, cond)
    return (out - v_from_x0_eps(x0, eps, alpha, sigma)).square().mean()


def edm_loss(denoiser: ModelDenoiser, x0: Tensor, sigma: Tensor, eps: Tensor, sigma_data: float = 0.5,
             cond=None) -> Tensor:
    """E[lambda(sigma) |D(x0 + sigma eps, sigma) - x0|^2], lambda = (sigma^2 + sd^2) / (sigma sd)^2.

    sigma is the VE sigma [B]; D is the EDM-preconditioned ModelDenoiser (independent of the schedule).
    """
    s = sigma.to(device=x0.device)
    weight = _b((s * s + sigma_data**2) / (s * sigma_data) ** 2, x0)
    D = denoiser(x0 + _b(s, x0) * eps, s, cond=cond)
    return (weight * (D - x0).square()).mean()


LOSSES = {"eps": eps_loss, "x0": x0_loss, "v": v_loss}

