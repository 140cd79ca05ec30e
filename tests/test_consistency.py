"""Consistency-model math (diffode/core/consistency.py) and the multistep consistency sampler.

Exact answers: the boundary f(x, sigma_min) = x bit for bit; the CM paper's scalings and grid formula
written out here; the teacher step against diffode.sample's one-step solve and EDM's Heun by hand; the
sampler against the closed-form consistency function of a Gaussian, whose multistep samples must keep
the exact law N(mu, tau^2 + sigma_min^2) at every step count.
"""
from __future__ import annotations

import math

import pytest
import torch

import diffode
from diffode.core import consistency as cm
from diffode.core.denoisers import ModelDenoiser, make_gmm
from diffode.core.sample import prior_sample
from diffode.core.schedules import EDM, VPLinear
from diffode.core.solvers import get_solver
from diffode.nets.mlp import MLP
from diffode.nets.unet import UNet

F64 = torch.float64
S_MIN, S_MAX, SD = 0.002, 80.0, 0.5


def _unet(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = UNet(resolution=8, in_channels=1, model_channels=8, channel_mult=[1, 2], num_res_blocks=1,
               attn_resolutions=[4], dropout=0.0, embedding="positional")
    with torch.no_grad():  # large random weights: the boundary must not depend on F being small
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    return net


def _mlp(seed: int, dim: int = 2) -> torch.nn.Module:
    torch.manual_seed(seed)
    return MLP(dim=dim)


# -- parameterisation -------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
def test_boundary_condition_is_exact_for_any_weights(seed):
    g = torch.Generator().manual_seed(seed)
    cases = [
        (ModelDenoiser(_unet(seed), EDM(), "edm"), torch.randn(5, 1, 8, 8, generator=g)),
        (ModelDenoiser(_unet(seed).double(), EDM(), "edm"), torch.randn(5, 1, 8, 8, generator=g, dtype=F64)),
        (ModelDenoiser(_mlp(seed), VPLinear(), "eps"), 3 * torch.randn(7, 2, generator=g)),
        (make_gmm(2, components=4, seed=seed), torch.randn(7, 2, generator=g, dtype=F64)),
    ]
    for D, x in cases:
        f = cm.ConsistencyFunction(D, S_MIN, SD)
        out = f(x, torch.tensor(S_MIN, dtype=F64))
        assert out.dtype == x.dtype
        assert torch.equal(out, x), f"{type(D).__name__}: max |f - x| = {float((out - x).abs().max()):.3g}"
        per_sample = f(x, torch.full((x.shape[0],), S_MIN, dtype=F64))
        assert torch.equal(per_sample, x)
        # away from the boundary the network does act
        assert not torch.allclose(f(x, torch.tensor(1.0, dtype=F64)), x)


def test_boundary_scalings_match_the_paper():
    for s in [0.002, 0.01, 0.3, 1.0, 7.5, 80.0]:
        c_skip, c_out = cm.boundary_scalings(torch.tensor(s, dtype=F64), S_MIN, SD)
        assert float(c_skip) == pytest.approx(SD**2 / ((s - S_MIN) ** 2 + SD**2), rel=1e-14)
        assert float(c_out) == pytest.approx(SD * (s - S_MIN) / math.sqrt(s**2 + SD**2), rel=1e-14, abs=0)
    c_skip, c_out = cm.boundary_scalings(torch.tensor(S_MIN, dtype=F64), S_MIN, SD)
    assert float(c_skip) == 1.0 and float(c_out) == 0.0


def test_network_output_of_an_edm_denoiser_is_its_raw_net():
    """The raw-net shortcut equals F = (D - c_skip^EDM x) / c_out^EDM read off the denoiser's output."""
    D = ModelDenoiser(_unet(3).double(), EDM(), "edm")
    x = torch.randn(4, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(0))
    s = torch.tensor([0.01, 0.5, 3.0, 60.0], dtype=F64)
    direct = cm.edm_network_output(D, x, s, SD)
    generic = cm.edm_network_output(lambda x_, s_: D(x_, s_), x, s, SD)  # not a ModelDenoiser: the generic path
    torch.testing.assert_close(direct, generic, rtol=1e-9, atol=1e-9)
    # and the student f built on it uses the boundary scalings around that F
    f = cm.ConsistencyFunction(D, S_MIN, SD)(x, s)
    c_skip, c_out = cm.boundary_scalings(s, S_MIN, SD)
    torch.testing.assert_close(f, c_skip.view(-1, 1, 1, 1) * x + c_out.view(-1, 1, 1, 1) * direct)


def test_karras_grid_is_the_papers_formula_reversed():
    N, rho = 18, 7.0
    grid = cm.karras_grid(N, S_MIN, S_MAX, rho)
    paper = [(S_MIN ** (1 / rho) + (i - 1) / (N - 1) * (S_MAX ** (1 / rho) - S_MIN ** (1 / rho))) ** rho
             for i in range(1, N + 1)]  # t_1 = eps < ... < t_N = T, ascending
    assert grid.dtype == F64 and grid.numel() == N
    assert float(grid[0]) == S_MAX and float(grid[-1]) == S_MIN
    torch.testing.assert_close(grid, torch.tensor(paper[::-1], dtype=F64), rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="N >= 2"):
        cm.karras_grid(1, S_MIN, S_MAX)


def test_pairs_are_neighbours_on_the_grid():
    grid = cm.karras_grid(10, S_MIN, S_MAX)
    hi, lo = cm.sample_pairs(grid, 5000, torch.Generator().manual_seed(0))
    idx = torch.searchsorted(-grid, -hi)
    assert torch.equal(grid[idx], hi) and torch.equal(grid[idx + 1], lo)
    counts = torch.bincount(idx, minlength=9)
    assert counts.numel() == 9 and int(counts.min()) > 450  # uniform over the N - 1 = 9 intervals


# -- teacher step -------------------------------------------------------------------------------

def _heun_by_hand(D, x, t, t2):
    """EDM Heun from t to t2 as the CM code writes it (consistency.md section 2)."""
    d = (x - D(x, t)) / t
    x1 = x + (t2 - t) * d
    d1 = (x1 - D(x1, t2)) / t2
    return x + (t2 - t) * (d + d1) / 2


@pytest.mark.parametrize("solver,nfe", [("heun", 2), ("euler", 1), ("dpm_solver_2", 2), ("dpm_solver_3", 3)])
def test_teacher_step_is_the_zoo_solvers_step(solver, nfe):
    gmm = make_gmm(3, components=5, seed=1, std=0.2)
    grid = cm.karras_grid(18, S_MIN, S_MAX)
    hi, lo = cm.sample_pairs(grid, 6, torch.Generator().manual_seed(2))
    x = torch.randn(6, 3, dtype=F64, generator=torch.Generator().manual_seed(3)) * hi[:, None]
    out = cm.teacher_step(gmm, x, hi, lo, solver=solver)
    for i in range(6):
        one = diffode.sample(gmm, x[i:i + 1], solver=solver, nfe=nfe, grid=torch.stack([hi[i], lo[i]]))
        torch.testing.assert_close(out[i:i + 1], one, rtol=1e-13, atol=1e-13)
        if solver == "heun":
            torch.testing.assert_close(out[i:i + 1], _heun_by_hand(gmm, x[i:i + 1], hi[i], lo[i]),
                                       rtol=1e-12, atol=1e-12)


def test_teacher_step_on_images_with_a_network():
    D = ModelDenoiser(_unet(4).double(), EDM(), "edm")
    hi = torch.tensor([80.0, 2.0, 0.05], dtype=F64)
    lo = torch.tensor([60.0, 1.5, 0.002], dtype=F64)
    x = torch.randn(3, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(0)) * hi.view(-1, 1, 1, 1)
    out = cm.teacher_step(D, x, hi, lo)
    for i in range(3):
        torch.testing.assert_close(out[i:i + 1], _heun_by_hand(D, x[i:i + 1], hi[i], lo[i]), rtol=1e-10, atol=1e-10)


def test_teacher_step_refuses_stochastic_and_adaptive_solvers():
    gmm = make_gmm(2, components=3)
    x, s = torch.zeros(2, 2, dtype=F64), torch.ones(2, dtype=F64)
    for name in ("ddpm", "rk45"):
        with pytest.raises(ValueError, match="deterministic fixed-step"):
            cm.teacher_step(gmm, x, s, s / 2, solver=name)


# -- distances and the target EMA ----------------------------------------------------------------

def test_distances():
    """The registry's plain distances against their formulas written here, with the reduction each states."""
    from diffode.core.distances import huber_c, pseudo_huber
    from diffode.metrics.distance import DISTANCES, make_distance

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 1, 8, 8, generator=g, dtype=F64), torch.randn(4, 1, 8, 8, generator=g, dtype=F64)
    diff = (a - b).reshape(4, -1)
    torch.testing.assert_close(make_distance("l2")(a, b), (diff**2).sum(1) / 64)
    torch.testing.assert_close(make_distance("l2_sum")(a, b), (diff**2).sum(1))
    torch.testing.assert_close(make_distance("l1")(a, b), diff.abs().sum(1) / 64)
    assert "mean" in DISTANCES["l2"].reduction and "sum" in DISTANCES["l2_sum"].reduction
    c = 0.00054 * 8.0  # sqrt(64)
    assert huber_c(64) == pytest.approx(c, rel=1e-15)
    norm = diff.norm(dim=1)
    torch.testing.assert_close(make_distance("pseudo_huber")(a, b), torch.sqrt(norm**2 + c * c) - c)
    torch.testing.assert_close(make_distance("pseudo_huber", huber_c=0.5)(a, b), torch.sqrt(norm**2 + 0.25) - 0.5)
    small = 1e-8 * diff  # quadratic regime |d|^2 / (2c), large regime |d|
    torch.testing.assert_close(pseudo_huber(small, 0 * small), (small**2).sum(1) / (2 * c), rtol=1e-6, atol=0)
    big = 1e3 * diff
    torch.testing.assert_close(pseudo_huber(big, 0 * big), big.norm(dim=1), rtol=1e-5, atol=0)
    assert make_distance("l2").net is None
    with pytest.raises(ValueError, match="unknown distance"):
        make_distance("lpip")


