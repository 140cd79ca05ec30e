"""diffusers' flow schedulers beside diffode, driven by the exact flow mixture on the same time points.

The peer side is diffusers' own `step` (FlowMatchEulerDiscreteScheduler, and DPMSolverMultistepScheduler /
UniPCMultistepScheduler with use_flow_sigmas and prediction_type="flow_prediction"), fed the exact velocity
u = (x_t - E[x0 | x_t]) / t of a Gaussian mixture, evaluated in (alpha, sigma) = (1 - t, t) form (finite at
t = 1) at the scheduler's sigmas (never its integer timesteps). The diffode side is the zoo solver on
sigma_ve = t / (1 - t) of the same points, on the mixture's exact velocity network wrapped as a flow model
(ModelDenoiser(MixtureNet, Flow, "velocity")), with diffusers' final step to t = 0 as denoise_to_zero.

diffusers keeps its sigmas and its state in float32. `exact` runs its own code with float32 meaning
float64 (tests/test_flow.py: _Float64), where the algorithms agree to round-off; `native` runs it as
shipped, on its float32 sigmas, where float32 round-off is what is left. Rows (docs/design.md, "Flow models"):

  FME Euler            == euler / ddim, after FME's first step from t = 1 (VE sigma = inf), which is analytic
                          for the exact model (x = t_1 z + (1 - t_1) E[x0]); diffode cannot start at inf.
  DPM 2M (++ midpoint) == dpmpp_2m, lower_order_final off, + denoise_to_zero (DPM's order-1 step to t = 0).
  DPM 3M, N >= 15      == dpmpp_3m coefficients=official; for N < 15 diffusers lowers the order of its last
                          step before t = 0 to 2, which no lower_order_final rule of diffode's grid (it ends
                          at that point) reproduces: named difference, measured below.
  UniPC bh2, order 2   == unipc_bh2, lower_order_final off, + denoise_to_zero. diffusers' final step to t = 0
                          applies UniC to the state at the last positive sigma, but then steps from it with
                          the model output of the uncorrected state (order 1 to t = 0 returns that output):
                          the correction never reaches the sample, exactly as diffode skips it on its last step.
  UniPC's start        1 - 1e-6 (VE sigma ~1e6), not a point of its shifted grid; diffode takes the points as given.
  DPM's timesteps      int64(1000 t): a diffusers pipeline conditions the network on the truncated t while the
                          solver steps with the exact one; diffode conditions on the exact t (measured below).
"""
from __future__ import annotations

import pytest
import torch

from diffode.core.denoisers import ModelDenoiser, make_gmm
from diffode.core.mixture_nets import MixtureNet
from diffode.core.sample import sample
from diffode.core.schedules import Flow

from test_flow import diffusers64  # noqa: F401  (the float64 fixture)

F64 = torch.float64
GMM = make_gmm(4, components=5, seed=3, spread=1.5, std=0.3)
SCH = Flow(t_min=1e-6, t_max=1 - 1e-7)
D = ModelDenoiser(MixtureNet(GMM, SCH, "velocity"), SCH, "velocity")
MEAN = (GMM.log_pi.exp()[:, None] * GMM.mu).sum(0)


def velocity(x, t):
    """The exact flow velocity of the mixture at (x_t, t), in (alpha, sigma) form: finite at t = 1."""
    t = float(t)
    x = x.to(F64)
    return (x - GMM.denoise(x, 1.0 - t, t)) / t


def _z(n=8):
    return torch.randn(n, 4, dtype=F64, generator=torch.Generator().manual_seed(0))


def run_peer(scheduler, z, n, skip_first=False):
    """diffusers' loop: x <- step(u(x, sigma_i), timestep_i, x); returns (final x, the states after each step)."""
    scheduler.set_timesteps(n)
    x = z.to(scheduler.sigmas.dtype)
    states = []
    for i, ts in enumerate(scheduler.timesteps):
        t = scheduler.sigmas[i]
        x = scheduler.step(velocity(x, t).to(x.dtype), ts, x).prev_sample
        states.append(x.to(F64))
    return x.to(F64), states, scheduler.sigmas.to(F64)


def ours(solver, x_t, ts, **options):
    """diffode on VE sigmas t/(1-t) of the points ts (all in (0, 1)), from the flow state x_t at ts[0]."""
    grid = ts / (1 - ts)
    return sample(D, x_t / (1 - ts[0]), solver, nfe=None, grid=grid, schedule=SCH, **options)


PRECISION = {"exact": 1e-12, "native": 1e-6}  # measured: <= 1.2e-15 and <= 4.6e-7


def _schedulers(diffusers64, precision):
    if precision == "exact":
        return diffusers64
    import diffusers

    return type("Native", (), dict(fme=diffusers.FlowMatchEulerDiscreteScheduler,
                                   dpm=diffusers.DPMSolverMultistepScheduler,
                                   unipc=diffusers.UniPCMultistepScheduler))


