"""DPM-Solver, single-step, noise-prediction form (Lu et al. 2022, Alg. 1 and 2), in VE coordinates.

With alpha = 1, sigma = e^{-lambda}, h = lambda_t - lambda_s and eps = (x - D(x, sigma))/sigma, the
paper's updates read (phi_1(h) = e^h - 1, written expm1):
  order 1:  x_t = x_s - sigma_t expm1(h) eps_s                        (= Euler / DDIM, since sigma_t e^h = sigma_s)
  order 2:  u   = x_s - sigma_1 expm1(r1 h) eps_s,  sigma_1 = sigma at lambda_s + r1 h
            x_t = x_s - sigma_t expm1(h) eps_s - sigma_t/(2 r1) expm1(h) (eps(u, sigma_1) - eps_s)
  order 3:  u1  = x_s - sigma_1 expm1(r1 h) eps_s;                       D1 = eps(u1, sigma_1) - eps_s
            u2  = x_s - sigma_2 expm1(r2 h) eps_s - sigma_2 (r2/r1) (expm1(r2 h)/(r2 h) - 1) D1
            x_t = x_s - sigma_t expm1(h) eps_s - (sigma_t/r2) (expm1(h)/h - 1) (eps(u2, sigma_2) - eps_s)
r1 (r2) is the lambda fraction of the step's inner point(s), computed from wherever they are.

Where the inner points sit (`inner`):
- "lambda" (default): each grid interval is one step of the solver's order (`order` calls), its inner
  points at the lambda fractions r1 = 1/2 (order 2) and r1, r2 = 1/3, 2/3 (order 3), or wherever a
  `midpoints` hook puts them (AMED; diffode/core/stage.py). The hook of dpm_solver_2 returns one stage,
  that of dpm_solver_3 a pair (s1, s2) with sigma_cur > s1 > s2 > sigma_next; each stage's a scales
  its own conditioning, and c scales the update that uses its evaluation (s1: u2's, s2: the step's).
- "grid": the official code's inner points (LuChengTHU/dpm-solver, `sample(method='singlestep')`): the
  grid's own nodes. A step of order k spans k consecutive grid intervals and its inner points are the
  nodes in between, so they are uniform in whatever variable the grid is uniform in (t on time_uniform,
  sqrt(t) on time_quadratic, lambda on logsnr: there the same points as "lambda"). One call per grid
  interval (NFE = the grid's steps); when the steps are not a multiple of the order the last step has
  the remainder as its order, as the official DPM-Solver-fast does, except that at a multiple of 3 its
  order-3 schedule ends with steps of order 2 and 1 where this one keeps order 3 (its
  'singlestep_fixed'). No `midpoints` hook here: the grid places the points.
Calls per step: `order`; the grid's steps are the outer steps (inner="lambda").
"""
from __future__ import annotations

import torch

from ..stage import Stage, condition, directed, get_stage
from ._common import coef, lam, lambda_midpoint, net_sigma, net_sigma_between, report
from .registry import register

INNER = ("lambda", "grid")


def _eps(denoiser, x, sigma, net_sigma_):
    D = denoiser(x, net_sigma_)
    return (x - D) / coef(sigma, x), D


def _hook_pair(hook, i, s, t, x):
    """The two stages of a third-order step from its hook (a pair of Stages or tensors)."""
    out = hook(i, s, t, x)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise ValueError(f"dpm_solver_3's midpoints hook must return a pair (s1, s2) of stage points "
                         f"(Stage or tensor, sigma_cur > s1 > s2 > sigma_next); got {type(out).__name__}.")
    return [o if isinstance(o, Stage) else Stage(o) for o in out]


def _lambda_stages(hook, k, i, s, t, x):
    """(inner stages, their lambda fractions or None) of an order-k step with inner='lambda'. The default
    thirds keep r = 1/3, 2/3 as exact floats, the points following from them."""
    if k == 1:
        return [], None
    if k == 2:
        return [get_stage(hook, lambda_midpoint, i, s, t, x)], None
    if hook is not None:
        return _hook_pair(hook, i, s, t, x), None
    h = lam(t) - lam(s)
    return [Stage(s * torch.exp(-r * h)) for r in (1.0 / 3.0, 2.0 / 3.0)], (1.0 / 3.0, 2.0 / 3.0)


