"""Embeddings of the scalar noise conditioning c_noise (DDPM++ / NCSN++ style)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class PositionalEmbedding(nn.Module):
    """Transformer sinusoids of c_noise (DDPM++): frequencies (1/max_positions)^(i/half)."""

    def __init__(self, num_channels: int, max_positions: int = 10000, scale: float = 1.0):
        super().__init__()
        half = num_channels // 2
        freqs = (1.0 / max_positions) ** (torch.arange(half, dtype=torch.float32) / max(half - 1, 1))
        self.register_buffer("freqs", freqs, persistent=False)
        self.scale = scale

    def forward(self, c: Tensor) -> Tensor:
        x = (self.scale * c.float()).reshape(-1, 1) * self.freqs[None]
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features of c_noise (NCSN++); fixed (not trained) frequencies ~ N(0, scale^2)."""

    def __init__(self, num_channels: int, scale: float = 16.0, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.randn(num_channels // 2, generator=g) * scale)

    def forward(self, c: Tensor) -> Tensor:
        x = c.float().reshape(-1, 1) * (2 * math.pi * self.freqs[None])
        return torch.cat([x.cos(), x.sin()], dim=1)


class LabelEmbedding(nn.Module):
    """A learned vector per class label, plus one for the null label (index num_classes) that stands for
    "no condition": classifier-free guidance trains it by label dropout and evaluates the unconditional
    model with it. `labels=None` is the null label for the whole batch."""

    def __init__(self, num_classes: int, num_channels: int):
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"num_classes={num_classes} must be >= 1 (null: an unconditional network)")
        self.num_classes = int(num_classes)
        self.table = nn.Embedding(self.num_classes + 1, num_channels)

    def forward(self, labels: Tensor | None, batch: int) -> Tensor:
        if labels is None:
            labels = torch.full((batch,), self.num_classes, dtype=torch.long, device=self.table.weight.device)
        return self.table(labels.reshape(-1).expand(batch).long())


def label_embedding(num_classes: int | None, num_channels: int) -> LabelEmbedding | None:
    """None for an unconditional network (its parameters, and so its checkpoints, stay as they were)."""
    return None if num_classes is None else LabelEmbedding(num_classes, num_channels)


def make_embedding(kind: str, num_channels: int, scale: float | None = None) -> nn.Module:
    if kind == "positional":
        return PositionalEmbedding(num_channels, scale=1.0 if scale is None else scale)
    if kind == "fourier":
        return FourierEmbedding(num_channels, scale=16.0 if scale is None else scale)
    raise ValueError(f"unknown embedding {kind!r}; choose 'positional' or 'fourier'")


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
