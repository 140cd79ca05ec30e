"""Analytic-DPM (Bao, Li, Zhu, Zhang, ICLR 2022): DDPM and the DDIM family with the optimal reverse variance.

Written in VE coordinates (x = x_t / alpha, S = sigma_t / alpha), where the paper's formulas lose every
alpha-bar: one step from S (grid point i) to S' < S with D = D(x, S) and eps_hat = (x - D) / S reads

    x' = D + sqrt(S'^2 - lam^2) eps_hat + s z,     s^2 = lam^2 + (1 - sqrt(S'^2 - lam^2) / S)^2 v,
    lam^2 = eta^2 S'^2 (S^2 - S'^2) / S^2          (eta = 1: DDPM's beta-tilde; eta = 0: DDIM),
    v = S^2 (1 - Gamma),   Gamma = E ||eps_hat||^2 / d at S   (the paper's beta-bar_n Gamma_n, eq. 8-9),

which is the paper's eq. (7) on a skipping subsequence (eq. 13) divided by alpha_{s}^2: with
alpha-bar = 1 / (1 + S^2) its (sqrt(alpha-bar_s) - sqrt((beta-bar_s - lam^2) alpha-bar_r / beta-bar_r))^2
(beta-bar_r / alpha-bar_r)(1 - beta-bar_r Gamma_r) becomes (1 - sqrt(S'^2 - lam^2) / S)^2 v. So any model,
whatever its training schedule (the digits UNet is EDM-trained), has an Analytic-DPM on any grid: its
VP/DDPM view is the VP schedule with the same signal-to-noise ratio at every grid point, and only the
grid's VE sigmas and the moments at them enter. v is the average posterior variance E tr Cov[x0|x] / d
(law of total variance), so the step adds the noise that the uncertainty of D leaves:
Var[x' | x] = lam^2 + (1 - sqrt(S'^2 - lam^2)/S)^2 Var[x0 | x] is exact for Gaussian data.

Clipping (Theorem 2): v in [0, min(S^2, r^2)] for data in a box of half-width r = (b - a)/2 (v <= S^2 is
bound (11), since Gamma >= 0; r^2 is bound (12)), i.e. lam^2 <= s^2 <= lam^2 + (1 - .)^2 min(S^2, r^2).
`data_radius` = r, default 1 (data in [-1, 1]); None drops bound (12).

The moments: `eps_moments`, one value per step (at sigmas[:-1]), estimated by `estimate_eps_moments`
(Monte Carlo over training data, one noise draw per point and grid sigma, as the paper's code does).
diffode.Model.sample computes and caches them per model and grid when they are not given (the solvers
declare them as a model input, registry.SolverSpec.model_inputs; diffode/solver_inputs.py); the options
mc_samples / mc_seed say how. The last step returns its mean (no noise), as the paper's sampler does;
`clip_last_std` caps s at the step before it (the paper's E|s z| <= y * bin width rule: s <= y * Delta *
sqrt(pi/2)). `clip_denoised` clamps D to [-c, c] (the paper's code clamps x0 for DDPM). NFE = steps.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ._common import coef, net_sigma, report
from .registry import register


def ddim_lambda2(sigma: Tensor, sigma_next: Tensor, eta: float) -> Tensor:
    """lam^2 of the DDIM family in VE coordinates (eta = 1: DDPM's posterior variance beta-tilde / alpha^2)."""
    return eta**2 * sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2


def posterior_variance(moment: Tensor, sigma: Tensor, data_radius=1.0) -> Tensor:
    """v = S^2 (1 - E||eps_hat||^2/d), clipped to Theorem 2's [0, min(S^2, r^2)], r = (b - a)/2 = data_radius."""
    hi = sigma**2
    if data_radius is not None:
        hi = torch.clamp(hi, max=float(data_radius) ** 2)
    return torch.minimum(torch.clamp(sigma**2 * (1 - moment), min=0.0), hi)


def optimal_variance(moment: Tensor, sigma: Tensor, sigma_next: Tensor, eta: float,
                     data_radius=1.0) -> tuple[Tensor, Tensor]:
    """(s^2, lam^2): the analytic reverse variance of the step sigma -> sigma_next and its lower bound."""
    lam2 = ddim_lambda2(sigma, sigma_next, eta)
    c = 1 - torch.sqrt(sigma_next**2 - lam2) / sigma
    return lam2 + c * c * posterior_variance(moment, sigma, data_radius), lam2


def estimate_eps_moments(denoiser, x0: Tensor, sigmas: Tensor, generator: torch.Generator | None = None,
                         batch_size: int = 1000) -> Tensor:
    """E ||eps_hat(x0 + S z, S)||^2 / d at each S of `sigmas` (Monte Carlo over the rows of x0, one fresh
    z per row and sigma): the paper's beta-bar_n Gamma_n. float64 [len(sigmas)]."""
    out = []
    for s in torch.as_tensor(sigmas, dtype=torch.float64):
        acc = 0.0
        for xb in x0.split(batch_size):
            z = torch.randn(xb.shape, generator=generator, dtype=torch.float64).to(xb.device)
            x = xb.to(torch.float64) + s * z
            with torch.no_grad():
                eps = (x - denoiser(x, s).to(torch.float64)) / s
            acc += float(eps.reshape(eps.shape[0], -1).square().mean(1).sum())
        out.append(acc / x0.shape[0])
    return torch.tensor(out, dtype=torch.float64)


def _noise(x: Tensor, generator) -> Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def analytic_dpm(denoiser, x: Tensor, sigmas: Tensor, *, eps_moments: Tensor | None = None, eta: float = 1.0,
                 data_radius=1.0, clip_last_std: float | None = None, clip_denoised: float | None = None,
                 mc_samples: int = 1000, mc_seed: int = 0, net_sigmas=None, callback=None,
                 generator: torch.Generator | None = None) -> Tensor:
    """The DDIM-family step with the analytic variance (module docstring); eta = 1 Analytic-DDPM, 0 Analytic-DDIM."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    n = sigmas.shape[0] - 1
    m = _moments(eps_moments, n).to(sigmas.device)
    for i in range(n):
        S, S1 = sigmas[i], sigmas[i + 1]
        D = denoiser(x, net_sigma(sigmas, net_sigmas, i))
        if clip_denoised is not None:
            D = D.clamp(-float(clip_denoised), float(clip_denoised))
        var, lam2 = optimal_variance(m[i], S, S1, eta, data_radius)
        x = D + coef(torch.sqrt(S1**2 - lam2) / S, x) * (x - D)
        if i < n - 1:
            std = torch.sqrt(var)
            if clip_last_std is not None and i == n - 2:
                std = torch.clamp(std, max=float(clip_last_std))
            x = x + coef(std, x) * _noise(x, generator)
        x = report(callback, i, x, sigmas, D)
    return x


def _moments(eps_moments, steps: int) -> Tensor:
    if eps_moments is None:
        raise ValueError("Analytic-DPM needs eps_moments, E||eps_hat||^2/d at each grid sigma but the last: a "
                         "diffode Model computes them (Model.sample, diffode.load_model(...)); with a bare denoiser "
                         "pass eps_moments=estimate_eps_moments(denoiser, training_data, sigmas[:-1]).")
    m = torch.as_tensor(eps_moments, dtype=torch.float64).reshape(-1)
    if m.numel() != steps:
        raise ValueError(f"eps_moments has {m.numel()} values but the grid has {steps} steps; estimate them on this "
                         "grid's sigmas[:-1] (they depend on the step set).")
    return m


def _check(sigmas, options):
    eta = options.get("eta", 1.0)
    if not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"Analytic-DPM eta={eta} must be in [0, 1] (1: Analytic-DDPM, 0: Analytic-DDIM).")
    r = options.get("data_radius")
    if r is not None and not float(r) > 0:
        raise ValueError(f"data_radius={r} must be > 0 (the half-width (b - a)/2 of the data's box, for the clipping "
                         "bound (12)); null drops that bound.")
    if int(options.get("mc_samples", 1)) < 1:
        raise ValueError(f"mc_samples={options.get('mc_samples')} must be >= 1 (the paper finds 10 enough, uses "
                         "1000-50000).")
    if options.get("eps_moments") is not None:
        _moments(options["eps_moments"], len(sigmas) - 1)


def analytic_ddpm(denoiser, x, sigmas, *, eps_moments=None, data_radius=1.0, clip_last_std=None,
                  clip_denoised=None, mc_samples: int = 1000, mc_seed: int = 0, net_sigmas=None, callback=None,
                  generator=None):
    return analytic_dpm(denoiser, x, sigmas, eps_moments=eps_moments, eta=1.0, data_radius=data_radius,
                        clip_last_std=clip_last_std, clip_denoised=clip_denoised, net_sigmas=net_sigmas,
                        callback=callback, generator=generator)


def analytic_ddim(denoiser, x, sigmas, *, eps_moments=None, eta: float = 0.0, data_radius=1.0,
                  clip_last_std=None, clip_denoised=None, mc_samples: int = 1000, mc_seed: int = 0, net_sigmas=None,
                  callback=None, generator=None):
    return analytic_dpm(denoiser, x, sigmas, eps_moments=eps_moments, eta=eta, data_radius=data_radius,
                        clip_last_std=clip_last_std, clip_denoised=clip_denoised, net_sigmas=net_sigmas,
                        callback=callback, generator=generator)


_KW = dict(order=1, differentiable=False, stochastic=True, check=_check, model_inputs=("eps_moments",))
register("analytic_ddpm", n_calls=lambda steps, **o: steps, **_KW,
         description="Analytic-DDPM: ancestral DDPM step with the optimal (analytic) reverse variance")(analytic_ddpm)
register("analytic_ddim", n_calls=lambda steps, **o: steps, **_KW,
         description="Analytic-DDIM: the DDIM step (eta, default 0) plus the analytic variance's noise")(analytic_ddim)

SQRT_HALF_PI = math.sqrt(math.pi / 2)  # clip_last_std = y * bin width * SQRT_HALF_PI (the paper's rule)
