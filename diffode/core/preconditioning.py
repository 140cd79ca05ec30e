"""The preconditionings of Karras et al. 2022 (EDM, Table 1): D(x; sigma) = c_skip x + c_out F(c_in x, c_noise).

A network trained under one of them is a VE denoiser on data in [-1, 1] (alpha = 1): diffode's D(x, sigma) as
it is. Kinds:

- edm: c_skip = sd^2 / (s^2 + sd^2), c_out = s sd / sqrt(s^2 + sd^2), c_in = 1 / sqrt(s^2 + sd^2), c_noise = ln(s) / 4
- vp:  c_skip = 1, c_out = -s, c_in = 1 / sqrt(s^2 + 1), c_noise = (M - 1) t(s), with the VP schedule
       sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1) inverted: t(s) = (sqrt(beta_min^2 + 2 beta_d ln(1 + s^2))
       - beta_min) / beta_d  (F predicts eps at the VP scale)
- ve:  c_skip = 1, c_out = s, c_in = 1, c_noise = ln(s / 2)
"""
from __future__ import annotations

import torch
from torch import Tensor

from .denoisers import edm_scalings

KINDS = ("edm", "vp", "ve")


def vp_t(sigma: Tensor, beta_d: float = 19.9, beta_min: float = 0.1) -> Tensor:
    """The VP time t with sigma_VP(t) = sigma."""
    return (torch.sqrt(beta_min ** 2 + 2 * beta_d * torch.log1p(sigma * sigma)) - beta_min) / beta_d


def scalings(kind: str, sigma: Tensor, sigma_data: float = 0.5, M: int = 1000, beta_d: float = 19.9,
             beta_min: float = 0.1) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(c_skip, c_out, c_in, c_noise) of preconditioning `kind` at sigma (any shape, float64 advised)."""
    if kind == "edm":
        return edm_scalings(sigma, sigma_data)
    one = torch.ones_like(sigma)
    if kind == "vp":
        return one, -sigma, 1.0 / torch.sqrt(sigma * sigma + 1), (M - 1) * vp_t(sigma, beta_d, beta_min)
    if kind == "ve":
        return one, sigma, one, torch.log(0.5 * sigma)
    raise ValueError(f"unknown preconditioning {kind!r}; choose one of {', '.join(KINDS)}")