def test_ema_update_is_the_papers_rule():
    online, target = _mlp(0), _mlp(1)
    before = [p.detach().clone() for p in target.parameters()]
    cm.ema_update(target, online, 0.9)
    for t, t0, o in zip(target.parameters(), before, online.parameters()):
        torch.testing.assert_close(t, 0.9 * t0 + 0.1 * o, rtol=1e-6, atol=1e-7)
    cm.ema_update(target, online, 0.0)  # mu = 0: the online network itself
    assert all(torch.equal(t, o) for t, o in zip(target.parameters(), online.parameters()))


# -- the multistep sampler ---------------------------------------------------------------------

def _gaussian_cm(mu: torch.Tensor, tau: float):
    """The exact consistency function of data N(mu, tau^2 I): the PF-ODE scales x - mu by
    sqrt(sigma^2 + tau^2), so f(x, sigma) = mu + (x - mu) sqrt(sigma_min^2 + tau^2) / sqrt(sigma^2 + tau^2)."""

    def f(x, sigma):
        s = torch.as_tensor(sigma, dtype=F64).reshape(-1, *([1] * (x.ndim - 1)))
        return mu + (x - mu) * math.sqrt(S_MIN**2 + tau**2) / torch.sqrt(s * s + tau**2)

    return f


@pytest.mark.parametrize("k", [1, 2, 4])
def test_consistency_sampler_makes_k_calls_and_keeps_the_exact_law(k):
    mu, tau = torch.tensor([0.3, -0.7], dtype=F64), 0.4
    f = _gaussian_cm(mu, tau)
    calls = []

    def counted(x, sigma):
        calls.append(sigma)
        return f(x, sigma)

    n = 40000
    x_T = prior_sample((n, 2), S_MAX, torch.Generator().manual_seed(k))
    x, info = diffode.sample(counted, x_T, solver="consistency", nfe=k, grid="edm", schedule=EDM(),
                             generator=torch.Generator().manual_seed(10 + k), return_info=True)
    assert info["nfe"] == k == len(calls) and info["steps"] == k
    torch.testing.assert_close(torch.stack([torch.as_tensor(c) for c in calls]), info["sigmas"][:-1])
    # each step x <- f(x) + sqrt(tau_n^2 - sigma_min^2) z lands on the exact marginal at tau_n, so the law is exact
    var = tau**2 + S_MIN**2
    assert torch.allclose(x.mean(0), mu, atol=4 * math.sqrt(var / n))
    assert torch.allclose(x.var(0), torch.full((2,), var, dtype=F64), rtol=0.03)


