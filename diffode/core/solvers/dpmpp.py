"""DPM-Solver++ multistep, data prediction (Lu et al. 2022b, Alg. 2; official `multistep_dpm_solver_*_update`).

VE coordinates, h = lambda_t - lambda_s, m_k the denoiser outputs at the previous grid points:
  order 1:  x_t = (sigma_t/sigma_s) x_s - expm1(-h) m0
  order 2:  x_t = (sigma_t/sigma_s) x_s - expm1(-h) (m0 + D1_0/2),        D1_0 = (m0 - m1)/r0
  order 3:  x_t = (sigma_t/sigma_s) x_s - expm1(-h) m0 + phi_2 D1 - c phi_3 D2,   c = 1 or 2 (below)
            phi_2 = expm1(-h)/h + 1,  phi_3 = phi_2/h - 1/2,
            D1_1 = (m1 - m2)/r1,  D1 = D1_0 + r0/(r0 + r1) (D1_0 - D1_1),  D2 = (D1_0 - D1_1)/(r0 + r1)
with r0 = h_{prev}/h and r1 = h_{prev-1}/h. One call per step (none at the final point): NFE = steps.

Two sets of third-order coefficients (`coefficients`):
- "taylor" (default): the exact third-order method, -2 phi_3 D2 (measured order 2.95; bit-for-bit UniP-3,
  an independent derivation; tests/test_solver_convergence.py). Better from about 10 NFE on logSNR grids.
- "official": -phi_3 D2 instead of -2 phi_3 D2, as in the official code, diffusers and
  k-diffusion (matches diffusers' DPMSolverMultistepScheduler to float32 round-off; tests/test_sample.py).
  D2 estimates h^2 D''/2 while the Taylor term of the exact integral is -phi_3 h^2 D'', so this leaves an
  O(h^3) local error: the published "3M" is second order (measured 1.9-2.1 on our GMMs). Use it to
  reproduce published FID tables and LD3/AMED baselines; at NFE <= 8 it is sometimes the more robust
  of the two (the larger extrapolation term of the exact form can hurt there). `dpmpp_3m_official` in
  conf/solver/ selects it.

Warm-up: step i (0-based) uses order min(order, i + 1). `lower_order_final` (solvers/_order.py):
"auto" (default) caps step i at order steps - i where its lambda step is long (grid-aware, no cliff),
"official" does so on every step when steps < 10 (the official code, not its docstring), True always,
False never.
"""
from __future__ import annotations

import torch

from ..stage import condition, directed, get_stage
from ._common import coef, lam, net_sigma, net_sigma_between, report, weighted_sum
from ._order import step_orders
from .registry import register


