"""Flow matching in VE coordinates: the flow schedule, the velocity parameterization, the exact flow mixture,
the grid shifts (against diffusers' own grid code run in float64) and the refusals of bad settings.

Closed forms used as oracles (written here, sharing nothing with diffode/core/schedules.py): alpha = 1 - t,
sigma = t, lambda = log((1 - t) / t), sigma_ve = t / (1 - t), t = s / (1 + s); D = x_t - t u for a velocity u.
"""
from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch
from torch import nn

from diffode.core.denoisers import (
    ModelDenoiser, eps_from_velocity, make_gmm, straight_path, velocity_from_x0, x0_from_velocity,
)
from diffode.core.grids import make_grid
from diffode.core.mixture_nets import MixtureNet
from diffode.core.schedules import EDM, VE, DiscreteVP, Flow, Schedule, VPCosine, VPLinear

F64 = torch.float64


def _ts(s: Flow) -> torch.Tensor:
    lin = torch.linspace(s.t_min, s.t_max, 20001, dtype=F64)
    ends = torch.cat([s.t_min * torch.logspace(0, 2, 100, dtype=F64), 1 - (1 - s.t_max) * torch.logspace(0, 2, 100, dtype=F64)])
    return torch.cat([lin, ends[(ends >= s.t_min) & (ends <= s.t_max)]])


@pytest.mark.parametrize("s", [Flow(), Flow(t_min=1e-6, t_max=1 - 1e-6), Flow(0.002 / 1.002, 80 / 81)],
                         ids=["default", "wide", "edm_range"])
def test_flow_schedule_maps_equal_the_closed_forms(s):
    t = _ts(s)
    torch.testing.assert_close(s.alpha(t), 1 - t, rtol=1e-15, atol=0)
    torch.testing.assert_close(s.sigma(t), t, rtol=1e-15, atol=0)
    torch.testing.assert_close(s.lambda_(t), torch.log((1 - t) / t), rtol=1e-13, atol=1e-13)
    sig = t / (1 - t)
    torch.testing.assert_close(s.ve_sigma(t), sig, rtol=1e-15, atol=0)
    torch.testing.assert_close(s.t_from_ve_sigma(sig), t, rtol=1e-14, atol=0)
    torch.testing.assert_close(s.alpha_from_ve_sigma(sig), 1 - t, rtol=1e-12, atol=0)
    torch.testing.assert_close(s.t_from_lambda(torch.log((1 - t) / t)), t, rtol=1e-12, atol=0)
    # the closed-form overrides equal the base class's derivation from the three primitives
    torch.testing.assert_close(Schedule.ve_sigma(s, t), s.ve_sigma(t), rtol=1e-12, atol=0)
    torch.testing.assert_close(Schedule.t_from_ve_sigma(s, sig), s.t_from_ve_sigma(sig), rtol=1e-12, atol=0)
    torch.testing.assert_close(Schedule.alpha_from_ve_sigma(s, sig), s.alpha_from_ve_sigma(sig), rtol=1e-12, atol=0)
    torch.testing.assert_close(Schedule.alpha(s, t), s.alpha(t), rtol=1e-12, atol=0)
    assert s.sigma_min == pytest.approx(s.t_min / (1 - s.t_min), rel=1e-15)
    assert s.sigma_max == pytest.approx(s.t_max / (1 - s.t_max), rel=1e-15)
    assert torch.equal(s.noise_cond(t), 1000 * t)
    assert straight_path(s)


def test_only_the_flow_schedule_is_a_straight_path():
    assert straight_path(Flow())
    for s in (VPLinear(), VPCosine(), DiscreteVP(), VE(), EDM()):
        assert not straight_path(s), s


def test_velocity_adapters_round_trip_to_float64_precision():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 200, 7, dtype=F64, generator=g)
    for t in (1e-6, 1e-3, 0.3, 0.5, 0.97, 1 - 1e-6):
        a, s = 1 - t, t
        x_t = a * x0 + s * eps
        u = velocity_from_x0(x_t, x0, a, s)
        torch.testing.assert_close(u, eps - x0, rtol=0, atol=1e-13 / min(t, 1))
        torch.testing.assert_close(x0_from_velocity(x_t, eps - x0, a, s), x0, rtol=0, atol=4e-16 * 8)
        torch.testing.assert_close(x0_from_velocity(x_t, eps - x0, a, s), x_t - t * (eps - x0), rtol=0, atol=1e-15)
        torch.testing.assert_close(eps_from_velocity(x_t, eps - x0, a, s), eps, rtol=0, atol=4e-16 * 8)
        # and round trip through x0 -> u -> x0
        torch.testing.assert_close(x0_from_velocity(x_t, u, a, s), x0, rtol=0, atol=1e-15 / min(t, 1))


