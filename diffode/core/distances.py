"""Distances between two batches, one number per sample [B]: the plain ones (network distances, LPIPS and the
digits perceptual distance, live in diffode/metrics/; diffode.metrics.distance is the registry of all of them)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

HUBER_C_PER_SQRT_DIM = 0.00054  # iCT: c = 0.00054 sqrt(d), d the data dimension


def l2(a: Tensor, b: Tensor) -> Tensor:
    """Mean over dimensions of (a - b)^2 (the CM code's mean_flat, which its learning rates assume)."""
    return (a - b).flatten(1).pow(2).mean(1)


def l2_sum(a: Tensor, b: Tensor) -> Tensor:
    """|a - b|^2 summed over dimensions (AMED's paper)."""
    return (a - b).flatten(1).pow(2).sum(1)


def l1(a: Tensor, b: Tensor) -> Tensor:
    return (a - b).flatten(1).abs().mean(1)


def huber_c(dim: int) -> float:
    return HUBER_C_PER_SQRT_DIM * math.sqrt(dim)


def pseudo_huber(a: Tensor, b: Tensor, c: float | None = None) -> Tensor:
    """sqrt(|a - b|^2 + c^2) - c on the per-sample Euclidean norm (iCT), c = 0.00054 sqrt(d) by default.

    Written as |a - b|^2 / (sqrt(|a - b|^2 + c^2) + c), the same number without the cancellation that
    the plain form suffers once the student is close to its target (|a - b| << c)."""
    diff = (a - b).flatten(1)
    c = huber_c(diff.shape[1]) if c is None else float(c)
    sq = diff.pow(2).sum(1)
    return sq / (torch.sqrt(sq + c * c) + c)
