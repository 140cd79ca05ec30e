"""LPIPS through the `lpips` package (alex or vgg), offline.

lpips builds its backbone with torchvision's ImageNet weights, which torchvision loads from
$TORCH_HOME/hub/checkpoints when the file is there (no network then). We check that file
first and raise an error naming it and `diffode fetch-weights lpips-alex|lpips-vgg` when
it is missing, so LPIPS is never silently computed with a random backbone. The linear heads
ship inside the lpips wheel.

Images are in [-1, 1] (lpips' own convention). Inputs smaller than 32x32 (8x8 digits) are
upsampled to 32x32 and grey images get 3 channels, which AlexNet/VGG need; LD3 uses this
as a differentiable loss, so everything stays differentiable.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .weights import require_weights

MIN_SIZE = 32


def prepare(x: Tensor) -> Tensor:
    """[B, C, H, W] in [-1, 1] -> 3 channels, at least 32x32 (bilinear upsampling)."""
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    h, w = x.shape[-2:]
    if min(h, w) < MIN_SIZE:
        s = MIN_SIZE / min(h, w)
        x = F.interpolate(x, size=(round(h * s), round(w * s)), mode="bilinear", align_corners=False)
    return x


class LPIPS(nn.Module):
    """d(x, y) per sample, [B]. net: 'alex' or 'vgg'.

    random_backbone=True builds the backbone with random weights (lpips' pnet_rand): ONLY for
    tests that exercise the code path; its numbers mean nothing.
    """

    def __init__(self, net: str = "alex", random_backbone: bool = False):
        super().__init__()
        if net not in ("alex", "vgg"):
            raise ValueError(f"LPIPS net must be 'alex' or 'vgg', got {net!r}")
        if not random_backbone:
            require_weights(f"lpips-{net}")
        import lpips

        self.random_backbone = random_backbone
        self.net_name = net
        self.model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=random_backbone, verbose=False)
        self.model.eval().requires_grad_(False)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        x, y = prepare(x.float()), prepare(y.float())
        return self.model(x, y, normalize=False).reshape(x.shape[0])


def lpips_random_backbone_for_tests(net: str = "alex") -> LPIPS:
    return LPIPS(net, random_backbone=True)
