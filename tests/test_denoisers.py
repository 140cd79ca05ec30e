import math

import pytest
import torch
from torch import nn

from diffode.core.denoisers import (
    FiniteSetDenoiser, GaussianMixture, ModelDenoiser, edm_scalings, eps_from_v, eps_from_x0, make_gmm,
    v_from_x0_eps, x0_from_eps, x0_from_v,
)
from diffode.core.schedules import EDM, VE, DiscreteVP, VPCosine, VPLinear

D64 = torch.float64


def test_parameterization_round_trips():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 100, 5, dtype=D64, generator=g)
    for alpha, sigma in [(0.99, math.sqrt(1 - 0.99**2)), (0.01, math.sqrt(1 - 1e-4)), (1.0, 7.0)]:
        x_t = alpha * x0 + sigma * eps
        v = v_from_x0_eps(x0, eps, alpha, sigma)
        assert torch.allclose(x0_from_eps(x_t, eps, alpha, sigma), x0, atol=1e-12, rtol=1e-9)
        assert torch.allclose(eps_from_x0(x_t, x0, alpha, sigma), eps, atol=1e-12, rtol=1e-9)
        assert torch.allclose(x0_from_v(x_t, v, alpha, sigma), x0, atol=1e-12)
        assert torch.allclose(eps_from_v(x_t, v, alpha, sigma), eps, atol=1e-12)


class Oracle(nn.Module):
    """A 'network' that returns the exact eps / x0 / v / EDM-F of a GMM under a schedule."""

    def __init__(self, gmm, schedule, prediction):
        super().__init__()
        self.gmm, self.schedule, self.prediction = gmm, schedule, prediction
        self.dummy = nn.Parameter(torch.zeros((), dtype=D64))

    def forward(self, x_in, c):
        if self.prediction == "edm":
            sigma = torch.exp(4 * c)
            c_skip, c_out, c_in, _ = edm_scalings(sigma)
            x = x_in / c_in[:, None]
            return (self.gmm.denoise(x, 1.0, sigma) - c_skip[:, None] * x) / c_out[:, None]
        s = self.schedule
        t = self._t_from_cond(c)
        a, sg = s.alpha(t)[:, None], s.sigma(t)[:, None]
        x0 = self.gmm.denoise(x_in, a[:, 0], sg[:, 0])
        eps = eps_from_x0(x_in, x0, a, sg)
        return {"eps": eps, "x0": x0, "v": v_from_x0_eps(x0, eps, a, sg)}[self.prediction]

    def _t_from_cond(self, c):
        s = self.schedule
        if isinstance(s, DiscreteVP):
            return c / s.N + 1.0 / s.N
        if isinstance(s, VE):
            return s.t_from_ve_sigma(2 * torch.exp(c))
        return c / 999.0


@pytest.mark.parametrize("schedule", [VPLinear(), VPCosine(), DiscreteVP(), VE()], ids=["vp_linear", "vp_cosine", "vp_discrete", "ve"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_model_denoiser_is_exact_for_exact_networks(schedule, prediction):
    gmm = make_gmm(3, 4, seed=1)
    D = ModelDenoiser(Oracle(gmm, schedule, prediction), schedule, prediction)
    x = torch.randn(6, 3, dtype=D64) * 2
    for sigma in [schedule.sigma_min * 1.5, 1.0, schedule.sigma_max / 2]:
        assert torch.allclose(D(x * sigma, sigma), gmm(x * sigma, sigma), atol=1e-9, rtol=1e-9)


def test_model_denoiser_edm():
    gmm = make_gmm(3, 4, seed=2)
    D = ModelDenoiser(Oracle(gmm, EDM(), "edm"), EDM(), "edm")
    x = torch.randn(6, 3, dtype=D64)
    sig = torch.tensor([0.002, 0.1, 1, 5, 40, 80], dtype=D64)
    assert torch.allclose(D(x * sig[:, None], sig), gmm(x * sig[:, None], sig), atol=1e-10)


def test_model_denoiser_rejects_unknown_prediction():
    with pytest.raises(ValueError, match="choose one of"):
        ModelDenoiser(nn.Linear(2, 2), VPLinear(), "score")


def _gmm_full():
    covs = torch.tensor([[[1.0, 0.3, 0], [0.3, 0.5, 0.1], [0, 0.1, 0.2]], [[0.2, 0, 0], [0, 0.1, 0], [0, 0, 0.3]]], dtype=D64)
    return GaussianMixture([1.0, 2.0], [[0.0, 1, -1], [1, 0, 0.5]], covs=covs)


@pytest.mark.parametrize("gmm", [make_gmm(2, 8, layout="ring"), make_gmm(16, 5, seed=3), _gmm_full()], ids=["ring2d", "iso16d", "full3d"])
@pytest.mark.parametrize("alpha,sigma", [(1.0, 0.5), (0.3, math.sqrt(1 - 0.09)), (0.9999, 0.01), (1.0, 30.0)])
def test_gmm_denoiser_matches_tweedie_with_autograd_score(gmm, alpha, sigma):
    x = (torch.randn(16, gmm.dim, dtype=D64, generator=torch.Generator().manual_seed(0)) * 1.3).requires_grad_(True)
    (score,) = torch.autograd.grad(gmm.log_prob(x, alpha, sigma).sum(), x)
    tweedie = (x + sigma**2 * score) / alpha
    assert torch.allclose(gmm.denoise(x.detach(), alpha, sigma), tweedie, atol=1e-10, rtol=1e-9)
    assert torch.allclose(gmm.score(x.detach(), alpha, sigma), score, atol=1e-10, rtol=1e-9)


def test_gmm_log_prob_is_normalised_and_samples_match_moments():
    gmm = _gmm_full()
    g = torch.Generator().manual_seed(0)
    xs = gmm.sample(200_000, g)
    pi = gmm.log_pi.exp()
    mean = (pi[:, None] * gmm.mu).sum(0)
    assert torch.allclose(xs.mean(0), mean, atol=0.01)
    # single-component Gaussian: log_prob equals torch's MultivariateNormal
    one = GaussianMixture([1.0], gmm.mu[:1], covs=gmm.covariances[:1])
    mvn = torch.distributions.MultivariateNormal(0.5 * gmm.mu[0], gmm.covariances[0] * 0.25 + 0.5**2 * torch.eye(3, dtype=D64))
    x = torch.randn(5, 3, dtype=D64)
    assert torch.allclose(one.log_prob(x, 0.5, 0.5), mvn.log_prob(x), atol=1e-12)


def test_gmm_std_matches_samples():
    gmm = make_gmm(16, 5, seed=3)
    xs = gmm.sample(100_000, torch.Generator().manual_seed(1))
    assert abs(gmm.std - float(((xs - xs.mean(0)) ** 2).mean().sqrt())) < 0.01


def test_finite_set_is_dirac_mixture_and_tends_to_nearest_point():
    Y = torch.randn(10, 3, dtype=D64)
    F = FiniteSetDenoiser(Y)
    G = GaussianMixture(torch.ones(10), Y, stds=0.0)
    x = torch.randn(4, 3, dtype=D64) * 2
    assert torch.allclose(F(x, 0.7), G(x, 0.7), atol=1e-13)
    nearest = Y[torch.cdist(x, Y).argmin(1)]
    assert torch.allclose(F(x, 1e-3), nearest, atol=1e-9)
    assert torch.allclose(F(x, 1e4), Y.mean(0).expand(4, 3), atol=1e-6)
