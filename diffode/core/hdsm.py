"""High-order denoising score matching (Lu, Zheng, Bao, Chen, Li, Zhu, ICML 2022, "Maximum likelihood training for
score-based diffusion ODEs by high-order denoising score matching"; LuChengTHU/mle_score_ode losses.py).

First-order DSM fits the score, which bounds the KL of the diffusion SDE but not of the ODE: the ODE's
KL(q0 || p_ODE) is also bounded by the errors of the score's Jacobian (second order) and of the gradient of
its trace (third order). These losses train them, on the denoiser, in VE coordinates (x = x0 + sigma z):

    h   = z - eps_hat_sg,     eps_hat = (x - D(x, sigma)) / sigma   (stop-gradient: h is the first-order
                                                                      model's residual, the paper's z + sigma s_sg)
    J   = dD/dx = sigma^2 grad^2 log p + I  (so J v is the paper's sigma^2 J_s v + v),  v Rademacher

    L2_trace = ((v^T J v - (v^T h)^2) / d)^2
    L2_frob  = ||J v - (v^T h) h||^2 / d^2
    L3       = ||sigma grad_x(v^T J v) + (v^T h)^2 h - (v^T J v)_sg h - 2 (v^T h) (J v)_sg||^2 / d^3

(batch means). Their minimisers are the second- and third-order Tweedie identities: J = E[h h^T | x]
(= Cov[x0 | x] / sigma^2) and sigma grad_x(v^T J v) = E[-(v^T h)^2 h + (v^T J v) h + 2 (v^T h) J v | x]; for
Gaussian data the latter is 0 (tests/test_hdsm.py). The paper's scale factors are the powers of d that
make each term O(1) like the eps-MSE of first order, and its weighting is unit weights L1 + L2 + L3
(`score_matching_order` switches terms on); the trace-only variant keeps L2_trace alone.

J v is a Jacobian-vector product through the network, taken by the double-VJP trick (J v = d/du [(J^T u) . v]),
so any denoiser module works and the loss is differentiable in its parameters; L3 differentiates once more.
Cost per update (the digits UNet, batch 128, one thread, side by side on a loaded machine): about 6x a
first-order step for order 2 and 9x for order 3.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _b(v: Tensor, x: Tensor) -> Tensor:
    return v.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner product, shaped to broadcast over a [B, ...] tensor."""
    return (a * b).reshape(a.shape[0], -1).sum(1).reshape(-1, *([1] * (a.ndim - 1)))


def jvp(D: Tensor, x: Tensor, v: Tensor) -> Tensor:
    """(dD/dx) v for D computed from x (requires_grad), with the graph kept (create_graph) for training."""
    u = torch.zeros_like(D, requires_grad=True)
    (jtu,) = torch.autograd.grad(D, x, grad_outputs=u, create_graph=True)
    (jv,) = torch.autograd.grad(jtu, u, grad_outputs=v, create_graph=True)
    return jv


def hdsm_residuals(denoiser, x0: Tensor, sigma: Tensor, z: Tensor, v: Tensor, order: int = 2) -> dict[str, Tensor]:
    """The per-sample residuals whose squares the losses are, at x = x0 + sigma z (sigma [B] VE sigmas, v a
    Rademacher probe like x0): "trace" = v^T J v - (v^T h)^2 [B], "frob" = J v - (v^T h) h, and (order 3)
    "third" = sigma grad_x(v^T J v) + (v^T h)^2 h - (v^T J v)_sg h - 2 (v^T h) (J v)_sg. Each has conditional
    mean 0 given x at the optimum (the Tweedie identities); the last two terms of "third" have mean 0 anyway
    and only reduce its variance, as in the paper."""
    if order not in (2, 3):
        raise ValueError(f"high-order DSM order must be 2 or 3, got {order!r}")
    s = _b(sigma, x0)
    x = (x0 + s * z).detach().requires_grad_(True)
    D = denoiser(x, sigma)
    h = (z - (x - D) / s).detach()
    v = v.to(D.dtype)
    jv = jvp(D, x, v)
    vh, vjv = _dot(v, h), _dot(v, jv)
    out = {"trace": (vjv - vh * vh).reshape(-1), "frob": jv - vh * h}
    if order == 3:
        (grad_tr,) = torch.autograd.grad(vjv.sum(), x, create_graph=True)  # grad_x (v^T J v)
        out["third"] = s * grad_tr + vh * vh * h - vjv.detach() * h - 2 * vh * jv.detach()
    return out


def hdsm_losses(denoiser, x0: Tensor, sigma: Tensor, z: Tensor, v: Tensor, order: int = 2,
                trace_only: bool = False) -> dict[str, Tensor]:
    """{"dsm2": L2_trace (+ L2_frob unless trace_only), "dsm3": L3 (order 3)}: batch means (module docstring)."""
    r = hdsm_residuals(denoiser, x0, sigma, z, v, order)
    d, B = x0[0].numel(), x0.shape[0]
    l2 = ((r["trace"] / d) ** 2).mean()
    if not trace_only:
        l2 = l2 + (r["frob"] ** 2).reshape(B, -1).sum(1).mean() / d**2
    out = {"dsm2": l2}
    if order == 3:
        out["dsm3"] = (r["third"] ** 2).reshape(B, -1).sum(1).mean() / d**3
    return out
