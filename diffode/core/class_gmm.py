"""An exact class-conditional denoiser: a Gaussian mixture whose components carry class labels.

p0(x | c) is the mixture of class c's components (weights renormalised), p0(x) the whole mixture, so both
D_c = E[x0 | x, c] and D_u = E[x0 | x] are closed form at every sigma: the testbed of classifier-free
guidance (core/guidance.py), whose guided field D_u + w (D_c - D_u) is then exact too.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .denoisers import GaussianMixture
from .schedules import DTYPE


class ClassConditionalGMM(nn.Module):
    """D(x, sigma, cond=c): c class labels [B] in 0..num_classes-1, or num_classes (the null label) / None for
    the unconditional mixture. `classes[k]` is the class of component k."""

    def __init__(self, gmm: GaussianMixture, classes):
        super().__init__()
        classes = torch.as_tensor(classes, dtype=torch.long).reshape(-1)
        if classes.numel() != gmm.mu.shape[0]:
            raise ValueError(f"{classes.numel()} component classes for {gmm.mu.shape[0]} components")
        self.gmm = gmm
        self.register_buffer("classes", classes)
        self.num_classes = int(classes.max()) + 1
        self.dim = gmm.dim

    def denoise(self, x: Tensor, alpha, sigma, cond=None) -> Tensor:
        a, z, c, log_w = self.gmm._terms(x, alpha, sigma)
        if cond is not None:
            cond = torch.as_tensor(cond, device=x.device).reshape(-1).expand(x.shape[0])
            keep = (self.classes[None] == cond[:, None]) | (cond[:, None] == self.num_classes)
            log_w = log_w.masked_fill(~keep, float("-inf"))
        w = torch.softmax(log_w, dim=-1)
        g = self.gmm
        D_k = g.mu[None] + a * torch.einsum("kde,bke->bkd", g.U, g.lam[None] * z / c)
        return (w[..., None] * D_k).sum(1).reshape(x.shape).to(x.dtype)

    def forward(self, x: Tensor, sigma, cond=None) -> Tensor:
        return self.denoise(x, 1.0, sigma, cond)

    def sample(self, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Exact samples of p0(x | c), one per label."""
        g = self.gmm
        pi = g.log_pi.exp()
        out = torch.empty(labels.shape[0], g.dim, dtype=DTYPE)
        for c in labels.unique():
            rows = (labels == c).nonzero().reshape(-1)
            p = torch.where(self.classes == c, pi, torch.zeros_like(pi))
            k = torch.multinomial(p, rows.numel(), replacement=True, generator=generator)
            e = torch.randn(rows.numel(), g.dim, dtype=DTYPE, generator=generator)
            out[rows] = g.mu[k] + torch.einsum("nde,ne->nd", g.U[k], g.lam[k].sqrt() * e)
        return out