def dpmpp_multistep(denoiser, x, sigmas, *, order=2, lower_order_final="auto", coefficients="taylor", net_sigmas=None,
                    callback=None, midpoints=None):
    """DPM-Solver++ multistep of the given order (1, 2 or 3).

    AMED-Plugin (`midpoints` hook, diffode/core/stage.py): the stage point s of each step is inserted as
    an extra multistep node, its output D(x_s, a s) enters the history at lambda(s), c scales the
    D terms of the sub-step s -> sigma_next, (sigma_next/s) x_s + c sum_j w_j D_j, as the official plugin's
    `dpm_pp_update(scale=c)` does, and the per-step orders are those of the grid with the lambda midpoints
    inserted (a discrete choice, as the rule is). With c = a = 1 and s the lambda midpoint this is
    DPM-Solver++ on that doubled grid."""
    if order not in (1, 2, 3):
        raise ValueError(f"DPM-Solver++ multistep order must be 1, 2 or 3, got {order!r}")
    if coefficients not in ("taylor", "official"):
        raise ValueError(f"DPM-Solver++ coefficients must be 'taylor' or 'official', got {coefficients!r}")
    steps = len(sigmas) - 1
    orders = step_orders(sigmas if midpoints is None else _lambda_midpoints_inserted(sigmas), order, lower_order_final)
    ms, lams = [], []  # history of denoiser outputs and their lambdas, newest last

    def advance(x, m0, s, t, k, stage=None):
        nonlocal ms, lams
        ms, lams = (ms + [m0])[-3:], (lams + [lam(s)])[-3:]
        h = lam(t) - lams[-1]
        phi_1 = torch.expm1(-h)
        # The update is linear in the history: x_next = (t/s) x + sum_j w_j m_j with scalar w_j (the
        # module docstring's form expanded), so a step costs k + 1 state-sized (fused) ops, not ~4k.
        if k == 1:
            w = [-phi_1]
        elif k == 2:
            r0 = (lams[-1] - lams[-2]) / h
            w = [-phi_1 * (1 + 0.5 / r0), phi_1 * 0.5 / r0]  # -phi_1 (m0 + D1_0 / 2)
        else:
            r0, r1 = (lams[-1] - lams[-2]) / h, (lams[-2] - lams[-3]) / h
            phi_2 = phi_1 / h + 1
            phi_3 = phi_2 / h - 0.5
            c2 = 2 * phi_3 if coefficients == "taylor" else phi_3
            # phi_2 D1 - c2 D2 = phi_2 D1_0 + v (D1_0 - D1_1), D1_0 = (m0 - m1) / r0, D1_1 = (m1 - m2) / r1
            v = (phi_2 * r0 - c2) / (r0 + r1)
            a = (phi_2 + v) / r0
            w = [a - phi_1, -a - v / r1, v / r1]
        x_next = weighted_sum([t / s] + w, [x] + ms[::-1][:k])
        return x_next if stage is None or stage.c is None else directed(stage, unscaled(x, s, t), x_next)

    for i in range(steps):
        s, t = sigmas[i], sigmas[i + 1]
        m0 = denoiser(x, net_sigma(sigmas, net_sigmas, i))
        if midpoints is None:
            x = advance(x, m0, s, t, orders[i])
        else:
            st = get_stage(midpoints, None, i, s, t, x)
            x_s = advance(x, m0, s, st.sigma, orders[2 * i])
            m0 = denoiser(x_s, condition(st, net_sigma_between(sigmas, net_sigmas, i, st.sigma)))
            x = advance(x_s, m0, st.sigma, t, orders[2 * i + 1], st)
        x = report(callback, i, x, sigmas, m0)
    return x


def unscaled(x, s, t):
    """The part of a sub-step s -> t that a stage's c leaves alone: (t/s) x, the term without a model
    output (the official plugin's `dpm_pp_update(scale=c)`). experiments/amed/dpmpp_direction.py swaps
    in x here, the whole sub-step scaled, to compare the two conventions."""
    return coef(t / s, x) * x


def _lambda_midpoints_inserted(sigmas):
    mids = torch.sqrt(sigmas[:-1] * sigmas[1:])
    return torch.cat([torch.stack([sigmas[:-1], mids], 1).reshape(-1), sigmas[-1:]])


def dpmpp_2m(denoiser, x, sigmas, *, lower_order_final="auto", net_sigmas=None, callback=None, midpoints=None):
    return dpmpp_multistep(denoiser, x, sigmas, order=2, lower_order_final=lower_order_final,
                           net_sigmas=net_sigmas, callback=callback, midpoints=midpoints)


def dpmpp_3m(denoiser, x, sigmas, *, lower_order_final="auto", coefficients="taylor", net_sigmas=None, callback=None):
    return dpmpp_multistep(denoiser, x, sigmas, order=3, lower_order_final=lower_order_final, coefficients=coefficients,
                           net_sigmas=net_sigmas, callback=callback)


register("dpmpp_2m", n_calls=lambda steps, midpoints=None, **o: steps if midpoints is None else 2 * steps, order=2,
         multistep=True,
         description="DPM-Solver++(2M), data prediction; 1 call per step (2 with a midpoints hook)")(dpmpp_2m)
register("dpmpp_3m", n_calls=lambda steps, **o: steps, order=3, multistep=True,
         description="DPM-Solver++(3M), data prediction; 1 call per step (coefficients='official': the "
                     "published, second-order coefficients)")(dpmpp_3m)
