"""Multistep consistency sampling (Song et al. 2023, Alg. 1), as a solver of the zoo.

The "denoiser" here is a consistency function f(x, sigma) (diffode/core/consistency.py), which maps
a noisy point straight to the origin of its trajectory. On a grid sigmas[0] = sigma_max > tau_1 > ...
> tau_{k-1} > sigmas[k] = sigma_min (k steps, k calls):

    x <- f(x_T, sigma_max)
    for tau in tau_1 .. tau_{k-1}:  x <- f(x + sqrt(tau^2 - sigma_min^2) z, tau)

so the state after step i is the fresh noisy point at sigmas[i + 1], and the last step adds no noise
(sqrt(sigma_min^2 - sigma_min^2) = 0): the output is f's last answer. sigma_min is the grid's own last
point. `clip` (e.g. 1.0 for images in [-1, 1]) clamps every answer of f, as the CM code's
karras_sample does; None leaves it alone. The noise comes from the `generator` diffode.sample passes.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._common import coef, net_sigma, report
from .registry import register


@register("consistency", n_calls=lambda steps, **o: steps, order=0, differentiable=False, stochastic=True,
          defaults=dict(clip=None, generator=None),
          description="multistep consistency sampling: x <- f(x + sqrt(tau^2 - sigma_min^2) z, tau); 1 call per step")
def consistency(denoiser, x: Tensor, sigmas: Tensor, *, net_sigmas=None, callback=None, clip: float | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    n = sigmas.shape[0] - 1
    sigma_min = sigmas[-1]
    for i in range(n):
        x0 = denoiser(x, net_sigma(sigmas, net_sigmas, i))
        if clip is not None:
            x0 = x0.clamp(-float(clip), float(clip))
        x = x0
        if i < n - 1:
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            x = x0 + coef(torch.sqrt(sigmas[i + 1] ** 2 - sigma_min**2), x0) * z
        x = report(callback, i, x, sigmas, x0)
    return x
