"""EDM's Heun sampler (Karras et al. 2022, Alg. 1 without churn), generalised to any second stage point.

A two-stage explicit Runge-Kutta step in sigma for dx/dsigma = d(x, sigma) = (x - D)/sigma:
    d1 = d(x, s_cur);  x_mid = x + (s_mid - s_cur) d1;  d2 = d(x_mid, s_mid)
    x_next = x + (s_next - s_cur) [(1 - 1/(2c)) d1 + 1/(2c) d2],   c = (s_mid - s_cur)/(s_next - s_cur)
is second order for every c (the classic one-parameter family). The default stage point is s_next
(c = 1: Heun's trapezoid); a `midpoints(i, sigma_cur, sigma_next, x) -> sigma_mid` hook (AMED) moves it
(c = 1/2 in sigma is the explicit midpoint rule); the hook's Stage may also scale the step (c) and
the stage's conditioning (a), diffode/core/stage.py. Our grids end at sigma_min > 0, so every step is a
full Heun step: 2 calls per step. Odd NFEs: `denoise_to_zero=True` in sample() adds EDM's final Euler
step to sigma = 0 (x = D(x, sigma_min), one call: EDM's own layout), or `euler_last=True` makes the last
step, to sigma_min, Euler (diffusers' layout), giving 2*steps - 1 calls.
"""
from __future__ import annotations

from ..stage import condition, directed, get_stage
from ._common import coef, net_sigma, net_sigma_between, report
from .registry import register


def _next_point(i, sigma_cur, sigma_next, x):
    return sigma_next


def heun(denoiser, x, sigmas, *, net_sigmas=None, callback=None, euler_last=False, midpoints=None):
    steps = len(sigmas) - 1
    for i in range(steps):
        s_cur, s_next = sigmas[i], sigmas[i + 1]
        D1 = denoiser(x, net_sigma(sigmas, net_sigmas, i))
        d1 = (x - D1) / coef(s_cur, x)
        if euler_last and i == steps - 1:
            x = x + coef(s_next - s_cur, x) * d1
            x = report(callback, i, x, sigmas, D1)
            continue
        st = get_stage(midpoints, _next_point, i, s_cur, s_next, x)
        s_mid = st.sigma
        x_mid = x + coef(s_mid - s_cur, x) * d1
        D2 = denoiser(x_mid, condition(st, net_sigma_between(sigmas, net_sigmas, i, s_mid)))
        d2 = (x_mid - D2) / coef(s_mid, x)
        w2 = (s_next - s_cur) ** 2 / (2 * (s_mid - s_cur))  # h/(2c) with h = s_next - s_cur
        x = directed(st, x, x + coef(s_next - s_cur - w2, x) * d1 + coef(w2, x) * d2)
        x = report(callback, i, x, sigmas, D2)
    return x


register("heun", n_calls=lambda steps, euler_last=False, **o: 2 * steps - (1 if euler_last else 0), order=2,
         description="EDM Heun (2nd order); 2 calls per step, euler_last=True: 2*steps-1")(heun)