def test_a_velocity_net_gives_the_denoiser_and_back():
    """ModelDenoiser(velocity) reads the net at x_t = x_ve / (1 + s), t = s / (1 + s), and returns x_t - t u."""
    seen = {}

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor(0.7, dtype=F64))

        def forward(self, x, c):
            seen["x"], seen["c"] = x, c
            return self.w * x + torch.sin(c)[:, None]

    D = ModelDenoiser(Net(), Flow(), "velocity")
    x = torch.randn(4, 3, dtype=F64)
    s = torch.tensor([0.01, 0.5, 3.0, 900.0], dtype=F64)
    out = D(x, s)
    t = s / (1 + s)
    x_t = x / (1 + s)[:, None]
    torch.testing.assert_close(seen["x"], x_t, rtol=1e-15, atol=0)
    torch.testing.assert_close(seen["c"], 1000 * t, rtol=1e-15, atol=0)
    torch.testing.assert_close(out, x_t - t[:, None] * (0.7 * x_t + torch.sin(1000 * t)[:, None]), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("schedule,prediction", [(Flow(), "velocity"), (Flow(t_min=1e-6, t_max=1 - 1e-6), "velocity"),
                                                 (Flow(), "x0"), (Flow(), "eps"), (VPLinear(), "eps"), (VPLinear(), "v"),
                                                 (VPCosine(), "velocity" if False else "x0"), (DiscreteVP(), "eps")])
def test_the_exact_mixture_network_gives_the_mixtures_denoiser(schedule, prediction):
    """In VE coordinates a mixture's exact D does not depend on the schedule: the exact network of any
    parameterization, wrapped like a trained one, gives gmm(x, sigma_ve) back to round-off."""
    gmm = make_gmm(3, 4, seed=1)
    D = ModelDenoiser(MixtureNet(gmm, schedule, prediction), schedule, prediction)
    x = torch.randn(6, 3, dtype=F64, generator=torch.Generator().manual_seed(2))
    for sig in (schedule.sigma_min, schedule.sigma_min * 3, 1.0, 40.0, schedule.sigma_max):
        ref = gmm(x * sig, sig)
        torch.testing.assert_close(D(x * sig, sig), ref, rtol=1e-10, atol=1e-11 * max(1.0, sig))


def test_the_exact_flow_network_is_finite_at_t_one():
    """In (alpha, sigma) form the mixture needs no 1/alpha: at t = 1 (pure noise) x0 = E[x0] and u = x_t - E[x0]."""
    gmm = make_gmm(2, 8, layout="ring")
    net = MixtureNet(gmm, Flow(), "velocity")
    z = torch.randn(5, 2, dtype=F64)
    u = net(z, torch.full((5,), 1000.0, dtype=F64))
    mean = (gmm.log_pi.exp()[:, None] * gmm.mu).sum(0)
    torch.testing.assert_close(u, z - mean, rtol=0, atol=1e-14)


def test_velocity_under_a_curved_schedule_is_refused():
    with pytest.raises(ValueError, match="straight path.*schedule=flow"):
        ModelDenoiser(nn.Linear(2, 2), VPLinear(), "velocity")


@pytest.mark.parametrize("kw", [dict(t_max=1.0), dict(t_max=1.5), dict(t_min=0.0), dict(t_min=0.5, t_max=0.4),
                                dict(time_scale=0)])
def test_bad_flow_schedules_are_refused(kw):
    with pytest.raises(ValueError, match="t_max < 1|time_scale"):
        Flow(**kw)


# -- shifts ------------------------------------------------------------------------------------

class _Float64(types.ModuleType):
    """numpy / torch as a diffusers scheduler module sees them, with float32 meaning float64: diffusers builds
    its grids in float64 numpy and casts them to float32 at the end; this runs its own code without the cast."""

    def __init__(self, mod):
        super().__init__(mod.__name__)
        self._mod = mod

    def __getattr__(self, name):
        return self._mod.float64 if name == "float32" else getattr(self._mod, name)


@pytest.fixture
def diffusers64(monkeypatch):
    import diffusers.schedulers.scheduling_dpmsolver_multistep as dpm
    import diffusers.schedulers.scheduling_flow_match_euler_discrete as fme
    import diffusers.schedulers.scheduling_unipc_multistep as unipc

    for mod in (fme, dpm, unipc):
        monkeypatch.setattr(mod, "np", _Float64(np))
        monkeypatch.setattr(mod, "torch", _Float64(torch))
    return types.SimpleNamespace(fme=fme.FlowMatchEulerDiscreteScheduler, dpm=dpm.DPMSolverMultistepScheduler,
                                 unipc=unipc.UniPCMultistepScheduler)


def _ve(t):
    return t / (1 - t)


WIDE = Flow(t_min=1e-6, t_max=1 - 1e-7)


@pytest.mark.parametrize("n", [4, 10, 28])
@pytest.mark.parametrize("shift", [1.0, 3.0, 0.5])
def test_static_shift_reproduces_diffusers_dpm_flow_sigmas(diffusers64, n, shift):
    """DPMSolverMultistepScheduler(use_flow_sigmas, flow_shift=s): t_k = shift(0.999 k / n), k = n..1, then 0.
    diffode: time_uniform on the flow schedule, shift=s, between diffusers' shifted ends (then denoise to 0)."""
    d = diffusers64.dpm(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=shift)
    d.set_timesteps(n)
    ref = d.sigmas[:-1].to(F64)
    assert d.sigmas.dtype == F64 and float(d.sigmas[-1]) == 0.0
    grid = make_grid("time_uniform", n - 1, WIDE, sigma_min=shift * _ve(0.999 / n), sigma_max=shift * _ve(0.999),
                     shift=shift)
    torch.testing.assert_close(WIDE.t_from_ve_sigma(grid), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", [5, 28])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_static_shift_reproduces_diffusers_flow_match_euler_sigmas(diffusers64, n, shift):
    """FlowMatchEulerDiscreteScheduler(shift=s).set_timesteps(n): uniform in t from 1 to shift(0.001), shifted
    (SD3). Its first point t = 1 is VE sigma = inf; every other point is diffode's shifted time_uniform grid."""
    f = diffusers64.fme(shift=shift)
    f.set_timesteps(n)
    ref = f.sigmas.to(F64)
    assert float(ref[0]) == 1.0 and float(ref[-1]) == 0.0
    end = 0.001 if shift == 1.0 else shift * 0.001 / (1 + (shift - 1) * 0.001)  # shift(0.001), unshifted at set_timesteps
    first = 1 - (1 - end) / (n - 1)  # the unshifted linspace's second point
    grid = make_grid("time_uniform", n - 2, WIDE, sigma_min=shift * _ve(end), sigma_max=shift * _ve(first), shift=shift)
    torch.testing.assert_close(WIDE.t_from_ve_sigma(grid), ref[1:-1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("mu", [0.5, 0.63, 1.15])
def test_dynamic_shift_mu_reproduces_diffusers_flux_sigmas(diffusers64, mu):
    """Flux: FlowMatchEuler(use_dynamic_shifting) with sigmas = linspace(1, 1/n, n) and mu: t' = e^mu / (e^mu + 1/t - 1)."""
    n = 10
    f = diffusers64.fme(use_dynamic_shifting=True)
    f.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n), mu=mu)
    ref = f.sigmas.to(F64)
    grid = make_grid("time_uniform", n - 2, WIDE, sigma_min=math.exp(mu) * _ve(1 / n),
                     sigma_max=math.exp(mu) * _ve(1 - 1 / n), mu=mu)
    torch.testing.assert_close(WIDE.t_from_ve_sigma(grid), ref[1:-1], rtol=0, atol=1e-12)
    same = make_grid("time_uniform", n - 2, WIDE, sigma_min=math.exp(mu) * _ve(1 / n),
                     sigma_max=math.exp(mu) * _ve(1 - 1 / n), shift=math.exp(mu))
    torch.testing.assert_close(grid, same, rtol=1e-15, atol=0)


def test_unipc_flow_sigmas_are_a_shifted_grid_but_its_first_point(diffusers64):
    """UniPC(use_flow_sigmas): t_k = shift(1 - 0.999 k / n), k = 0..n-1, with t_0 replaced by 1 - 1e-6 (named
    difference: its grid is not DPM's, and its start is not a grid point)."""
    n, shift = 10, 3.0
    u = diffusers64.unipc(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=shift)
    u.set_timesteps(n)
    ref = u.sigmas.to(F64)
    assert float(ref[0]) == 1 - 1e-6
    grid = make_grid("time_uniform", n - 2, WIDE, sigma_min=shift * _ve(1 - 0.999 * (n - 1) / n),
                     sigma_max=shift * _ve(1 - 0.999 / n), shift=shift)
    torch.testing.assert_close(WIDE.t_from_ve_sigma(grid), ref[1:-1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["logsnr", "edm"])
def test_shifts_leave_scale_invariant_grids_as_they_are(name):
    base = make_grid(name, 7, Flow())
    for s in (0.3, 3.0):
        torch.testing.assert_close(make_grid(name, 7, Flow(), shift=s), base, rtol=1e-13, atol=0)


def test_a_shift_keeps_the_range_and_moves_points_toward_noise():
    base = make_grid("time_uniform", 8, Flow())
    shifted = make_grid("time_uniform", 8, Flow(), shift=3.0)
    assert float(shifted[0]) == float(base[0]) and float(shifted[-1]) == float(base[-1])
    assert bool((shifted[1:-1] > base[1:-1]).all())
    # SD3's formula t' = s t / (1 + (s - 1) t) on the grid's interior points of the unshifted grid on [lo/s, hi/s]
    sch, s = Flow(), 3.0
    t = torch.linspace(float(sch.t_from_ve_sigma(sch.sigma_max / s)), float(sch.t_from_ve_sigma(sch.sigma_min / s)), 9,
                       dtype=F64)
    torch.testing.assert_close(sch.t_from_ve_sigma(shifted)[1:-1], (s * t / (1 + (s - 1) * t))[1:-1], rtol=1e-13, atol=0)


@pytest.mark.parametrize("kw,match", [(dict(shift=0.0), "shift=0.0 must be a finite number > 0"),
                                      (dict(shift=-3.0), "must be a finite number > 0"),
                                      (dict(shift=3.0, mu=1.0), "give one"),
                                      (dict(mu=float("inf")), "mu=inf must be finite")])
def test_bad_shifts_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        make_grid("time_uniform", 4, Flow(), **kw)


def test_a_given_grid_takes_no_shift():
    with pytest.raises(ValueError, match="takes no shift"):
        make_grid("explicit", 2, Flow(), sigmas=[100.0, 1.0, 0.01], shift=3.0)


# -- training -----------------------------------------------------------------------------------

def test_lognormal_sigma_under_the_flow_schedule_is_sd3s_logit_normal_t():
    """t_sampling=lognormal with (p_mean, p_std) = (m, s) draws t = sigmoid(m + s n): SD3's logit-normal(m, s)."""
    from diffode.methods.denoiser.losses import t_lognormal

    sch = Flow(t_min=1e-12, t_max=1 - 1e-12)
    t = t_lognormal(sch, 4096, torch.Generator().manual_seed(0), p_mean=0.3, p_std=1.2)
    n = torch.randn(4096, dtype=F64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(t, torch.sigmoid(0.3 + 1.2 * n), rtol=1e-12, atol=1e-15)


def test_the_velocity_loss_is_flow_matching_and_a_weighted_denoiser_loss():
    """|u - (eps - x0)|^2 at x_t = (1 - t) x0 + t eps; in denoiser terms |D - x0|^2 / t^2 (D = x_t - t u)."""
    from diffode.methods.denoiser.losses import velocity_loss

    class Net(nn.Module):
        def forward(self, x, c):
            return torch.tanh(x) * (c[:, None] / 1000)

    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 64, 3, dtype=F64, generator=g)
    t = torch.rand(64, dtype=F64, generator=g) * 0.98 + 0.01
    x_t = (1 - t[:, None]) * x0 + t[:, None] * eps
    u = Net()(x_t, 1000 * t)
    loss = velocity_loss(Net(), Flow(), x0, t, eps)
    torch.testing.assert_close(loss, (u - (eps - x0)).square().mean(), rtol=1e-14, atol=0)
    D = x_t - t[:, None] * u
    torch.testing.assert_close(loss, ((D - x0).square() / t[:, None] ** 2).mean(), rtol=1e-12, atol=0)
