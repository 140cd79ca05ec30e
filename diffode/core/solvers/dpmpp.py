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

Warm-up: step i (0-based) uses order min(order, i + 1). `lower_order_final` (default True) follows the
official code, not its docstring: only when steps < 10, step i uses at most order steps - i, so the
last step is first order and (3M) the one before it second order. Above 10 steps it does nothing.
"""
from __future__ import annotations

import torch

from ._common import coef, lam, net_sigma, report
from .registry import register


def dpmpp_multistep(denoiser, x, sigmas, *, order=2, lower_order_final=True, coefficients="taylor", net_sigmas=None,
                    callback=None):
    """DPM-Solver++ multistep of the given order (1, 2 or 3)."""
    if order not in (1, 2, 3):
        raise ValueError(f"DPM-Solver++ multistep order must be 1, 2 or 3, got {order!r}")
    if coefficients not in ("taylor", "official"):
        raise ValueError(f"DPM-Solver++ coefficients must be 'taylor' or 'official', got {coefficients!r}")
    steps = len(sigmas) - 1
    ms, lams = [], []  # history of denoiser outputs and their lambdas, newest last
    for i in range(steps):
        s, t = sigmas[i], sigmas[i + 1]
        m0 = denoiser(x, net_sigma(sigmas, net_sigmas, i))
        ms, lams = (ms + [m0])[-3:], (lams + [lam(s)])[-3:]
        k = min(order, i + 1)
        if lower_order_final and steps < 10:
            k = min(k, steps - i)
        h = lam(t) - lams[-1]
        phi_1 = torch.expm1(-h)
        x_next = coef(t / s, x) * x - coef(phi_1, x) * m0
        if k >= 2:
            r0 = (lams[-1] - lams[-2]) / h
            D1_0 = (m0 - ms[-2]) / coef(r0, x)
            if k == 2:
                x_next = x_next - coef(0.5 * phi_1, x) * D1_0
            else:
                r1 = (lams[-2] - lams[-3]) / h
                D1_1 = (ms[-2] - ms[-3]) / coef(r1, x)
                D1 = D1_0 + coef(r0 / (r0 + r1), x) * (D1_0 - D1_1)
                D2 = (D1_0 - D1_1) / coef(r0 + r1, x)
                phi_2 = phi_1 / h + 1
                phi_3 = phi_2 / h - 0.5
                c2 = 2 * phi_3 if coefficients == "taylor" else phi_3
                x_next = x_next + coef(phi_2, x) * D1 - coef(c2, x) * D2
        x = x_next
        report(callback, i, x, sigmas, m0)
    return x


def dpmpp_2m(denoiser, x, sigmas, *, lower_order_final=True, net_sigmas=None, callback=None):
    return dpmpp_multistep(denoiser, x, sigmas, order=2, lower_order_final=lower_order_final,
                           net_sigmas=net_sigmas, callback=callback)


def dpmpp_3m(denoiser, x, sigmas, *, lower_order_final=True, coefficients="taylor", net_sigmas=None, callback=None):
    return dpmpp_multistep(denoiser, x, sigmas, order=3, lower_order_final=lower_order_final, coefficients=coefficients,
                           net_sigmas=net_sigmas, callback=callback)


register("dpmpp_2m", n_calls=lambda steps, **o: steps, order=2, defaults=dict(lower_order_final=True),
         description="DPM-Solver++(2M), data prediction; 1 call per step")(dpmpp_2m)
register("dpmpp_3m", n_calls=lambda steps, **o: steps, order=3, defaults=dict(lower_order_final=True, coefficients="taylor"),
         description="DPM-Solver++(3M), data prediction; 1 call per step (coefficients='official': the "
                     "published, second-order coefficients)")(dpmpp_3m)
