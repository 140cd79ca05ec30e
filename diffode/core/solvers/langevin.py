"""Langevin samplers: predictor-corrector (Song et al. 2021, App. G, Alg. 4) after any predictor of the zoo,
and NCSN's annealed Langevin dynamics (Song & Ermon 2019, Alg. 1), in VE coordinates.

The score of p_sigma is g = (D(x, sigma) - x) / sigma^2. One Langevin step at sigma with noise z ~ N(0, I):

    x <- x + e g + sqrt(2 e) z.

pc: after every step of the predictor but the last (the state is then at sigmas[i + 1]), `corrector_steps`
Langevin steps at that sigma with Alg. 4's step e = 2 (r ||z|| / ||g||)^2, r = `snr` (the ratio of the
drift's length to the noise's). Norms are per sample (score_sde averages them over the batch, which makes
a sample depend on its batch mates; with one sample the two agree). The step is scale-free, so the VE
form serves VP models too (Alg. 5's extra factor alpha_i = 1 - beta_i is 1 to O(1/N) and is left out).
The corrector replaces the state the predictor continues from (the callback protocol, _common.report), so
any predictor works, multistep ones included (their history keeps the outputs at the uncorrected points).
No corrector at sigma_max (x_T is already a prior sample) nor after the last step: score_sde corrects
before each predictor step instead, the same count plus one at sigma_max. NFE = the predictor's calls +
corrector_steps * (steps - 1): every corrector step is one denoiser call.

annealed_langevin: for each grid point after the first (the noise levels sigma_1 > ... > sigma_L =
sigma_min, x_T being a sample at sigma_max), `n_steps_each` Langevin steps with NCSN's step
e_i = step_lr (sigma_i / sigma_L)^2. NCSN: L = 10 levels from 1 to 0.01, 100 steps each, step_lr = 2e-5,
i.e. e_i / sigma_i^2 = step_lr / sigma_L^2 = 0.2 at every level; step_lr = None keeps that ratio on any
grid (step_lr = 0.2 sigma_L^2). e_i / sigma_i^2 >= 2 diverges (a Gaussian of variance sigma_i^2 is
then over-stepped) and is refused. No final denoising (denoise_to_zero adds one). NFE = steps * n_steps_each.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._common import coef, net_sigma, report
from .registry import get_solver, register

NCSN_RATIO = 2e-5 / 0.01**2  # NCSN's e_i / sigma_i^2


def _noise(x: Tensor, generator) -> Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def _norm(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1).norm(dim=1).reshape(-1, *([1] * (t.ndim - 1)))


def langevin_corrector_step(denoiser, x: Tensor, sigma: Tensor, net_sigma_: Tensor, snr: float,
                            generator=None, norms: str = "batch") -> Tensor:
    """One step of Alg. 4 at sigma: e = 2 (snr ||z|| / ||g||)^2, norms averaged over the batch (score_sde) or
    per sample ("sample": a sample near a mode, where ||g|| -> 0, then takes a huge step in low dimension)."""
    g = (denoiser(x, net_sigma_) - x) / coef(sigma, x) ** 2
    z = _noise(x, generator)
    nz, ng = _norm(z), _norm(g)
    if norms == "batch":
        nz, ng = nz.mean(), ng.mean()
    e = 2 * (snr * nz / ng.clamp_min(torch.finfo(x.dtype).tiny)) ** 2
    return x + e * g + torch.sqrt(2 * e) * z


def _predictor(predictor: str, predictor_options):
    spec = get_solver(predictor)
    return spec, {**spec.defaults, **dict(predictor_options or {})}


def pc(denoiser, x: Tensor, sigmas: Tensor, *, predictor: str = "ddpm", predictor_options: dict | None = None,
       corrector_steps: int = 1, snr: float = 0.16, norms: str = "batch", net_sigmas=None, callback=None,
       generator: torch.Generator | None = None) -> Tensor:
    spec, popts = _predictor(predictor, predictor_options)
    if spec.stochastic:
        popts["generator"] = generator
    n = len(sigmas) - 1

    def correct(info):
        i, y = info["i"], info["x"]
        if i < n - 1:
            for _ in range(int(corrector_steps)):
                y = langevin_corrector_step(denoiser, y, sigmas[i + 1], net_sigma(sigmas, net_sigmas, i + 1), snr,
                                            generator, norms)
        return report(callback, i, y, sigmas, info["denoised"])

    return spec.fn(denoiser, x, sigmas, net_sigmas=net_sigmas, callback=correct, **popts)


def _pc_calls(steps, predictor="ddpm", predictor_options=None, corrector_steps=1, snr=0.16, norms="batch", **o):
    _pc_check(None, dict(predictor=predictor, predictor_options=predictor_options, corrector_steps=corrector_steps,
                         snr=snr, norms=norms))  # the accounting runs first in sample()'s planning: refuse bad options here
    spec, popts = _predictor(predictor, predictor_options)
    return spec.n_calls(steps, **popts) + int(corrector_steps) * (steps - 1)


def _pc_check(sigmas, options):
    name = options.get("predictor")
    try:
        spec, _ = _predictor(name, options.get("predictor_options"))
    except ValueError as e:
        raise ValueError(f"pc: predictor={name!r}: {e}") from None
    if spec.adaptive or spec.name in ("pc", "annealed_langevin"):
        raise ValueError(f"pc: predictor={name!r} cannot be a predictor (adaptive solvers choose their own steps, "
                         "Langevin samplers are no predictors); use one with a fixed grid, e.g. ddpm, euler_maruyama, "
                         "ddim, dpmpp_2m.")
    snr = options.get("snr")
    if isinstance(snr, bool) or not isinstance(snr, (int, float)) or not snr > 0:
        raise ValueError(f"pc: snr={snr!r} must be > 0, the corrector's signal-to-noise ratio r (score_sde: 0.16 "
                         "for VE models, 0.01 for VP with reverse diffusion); use corrector_steps=0 for no corrector.")
    if options.get("norms", "batch") not in ("batch", "sample"):
        raise ValueError(f"pc: norms={options.get('norms')!r} must be batch (score_sde: batch-mean norms) or sample.")
    k = options.get("corrector_steps")
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"pc: corrector_steps={k!r} must be an integer >= 0 (Langevin steps after each predictor step).")


register("pc", n_calls=_pc_calls, order=0, differentiable=False, stochastic=True, check=_pc_check,
         description="predictor-corrector: any predictor of the zoo, then corrector_steps Langevin steps (snr r) "
                     "after each step but the last")(pc)


def _ald_calls(steps, n_steps_each=100, **o):
    _ald_check(None, dict(n_steps_each=n_steps_each))
    return steps * n_steps_each


@register("annealed_langevin", n_calls=_ald_calls, order=0,
          differentiable=False, stochastic=True,
          check=lambda sigmas, o: _ald_check(sigmas, o),
          description="NCSN annealed Langevin dynamics: n_steps_each Langevin steps at every grid sigma after the first")
def annealed_langevin(denoiser, x: Tensor, sigmas: Tensor, *, n_steps_each: int = 100, step_lr: float | None = None,
                      net_sigmas=None, callback=None, generator: torch.Generator | None = None) -> Tensor:
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    sigma_L = sigmas[-1]
    lr = NCSN_RATIO * sigma_L**2 if step_lr is None else torch.as_tensor(float(step_lr), dtype=torch.float64)
    D = None
    for i in range(sigmas.shape[0] - 1):
        s = sigmas[i + 1]
        e = coef(lr * (s / sigma_L) ** 2, x)
        for _ in range(int(n_steps_each)):
            D = denoiser(x, net_sigma(sigmas, net_sigmas, i + 1))
            x = x + e * (D - x) / coef(s, x) ** 2 + torch.sqrt(2 * e) * _noise(x, generator)
        x = report(callback, i, x, sigmas, D)
    return x


def _ald_check(sigmas, options):
    k = options.get("n_steps_each")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"annealed_langevin: n_steps_each={k!r} must be an integer >= 1 (NCSN: 100).")
    lr = options.get("step_lr")
    if lr is None or sigmas is None:
        return
    ratio = float(lr) / float(sigmas.min()) ** 2
    if not 0 < ratio < 2:
        raise ValueError(f"annealed_langevin: step_lr={lr} gives a Langevin step of {ratio:.3g} sigma_i^2 at every "
                         f"level (step_lr / sigma_L^2 with sigma_L = {float(sigmas.min()):.4g}); it must be in (0, 2) "
                         f"to be stable and small to be accurate: NCSN's 0.2 is step_lr = {0.2 * float(sigmas.min())**2:.3g}, "
                         "or leave step_lr=null for that.")
