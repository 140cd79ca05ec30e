"""Exact and high-accuracy PF-ODE solutions that solver tests compare against (shared by all solver tests).

Two oracles, both in VE coordinates (dx/dsigma = (x - D(x, sigma)) / sigma, x_T = sigma_max z):

- `gaussian_flow(x_s, sigma_s, sigma_t, mu, tau)`: the closed-form flow of a single Gaussian
  N(mu, diag(tau^2)), x_t = mu + sqrt(C_t / C_s) (x_s - mu) with C = tau^2 + sigma^2 (per coordinate).
- `reference_solve(denoiser, x_T, sigma_max, sigma_min)`: torchdiffeq float64 adaptive Runge-Kutta
  (dopri8 by default, rtol = atol = 1e-10) in u = log sigma, where the ODE reads dx/du = x - D(x, e^u).
  In log-sigma time the field is O(|x|) at every noise level, so the solve is not stiff near sigma_min
  and steps stay evenly spread in lambda (the same time the logsnr grid is uniform in).
- `gmm_case(dim, ...)` / `gmm_reference(dim, ...)`: standard mixtures of the test suite with their
  start points and reference endpoints, cached per setting (one reference solve per setting per session).

Use: err = (solver_endpoint - gmm_reference(...)).abs().max(); measured orders are slopes of log err
against log steps (`empirical_order`).
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
from torchdiffeq import odeint

from diffode.core.denoisers import GaussianMixture, make_gmm

DTYPE = torch.float64
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def gaussian_flow(x_s, sigma_s, sigma_t, mu, tau):
    """Exact PF-ODE flow of N(mu, diag(tau^2)) from sigma_s to sigma_t (VE, alpha = 1)."""
    mu, tau = torch.as_tensor(mu, dtype=DTYPE), torch.as_tensor(tau, dtype=DTYPE)
    C_s, C_t = tau**2 + sigma_s**2, tau**2 + sigma_t**2
    return mu + torch.sqrt(C_t / C_s) * (x_s - mu)


def reference_solve(denoiser, x_T, sigma_max=SIGMA_MAX, sigma_min=SIGMA_MIN, rtol=1e-10, atol=1e-10,
                    method="dopri8"):
    """x at sigma_min from x_T at sigma_max: float64 adaptive RK in log-sigma time."""
    u = torch.tensor([math.log(sigma_max), math.log(sigma_min)], dtype=DTYPE)

    def field(u_, x):
        return x - denoiser(x, torch.exp(u_))

    with torch.no_grad():
        return odeint(field, x_T.to(DTYPE), u, rtol=rtol, atol=atol, method=method)[-1]


def make_test_gmm(dim: int) -> GaussianMixture:
    """The suite's mixtures: 2-D ring of 6 modes, or a random 16-D (or any-D) mixture of 5 anisotropic modes."""
    if dim == 2:
        return make_gmm(2, components=6, layout="ring", spread=1.0, std=0.3)
    return make_gmm(dim, components=5, seed=1, spread=1.5, std=0.5)


def start_points(n: int, dim: int, sigma_max=SIGMA_MAX, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return sigma_max * torch.randn(n, dim, dtype=DTYPE, generator=g)


@lru_cache(maxsize=None)
def _cached(dim, n, seed, sigma_max, sigma_min):
    gmm = make_test_gmm(dim)
    x_T = start_points(n, dim, sigma_max, seed)
    return gmm, x_T, reference_solve(gmm, x_T, sigma_max, sigma_min)


def gmm_case(dim: int, n: int = 16, seed: int = 0, sigma_max=SIGMA_MAX, sigma_min=SIGMA_MIN):
    """(gmm, x_T, x_ref): a test mixture, start points at sigma_max and their reference endpoints at sigma_min."""
    gmm, x_T, ref = _cached(dim, n, seed, float(sigma_max), float(sigma_min))
    return gmm, x_T.clone(), ref.clone()


def gmm_reference(dim: int, n: int = 16, seed: int = 0, sigma_max=SIGMA_MAX, sigma_min=SIGMA_MIN):
    return gmm_case(dim, n, seed, sigma_max, sigma_min)[2]


def empirical_order(steps, errors) -> float:
    """Least-squares slope of -log(error) against log(steps)."""
    ls = torch.log(torch.as_tensor(steps, dtype=DTYPE))
    le = torch.log(torch.as_tensor(errors, dtype=DTYPE))
    ls_c = ls - ls.mean()
    return float(-(ls_c * (le - le.mean())).sum() / (ls_c * ls_c).sum())


class Recorder:
    """Wraps a denoiser: records the sigma of every call (a count independent of sample()'s own)."""

    def __init__(self, denoiser):
        self.denoiser, self.sigmas = denoiser, []

    def __call__(self, x, sigma):
        self.sigmas.append(torch.as_tensor(sigma).detach().clone())
        return self.denoiser(x, sigma)