def _step(denoiser, x, s, t, stages, rs, conds, eps_s, D):
    """One single-step update from s to t of order len(stages) + 1: stages the inner points, rs their
    lambda fractions (None: computed from them), conds their conditioning sigmas.
    Returns (x_t, the last denoiser output)."""
    h = lam(t) - lam(s)
    phi_1 = torch.expm1(h)
    x_euler = x - coef(t * phi_1, x) * eps_s
    if not stages:
        return x_euler, D
    rs = rs or [(lam(st.sigma) - lam(s)) / h for st in stages]
    if len(stages) == 1:
        (st,), (r1,) = stages, rs
        s1 = st.sigma
        u = x - coef(s1 * torch.expm1(r1 * h), x) * eps_s
        eps_1, D = _eps(denoiser, u, s1, conds[0])
        return directed(st, x, x_euler - coef(t / (2 * r1) * phi_1, x) * (eps_1 - eps_s)), D
    (st1, st2), (r1, r2) = stages, rs
    s1, s2 = st1.sigma, st2.sigma
    u1 = x - coef(s1 * torch.expm1(r1 * h), x) * eps_s
    eps_1, _ = _eps(denoiser, u1, s1, conds[0])
    phi_22 = torch.expm1(r2 * h) / (r2 * h) - 1
    u2 = directed(st1, x, x - coef(s2 * torch.expm1(r2 * h), x) * eps_s
                  - coef(s2 * (r2 / r1) * phi_22, x) * (eps_1 - eps_s))
    eps_2, D = _eps(denoiser, u2, s2, conds[1])
    phi_2 = phi_1 / h - 1
    return directed(st2, x, x_euler - coef(t / r2 * phi_2, x) * (eps_2 - eps_s)), D


def step_orders(steps: int, order: int, inner: str) -> list[int]:
    """The order of each solver step: `order` on every grid interval ("lambda"), or the grid's intervals
    grouped `order` at a time with the remainder last ("grid")."""
    if inner == "lambda":
        return [order] * steps
    return [order] * (steps // order) + ([steps % order] if steps % order else [])


def dpm_solver(denoiser, x, sigmas, *, order=2, inner="lambda", net_sigmas=None, callback=None, midpoints=None):
    """Single-step DPM-Solver of the given order (1, 2 or 3) on `sigmas` (module docstring)."""
    if order not in (1, 2, 3):
        raise ValueError(f"dpm_solver order must be 1, 2 or 3, got {order!r}")
    if inner not in INNER:
        raise ValueError(f"dpm_solver inner={inner!r}; choose 'lambda' (inner points at lambda fractions, or a "
                         "midpoints hook's) or 'grid' (the official code's: the grid's own nodes).")
    if inner == "grid" and midpoints is not None:
        raise ValueError("dpm_solver with inner='grid' takes its inner points from the grid's nodes, so it cannot "
                         "also take a midpoints hook; use inner='lambda' with the hook, or drop the hook.")
    j = 0  # the grid node the step starts at
    for i, k in enumerate(step_orders(len(sigmas) - 1, order, inner)):
        n = k if inner == "grid" else 1  # grid intervals the step spans
        s, t = sigmas[j], sigmas[j + n]
        eps_s, D = _eps(denoiser, x, s, net_sigma(sigmas, net_sigmas, j))
        if inner == "grid":  # the nodes in between: their own conditioning sigmas
            stages, rs = [Stage(sigmas[j + m]) for m in range(1, k)], None
            conds = [net_sigma(sigmas, net_sigmas, j + m) for m in range(1, k)]
        else:
            stages, rs = _lambda_stages(midpoints, k, i, s, t, x)
            conds = [condition(st, net_sigma_between(sigmas, net_sigmas, j, st.sigma)) for st in stages]
        x, D = _step(denoiser, x, s, t, stages, rs, conds, eps_s, D)
        j += n
        x = report(callback, j - 1, x, sigmas, D)
    return x


def dpm_solver_2(denoiser, x, sigmas, *, inner="lambda", net_sigmas=None, callback=None, midpoints=None):
    return dpm_solver(denoiser, x, sigmas, order=2, inner=inner, net_sigmas=net_sigmas, callback=callback,
                      midpoints=midpoints)


def dpm_solver_3(denoiser, x, sigmas, *, inner="lambda", net_sigmas=None, callback=None, midpoints=None):
    return dpm_solver(denoiser, x, sigmas, order=3, inner=inner, net_sigmas=net_sigmas, callback=callback,
                      midpoints=midpoints)


def _calls(order):
    return lambda steps, inner="lambda", **o: steps if inner == "grid" else order * steps


register("dpm_solver_2", n_calls=_calls(2), order=2,
         description="DPM-Solver-2 single-step (r1 = 1/2 in lambda); 2 calls per step; inner='grid': the "
                     "official inner points, the grid's nodes (1 call per grid interval)")(dpm_solver_2)
register("dpm_solver_3", n_calls=_calls(3), order=3,
         description="DPM-Solver-3 single-step (r1, r2 = 1/3, 2/3 in lambda); 3 calls per step; inner='grid': "
                     "the official inner points, the grid's nodes (1 call per grid interval)")(dpm_solver_3)
