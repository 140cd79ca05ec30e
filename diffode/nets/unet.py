"""A small UNet in the DDPM++ / EDM SongUNet style: net(x, c_noise) -> tensor of x's shape.

ResBlocks with GroupNorm + SiLU, the noise embedding added inside each block, skip
connections from encoder to decoder scaled by 1/sqrt(2), self-attention at chosen
resolutions, zero-initialised output convolutions (so a fresh net predicts 0). The middle
block's output is the bottleneck feature map that AMED's predictor reads
(`forward(x, c, return_bottleneck=True)` or `bottleneck(x, c)`).
"""
from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .embedding import count_parameters, label_embedding, make_embedding

log = logging.getLogger(__name__)


def _groups(ch: int) -> int:
    g = min(32, max(ch // 4, 1))
    while ch % g:
        g -= 1
    return g


def _zero(m: nn.Module) -> nn.Module:
    for p in m.parameters():
        nn.init.zeros_(p)
    return m


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_ch: int, dropout: float = 0.0, attention: bool = False,
                 channels_per_head: int = 64):
        super().__init__()
        self.norm0 = nn.GroupNorm(_groups(in_ch), in_ch)
        self.conv0 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.affine = nn.Linear(emb_ch, out_ch)
        self.norm1 = nn.GroupNorm(_groups(out_ch), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.attn = SelfAttention(out_ch, channels_per_head) if attention else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        h = h + self.affine(emb)[:, :, None, None]
        h = self.conv1(self.dropout(F.silu(self.norm1(h))))
        x = (h + self.skip(x)) * (1 / math.sqrt(2))
        return x if self.attn is None else self.attn(x)


class SelfAttention(nn.Module):
    def __init__(self, ch: int, channels_per_head: int = 64):
        super().__init__()
        self.heads = max(ch // channels_per_head, 1)
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = _zero(nn.Conv2d(ch, ch, 1))

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W).unbind(1)
        a = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return (x + self.proj(a.transpose(-1, -2).reshape(B, C, H, W))) * (1 / math.sqrt(2))


class UNet(nn.Module):
    """Args:
        resolution: input height = width (must be divisible by 2^(len(channel_mult) - 1)).
        in_channels / out_channels: image channels (out defaults to in).
        model_channels: base width; level i has model_channels * channel_mult[i] channels.
        num_res_blocks: ResBlocks per level in the encoder (the decoder has one more).
        attn_resolutions: resolutions (feature-map sizes) with self-attention.
        embedding: 'positional' (DDPM++) or 'fourier' (NCSN++) embedding of c_noise.
        embedding_scale: multiplies c_noise before the positional embedding / the std of
            the Fourier frequencies.
        num_classes: class-conditional with that many labels (a learned embedding added to the noise
            embedding, plus the null label num_classes for label dropout); null: unconditional.
    """

    def __init__(self, resolution: int = 32, in_channels: int = 3, out_channels: int | None = None,
                 model_channels: int = 64, channel_mult=(1, 2, 2), num_res_blocks: int = 2,
                 attn_resolutions=(16,), dropout: float = 0.0, embedding: str = "positional",
                 embedding_scale: float | None = None, channels_per_head: int = 64, num_classes: int | None = None):
        super().__init__()
        channel_mult, attn_resolutions = tuple(channel_mult), tuple(attn_resolutions)
        levels = len(channel_mult)
        if resolution % 2 ** (levels - 1):
            raise ValueError(f"UNet resolution {resolution} is not divisible by 2^{levels - 1} "
                             f"(channel_mult has {levels} levels); use fewer levels in model.channel_mult")
        out_channels = out_channels or in_channels
        self.resolution, self.in_channels, self.out_channels = resolution, in_channels, out_channels
        emb_ch = 4 * model_channels
        self.emb = make_embedding(embedding, model_channels, embedding_scale)
        self.emb_mlp = nn.Sequential(nn.Linear(model_channels, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        self.num_classes = num_classes
        self.label_emb = label_embedding(num_classes, emb_ch)
        self.conv_in = nn.Conv2d(in_channels, model_channels, 3, padding=1)

        def block(cin, cout, res):
            return ResBlock(cin, cout, emb_ch, dropout, res in attn_resolutions, channels_per_head)

        self.enc = nn.ModuleList()
        skips, ch, res = [model_channels], model_channels, resolution
        for i, mult in enumerate(channel_mult):
            if i > 0:
                self.enc.append(Downsample(ch))
                res //= 2
                skips.append(ch)
            for _ in range(num_res_blocks):
                self.enc.append(block(ch, model_channels * mult, res))
                ch = model_channels * mult
                skips.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_ch, dropout, True, channels_per_head),
                                  ResBlock(ch, ch, emb_ch, dropout, False, channels_per_head)])
        self.bottleneck_channels, self.bottleneck_resolution = ch, res
        self.dec = nn.ModuleList()
        for i, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                self.dec.append(block(ch + skips.pop(), model_channels * mult, res))
                ch = model_channels * mult
            if i > 0:
                self.dec.append(Upsample(ch))
                res *= 2
        self.norm_out = nn.GroupNorm(_groups(ch), ch)
        self.conv_out = _zero(nn.Conv2d(ch, out_channels, 3, padding=1))
        log.info("UNet: %s parameters (resolution %d, channels %d x %s, %d res blocks, attention at %s)",
                 f"{count_parameters(self):,}", resolution, model_channels, channel_mult, num_res_blocks,
                 attn_resolutions)

    def forward(self, x: Tensor, c_noise: Tensor, cond: Tensor | None = None, return_bottleneck: bool = False):
        """cond: class labels [B] (num_classes = the null label; None: null for all) of a conditional net."""
        emb = self.emb_mlp(self.emb(c_noise.reshape(-1).expand(x.shape[0])).to(x.dtype))
        if self.label_emb is not None:
            emb = emb + self.label_emb(cond, x.shape[0]).to(x.dtype)
        elif cond is not None:
            raise ValueError("this UNet is unconditional (num_classes null) but was given a condition")
        h = self.conv_in(x)
        hs = [h]
        for m in self.enc:
            h = m(h) if isinstance(m, Downsample) else m(h, emb)
            hs.append(h)
        for m in self.mid:
            h = m(h, emb)
        feats = h
        for m in self.dec:
            h = m(h) if isinstance(m, Upsample) else m(torch.cat([h, hs.pop()], dim=1), emb)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return (out, feats) if return_bottleneck else out

    def bottleneck(self, x: Tensor, c_noise: Tensor, cond: Tensor | None = None) -> Tensor:
        """The middle block's features [B, bottleneck_channels, r, r] (r = resolution / 2^(levels-1))."""
        return self.forward(x, c_noise, cond, return_bottleneck=True)[1]


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
