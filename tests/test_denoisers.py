import math

import pytest
import torch
from torch import nn

from diffode.core.denoisers import (
    FiniteSetDenoiser, GaussianMixture, ModelDenoiser, eps_from_v, eps_from_x0, make_gmm,
    v_from_x0_eps, x0_from_eps, x0_from_v,
)
from diffode.core.schedules import EDM, VE, DiscreteVP, VPCosine, VPLinear, VPSchedule

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
    """A 'network' that returns the exact eps / x0 / v of a GMM at the true noise level of its input.

    It is told the VE sigma s of the call out of band (`self.s`, set by the test), and gets the
    schedule-space (alpha, sigma) from closed forms that share nothing with diffode's schedules:
    VP: alpha = 1 / sqrt(1 + s^2), sigma = s alpha; VE: alpha = 1, sigma = s. It records the
    conditioning value the wrapper hands it, which the test compares with the paper's conventions."""

    def __init__(self, gmm, vp: bool, prediction):
        super().__init__()
        self.gmm, self.vp, self.prediction = gmm, vp, prediction
        self.dummy = nn.Parameter(torch.zeros((), dtype=D64))
        self.s, self.seen_c = None, None

    def forward(self, x_in, c):
        self.seen_c = c
        s = torch.as_tensor(self.s, dtype=D64)
        a = 1 / torch.sqrt(1 + s * s) if self.vp else torch.ones_like(s)
        sg = s * a
        x0 = self.gmm.denoise(x_in, a, sg)
        eps = (x_in - a * x0) / sg
        return {"eps": eps, "x0": x0, "v": a * eps - sg * x0}[self.prediction]


def _vp_linear_t(s, beta_0=0.1, beta_1=20.0):
    # -2 log alpha = log(1 + s^2) = beta_0 t + (beta_1 - beta_0) t^2 / 2, solved for t >= 0 (float64 numpy)
    import numpy as np

    a, b, c = (beta_1 - beta_0) / 2, beta_0, -np.log1p(s * s)
    return (-b + np.sqrt(b * b - 4 * a * c)) / (2 * a)


@pytest.mark.parametrize("schedule", [VPLinear(), VPCosine(), DiscreteVP(), VE()], ids=["vp_linear", "vp_cosine", "vp_discrete", "ve"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_model_denoiser_is_exact_for_exact_networks(schedule, prediction):
    gmm = make_gmm(3, 4, seed=1)
    net = Oracle(gmm, isinstance(schedule, VPSchedule), prediction)
    D = ModelDenoiser(net, schedule, prediction)
    x = torch.randn(6, 3, dtype=D64) * 2
    for sigma in [schedule.sigma_min * 1.5, 1.0, schedule.sigma_max / 2]:
        net.s = sigma
        assert torch.allclose(D(x * sigma, sigma), gmm(x * sigma, sigma), atol=1e-9, rtol=1e-9)
        c = net.seen_c.to(D64)
        if isinstance(schedule, VPLinear):  # DDPM-style continuous time: the net sees 999 t
            assert torch.allclose(c, torch.full_like(c, 999 * _vp_linear_t(sigma)), rtol=1e-9)
        if isinstance(schedule, VE):  # NCSN++ conditions on log(sigma / 2)
            assert torch.allclose(c, torch.full_like(c, math.log(sigma / 2)), rtol=1e-9, atol=1e-12)


class EDMOracle(nn.Module):
    """The exact EDM network F of a GMM, from the preconditioning of Karras et al. (Table 1) written here:
    c_in = 1 / sqrt(s^2 + sd^2), c_noise = log(s) / 4, D = c_skip x + c_out F."""

    def forward(self, x_in, c):
        s, sd = torch.exp(4 * c.to(D64))[:, None], 0.5
        x = x_in * torch.sqrt(s * s + sd * sd)
        c_skip, c_out = sd * sd / (s * s + sd * sd), s * sd / torch.sqrt(s * s + sd * sd)
        return (self.gmm.denoise(x, 1.0, s[:, 0]) - c_skip * x) / c_out


def test_model_denoiser_edm():
    gmm = make_gmm(3, 4, seed=2)
    net = EDMOracle()
    net.gmm, net.dummy = gmm, nn.Parameter(torch.zeros((), dtype=D64))
    D = ModelDenoiser(net, EDM(), "edm")
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
