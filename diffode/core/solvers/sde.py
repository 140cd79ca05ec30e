"""Stochastic samplers in VE coordinates: DDPM ancestral / DDIM(eta), and Euler-Maruyama on the reverse SDE.

VE coordinates (DESIGN.md): x = x_t / alpha, sigma = sigma_t / alpha, so x_sigma = x0 + sigma z for
every schedule, and the score of p_sigma is (D(x, sigma) - x) / sigma^2.

ddpm (k-diffusion's get_ancestral_step). From sigma to sigma' < sigma with D = D(x, sigma),
d = (x - D) / sigma:
    sigma_up   = min(sigma', eta * sqrt(sigma'^2 (sigma^2 - sigma'^2) / sigma^2))
    sigma_down = sqrt(sigma'^2 - sigma_up^2)
    x'         = x + (sigma_down - sigma) d + sigma_up z  (= D + sigma_down d + sigma_up z).
Dividing DDIM's x_s = alpha_s D + sqrt(sigma_s^2 - s~^2) eps + s~ z (VP, s~ = eta sqrt((1 - abar_s) /
(1 - abar_t)) sqrt(1 - abar_t / abar_s)) by alpha_s gives exactly these VE quantities with
sigma_up = s~ / alpha_s, for any schedule. So eta = 1 is DDPM ancestral sampling (posterior variance
beta~), and eta = 0 is DDIM = the Euler step x + (sigma' - sigma) d.

euler_maruyama. The forward process in VE coordinates is dx = sqrt(d(sigma^2)/dt) dw. Anderson's
reverse-time SDE with the same marginals, written with sigma itself as the (decreasing) time:
    dx = -2 sigma score(x, sigma) dsigma + sqrt(2 sigma |dsigma|) dw
       = 2 (x - D(x, sigma)) / sigma dsigma + sqrt(2 sigma |dsigma|) dw,   dsigma < 0,
i.e. twice the PF-ODE drift plus noise (the PF-ODE is the same SDE with the noise removed and
half the drift). One Euler-Maruyama step per grid interval (strong order 1/2, weak order 1).

Both add no noise on the last step (score_sde returns the mean there), so the output is not
blurred by noise of size sigma_min. `generator` (a torch.Generator) makes the noise reproducible.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._common import net_sigma, report
from .registry import register


def get_ancestral_step(sigma_from: Tensor, sigma_to: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor]:
    """(sigma_down, sigma_up): the deterministic target and the fresh-noise level of an ancestral step."""
    sigma_up = torch.minimum(sigma_to, eta * torch.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2))
    sigma_down = torch.sqrt(sigma_to**2 - sigma_up**2)
    return sigma_down, sigma_up


def _noise(x: Tensor, generator) -> Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


@register("ddpm", n_calls=lambda steps, **o: steps, order=1, differentiable=False, stochastic=True,
          description="DDPM ancestral sampling (eta=1) / DDIM with eta, in VE coordinates")
def ddpm(denoiser, x: Tensor, sigmas: Tensor, *, net_sigmas=None, callback=None, eta: float = 1.0,
         generator: torch.Generator | None = None) -> Tensor:
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    n = sigmas.shape[0] - 1
    for i in range(n):
        denoised = denoiser(x, net_sigma(sigmas, net_sigmas, i))
        d = (x - denoised) / sigmas[i]
        last = i == n - 1
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], 0.0 if last else eta)
        x = x + (sigma_down - sigmas[i]).to(x.dtype) * d
        if not last and eta != 0:
            x = x + sigma_up.to(x.dtype) * _noise(x, generator)
        x = report(callback, i, x, sigmas, denoised)
    return x


@register("euler_maruyama", n_calls=lambda steps, **o: steps, order=1, differentiable=False, stochastic=True,
          description="Euler-Maruyama on the reverse-time VE SDE dx = 2 (x - D)/sigma dsigma + sqrt(2 sigma |dsigma|) dw")
def euler_maruyama(denoiser, x: Tensor, sigmas: Tensor, *, net_sigmas=None, callback=None,
                   generator: torch.Generator | None = None) -> Tensor:
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    n = sigmas.shape[0] - 1
    for i in range(n):
        denoised = denoiser(x, net_sigma(sigmas, net_sigmas, i))
        h = sigmas[i + 1] - sigmas[i]  # < 0
        x = x + (2.0 * h).to(x.dtype) * (x - denoised) / sigmas[i]
        if i < n - 1:
            x = x + torch.sqrt(-2.0 * sigmas[i] * h).to(x.dtype) * _noise(x, generator)
        x = report(callback, i, x, sigmas, denoised)
    return x
