"""Analytic-DPM (diffode/core/solvers/analytic_dpm.py): the variance within Theorem 2's bounds, equal to the
closed form for Gaussian data, exact sampling of Gaussian data at 10 steps, exact NFE, refusals."""
from __future__ import annotations

import pytest
import torch

from _reference import Recorder
from diffode.core.denoisers import GaussianMixture
from diffode.core.sample import check_sampling_config, prior_sample, sample
from diffode.core.solvers.analytic_dpm import (ddim_lambda2, estimate_eps_moments, optimal_variance,
                                               posterior_variance)

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64
MU, S_DATA = 0.3, 0.5
G = GaussianMixture([1.0], [[MU]], stds=[S_DATA])


def _exact_moments(sig):
    """E||eps_hat||^2/d for N(mu, s^2): eps_hat = sigma (x - mu) / (s^2 + sigma^2), so sigma^2 / (s^2 + sigma^2)."""
    return sig**2 / (S_DATA**2 + sig**2)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_variance_within_theorem_2_bounds(eta):
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        S = torch.exp(torch.empty((), dtype=F64).uniform_(-5, 4, generator=g))
        S1 = S * torch.empty((), dtype=F64).uniform_(0.05, 0.99, generator=g)
        m = torch.empty((), dtype=F64).uniform_(-0.5, 1.5, generator=g)  # estimates may leave [0, 1]
        var, lam2 = optimal_variance(m, S, S1, eta, data_radius=1.0)
        c2 = (1 - torch.sqrt(S1**2 - lam2) / S) ** 2
        upper = lam2 + c2 * torch.minimum(S**2, torch.tensor(1.0, dtype=F64))
        assert lam2 - 1e-15 <= var <= upper * (1 + 1e-12)
        if m >= 1:
            assert var == pytest.approx(float(lam2), abs=1e-15)
        if m <= 0:
            assert var == pytest.approx(float(upper), rel=1e-12)
    assert float(ddim_lambda2(torch.tensor(2.0), torch.tensor(1.0), 0.0)) == 0.0


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_equals_the_closed_form_for_gaussian_data(eta):
    """For N(mu, s^2) the reverse conditional q(x_s | x_r) of the DDIM family is Gaussian with variance
    lam^2 + (1 - sqrt(S'^2 - lam^2)/S)^2 s^2 S^2/(s^2 + S^2); for DDPM (eta = 1) that is also the Markov chain's
    (S^2 - S'^2)(S'^2 + s^2)/(s^2 + S^2). The analytic variance from the exact moments is exactly it, and from
    Monte Carlo moments within their error."""
    sig = check_sampling_config("ddpm", 10, "edm").sigmas
    S, S1 = sig[:-1], sig[1:]
    var, lam2 = optimal_variance(_exact_moments(S), S, S1, eta, data_radius=None)
    c = 1 - torch.sqrt(S1**2 - lam2) / S
    assert torch.allclose(var, lam2 + c**2 * S_DATA**2 * S**2 / (S_DATA**2 + S**2), rtol=1e-12)
    if eta == 1.0:
        assert torch.allclose(var, (S**2 - S1**2) * (S1**2 + S_DATA**2) / (S_DATA**2 + S**2), rtol=1e-12)
    x0 = G.sample(100_000, torch.Generator().manual_seed(0))
    mc = estimate_eps_moments(G, x0, S, torch.Generator().manual_seed(1))
    assert torch.allclose(mc, _exact_moments(S), atol=5 * (2 / 100_000) ** 0.5 * _exact_moments(S).max())
    v = posterior_variance(_exact_moments(S), S, None)
    assert torch.allclose(v, S_DATA**2 * S**2 / (S_DATA**2 + S**2), rtol=1e-12)


@pytest.mark.parametrize("name, baseline", [("analytic_ddpm", "ddpm"), ("analytic_ddim", "ddim")])
def test_samples_gaussian_data_exactly_at_10_steps(name, baseline):
    """Every analytic step is the exact reverse conditional for Gaussian data, so 10 steps give the exact
    final law: variance (s^2 + S'^2) - Var[x' | x] at the last, mean-only step. DDPM / DDIM miss it by far."""
    sig = check_sampling_config("ddpm", 10, "edm").sigmas
    x_T = prior_sample((200_000, 1), 80.0, torch.Generator().manual_seed(2))
    x = sample(G, x_T, name, nfe=10, grid="edm", eps_moments=_exact_moments(sig[:-1]),
               generator=torch.Generator().manual_seed(3))
    eta = 1.0 if name == "analytic_ddpm" else 0.0
    S, S1 = sig[-2], sig[-1]
    last, _ = optimal_variance(_exact_moments(S), S, S1, eta, None)
    want = S_DATA**2 + S1**2 - last
    se = float(want) * (2 / 200_000) ** 0.5
    assert abs(float(x.var()) - float(want)) < 4 * se
    assert abs(float(x.mean()) - MU) < 4 * float(want) ** 0.5 / 200_000**0.5
    base = sample(G, x_T, baseline, nfe=10, grid="edm", generator=torch.Generator().manual_seed(3))
    assert abs(float(base.var()) - float(want)) > 0.3 * float(want)


