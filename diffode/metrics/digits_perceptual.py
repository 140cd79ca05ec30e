"""A perceptual distance for 8x8 digits, in the manner of LPIPS (Zhang et al. 2018) without learned heads.

LPIPS compares two images by the activations of a pretrained classifier: at every layer l the
activation of each position is divided by its norm over channels, and the distance is
sum_l mean_positions |y_hat^l - x_hat^l|^2 (LPIPS then weights the channels by learned linear heads;
here every channel weighs 1, LPIPS' "lin = 1" variant). No ImageNet network fits 8x8 grey digits,
so the backbone is the `perceptual` digits classifier (diffode/metrics/digits_classifier.py: width 16,
seed 1), a different network from the one whose features give the digits FID (width 32, seed 0),
as LPIPS' VGG is not FID's Inception. Its layers: the three conv+ReLU maps (8x8, 8x8, 4x4) and the
128-d penultimate layer (one position). Images in [-1, 1], [B, 1, 8, 8]; differentiable.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

EPS = 1e-10


def unit_channels(h: Tensor) -> Tensor:
    """h / |h| over the channel dimension (dim 1), at each position."""
    return h / (h.pow(2).sum(1, keepdim=True).sqrt() + EPS)


class DigitsPerceptual(nn.Module):
    """d(x, y) per sample, [B]."""

    def __init__(self):
        super().__init__()
        from .digits_classifier import load_classifier

        model, _ = load_classifier("perceptual")
        self.body = model.body.eval().requires_grad_(False)

    def activations(self, x: Tensor) -> list[Tensor]:
        """The output of every ReLU of the classifier's body (Dropout is the identity in eval mode)."""
        out = []
        for layer in self.body:
            x = layer(x)
            if isinstance(layer, nn.ReLU):
                out.append(x if x.ndim == 4 else x[:, :, None, None])
        return out

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape[1:] != (1, 8, 8) or y.shape != x.shape:
            raise ValueError(f"the digits perceptual distance compares [B, 1, 8, 8] images, got {tuple(x.shape)} and "
                             f"{tuple(y.shape)}; use distance=l2")
        dtype = next(self.body.parameters()).dtype
        d = 0.0
        for hx, hy in zip(self.activations(x.to(dtype)), self.activations(y.to(dtype))):
            d = d + (unit_channels(hx) - unit_channels(hy)).pow(2).sum(1).mean((1, 2))
        return d.to(x.dtype)
