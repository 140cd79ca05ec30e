"""What a training batch holds, for every method: images (or vectors), and labels when the dataset has them.

Datasets yield x or (x,) or (x, labels). Methods keep the labels and hand them to a class-conditional
model as its condition (core/conditioning.py); an unconditional model ignores them, so its training is
exactly what it was.
"""
from __future__ import annotations

import torch
from torch import Tensor


def split_batch(batch) -> tuple[Tensor, Tensor | None]:
    """(x0, labels or None) of a batch or of one dataset item."""
    if isinstance(batch, (list, tuple)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None


def condition_for(model, labels: Tensor | None):
    """The labels as `model`'s condition: themselves for a class-conditional model, None for an unconditional one."""
    return labels if labels is not None and getattr(model, "num_classes", None) is not None else None


def drop_labels(labels: Tensor, p: float, num_classes: int, generator: torch.Generator) -> Tensor:
    """Classifier-free guidance's label dropout (Ho & Salimans, Alg. 1): each label becomes the null label
    (index num_classes) with probability p, independently, drawn from `generator` (CPU)."""
    drop = torch.rand(labels.shape[0], generator=generator) < p
    return torch.where(drop.to(labels.device), torch.full_like(labels, num_classes), labels)
