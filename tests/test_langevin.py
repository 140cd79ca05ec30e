"""Predictor-corrector and annealed Langevin (diffode/core/solvers/langevin.py): zero corrector steps are the
predictor bit for bit, exact NFE, the corrector's and ALD's stationary law on a Gaussian, the corrected state
carried on by the predictor, refusals before compute."""
from __future__ import annotations

import pytest
import torch

from _reference import Recorder
from diffode.core.denoisers import GaussianMixture, make_gmm
from diffode.core.sample import check_sampling_config, prior_sample, reachable_nfes, sample
from diffode.core.solvers.first_order import euler_step
from diffode.core.solvers.langevin import langevin_corrector_step

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64
GMM = make_gmm(2, components=4, seed=0, std=0.2)
PREDICTORS = ["ddpm", "euler_maruyama", "ddim", "heun", "dpmpp_2m", "dpmpp_3m", "unipc_bh2", "ipndm"]


def _x_T(n=16, dim=2, seed=0):
    return prior_sample((n, dim), 80.0, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("predictor", PREDICTORS)
def test_zero_corrector_steps_is_the_predictor(predictor):
    steps = 6
    sig = check_sampling_config("ddim", steps, "edm").sigmas
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    base = sample(GMM, _x_T(), predictor, nfe=None, grid=sig, generator=g())
    pc = sample(GMM, _x_T(), "pc", nfe=None, grid=sig, predictor=predictor, corrector_steps=0, generator=g())
    assert torch.equal(base, pc)


@pytest.mark.parametrize("predictor", ["ddpm", "ddim", "heun", "dpmpp_3m"])
@pytest.mark.parametrize("m", [1, 2])
def test_exact_nfe_counts_every_corrector_step(predictor, m):
    for nfe in reachable_nfes("pc", 20, predictor=predictor, corrector_steps=m):
        rec = Recorder(GMM)
        x = sample(rec, _x_T(4), "pc", nfe=nfe, grid="logsnr", predictor=predictor, corrector_steps=m,
                   generator=torch.Generator().manual_seed(0))
        steps = check_sampling_config("pc", nfe, "logsnr", predictor=predictor, corrector_steps=m).steps
        per = 2 if predictor == "heun" else 1
        assert len(rec.sigmas) == nfe == per * steps + m * (steps - 1)
        assert bool(torch.isfinite(x).all())


def test_the_predictor_continues_from_the_corrected_state():
    """pc(ddim) equals Euler steps and Langevin steps interleaved by hand with the same noise."""
    sig = check_sampling_config("ddim", 5, "logsnr").sigmas
    x = _x_T(8)
    out = sample(GMM, x, "pc", nfe=None, grid=sig, predictor="ddim", corrector_steps=2, snr=0.2,
                 generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    y = x
    for i in range(5):
        y = euler_step(y, GMM(y, sig[i]), sig[i], sig[i + 1])
        if i < 4:
            for _ in range(2):
                y = langevin_corrector_step(GMM, y, sig[i + 1], sig[i + 1], 0.2, g)
    assert torch.allclose(out, y, rtol=0, atol=1e-12)
    plain = sample(GMM, x, "ddim", nfe=None, grid=sig)
    assert float((out - plain).abs().max()) > 1e-3


def test_corrector_samples_the_noisy_gaussian():
    """Many corrector steps at one sigma turn a wrong start into p_sigma = N(mu, s^2 + sigma^2)."""
    mu, s, sigma = 0.5, 0.3, torch.tensor(0.4, dtype=F64)
    G = GaussianMixture([1.0], [[mu, -mu]], stds=[s])
    x = 0.8 * torch.randn(20000, 2, dtype=F64, generator=torch.Generator().manual_seed(0))  # variance 0.64 vs 0.25
    g = torch.Generator().manual_seed(1)
    # snr 0.15: steps of about 2 r^2 = 0.045 of the variance near the target (the step shrinks where ||g|| is
    # large), a ~2% discretisation bias
    for _ in range(400):
        x = langevin_corrector_step(G, x, sigma, sigma, 0.15, g)
    var = s**2 + float(sigma) ** 2
    assert float(x.var(0).max()) == pytest.approx(var, rel=0.05) and float(x.var(0).min()) == pytest.approx(var, rel=0.05)
    assert torch.allclose(x.mean(0), torch.tensor([mu, -mu], dtype=F64), atol=0.02)


def test_annealed_langevin_at_one_level_is_ula_with_its_stationary_law():
    """One level (a 1-step grid), 300 steps of e = step_lr: Langevin with a fixed step e on N(mu, V) has the
    stationary variance V / (1 - e / (2 V)) (unadjusted Langevin on a Gaussian), V = s^2 + sigma^2."""
    mu, s, sigma, lr = 0.5, 0.3, 0.5, 0.05
    G = GaussianMixture([1.0], [[mu]], stds=[s])
    x_T = prior_sample((20000, 1), 2.0, torch.Generator().manual_seed(0))
    rec = Recorder(G)
    x = sample(rec, x_T, "annealed_langevin", nfe=300, grid=torch.tensor([2.0, sigma], dtype=F64),
               n_steps_each=300, step_lr=lr, generator=torch.Generator().manual_seed(1))
    V = s**2 + sigma**2
    assert len(rec.sigmas) == 300 and all(float(t) == sigma for t in rec.sigmas)
    assert float(x.var()) == pytest.approx(V / (1 - lr / (2 * V)), rel=0.03)
    assert float(x.mean()) == pytest.approx(mu, abs=0.02)


def test_annealed_langevin_on_ncsn_levels():
    """NCSN's 10 geometric levels and 100 steps each with its step ratio: it ends near the data law (the
    smallest levels barely move the chain: e_i / V = 0.2 sigma_i^2 / (s^2 + sigma_i^2) is tiny there)."""
    mu, s = 0.5, 0.3
    G = GaussianMixture([1.0], [[mu]], stds=[s])
    sig = torch.exp(torch.linspace(torch.log(torch.tensor(10.0)), torch.log(torch.tensor(0.01)), 11)).to(F64)
    x_T = prior_sample((20000, 1), 10.0, torch.Generator().manual_seed(0))
    rec = Recorder(G)
    x = sample(rec, x_T, "annealed_langevin", nfe=1000, grid=sig, generator=torch.Generator().manual_seed(1))
    assert len(rec.sigmas) == 1000 and float(rec.sigmas[0]) == pytest.approx(float(sig[1]))
    assert float(x.var()) == pytest.approx(s**2, rel=0.1)
    assert float(x.mean()) == pytest.approx(mu, abs=0.01)


@pytest.mark.parametrize("opts, match", [
    (dict(solver="pc", snr=0.0), "snr=0.0 must be > 0"),
    (dict(solver="pc", snr=-0.1), "snr=-0.1 must be > 0"),
    (dict(solver="pc", corrector_steps=-1), "corrector_steps=-1 must be"),
    (dict(solver="pc", predictor="rk45"), "cannot be a predictor"),
    (dict(solver="pc", predictor="nosuch"), "unknown solver 'nosuch'"),
    (dict(solver="annealed_langevin", n_steps_each=10, step_lr=1e-4), "Langevin step of 25"),
])
def test_bad_options_refused_in_one_paragraph_before_compute(opts, match):
    rec = Recorder(GMM)
    nfe = 50 if opts["solver"] == "annealed_langevin" else 9
    with pytest.raises(ValueError, match=match) as e:
        sample(rec, _x_T(2), nfe=nfe, grid="edm", **opts)
    assert "\n" not in str(e.value) and not rec.sigmas
