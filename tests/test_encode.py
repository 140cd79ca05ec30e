"""diffode.encode: the zoo's deterministic solvers run from data to noise (sigma increasing), against the exact
flow of a single Gaussian and a float64 reference solve of a mixture; encode-decode round trips."""
from __future__ import annotations

import math

import pytest
import torch

import diffode
from _reference import Recorder, gaussian_flow, reference_solve
from diffode.core.denoisers import GaussianMixture, make_gmm
from diffode.core.sample import check_sampling_config, encode, reachable_nfes, sample
from diffode.core.solvers import SOLVERS

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64
GMM = make_gmm(2, components=4, seed=0, std=0.2)
X0 = GMM.sample(12, torch.Generator().manual_seed(0))
DETERMINISTIC = sorted(n for n, s in SOLVERS.items() if not s.stochastic and not s.adaptive)
VARIANTS = [(n, {}) for n in DETERMINISTIC] + [("deis", dict(tau="vp_t")), ("deis", dict(tau="sigma"))]


def _nearest(name, nfe):
    return min(reachable_nfes(name, 2 * nfe), key=lambda n: abs(n - nfe))


@pytest.fixture(scope="module")
def encoded_reference():
    return reference_solve(GMM, X0, sigma_max=0.002, sigma_min=80.0)  # dopri8 upwards: sigma_min -> sigma_max


@pytest.mark.parametrize("name, opts", VARIANTS)
def test_every_deterministic_solver_encodes(name, opts, encoded_reference):
    """Each solver, on the reversed logsnr grid, converges to the reference encoding at first order or better."""
    errs = []
    for nfe in (40, 160):
        n = _nearest(name, nfe)
        rec = Recorder(GMM)
        z = encode(rec, X0, name, nfe=n, grid="logsnr", **opts)
        assert len(rec.sigmas) == n  # the exact NFE, as for sampling
        assert rec.sigmas[0] == pytest.approx(0.002) and max(rec.sigmas) <= 80.0 * (1 + 1e-12)
        errs.append((n, float((z - encoded_reference).abs().max())))
    (n1, e1), (n2, e2) = errs
    order = math.log(e1 / e2) / math.log(n2 / n1)
    assert order > 0.8, (name, errs)
    assert e2 / 80.0 < 0.05, (name, errs)  # relative to |x_T| ~ sigma_max


def test_single_gaussian_exact_flow():
    mu, tau = torch.tensor([0.3, -0.5], dtype=F64), torch.tensor([0.4, 1.1], dtype=F64)
    G = GaussianMixture([1.0], mu[None], stds=tau[None])
    x0 = G.sample(8, torch.Generator().manual_seed(1))
    exact = gaussian_flow(x0, 0.002, 80.0, mu, tau)
    z = encode(G, x0, "rk45", nfe=None, rtol=1e-10, atol=1e-10)
    assert float((z - exact).abs().max() / exact.abs().max()) < 1e-8
    z3 = encode(G, x0, "unipc_bh1", nfe=300, grid="logsnr")
    assert float((z3 - exact).abs().max() / exact.abs().max()) < 1e-6


def test_encode_decode_round_trip_to_1e_6():
    """The issue's target: exact-mixture encode-then-sample returns the data to 1e-6 at high NFE."""
    for name, opts in (("unipc_bh1", dict(nfe=400)), ("rk45", dict(nfe=None, rtol=1e-9, atol=1e-9))):
        back = sample(GMM, encode(GMM, X0, name, grid="logsnr", **opts), name, grid="logsnr", **opts)
        assert float((back - X0).abs().max()) < 1e-6, name


def test_round_trip_error_shrinks_with_nfe():
    errs = [float((sample(GMM, encode(GMM, X0, "dpmpp_3m", nfe=n), "dpmpp_3m", nfe=n) - X0).abs().max())
            for n in (100, 200, 400)]
    assert errs[0] > 4 * errs[1] > 16 * errs[2], errs


def test_grid_tensor_and_check():
    sig = torch.tensor([0.01, 0.1, 1.0, 10.0], dtype=F64)
    plan = check_sampling_config("heun", 6, sig, direction="encode")
    assert torch.equal(plan.sigmas, sig)
    named = check_sampling_config("dpmpp_2m", 5, "edm", direction="encode").sigmas
    assert torch.equal(named, check_sampling_config("dpmpp_2m", 5, "edm").sigmas.flip(0))
    with pytest.raises(ValueError, match="strictly increasing"):
        encode(GMM, X0, "heun", nfe=6, grid=sig.flip(0))


@pytest.mark.parametrize("kwargs, match", [
    (dict(solver="ddpm"), "stochastic"),
    (dict(solver="euler_maruyama"), "stochastic"),
    (dict(solver="ddim", afs=True), "afs and denoise_to_zero"),
    (dict(solver="ddim", denoise_to_zero=True), "afs and denoise_to_zero"),
])
def test_encoding_refuses_in_one_paragraph(kwargs, match):
    rec = Recorder(GMM)
    with pytest.raises(ValueError, match=match) as e:
        encode(rec, X0, nfe=4, **kwargs)
    assert "\n" not in str(e.value) and not rec.sigmas


def test_public_api():
    assert diffode.encode is encode