@pytest.mark.parametrize("name", ["analytic_ddpm", "analytic_ddim"])
def test_exact_nfe_on_any_step_subset(name):
    full = check_sampling_config("ddpm", 100, "logsnr").sigmas
    for k in (1, 2, 5, 10, 25):
        idx = torch.round(torch.linspace(0, 100, k + 1)).long()  # an even subsequence of the 100-step grid
        sub = full[idx]
        rec = Recorder(G)
        x = sample(rec, prior_sample((4, 1), 80.0), name, nfe=None, grid=sub, eps_moments=_exact_moments(sub[:-1]),
                   generator=torch.Generator().manual_seed(0))
        assert len(rec.sigmas) == k and bool(torch.isfinite(x).all())
        rec = Recorder(G)
        sample(rec, prior_sample((4, 1), 80.0), name, nfe=k, grid="edm",
               eps_moments=_exact_moments(check_sampling_config("ddpm", k, "edm").sigmas[:-1]))
        assert len(rec.sigmas) == k


@pytest.mark.parametrize("opts, match", [
    (dict(), "needs eps_moments"),
    (dict(eps_moments=torch.ones(3)), "has 3 values but the grid has 5 steps"),
    (dict(eps_moments=torch.ones(5), eta=1.5), "eta=1.5 must be in"),
    (dict(eps_moments=torch.ones(5), data_radius=-1.0), "data_radius=-1.0 must be > 0"),
])
def test_refused_in_one_paragraph_before_compute(opts, match):
    rec = Recorder(G)
    with pytest.raises(ValueError, match=match) as e:
        sample(rec, prior_sample((2, 1), 80.0), "analytic_ddim", nfe=5, grid="edm", **opts)
    assert "\n" not in str(e.value) and not rec.sigmas


def test_model_sample_computes_and_caches_the_moments(tmp_path, monkeypatch):
    """The general model-input hook: Model.sample estimates eps_moments for its grid from the model's training
    data (here the mixture's exact samples), caches them per model and grid, and the sweep needs nothing else."""
    import diffode.solver_inputs as si
    from diffode.models import load_model

    monkeypatch.setenv("DIFFODE_CACHE", str(tmp_path))
    model = load_model({"kind": "gmm", "preset": "gmm2d"})
    x_T = prior_sample((64, 2), model.sigma_max, torch.Generator().manual_seed(0))
    a = model.sample(x_T, 32, solver="analytic_ddpm", nfe=6, grid="edm", seed=0, mc_samples=500)
    files = list((tmp_path / "analytic_moments").glob("*.pt"))
    assert len(files) == 1
    sig = check_sampling_config("ddpm", 6, "edm", sigma_min=model.sigma_min, sigma_max=model.sigma_max).sigmas
    m = torch.load(files[0], weights_only=True)["data"]["value"]  # a diffode.cache entry
    want = estimate_eps_moments(model.denoiser, si.training_points(model, 500, 0), sig[:-1],
                                torch.Generator().manual_seed(1))
    assert torch.equal(m, want)
    calls = []
    with monkeypatch.context() as mp:
        mp.setattr("diffode.core.solvers.analytic_dpm.estimate_eps_moments", lambda *a, **k: calls.append(1))
        b = model.sample(x_T, 16, solver="analytic_ddpm", nfe=6, grid="edm", seed=0, mc_samples=500)  # the cache
    assert not calls and b.shape == a.shape
    c = model.sample(x_T, 32, solver="analytic_ddpm", nfe=6, grid="edm", seed=0, mc_samples=500)
    assert torch.equal(a, c)  # seeded per batch: reproducible
    model.sample(x_T, 32, solver="analytic_ddpm", nfe=7, grid="edm", seed=0, mc_samples=500)
    assert len(list((tmp_path / "analytic_moments").glob("*.pt"))) == 2  # another step set, another entry
