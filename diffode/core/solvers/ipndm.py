"""iPNDM (Zhang & Chen 2022, "improved PNDM"; EDM-space version of zju-pi/diff-sampler).

Adams-Bashforth on the PF-ODE slope d = (x - D(x, sigma)) / sigma in VE coordinates with the
*constant-step* coefficients 1; (3, -1)/2; (23, -16, 5)/12; (55, -59, 37, -9)/24, whatever the
actual steps are, warming up by lower orders. Those coefficients are the AB-k weights only for
equal steps in sigma. On the graded grids used in practice (logsnr, EDM rho=7) neighbouring steps
differ by a factor 1 + O(h), which leaves an O(h^3) local error whatever max_order is, so the
measured global order there is 2 (tests/test_solvers_zoo_extra.py); on equal steps it is AB-k.
Its low-NFE accuracy (diff-sampler's FID table), not its order, is why it is used.

`ipndm_v` is the variable-step Adams-Bashforth method: the exact Lagrange-integral weights for
the actual steps, the same method as `deis` with tau = sigma; its order is max_order on any smooth
grid. It is what diff-sampler's iPNDM_v intends, not its code: diff-sampler's hand-written
weights differ on uneven steps and, at order 4, reduce to (57, -65, 43, -11)/24 rather than AB4's
(55, -59, 37, -9)/24 on equal steps (checked in tests/test_solvers_zoo_extra.py).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..stage import condition, directed, get_stage
from ._common import coef, net_sigma, net_sigma_between, report
from .deis import multistep_ab
from .registry import register

AB_COEFFICIENTS = ((1.0,), (3.0 / 2, -1.0 / 2), (23.0 / 12, -16.0 / 12, 5.0 / 12),
                   (55.0 / 24, -59.0 / 24, 37.0 / 24, -9.0 / 24))


def _check_order(max_order) -> int:
    if not 1 <= int(max_order) <= 4:
        raise ValueError(f"ipndm max_order must be 1..4, got {max_order}")
    return int(max_order)


def _ab_step(x, d_history, max_order, sigma_cur, sigma_next):
    """Step x from sigma_cur to sigma_next with the constant-step AB weights of the (trimmed) history."""
    del d_history[max_order:]
    c = AB_COEFFICIENTS[len(d_history) - 1]
    return x + coef(sigma_next - sigma_cur, x) * sum(c_j * d_j for c_j, d_j in zip(c, d_history))


@register("ipndm", n_calls=lambda steps, midpoints=None, **o: steps if midpoints is None else 2 * steps, order=2,
          multistep=True,
          description="iPNDM: constant-step Adams-Bashforth (orders 1..4, warm-up) on d = (x - D)/sigma; "
                      "2 calls per step with a midpoints hook (AMED-Plugin)")
def ipndm(denoiser, x: Tensor, sigmas: Tensor, *, net_sigmas=None, callback=None, max_order: int = 4,
          midpoints=None) -> Tensor:
    """AMED-Plugin (`midpoints` hook, diffode/core/stage.py): each step is two AB steps sigma_cur -> s ->
    sigma_next; the stage's slope (x_s - D(x_s, a s))/s enters the history like any other, and c scales
    the second one. With c = a = 1 this is iPNDM on the grid with s inserted. A stage exactly at sigma_cur
    (r = 0) re-evaluates the step's start: its slope replaces the first one in the history, so after an
    analytic first step (AFS) the closed-form slope moves x by nothing and never enters the AB history
    (AMED's `afs_grid: base`, diffode/methods/amed)."""
    max_order = _check_order(max_order)
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    d_history: list[Tensor] = []  # most recent first
    for i in range(sigmas.shape[0] - 1):
        denoised = denoiser(x, net_sigma(sigmas, net_sigmas, i))
        d_history.insert(0, (x - denoised) / sigmas[i])
        if midpoints is None:
            x = _ab_step(x, d_history, max_order, sigmas[i], sigmas[i + 1])
        else:
            st = get_stage(midpoints, None, i, sigmas[i], sigmas[i + 1], x)
            x_s = _ab_step(x, d_history, max_order, sigmas[i], st.sigma)
            denoised = denoiser(x_s, condition(st, net_sigma_between(sigmas, net_sigmas, i, st.sigma)))
            if bool((st.sigma == sigmas[i]).all()):  # a stage at sigma_cur: its slope replaces the first one's
                d_history.pop(0)
            d_history.insert(0, (x_s - denoised) / coef(st.sigma, x_s))
            x = directed(st, x_s, _ab_step(x_s, d_history, max_order, st.sigma, sigmas[i + 1]))
        x = report(callback, i, x, sigmas, denoised)
    return x


@register("ipndm_v", n_calls=lambda steps, **o: steps, order=4, multistep=True,
          description="iPNDM_v: variable-step Adams-Bashforth (orders 1..4, warm-up) on d = (x - D)/sigma")
def ipndm_v(denoiser, x: Tensor, sigmas: Tensor, *, net_sigmas=None, callback=None, max_order: int = 4) -> Tensor:
    return multistep_ab(denoiser, x, sigmas, _check_order(max_order), "sigma", net_sigmas, callback)
