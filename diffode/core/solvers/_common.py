"""Small pieces every solver shares (not a solver module: the leading underscore keeps it out of the registry).

Conventions (VE coordinates, DESIGN.md): lambda = -log(sigma), h = lambda_next - lambda_cur > 0 when
sigma decreases. Coefficients are computed in float64 from the grid tensor and cast to x's dtype at
the last moment (`coef`), so a float32 network state is fine and gradients w.r.t. the sigmas flow
(no .item(), no Python floats from tensors, no in-place ops).

Callback protocol: after step i (from sigmas[i] to sigmas[i+1]) a solver calls
    callback(dict(i=i, x=x_next, sigma=sigmas[i+1], sigma_cur=sigmas[i], denoised=D))
with x_next the state at sigmas[i+1] and D the last denoiser output of that step. `report` does it, and
returns the state the solver continues from (the callback may return a replacement).
"""
from __future__ import annotations

import torch
from torch import Tensor


def lam(sigma: Tensor) -> Tensor:
    """Half log-SNR in VE coordinates: lambda = -log sigma."""
    return -torch.log(sigma)


def coef(c: Tensor, x: Tensor) -> Tensor:
    """A float64 scalar coefficient, cast to the state's dtype (keeps the autograd graph). A 1-d c holds
    one coefficient per sample (a per-sample AMED stage point) and is shaped to broadcast over x [B, ...]."""
    c = c.to(dtype=x.dtype)
    return c.reshape(-1, *([1] * (x.ndim - 1))) if c.ndim == 1 else c


def net_sigma(sigmas: Tensor, net_sigmas: Tensor | None, i: int) -> Tensor:
    """The sigma the network is conditioned on at grid point i (LD3's decoupled variant)."""
    return sigmas[i] if net_sigmas is None else net_sigmas[i]


def net_sigma_between(sigmas: Tensor, net_sigmas: Tensor | None, i: int, s_mid: Tensor) -> Tensor:
    """Conditioning sigma for an intermediate point s_mid in step i.

    Without decoupling it is s_mid itself. With decoupled net_sigmas the intermediate point sits at
    the same lambda fraction r between net_sigmas[i] and net_sigmas[i+1] as s_mid does between the
    step sigmas (r = 1 gives net_sigmas[i+1] exactly, so Heun's second call is the grid's own).
    """
    if net_sigmas is None:
        return s_mid
    r = torch.log(sigmas[i] / s_mid) / torch.log(sigmas[i] / sigmas[i + 1])
    return net_sigmas[i] * (net_sigmas[i + 1] / net_sigmas[i]) ** r


def lambda_midpoint(i: int, sigma_cur: Tensor, sigma_next: Tensor, x: Tensor) -> Tensor:
    """Default intermediate point of a two-stage step: the midpoint in lambda (geometric mean of sigmas)."""
    return torch.sqrt(sigma_cur * sigma_next)


def report(callback, i: int, x: Tensor, sigmas: Tensor, denoised: Tensor) -> Tensor:
    """Shows the state after step i to the callback and returns the state to continue from: x, or what
    the callback returned in its place (a corrector, solvers/langevin.py). Solvers write x = report(...)."""
    if callback is not None:
        out = callback(dict(i=i, x=x, sigma=sigmas[i + 1], sigma_cur=sigmas[i], denoised=denoised))
        if out is not None:
            return out
    return x


def weighted_sum(weights, tensors) -> Tensor:
    """sum_k w_k T_k for scalar (0-d) weights and same-shape tensors of any rank (no 4-D einsum).
    One state-sized op per term: each term after the first is a fused multiply-add (addcmul), which
    autograd differentiates in the weights and the tensors alike."""
    out = None
    for w, t in zip(weights, tensors):
        out = coef(w, t) * t if out is None else torch.addcmul(out, coef(w, t), t)
    return out
