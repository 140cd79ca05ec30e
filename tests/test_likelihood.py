"""The PF-ODE likelihood (diffode/core/likelihood.py) against closed forms: the divergence against autograd's full
Jacobian, a single Gaussian, mixtures smoothed to sigma_min (2-D / 16-D, EDM and VP ranges), Hutchinson's
unbiasedness on a linear field and through the whole solve, and the coverage of its interval over data points."""
from __future__ import annotations

import math

import pytest
import torch

from diffode.core.denoisers import GaussianMixture, make_gmm
from diffode.core.likelihood import (DivergenceAugmented, check_likelihood_config, gaussian_prior_logp,
                                     log_likelihood, rademacher, trace_exact, trace_hutchinson)

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64
RANGES = {"edm": (0.002, 80.0), "vp_linear": (0.01, 152.0)}  # VP-linear's VE range at t in [1e-3, 1]


def test_ve_pf_ode_divergence_is_the_full_jacobian_trace():
    G = make_gmm(3, components=4, seed=2, std=0.3)
    x = G.sample(5, torch.Generator().manual_seed(0)) + 0.2
    sigma = torch.tensor(0.7, dtype=F64)
    aug = DivergenceAugmented(G, (3,), "exact")
    y = torch.cat([x, torch.zeros(5, 1, dtype=F64)], 1)
    div_aug = (y - aug(y, sigma))[:, 3] / sigma  # what every solver sees in the extra coordinate
    for b in range(5):
        J = torch.autograd.functional.jacobian(lambda z: (z - G(z[None], sigma)[0]) / sigma, x[b])
        assert float(div_aug[b]) == pytest.approx(float(torch.trace(J)), abs=1e-12)


def test_hutchinson_is_unbiased_with_the_rademacher_variance_on_a_linear_field():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(6, 6, dtype=F64, generator=g)
    x = torch.randn(1, 6, dtype=F64).expand(40000, 6).clone().requires_grad_(True)
    D = x @ A.T
    v = rademacher((1, 40000, 6), g)
    est = torch.stack([(torch.autograd.grad(D, x, v[0], retain_graph=True)[0] * v[0]).sum(1)])[0]
    As = 0.5 * (A + A.T)
    var = 2 * (As.square().sum() - As.diagonal().square().sum())  # Rademacher: off-diagonal part only
    se = math.sqrt(float(var) / 40000)
    assert abs(float(est.mean() - torch.trace(A))) < 4 * se
    assert float(est.var()) == pytest.approx(float(var), rel=0.05)
    assert torch.allclose(trace_exact(D, x), torch.trace(A).expand(40000))
    assert torch.allclose(trace_hutchinson(D, x, v), est)


def test_single_gaussian_closed_form():
    """N(mu, diag tau^2): the exact flow x_T = mu + sqrt(C_max / C_min) (x - mu) makes the model's density with
    the Gaussian prior a closed form; the data's own log N(x; mu, tau^2 + sigma_min^2) differs by the prior gap."""
    mu, tau = torch.tensor([0.5, -1.0, 0.2], dtype=F64), torch.tensor([0.3, 1.0, 2.0], dtype=F64)
    G = GaussianMixture([1.0], mu[None], stds=tau[None])
    lo, hi = 0.002, 80.0
    x = G.sample(16, torch.Generator().manual_seed(3))
    C0, C1 = tau**2 + lo**2, tau**2 + hi**2
    x_T = mu + torch.sqrt(C1 / C0) * (x - mu)
    model = gaussian_prior_logp(x_T, hi) + 0.5 * torch.log(C1 / C0).sum()
    logp = log_likelihood(G, x, sigma_min=lo, sigma_max=hi, rtol=1e-9, atol=1e-9)
    assert float((logp - model).abs().max()) < 1e-6
    truth = torch.distributions.Normal(mu, C0.sqrt()).log_prob(x).sum(1)
    # the data's own density differs by the Gaussian prior's gap at sigma_max = 80: |mu . x_T| / sigma_max^2 ~ 0.02
    assert float((logp - truth).abs().max()) < 0.05


