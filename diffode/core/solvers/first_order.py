"""DDIM (eta = 0) = Euler on the PF-ODE in VE coordinates (Song et al. 2021; Karras et al. 2022, Alg. 1).

dx/dsigma = (x - D(x, sigma)) / sigma, one denoiser call per step:
    x_next = x + (sigma_next - sigma) d = (sigma_next / sigma) x + (1 - sigma_next / sigma) D.
The second form is DDIM / DPM-Solver-1 / DPM-Solver++-1 written in VE coordinates; they are one method.
Stochastic DDIM (eta > 0) lives in the 'ddpm' solver.
"""
from __future__ import annotations

from ._common import coef, net_sigma, report
from .registry import register


def euler_step(x, D, sigma_cur, sigma_next):
    ratio = coef(sigma_next / sigma_cur, x)
    return ratio * x + (1 - ratio) * D


def ddim(denoiser, x, sigmas, *, net_sigmas=None, callback=None):
    for i in range(len(sigmas) - 1):
        D = denoiser(x, net_sigma(sigmas, net_sigmas, i))
        x = euler_step(x, D, sigmas[i], sigmas[i + 1])
        report(callback, i, x, sigmas, D)
    return x


register("ddim", n_calls=lambda steps, **o: steps, order=1,
         description="DDIM (eta=0) = Euler in VE coordinates; 1 call per step")(ddim)
register("euler", n_calls=lambda steps, **o: steps, order=1,
         description="Euler on dx/dsigma = (x - D)/sigma (= DDIM); 1 call per step")(ddim)
