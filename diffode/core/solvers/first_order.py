"""DDIM (eta = 0) = Euler on the PF-ODE in VE coordinates (Song et al. 2021; Karras et al. 2022, Alg. 1).

dx/dsigma = (x - D(x, sigma)) / sigma, one denoiser call per step:
    x_next = x + (sigma_next - sigma) d = (sigma_next / sigma) x + (1 - sigma_next / sigma) D.
The second form is DDIM / DPM-Solver-1 / DPM-Solver++-1 written in VE coordinates; they are one method.
Stochastic DDIM (eta > 0) lives in the 'ddpm' solver.

AMED-Plugin: with a `midpoints` hook (diffode/core/stage.py) each step becomes two Euler steps,
sigma_cur -> s -> sigma_next, the second from the stage's evaluation D(x_s, a s) and scaled by c:
Euler on the grid with s inserted (exactly so for c = a = 1). 2 calls per step then.
"""
from __future__ import annotations

import torch

from ..stage import condition, directed, get_stage
from ._common import coef, net_sigma, net_sigma_between, report
from .registry import register


def euler_step(x, D, sigma_cur, sigma_next):
    ratio = coef(sigma_next / sigma_cur, x)
    return torch.addcmul(ratio * x, 1 - ratio, D)  # ratio x + (1 - ratio) D in two state-sized ops


def ddim(denoiser, x, sigmas, *, net_sigmas=None, callback=None, midpoints=None):
    for i in range(len(sigmas) - 1):
        D = denoiser(x, net_sigma(sigmas, net_sigmas, i))
        if midpoints is None:
            x = euler_step(x, D, sigmas[i], sigmas[i + 1])
        else:
            st = get_stage(midpoints, None, i, sigmas[i], sigmas[i + 1], x)
            x_s = euler_step(x, D, sigmas[i], st.sigma)
            D = denoiser(x_s, condition(st, net_sigma_between(sigmas, net_sigmas, i, st.sigma)))
            x = directed(st, x_s, euler_step(x_s, D, st.sigma, sigmas[i + 1]))
        x = report(callback, i, x, sigmas, D)
    return x


def _calls(steps, midpoints=None, **o):
    return steps if midpoints is None else 2 * steps


register("ddim", n_calls=_calls, order=1,
         description="DDIM (eta=0) = Euler in VE coordinates; 1 call per step (2 with a midpoints hook)")(ddim)
register("euler", n_calls=_calls, order=1,
         description="Euler on dx/dsigma = (x - D)/sigma (= DDIM); 1 call per step (2 with a midpoints hook)")(ddim)
