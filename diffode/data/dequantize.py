"""Uniform dequantization of discrete data, and the bin width of the datasets that have one.

A dataset of integer levels k mapped linearly to x = a k + b has bins of width Delta = a in x. Adding
u - 1/2 (u ~ U[0, 1)^d) times Delta gives a continuous point y = x + (u - 1/2) Delta. A density p gives the
bin the probability P(k) = Delta^d E_u[p(y)], and log E_u[p(y)] >= E_u[log p(y)] (Jensen), so the discrete
NLL in bits per dimension is at most

    bpd = -E_u[log p(y)] / (d ln 2) - log2(Delta).

- digits (scikit-learn, 17 levels 0..16, x = k / 8 - 1 in diffode/data/digits.py): Delta = 1/8, so the
  offset is + 3 bits, the noise (u - 1/2) / 8 and the support [-1.0625, 1.0625). The uniform model over
  the 17 levels scores log2(17) = 4.087 bits/dim, the sanity ceiling.
- mnist, cifar10, image folders (8-bit images, x = k / 127.5 - 1): Delta = 2/255, + 6.994 bits (score_sde
  maps the bins to [k/256, (k+1)/256) * 2 - 1 instead, Delta = 1/128, + 7 bits: its figures are 0.006 bits
  lower on the same density).
Continuous data (the mixtures) have no bins: None, no offset.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

BIN_WIDTH = {"digits": 1.0 / 8.0, "mnist": 2.0 / 255.0, "cifar10": 2.0 / 255.0, "image_folder": 2.0 / 255.0}


def bin_width(dataset: str) -> float | None:
    """The bin width of a dataset's values in [-1, 1], None for continuous data (or an unknown name)."""
    return BIN_WIDTH.get(str(dataset))


def dequantize(x: Tensor, width: float | None, generator: torch.Generator | None = None) -> Tensor:
    """x + (u - 1/2) width, u ~ U[0, 1)^d; x itself when width is None."""
    if width is None:
        return x
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x + (u - 0.5) * float(width)


def bits_offset(width: float | None) -> float:
    """-log2(width): what the bins add to the bits per dimension of a density (0 for continuous data)."""
    return 0.0 if width is None else -math.log2(float(width))