@pytest.mark.parametrize("dim", [2, 16])
@pytest.mark.parametrize("schedule", sorted(RANGES))
def test_mixture_log_density_equals_the_smoothed_closed_form(dim, schedule):
    """float64, exact trace, rk45 at tight tolerance: the exact denoiser makes the ODE the true one, so the
    only approximation left is the prior at sigma_max. With the mixture's exact p_{sigma_max} as prior the ODE
    log-density equals log p_{sigma_min} within 1e-3 nats (1e-5 measured); with the default N(0, sigma_max^2 I)
    it is off by exactly the prior gap log p_{sigma_max}(x_T) - log N(x_T; 0, sigma_max^2 I) at each point."""
    lo, hi = RANGES[schedule]
    G = make_gmm(dim, components=8, seed=0, layout="ring" if dim == 2 else "random", std=0.1)
    x = G.sample(6, torch.Generator().manual_seed(0))
    exact = G.log_prob(x, 1.0, lo)
    tol = 1e-7 if dim == 2 else 1e-6
    logp, info = log_likelihood(G, x, sigma_min=lo, sigma_max=hi, trace="exact", rtol=tol, atol=tol,
                                prior=lambda z: G.log_prob(z, 1.0, hi), return_info=True)
    assert info["trace"] == "exact" and info["vjps"] == dim * info["nfe"]
    assert float((logp - exact).abs().max()) < 1e-3
    gap = G.log_prob(info["x_T"], 1.0, hi) - gaussian_prior_logp(info["x_T"], hi)
    default = info["delta_logp"] + gaussian_prior_logp(info["x_T"], hi)
    assert float((default - (exact - gap)).abs().max()) < 1e-3


def _cross_entropy(G, lo, n=400_000):
    x = G.sample(n, torch.Generator().manual_seed(99))
    return float(-G.log_prob(x, 1.0, lo).mean())


def test_hutchinson_estimate_is_unbiased_through_the_solve():
    """One point, 2000 probe draws (one per copy): their mean is the exact-trace log-density."""
    G = make_gmm(2, components=8, layout="ring", std=0.1)
    x = G.sample(1, torch.Generator().manual_seed(5)).expand(2000, 2).clone()
    kw = dict(sigma_min=0.002, sigma_max=80.0, rtol=1e-6, atol=1e-6)
    h = log_likelihood(G, x, trace="hutchinson", generator=torch.Generator().manual_seed(1), **kw)
    e = log_likelihood(G, x[:1], trace="exact", **kw)
    assert float(h.std()) > 0.05  # the probes do matter here
    assert abs(float(h.mean() - e[0])) < 4 * float(h.std()) / math.sqrt(2000)


def test_hutchinson_interval_covers_the_exact_value():
    """50 repeats of 100 fresh data points, one probe each: the 95% interval over data points of the mean NLL
    covers the exact E_{x ~ p0}[-log p_{sigma_min}(x)] (closed form, Monte Carlo over 400k points) in >= 90%."""
    G = make_gmm(2, components=8, layout="ring", std=0.1)
    lo, hi, reps, n = 0.002, 80.0, 50, 100
    truth = _cross_entropy(G, lo)
    # With a correct estimator the count is Binomial(50, 0.95): below 45 with probability 0.04 for a random seed.
    x = G.sample(reps * n, torch.Generator().manual_seed(11))
    nll = -log_likelihood(G, x, sigma_min=lo, sigma_max=hi, trace="hutchinson", rtol=1e-5, atol=1e-5,
                          generator=torch.Generator().manual_seed(12)).reshape(reps, n)
    half = 1.984 * nll.std(1) / math.sqrt(n)  # t quantile, 99 degrees of freedom
    covered = int(((nll.mean(1) - truth).abs() <= half).sum())
    assert covered >= 45, (covered, truth, nll.mean(1)[:5])


@pytest.mark.parametrize("kwargs, match", [
    (dict(probes=0), "at least one probe"),
    (dict(probes=-2), "at least one probe"),
    (dict(solver="ddpm", nfe=10), "stochastic"),
    (dict(solver="euler_maruyama", nfe=10), "stochastic"),
    (dict(trace="sometimes"), "trace='sometimes' is unknown"),
])
def test_bad_configs_are_refused_in_one_paragraph(kwargs, match):
    calls = []
    G = make_gmm(2, components=2)
    with pytest.raises(ValueError, match=match) as e:
        log_likelihood(lambda x, s: calls.append(1) or G(x, s), torch.zeros(2, 2, dtype=F64), sigma_min=0.01,
                       sigma_max=10.0, **kwargs)
    assert "\n" not in str(e.value) and not calls
    with pytest.raises(ValueError, match=match):
        check_likelihood_config(kwargs.get("solver", "rk45"), kwargs.get("trace", "auto"), kwargs.get("probes", 1))
