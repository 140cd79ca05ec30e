"""Exact metrics on Gaussian mixtures, where the denoiser and the data are known in closed form.

- endpoint RMSE: a solver's x(sigma_min) against a high-accuracy reference solve of the same
  PF-ODE from the same x_T (`reference_solve`). It isolates the solver's discretisation error.
- sliced Wasserstein-2 distance of samples to fresh exact samples of the mixture. Its value
  for two independent exact sets (`sw_noise_floor`) is the noise level a perfect sampler hits.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

DTYPE = torch.float64


def reference_solve(denoiser, x_T: Tensor, sigma_max: float, sigma_min: float, rtol: float = 1e-10,
                    atol: float | None = None, method: str = "dopri8") -> Tensor:
    """x(sigma_min) of the PF-ODE from x(sigma_max) = x_T: torchdiffeq in float64 at tight tolerance.

    Solved in u = log sigma, dx/du = x - D(x, e^u), which is O(1)-Lipschitz over the whole range
    (in sigma itself the stiffness grows like 1/sigma near sigma_min). torchdiffeq's error norm
    is the RMS over the batch, so rtol is an accuracy for the batch as a whole.
    """
    from torchdiffeq import odeint

    x = x_T.to(DTYPE)

    def f(u, y):
        return y - denoiser(y, torch.exp(u)).to(DTYPE)

    u = torch.log(torch.tensor([float(sigma_max), float(sigma_min)], dtype=DTYPE, device=x.device))
    with torch.no_grad():
        return odeint(f, x, u, method=method, rtol=rtol, atol=rtol if atol is None else atol)[-1]


def endpoint_rmse(x: Tensor, x_ref: Tensor) -> float:
    """Root mean squared error over all samples and coordinates."""
    return float(torch.sqrt(((x.to(DTYPE) - x_ref.to(DTYPE)) ** 2).mean()))


def random_directions(dim: int, n: int, generator: torch.Generator | None = None) -> Tensor:
    v = torch.randn(n, dim, dtype=DTYPE, generator=generator)
    return v / v.norm(dim=1, keepdim=True)


def sliced_wasserstein(x: Tensor, y: Tensor, n_projections: int = 256, seed: int = 0) -> float:
    """SW2(x, y) = sqrt(E_theta W2^2(theta.x, theta.y)) over random unit directions theta.

    The 1-D W2 between empirical measures is computed on quantiles, so the two sets may have
    different sizes (equal sizes reduce it to sorted differences). A fixed seed gives the same
    directions to every cell, so cells are compared on the same projections.
    """
    x, y = x.reshape(x.shape[0], -1).to(DTYPE), y.reshape(y.shape[0], -1).to(DTYPE)
    theta = random_directions(x.shape[1], n_projections, torch.Generator().manual_seed(seed))
    px, py = (x @ theta.T).sort(0).values, (y @ theta.T).sort(0).values
    if px.shape[0] != py.shape[0]:
        n = max(px.shape[0], py.shape[0])
        q = (torch.arange(n, dtype=DTYPE) + 0.5) / n
        px, py = _quantiles(px, q), _quantiles(py, q)
    return float(torch.sqrt(((px - py) ** 2).mean()))


def _quantiles(sorted_proj: Tensor, q: Tensor) -> Tensor:
    """Empirical quantile function (step function) of each column at levels q."""
    n = sorted_proj.shape[0]
    idx = torch.clamp((q * n).floor().long(), 0, n - 1)
    return sorted_proj[idx]


def sw_noise_floor(gmm, n: int, repeats: int = 5, n_projections: int = 256, seed: int = 0) -> tuple[float, float]:
    """Mean and std of SW2 between two independent exact sample sets of size n."""
    g = torch.Generator().manual_seed(10_000 + seed)
    vals = [sliced_wasserstein(gmm.sample(n, g), gmm.sample(n, g), n_projections, seed) for _ in range(repeats)]
    t = torch.tensor(vals, dtype=DTYPE)
    return float(t.mean()), float(t.std()) if repeats > 1 else math.nan
