"""High-order DSM (diffode/core/hdsm.py): the losses' minimisers on a Gaussian, the second- and third-order
identities on a non-Gaussian mixture, and the loss option of denoiser training."""
from __future__ import annotations

import pytest
import torch

from diffode.core.denoisers import GaussianMixture
from diffode.core.hdsm import hdsm_losses, hdsm_residuals
from diffode.core.likelihood import rademacher

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64
D_DIM, MU, S_DATA, SIGMA = 3, 0.4, 0.6, 0.5
A_STAR = S_DATA**2 / (S_DATA**2 + SIGMA**2)  # the Tweedie slope: D = mu + a* (x - mu), J = a* I = E[h h^T | x]


def _draws(n=200_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = MU + S_DATA * torch.randn(n, D_DIM, dtype=F64, generator=g)
    z = torch.randn(n, D_DIM, dtype=F64, generator=g)
    return x0, z, rademacher((n, D_DIM), g), torch.full((n,), SIGMA, dtype=F64)


class Probe(torch.nn.Module):
    """D(x) = mu + a* (x - mu) in value (the exact denoiser, so h is the true residual) with Jacobian c I and, for
    the third order, + theta (q(x) - q(x_sg)) with q_i = x_i^2 / 2, whose grad_x(v^T J v) is theta 1."""

    def __init__(self, c=A_STAR, theta=0.0):
        super().__init__()
        self.c = torch.nn.Parameter(torch.tensor(float(c), dtype=F64))
        self.theta = torch.nn.Parameter(torch.tensor(float(theta), dtype=F64))

    def forward(self, x, sigma):
        xs = x.detach()
        return MU + A_STAR * (x - MU) + (self.c - A_STAR) * (x - xs) + self.theta * 0.5 * (x * x - xs * xs)


def _vertex(f, points=(0.2, 0.5, 0.8)):
    """The minimiser of a quadratic through three evaluations."""
    (a, fa), (b, fb), (c, fc) = [(p, float(f(p))) for p in points]
    num = (b - a) ** 2 * (fb - fc) - (b - c) ** 2 * (fb - fa)
    den = (b - a) * (fb - fc) - (b - c) * (fb - fa)
    return b - 0.5 * num / den


@pytest.mark.parametrize("trace_only", [True, False])
def test_second_order_minimiser_on_a_gaussian(trace_only):
    """L2 is quadratic in the Jacobian c I; its minimiser is E[h h^T | x] = a* I (second-order Tweedie)."""
    x0, z, v, s = _draws()
    f = lambda c: hdsm_losses(Probe(c), x0, s, z, v, 2, trace_only)["dsm2"]  # noqa: E731
    assert _vertex(f) == pytest.approx(A_STAR, abs=0.01)


def test_first_order_minimiser_on_a_gaussian():
    """For the record, the first-order (x0-MSE) loss is minimised by the Tweedie slope a* as well."""
    x0, z, v, s = _draws()
    f = lambda c: ((MU + c * (x0 + SIGMA * z - MU) - x0) ** 2).mean()  # noqa: E731
    assert _vertex(f) == pytest.approx(A_STAR, abs=1e-3)


def test_third_order_minimiser_on_a_gaussian():
    """For Gaussian data the third-order target is 0: L3 is minimal at theta = 0 (its gradient vanishes there
    and points back to 0 on either side)."""
    x0, z, v, s = _draws()

    def grad(theta):
        m = Probe(theta=theta)
        hdsm_losses(m, x0, s, z, v, 3)["dsm3"].backward()
        return float(m.theta.grad)

    g0, gm, gp = grad(0.0), grad(-0.3), grad(0.3)
    assert gm < 0 < gp and abs(g0) < 0.05 * min(-gm, gp)
    assert _vertex(lambda t: hdsm_losses(Probe(theta=t), x0, s, z, v, 3)["dsm3"], (-0.3, 0.0, 0.3)) == \
        pytest.approx(0.0, abs=0.02)


def test_tweedie_identities_on_a_non_gaussian_mixture():
    """With the exact denoiser of a 1-D mixture, the residuals have conditional mean 0 given x (tested against
    test functions of x). Flipping the sign of the third-order term's gradient breaks it by ~80 standard errors."""
    G = GaussianMixture([0.3, 0.3, 0.4], [[-6 / 7], [-2 / 7], [4 / 7]], stds=[0.2, 0.15, 0.4])
    g = torch.Generator().manual_seed(0)
    n, sigma = 400_000, 0.2
    x0, z = G.sample(n, g), torch.randn(n, 1, dtype=F64, generator=g)
    r = hdsm_residuals(G, x0, torch.full((n,), sigma, dtype=F64), z, torch.ones(n, 1, dtype=F64), 3)
    x = (x0 + sigma * z).reshape(-1)
    for name in ("frob", "third"):
        res = r[name].detach().reshape(-1)
        for f in (torch.ones_like(x), x, torch.tanh(3 * x)):
            m, se = float((res * f).mean()), float((res * f).std()) / n**0.5
            assert abs(m) < 4 * se, (name, m, se)