def test_consistency_sampler_noise_and_clip():
    """Against the recursion written out by hand with the same generator; clip clamps f's answers."""
    f = _gaussian_cm(torch.tensor([2.0, -2.0], dtype=F64), 0.4)
    sig = torch.tensor([80.0, 5.0, 0.7, 0.002], dtype=F64)
    x_T = 80 * torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    out = get_solver("consistency").fn(f, x_T, sig, generator=torch.Generator().manual_seed(1))
    g, x = torch.Generator().manual_seed(1), x_T
    for i in range(3):
        x = f(x, sig[i])
        if i < 2:
            x = x + math.sqrt(float(sig[i + 1]) ** 2 - S_MIN**2) * torch.randn(6, 2, generator=g, dtype=F64)
    torch.testing.assert_close(out, x, rtol=1e-13, atol=1e-13)
    clipped = get_solver("consistency").fn(f, x_T, sig, clip=1.0, generator=torch.Generator().manual_seed(1))
    assert float(clipped.abs().max()) <= 1.0 and not torch.allclose(clipped, out)


def test_consistency_solver_config():
    from diffode.core.sample import reachable_nfes

    assert reachable_nfes("consistency", 5) == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="does not take"):
        diffode.sample(lambda x, s: x, torch.zeros(2, 2, dtype=F64), solver="consistency", nfe=2, eta=1.0)
