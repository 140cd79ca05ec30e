"""UniPC multistep, data prediction (Zhao et al. 2023; official `multistep_uni_pc_bh_update`), VE coordinates.

Step s -> t with h = lambda_t - lambda_s, hh = -h, previous outputs m0 (at s), m_1.. m_{k-1}:
    r_j = (lambda_{s_j} - lambda_s)/h (< 0),  D1_j = (m_j - m0)/r_j,  r_k = 1 (the new point)
    B(h) = hh (bh1) or expm1(hh) (bh2);  R_{ij} = r_j^{i-1},  b_i = i! h phi_{i+1}(hh) / B(h)  (i = 1..k)
    UniP (predictor, order k):  x_t = (sigma_t/sigma_s) x - expm1(hh) m0 - B(h) sum_j rho^p_j D1_j,
        rho^p = 1/2 for k = 2, solve(R[:-1,:-1], b[:-1]) for k > 2
    UniC (corrector, order k+1): m_t = D(x_t, t) and
        x_t^c = (sigma_t/sigma_s) x - expm1(hh) m0 - B(h) (sum_j rho^c_j D1_j + rho^c_k (m_t - m0)),
        rho^c = 1/2 for k = 1, solve(R, b) otherwise.
m_t (at the predicted, uncorrected x_t) is reused as the model output at t, so the corrector costs no
extra call; it is skipped on the last step, hence NFE = steps.

Orders: step i (0-based) uses k = min(order, i + 1); `lower_order_final` (solvers/_order.py) may cap it
at steps - i: "auto" (default) where the step is long in lambda, True on every run (the official UniPC
code, which has no steps < 10 threshold), "official" when steps < 10 (DPM-Solver's rule), False never.
Defaults: bh1 with order 3 (the official CIFAR setting), bh2 with order 2. use_corrector=False gives UniP.
Global order: `order` + 1 with the corrector, but the first-order warm-up step caps it at 3, so both
registered defaults are third order (measured; order 3 + UniC does not reach 4). B(h) only matters
where rho is the fixed 1/2 (predictor order 2, corrector order 1): elsewhere B(h) cancels, so bh1 and
bh2 coincide at order 3. For order measurements pass lower_order_final=False: its first-order last
step (the corrector is off there) would otherwise cap the global order at 2.
The weighted sums are written as plain sums over k (the official einsum assumes 4-D images).
"""
from __future__ import annotations


import torch

from ._common import coef, lam, net_sigma, report, weighted_sum
from ._order import step_orders
from .registry import register


def _coefficients(lams, lam_t, k, variant):
    """rho_p, rho_c, B(h), expm1(hh), r_j for a step of order k from history lambdas (newest last)."""
    h = lam_t - lams[-1]
    hh = -h
    rks = [(lams[-(j + 1)] - lams[-1]) / h for j in range(1, k)]
    h_phi_1 = torch.expm1(hh)
    B_h = hh if variant == "bh1" else h_phi_1
    rk_all = torch.stack(rks + [torch.ones_like(h)])
    R, b = [], []
    h_phi_k, fact = h_phi_1 / hh - 1, 1
    for i in range(1, k + 1):
        R.append(rk_all ** (i - 1))
        b.append(h_phi_k * fact / B_h)
        fact *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    R, b = torch.stack(R), torch.stack(b)
    half = 0.5 * torch.ones_like(h).reshape(1)
    rho_p = half if k == 2 else (torch.linalg.solve(R[:-1, :-1], b[:-1]) if k > 2 else None)
    rho_c = half if k == 1 else torch.linalg.solve(R, b)
    return rho_p, rho_c, B_h, h_phi_1, rks


def unipc(denoiser, x, sigmas, *, variant="bh2", order=2, lower_order_final="auto", use_corrector=True,
          net_sigmas=None, callback=None):
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"UniPC variant must be 'bh1' or 'bh2', got {variant!r}")
    if order not in (1, 2, 3):
        raise ValueError(f"UniPC order must be 1, 2 or 3, got {order!r}")
    steps = len(sigmas) - 1
    orders = step_orders(sigmas, order, lower_order_final)
    ms, lams = [denoiser(x, net_sigma(sigmas, net_sigmas, 0))], [lam(sigmas[0])]
    for i in range(steps):
        s, t = sigmas[i], sigmas[i + 1]
        k = orders[i]
        correct = use_corrector and i < steps - 1
        m0 = ms[-1]
        rho_p, rho_c, B_h, h_phi_1, rks = _coefficients(lams, lam(t), k, variant)
        D1s = [(ms[-(j + 1)] - m0) / coef(rks[j - 1], x) for j in range(1, k)]
        x_base = coef(t / s, x) * x - coef(h_phi_1, x) * m0
        x_t = x_base
        if k >= 2:
            x_t = x_base - coef(B_h, x) * weighted_sum(rho_p, D1s)
        m_t = None
        if i < steps - 1:  # the model at the new point: UniC's evaluation, reused by the next step
            m_t = denoiser(x_t, net_sigma(sigmas, net_sigmas, i + 1))
        if correct:
            res = coef(rho_c[-1], x) * (m_t - m0)
            if k >= 2:
                res = res + weighted_sum(rho_c[:-1], D1s)
            x_t = x_base - coef(B_h, x) * res
        x = x_t
        x = report(callback, i, x, sigmas, m0 if m_t is None else m_t)
        if m_t is not None:
            ms, lams = (ms + [m_t])[-3:], (lams + [lam(t)])[-3:]
    return x


def unipc_bh1(denoiser, x, sigmas, *, order=3, lower_order_final="auto", use_corrector=True, net_sigmas=None,
              callback=None):
    return unipc(denoiser, x, sigmas, variant="bh1", order=order, lower_order_final=lower_order_final,
                 use_corrector=use_corrector, net_sigmas=net_sigmas, callback=callback)


def unipc_bh2(denoiser, x, sigmas, *, order=2, lower_order_final="auto", use_corrector=True, net_sigmas=None,
              callback=None):
    return unipc(denoiser, x, sigmas, variant="bh2", order=order, lower_order_final=lower_order_final,
                 use_corrector=use_corrector, net_sigmas=net_sigmas, callback=callback)



register("unipc_bh1", n_calls=lambda steps, **o: steps, order=3, multistep=True,
         description="UniPC-bh1 (B(h) = h), predictor order `order`, corrector adds one; 1 call per step")(unipc_bh1)
register("unipc_bh2", n_calls=lambda steps, **o: steps, order=3, multistep=True,
         description="UniPC-bh2 (B(h) = expm1(-h)), predictor order `order`, corrector adds one; 1 call per step")(unipc_bh2)
