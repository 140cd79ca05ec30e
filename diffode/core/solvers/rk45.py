"""Adaptive black-box RK45 (Dormand-Prince, torchdiffeq "dopri5") on the PF-ODE: the black-box baseline
of Song et al. (score_sde's ODE sampler: scipy RK45, default rtol = atol = 1e-5, our default too) that
DPM-Solver compares with. Tolerances are options, so a sweep over them traces NFE vs quality.

It is solved in u = log sigma, where the PF-ODE dx/du = x - D(x, e^u) has O(1) stiffness over the
whole range (in sigma itself the Lipschitz constant grows like 1 / sigma near sigma_min).
The points of `sigmas` are output points only (sample() passes [sigma_max, sigma_min] unless given
a grid); the step sizes are the error controller's choice, so the number of denoiser calls is
whatever it used (accepted + rejected stages and the initial step selection). It is counted,
reported through the optional `info` dict (info["nfe"]), and is what sample(..., return_info=True)
reports for adaptive solvers. Lower rtol / atol reach higher NFE. `callback` is called at each
output point with denoised=None (a denoiser call there would cost NFE).

torchdiffeq's error norm is the RMS over the whole batch, so a batch is one ODE system: results
for one sample depend (within tolerance) on its batch mates.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._common import report
from .registry import register


def _n_calls_not_fixed(steps, **options):
    raise ValueError("rk45 is adaptive: its NFE is set by rtol/atol, not by a step count; "
                     "run it with sample(..., return_info=True) to read the NFE it used")


@register("rk45", n_calls=_n_calls_not_fixed, order=0, differentiable=False, adaptive=True,
          description="adaptive Dormand-Prince RK45 (torchdiffeq dopri5) in log sigma; NFE = calls it used")
def rk45(denoiser, x: Tensor, sigmas: Tensor, *, net_sigmas=None, callback=None, rtol: float = 1e-5,
         atol: float = 1e-5, info: dict | None = None, max_nfe: int = 100_000) -> Tensor:
    from torchdiffeq import odeint

    if net_sigmas is not None:
        raise ValueError("rk45 chooses its own evaluation sigmas; net_sigmas cannot be used with it")
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    nfe = 0

    def f(u, y):
        nonlocal nfe
        if nfe >= max_nfe:
            raise RuntimeError(f"rk45 exceeded max_nfe={max_nfe} (rtol={rtol}, atol={atol})")
        nfe += 1
        return y - denoiser(y, torch.exp(u.to(torch.float64)))

    with torch.no_grad():
        xs = odeint(f, x, torch.log(sigmas).to(x.device), method="dopri5", rtol=rtol, atol=atol)
    for i in range(sigmas.shape[0] - 1):
        report(callback, i, xs[i + 1], sigmas, None)
    if info is not None:
        info["nfe"] = nfe
    return xs[-1]
