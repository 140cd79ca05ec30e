import math

import pytest
import torch

from diffode.core.schedules import (EDM, VE, DiscreteVP, Schedule, VESchedule, VPCosine, VPLinear, VPSchedule,
                                    discrete_betas, get_schedule)

ALL = [VPLinear(), VPCosine(), VE(), EDM(), DiscreteVP(), DiscreteVP(kind="cosine")]
IDS = ["vp_linear", "vp_cosine", "ve", "edm", "vp_discrete_linear", "vp_discrete_cosine"]


def _ts(s, n=20001):
    # dense in t, plus a log-spaced cluster near t_min where cancellation would show
    lin = torch.linspace(s.t_min, s.t_max, n, dtype=torch.float64)
    near0 = s.t_min * torch.logspace(0, 2, 200, dtype=torch.float64)
    return torch.cat([lin, near0[near0 <= s.t_max]])


VP = [(s, i) for s, i in zip(ALL, IDS) if isinstance(s, VPSchedule)]


@pytest.mark.parametrize("s", [s for s, _ in VP], ids=[i for _, i in VP])
def test_vp_alpha2_plus_sigma2_is_one(s):
    t = _ts(s)
    assert (s.alpha(t) ** 2 + s.sigma(t) ** 2 - 1).abs().max() < 1e-14


@pytest.mark.parametrize("s", ALL, ids=IDS)
def test_lambda_inverse_round_trip(s):
    t = _ts(s)
    lam = s.lambda_(t)
    assert (lam[1:-200] < lam[:-201]).all(), "lambda must decrease in t"
    assert ((s.t_from_lambda(lam) - t).abs() / t.abs().clamp_min(1.0)).max() < 1e-10
    # and the other way round, over the whole lambda range
    lam2 = torch.linspace(float(s.lambda_(s.t_max)), float(s.lambda_(s.t_min)), 5001, dtype=torch.float64)
    assert (s.lambda_(s.t_from_lambda(lam2)) - lam2).abs().max() < 1e-10


@pytest.mark.parametrize("s", ALL, ids=IDS)
def test_ve_sigma_maps(s):
    t = _ts(s, 2001)
    sig = s.ve_sigma(t)
    assert torch.allclose(sig, s.sigma(t) / s.alpha(t), rtol=1e-13, atol=0)
    assert torch.allclose(s.t_from_ve_sigma(sig), t, rtol=1e-10, atol=1e-12)
    assert torch.allclose(s.alpha_from_ve_sigma(sig), s.alpha(t), rtol=1e-12, atol=0)
    assert s.sigma_min < s.sigma_max
    assert math.isclose(s.sigma_max, float(s.ve_sigma(s.t_max)))


def test_vp_linear_matches_song_formula():
    s = VPLinear()
    t = torch.tensor([1e-3, 0.1, 0.5, 1.0], dtype=torch.float64)
    log_mean_coeff = -0.25 * t**2 * (20 - 0.1) - 0.5 * t * 0.1
    assert torch.allclose(s.alpha(t), log_mean_coeff.exp(), rtol=1e-15)
    # reference values quoted in shared/reference/solvers.md section 3
    assert abs(float(s.lambda_(1.0)) - (-5.025)) < 1e-3 and abs(float(s.lambda_(1e-3)) - 4.558) < 1e-3


def test_vp_linear_small_t_is_cancellation_free():
    s = VPLinear()
    t = torch.tensor(1e-7, dtype=torch.float64)
    # sigma^2 ~ beta_0 t for tiny t; the naive 1 - alpha^2 loses ~9 digits here
    assert abs(float(s.sigma(t) ** 2) / (0.1 * 1e-7) - 1) < 1e-5


def test_discrete_vp_matches_alphas_cumprod():
    betas = discrete_betas("linear")
    s = DiscreteVP(betas=betas)
    abar = torch.cumprod(1 - betas, 0)
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    assert torch.allclose(s.alpha(t) ** 2, abar, rtol=1e-12)
    assert torch.allclose(s.noise_cond(t), torch.arange(1000, dtype=torch.float64), atol=1e-9)
    # diffusers' linear betas end at lambda ~ -5.06 (reference section 3.7)
    assert abs(float(s.lambda_(1.0)) + 5.06) < 0.01


def test_cosine_discrete_clip():
    b = discrete_betas("cosine")
    assert b.max() <= 0.999 and b.min() > 0


def test_edm_and_ve_are_identity_in_alpha():
    for s in (EDM(), VE()):
        t = _ts(s, 11)
        assert torch.equal(s.alpha(t), torch.ones_like(t))
    assert EDM().sigma_min == 0.002 and EDM().sigma_max == 80.0


def test_get_schedule_errors():
    with pytest.raises(ValueError, match="unknown schedule 'vp_lin'.*vp_linear"):
        get_schedule("vp_lin")
    with pytest.raises(ValueError, match="strictly"):
        DiscreteVP(betas=torch.zeros(10))


@pytest.mark.parametrize("s", ALL, ids=IDS)
def test_maps_equal_the_closed_forms_of_each_family(s):
    """The structure change (no is_vp flag: every map derived from alpha, sigma and the inverse of lambda, a
    family's closed form only as an override) changes no number: each map equals the closed form the schedule
    had before, written here, and the base class's derivation, to 1e-12."""
    t = _ts(s, 2001)
    vp = isinstance(s, VPSchedule)
    lam = s.log_alpha(t) - s.log_sigma(t)
    sig = torch.exp(-lam) if vp else s.sigma(t)  # the VE sigma before: exp(-lambda) for VP, sigma for VE
    assert torch.allclose(s.ve_sigma(t), sig, rtol=1e-12, atol=0)
    alpha = torch.rsqrt(1 + sig * sig) if vp else torch.ones_like(sig)
    assert torch.allclose(s.alpha_from_ve_sigma(sig), alpha, rtol=1e-12, atol=0)
    assert torch.allclose(Schedule.alpha_from_ve_sigma(s, sig), alpha, rtol=1e-12, atol=0)
    assert torch.allclose(Schedule.ve_sigma(s, t), sig, rtol=1e-12, atol=0)
    assert torch.allclose(s.t_from_ve_sigma(sig), s.t_from_lambda(-torch.log(sig)), rtol=1e-12, atol=0)
    if not vp:
        assert isinstance(s, VESchedule) and torch.equal(s.alpha(t), torch.ones_like(t))


def test_a_schedule_needs_only_its_three_primitives():
    """A new family defines log_alpha, log_sigma and t_from_lambda; everything else follows (docs/design.md,
    "Adding a schedule"). Here the flow-matching path alpha = 1 - t, sigma = t, written only through those."""

    class Flow(Schedule):
        t_min, t_max = 1e-4, 0.999

        def log_alpha(self, t):
            return torch.log1p(-torch.as_tensor(t, dtype=torch.float64))

        def log_sigma(self, t):
            return torch.log(torch.as_tensor(t, dtype=torch.float64))

        def t_from_lambda(self, lam):
            return torch.sigmoid(-torch.as_tensor(lam, dtype=torch.float64))

    s, t = Flow(), torch.linspace(1e-4, 0.999, 101, dtype=torch.float64)
    assert torch.allclose(s.ve_sigma(t), t / (1 - t), rtol=1e-12)
    assert torch.allclose(s.alpha_from_ve_sigma(t / (1 - t)), 1 - t, rtol=1e-12)
    assert torch.allclose(s.t_from_ve_sigma(t / (1 - t)), t, rtol=1e-12)
    with pytest.raises(NotImplementedError, match="log_alpha"):
        Schedule().alpha(0.5)
