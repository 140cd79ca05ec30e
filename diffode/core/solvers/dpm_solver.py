"""DPM-Solver, single-step, noise-prediction form (Lu et al. 2022, Alg. 1 and 2), in VE coordinates.

With alpha = 1, sigma = e^{-lambda}, h = lambda_t - lambda_s and eps = (x - D(x, sigma))/sigma, the
paper's updates read (phi_1(h) = e^h - 1, written expm1):
  order 1:  x_t = x_s - sigma_t expm1(h) eps_s                        (= Euler / DDIM, since sigma_t e^h = sigma_s)
  order 2:  u   = x_s - sigma_1 expm1(r1 h) eps_s,  sigma_1 = sigma at lambda_s + r1 h
            x_t = x_s - sigma_t expm1(h) eps_s - sigma_t/(2 r1) expm1(h) (eps(u, sigma_1) - eps_s)
  order 3:  (r1, r2) = (1/3, 2/3)
            u1  = x_s - sigma_1 expm1(r1 h) eps_s;                       D1 = eps(u1, sigma_1) - eps_s
            u2  = x_s - sigma_2 expm1(r2 h) eps_s - sigma_2 (r2/r1) (expm1(r2 h)/(r2 h) - 1) D1
            x_t = x_s - sigma_t expm1(h) eps_s - (sigma_t/r2) (expm1(h)/h - 1) (eps(u2, sigma_2) - eps_s)
Order 2 takes its intermediate point from a `midpoints(i, sigma_cur, sigma_next, x) -> sigma_mid` hook
(AMED); the default is the lambda midpoint (r1 = 1/2), and r1 is computed from whatever it returns
(its Stage may also scale the step by c and the stage's conditioning by a: diffode/core/stage.py).
Calls per step: `order`; the grid's steps are the outer steps.
"""
from __future__ import annotations

import torch

from ..stage import condition, directed, get_stage
from ._common import coef, lam, lambda_midpoint, net_sigma, net_sigma_between, report
from .registry import register


def _eps(denoiser, x, sigma, net_sigma_):
    D = denoiser(x, net_sigma_)
    return (x - D) / coef(sigma, x), D


def dpm_solver(denoiser, x, sigmas, *, order=2, net_sigmas=None, callback=None, midpoints=None):
    """Single-step DPM-Solver of the given order (1, 2 or 3) on every step of `sigmas`."""
    if order not in (1, 2, 3):
        raise ValueError(f"dpm_solver order must be 1, 2 or 3, got {order!r}")
    for i in range(len(sigmas) - 1):
        s, t = sigmas[i], sigmas[i + 1]
        h = lam(t) - lam(s)
        phi_1 = torch.expm1(h)
        eps_s, D = _eps(denoiser, x, s, net_sigma(sigmas, net_sigmas, i))
        x_euler = x - coef(t * phi_1, x) * eps_s
        if order == 1:
            x_next = x_euler
        elif order == 2:
            st = get_stage(midpoints, lambda_midpoint, i, s, t, x)
            s1 = st.sigma
            r1 = (lam(s1) - lam(s)) / h
            u = x - coef(s1 * torch.expm1(r1 * h), x) * eps_s
            eps_1, D = _eps(denoiser, u, s1, condition(st, net_sigma_between(sigmas, net_sigmas, i, s1)))
            x_next = directed(st, x, x_euler - coef(t / (2 * r1) * phi_1, x) * (eps_1 - eps_s))
        else:
            r1, r2 = 1.0 / 3.0, 2.0 / 3.0
            s1, s2 = s * torch.exp(-r1 * h), s * torch.exp(-r2 * h)
            u1 = x - coef(s1 * torch.expm1(r1 * h), x) * eps_s
            eps_1, _ = _eps(denoiser, u1, s1, net_sigma_between(sigmas, net_sigmas, i, s1))
            phi_22 = torch.expm1(r2 * h) / (r2 * h) - 1
            u2 = x - coef(s2 * torch.expm1(r2 * h), x) * eps_s - coef(s2 * (r2 / r1) * phi_22, x) * (eps_1 - eps_s)
            eps_2, D = _eps(denoiser, u2, s2, net_sigma_between(sigmas, net_sigmas, i, s2))
            phi_2 = phi_1 / h - 1
            x_next = x_euler - coef(t / r2 * phi_2, x) * (eps_2 - eps_s)
        x = x_next
        x = report(callback, i, x, sigmas, D)
    return x


def dpm_solver_2(denoiser, x, sigmas, *, net_sigmas=None, callback=None, midpoints=None):
    return dpm_solver(denoiser, x, sigmas, order=2, net_sigmas=net_sigmas, callback=callback, midpoints=midpoints)


def dpm_solver_3(denoiser, x, sigmas, *, net_sigmas=None, callback=None):
    return dpm_solver(denoiser, x, sigmas, order=3, net_sigmas=net_sigmas, callback=callback)


register("dpm_solver_2", n_calls=lambda steps, **o: 2 * steps, order=2,
         description="DPM-Solver-2 single-step (r1 = 1/2 in lambda); 2 calls per step")(dpm_solver_2)
register("dpm_solver_3", n_calls=lambda steps, **o: 3 * steps, order=3,
         description="DPM-Solver-3 single-step (r1, r2 = 1/3, 2/3 in lambda); 3 calls per step")(dpm_solver_3)
