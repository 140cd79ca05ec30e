"""An MLP denoiser network for vector data: net(x [B, d], c_noise [B]) -> [B, d]."""
from __future__ import annotations

import logging

import torch.nn.functional as F
from torch import Tensor, nn

from .embedding import count_parameters, label_embedding, make_embedding

log = logging.getLogger(__name__)


class MLP(nn.Module):
    """Residual SiLU MLP; the noise embedding is added to every hidden layer (as a UNet ResBlock does).

    `forward(x, c, return_bottleneck=True)` also returns the last hidden layer [B, hidden],
    the analogue of the UNet's bottleneck features. num_classes: class-conditional (as the UNet).
    """

    def __init__(self, dim: int = 2, hidden: int = 256, depth: int = 4, emb_channels: int = 64,
                 embedding: str = "positional", embedding_scale: float | None = None, dropout: float = 0.0,
                 num_classes: int | None = None):
        super().__init__()
        self.dim = dim
        self.emb = make_embedding(embedding, emb_channels, embedding_scale)
        self.emb_mlp = nn.Sequential(nn.Linear(emb_channels, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.num_classes = num_classes
        self.label_emb = label_embedding(num_classes, hidden)
        self.inp = nn.Linear(dim, hidden)
        self.layers = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(depth)])
        self.emb_proj = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(depth)])
        self.norms = nn.ModuleList([nn.LayerNorm(hidden) for _ in range(depth)])
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        log.info("MLP: %s parameters (dim %d, hidden %d, depth %d)", f"{count_parameters(self):,}", dim, hidden, depth)

    def forward(self, x: Tensor, c_noise: Tensor, cond: Tensor | None = None, return_bottleneck: bool = False):
        emb = self.emb_mlp(self.emb(c_noise.reshape(-1).expand(x.shape[0])).to(x.dtype))
        if self.label_emb is not None:
            emb = emb + self.label_emb(cond, x.shape[0]).to(x.dtype)
        elif cond is not None:
            raise ValueError("this MLP is unconditional (num_classes null) but was given a condition")
        h = self.inp(x)
        for lin, proj, norm in zip(self.layers, self.emb_proj, self.norms):
            h = h + self.dropout(lin(F.silu(norm(h) + proj(emb))))
        out = self.out(F.silu(h))
        return (out, h) if return_bottleneck else out

    def bottleneck(self, x: Tensor, c_noise: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.forward(x, c_noise, cond, return_bottleneck=True)[1]
