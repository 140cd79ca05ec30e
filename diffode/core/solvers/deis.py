"""DEIS, the diffusion exponential integrator sampler (Zhang & Chen 2022), Adams-Bashforth form (tAB).

In VE coordinates the PF-ODE is dx/dsigma = eps(x, sigma) with eps = (x - D) / sigma, and the
exponential integrator's linear part is the identity. tAB-k therefore reads

    x_{i+1} = x_i + sum_j C_ij eps_{i-j},   C_ij = int_{sigma_i}^{sigma_{i+1}} L_j(tau(sigma)) dsigma,

with L_j the Lagrange basis through the last k points tau(sigma_i), ..., tau(sigma_{i-k+1}).
`tau` is the variable eps is extrapolated in:
  "sigma"      diff-sampler's "rhoAB"; the integrals are exact polynomial ones. This is the
               variable-step Adams-Bashforth method in sigma, i.e. also `ipndm_v`.
  "log_sigma"  (default) diffusers' DEIS ("logrho"; equal to DEISMultistepScheduler, tested);
               integrand L_j(u) e^u in u = log sigma.
  "vp_t"       the DEIS paper's tAB and diff-sampler's "tab": the time of a linear VP schedule fitted,
               as diff-sampler's edm2t does, so that sigma(1) = sigmas[0] and sigma(1e-3) = sigmas[-1].

`order` counts the points used (Lagrange degree order - 1, the DEIS paper's tAB(order - 1)) and is
the convergence order; the first steps warm up with the points available. `lower_order_final`
(deis only; solvers/_order.py, as in DPM-Solver++ and UniPC): "auto" (default) lowers the last steps'
order where the step is long in lambda, "official" below 10 steps, True always, False never.

The integrals use Gauss-Legendre quadrature in float64 on fixed nodes, so they are smooth functions
of the sigmas (LD3 differentiates through them): 8 nodes integrate the tau = sigma polynomials
exactly, 16 nodes leave an error far below float64 round-off for L_j(u) e^u on any sampling step.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ._common import net_sigma, report
from ._order import step_orders
from .registry import register

TAUS = ("sigma", "log_sigma", "vp_t")
VP_EPS = 1e-3  # t at sigma_min of the fitted VP schedule (diff-sampler's epsilon_s)
_GL = {n: tuple(torch.as_tensor(a, dtype=torch.float64) for a in np.polynomial.legendre.leggauss(n)) for n in (8, 16)}


def lagrange_basis(nodes: Tensor, u: Tensor) -> Tensor:
    """L_j(u) for the Lagrange basis on `nodes` [k], evaluated at points u [m] -> [k, m]."""
    k = nodes.shape[0]
    rows = []
    for j in range(k):
        L = torch.ones_like(u)
        for m in range(k):
            if m != j:
                L = L * (u - nodes[m]) / (nodes[j] - nodes[m])
        rows.append(L)
    return torch.stack(rows)


def vp_fit(sigma_max: Tensor, sigma_min: Tensor) -> tuple[Tensor, Tensor]:
    """(beta_d, beta_min) of the linear VP schedule with VE sigma(1) = sigma_max, sigma(VP_EPS) = sigma_min."""
    beta_d = 2 * (torch.log1p(sigma_min**2) / VP_EPS - torch.log1p(sigma_max**2)) / (VP_EPS - 1)
    return beta_d, torch.log1p(sigma_max**2) - 0.5 * beta_d


def vp_t(sigma: Tensor, beta_d: Tensor, beta_min: Tensor) -> Tensor:
    """t of the fitted VP schedule at VE sigma (inverse of sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1))."""
    return (torch.sqrt(beta_min**2 + 2 * beta_d * torch.log1p(sigma**2)) - beta_min) / beta_d


def ab_coefficients(sigma_points: Tensor, sigma_next: Tensor, tau: str = "sigma", sigma_range=None) -> Tensor:
    """C_j = int_{sigma_points[0]}^{sigma_next} L_j(tau(sigma)) dsigma for the Lagrange basis on
    tau(sigma_points) (most recent point first). float64, differentiable in every sigma.
    tau = "vp_t" needs sigma_range = (sigma_max, sigma_min) of the whole grid."""
    a, b = sigma_points[0], sigma_next
    if tau == "sigma":
        xi, w = (t.to(sigma_points.device) for t in _GL[8])
        s = 0.5 * (a + b) + 0.5 * (b - a) * xi
        return 0.5 * (b - a) * (lagrange_basis(sigma_points, s) * w).sum(-1)
    if tau == "log_sigma":
        xi, w = (t.to(sigma_points.device) for t in _GL[16])
        ua, ub = torch.log(a), torch.log(b)
        u = 0.5 * (ua + ub) + 0.5 * (ub - ua) * xi
        return 0.5 * (ub - ua) * (lagrange_basis(torch.log(sigma_points), u) * (w * torch.exp(u))).sum(-1)
    if tau == "vp_t":
        beta_d, beta_min = vp_fit(*sigma_range)
        xi, w = (t.to(sigma_points.device) for t in _GL[16])
        ua, ub = torch.log(a), torch.log(b)
        u = 0.5 * (ua + ub) + 0.5 * (ub - ua) * xi
        L = lagrange_basis(vp_t(sigma_points, beta_d, beta_min), vp_t(torch.exp(u), beta_d, beta_min))
        return 0.5 * (ub - ua) * (L * (w * torch.exp(u))).sum(-1)
    raise ValueError(f"unknown DEIS tau {tau!r}; choose one of {TAUS}")


def multistep_ab(denoiser, x: Tensor, sigmas: Tensor, order: int, tau: str, net_sigmas=None, callback=None,
                 lower_order_final=False) -> Tensor:
    """Variable-step Adams-Bashforth on eps = (x - D) / sigma (shared by `deis` and `ipndm_v`)."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    orders = step_orders(sigmas, order, lower_order_final)
    eps_history: list[Tensor] = []  # most recent first
    for i in range(sigmas.shape[0] - 1):
        denoised = denoiser(x, net_sigma(sigmas, net_sigmas, i))
        eps_history.insert(0, (x - denoised) / sigmas[i])
        del eps_history[order:]
        k = orders[i]
        C = ab_coefficients(sigmas[i - k + 1 : i + 1].flip(0), sigmas[i + 1], tau, (sigmas.max(), sigmas.min()))
        C = C.to(x.dtype)
        x = x + sum(C[j] * eps_history[j] for j in range(k))
        x = report(callback, i, x, sigmas, denoised)
    return x


@register("deis", n_calls=lambda steps, **o: steps, order=3, multistep=True,
          description="DEIS tAB: exponential-integrator Adams-Bashforth on eps with Lagrange extrapolation")
def deis(denoiser, x, sigmas, *, net_sigmas=None, callback=None, order: int = 3, tau: str = "log_sigma",
         lower_order_final="auto"):
    if not 1 <= int(order) <= 4:
        raise ValueError(f"deis order must be 1..4, got {order}")
    if tau not in TAUS:
        raise ValueError(f"unknown DEIS tau {tau!r}; choose one of {TAUS}")
    return multistep_ab(denoiser, x, sigmas, int(order), tau, net_sigmas, callback, lower_order_final)
