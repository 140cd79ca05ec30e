"""AMED-Solver (Zhou et al., CVPR 2024, "Fast ODE-based sampling for diffusion models in around 5 steps").

One step from sigma_cur to sigma_next on dx/dsigma = d(x, sigma) = (x - D(x, sigma)) / sigma follows the
mean direction of the true trajectory over the step, read at one intermediate point s:

    d_cur = d(x, sigma_cur);   x_s = x + (s - sigma_cur) d_cur           (Euler to the stage point)
    d_s   = (x_s - D(x_s, a s)) / s                                      (conditioned at a s)
    x_next = x + c (sigma_next - sigma_cur) d_s                          (the mean-direction step)

s, c and a come from the `midpoints` hook (diffode/core/stage.py; AMED's predictor puts
s = sigma_next^r sigma_cur^(1-r) with r in (0, 1)). Without one, r = 1/2 (s the lambda midpoint)
and c = a = 1: a two-stage RK method with no weight on d_cur whose stage sits at the sigma fraction
sqrt(sigma_cur) / (sqrt(sigma_cur) + sqrt(sigma_next)) = 1/2 + O(h) of the step, so its local error
is O(h^3) and it is second order (measured in tests/test_amed_core.py). 2 calls per step; with AFS
the first step's d_cur is analytic, so NFE = 2 steps - 1.
"""
from __future__ import annotations

from ..stage import condition, directed, get_stage
from ._common import coef, lambda_midpoint, net_sigma, net_sigma_between, report
from .registry import register


def amed(denoiser, x, sigmas, *, net_sigmas=None, callback=None, midpoints=None):
    for i in range(len(sigmas) - 1):
        s_cur, s_next = sigmas[i], sigmas[i + 1]
        D = denoiser(x, net_sigma(sigmas, net_sigmas, i))
        d_cur = (x - D) / coef(s_cur, x)
        st = get_stage(midpoints, lambda_midpoint, i, s_cur, s_next, x)
        x_s = x + coef(st.sigma - s_cur, x) * d_cur
        D = denoiser(x_s, condition(st, net_sigma_between(sigmas, net_sigmas, i, st.sigma)))
        d_s = (x_s - D) / coef(st.sigma, x)
        x = directed(st, x, x + coef(s_next - s_cur, x) * d_s)
        x = report(callback, i, x, sigmas, D)
    return x


register("amed", n_calls=lambda steps, **o: 2 * steps, order=2, defaults=dict(midpoints=None),
         description="AMED-Solver: Euler to a (learned) stage point, then the whole step along its direction; "
                     "2 calls per step")(amed)