@pytest.mark.parametrize("precision", ["exact", "native"])
@pytest.mark.parametrize("n,shift", [(8, 3.0), (28, 3.0), (10, 1.0)])
def test_flow_match_euler_is_euler_after_its_analytic_first_step(diffusers64, precision, n, shift):
    S = _schedulers(diffusers64, precision)
    z = _z()
    final, states, sig = run_peer(S.fme(shift=shift), z, n)
    assert float(sig[0]) == 1.0 and float(sig[-1]) == 0.0
    t1 = sig[1]
    # the first step from t = 1 (VE sigma = inf): u(z, 1) = z - E[x0], so x = t_1 z + (1 - t_1) E[x0]
    x1 = t1 * z + (1 - t1) * MEAN
    torch.testing.assert_close(states[0], x1, rtol=0, atol=PRECISION[precision])
    for solver in ("euler", "ddim"):
        out = ours(solver, x1, sig[1:-1], denoise_to_zero=True)
        torch.testing.assert_close(out, final, rtol=0, atol=PRECISION[precision])


def _dpm(S, order, n, shift=3.0):
    return S.dpm(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=shift, algorithm_type="dpmsolver++",
                 solver_order=order, solver_type="midpoint", final_sigmas_type="zero")


@pytest.mark.parametrize("precision", ["exact", "native"])
@pytest.mark.parametrize("n", [5, 10, 20])
def test_dpm_solver_2m_with_flow_sigmas_is_dpmpp_2m(diffusers64, precision, n):
    S = _schedulers(diffusers64, precision)
    z = _z()
    final, _, sig = run_peer(_dpm(S, 2, n), z, n)
    assert float(sig[0]) < 1.0
    out = ours("dpmpp_2m", z, sig[:-1], lower_order_final=False, denoise_to_zero=True)
    torch.testing.assert_close(out, final, rtol=0, atol=PRECISION[precision])


@pytest.mark.parametrize("precision", ["exact", "native"])
def test_dpm_solver_3m_with_flow_sigmas_is_dpmpp_3m_official_from_15_steps(diffusers64, precision):
    S = _schedulers(diffusers64, precision)
    z = _z()
    n = 16
    final, _, sig = run_peer(_dpm(S, 3, n), z, n)
    out = ours("dpmpp_3m", z, sig[:-1], coefficients="official", lower_order_final=False, denoise_to_zero=True)
    torch.testing.assert_close(out, final, rtol=0, atol=PRECISION[precision])


def test_dpm_solver_3m_below_15_steps_lowers_an_order_diffode_keeps(diffusers64):
    """Named difference: for N < 15 diffusers' last step before t = 0 is second order; diffode's grid ends at
    that point, where lower_order_final=False keeps order 3 and True makes it order 1. Both differ from diffusers
    by far more than round-off, and the difference vanishes with N >= 15 (above)."""
    z = _z()
    n = 8
    final, _, sig = run_peer(_dpm(diffusers64, 3, n), z, n)
    gaps = [float((ours("dpmpp_3m", z, sig[:-1], coefficients="official", lower_order_final=rule,
                        denoise_to_zero=True) - final).abs().max()) for rule in (False, True)]
    assert min(gaps) > 1e-4, gaps


@pytest.mark.parametrize("precision", ["exact", "native"])
@pytest.mark.parametrize("n", [6, 10])
def test_unipc_with_flow_sigmas_is_unipc_bh2_up_to_its_last_positive_sigma(diffusers64, precision, n):
    S = _schedulers(diffusers64, precision)
    z = _z()
    sch = S.unipc(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0, solver_order=2,
                  solver_type="bh2", final_sigmas_type="zero")
    final, states, sig = run_peer(sch, z, n)
    assert abs(float(sig[0]) - (1 - 1e-6)) < 1e-7  # its start is not a grid point (named difference)
    # diffusers' state after step n-2 is the predictor at the last positive sigma: diffode skips UniC on its
    # last step, so its endpoint on the n-1-step grid is the same state
    out = ours("unipc_bh2", z, sig[:-1], order=2, lower_order_final=False)
    tol = PRECISION[precision]
    torch.testing.assert_close(out * (1 - sig[-2]), states[-2], rtol=0, atol=tol)
    # and the sample: diffusers' last step returns the output at that (uncorrected) state, as denoise_to_zero does
    out = ours("unipc_bh2", z, sig[:-1], order=2, lower_order_final=False, denoise_to_zero=True)
    torch.testing.assert_close(out, final, rtol=0, atol=tol)


def test_dpm_solver_pipelines_condition_the_net_on_truncated_timesteps(diffusers64):
    """Named difference: with use_flow_sigmas DPMSolverMultistep's timesteps are int64(1000 t), and a pipeline
    hands the network those (t truncated by up to 1e-3) while the solver steps with the exact t; diffode conditions
    the network on the t of the point it evaluates. Driving the exact model with the truncated t moves the sample
    by far more than round-off."""
    z = _z()
    n = 10
    exact, _, sig = run_peer(_dpm(diffusers64, 2, n), z, n)
    s = _dpm(diffusers64, 2, n)
    s.set_timesteps(n)
    assert s.timesteps.dtype == torch.int64 and [int(v) for v in s.timesteps] == [int(1000 * float(t)) for t in sig[:-1]]
    x = z.clone()
    for i, ts in enumerate(s.timesteps):
        t = float(ts) / 1000  # what the network sees in a diffusers pipeline
        u = (x - GMM.denoise(x, 1 - t, t)) / t
        x = s.step(u, ts, x).prev_sample
    assert float((x - exact).abs().max()) > 5e-4  # measured 1.1e-3 (RMS 5e-4), 1e8 x the round-off
