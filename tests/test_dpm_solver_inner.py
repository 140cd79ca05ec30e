"""DPM-Solver-2/3's inner points: `inner='grid'` (the official code's, the grid's own nodes) against a
float64 re-derivation of the official singlestep sampler (LuChengTHU/dpm-solver, dpm_solver_pytorch.py:
`get_time_steps`, `get_orders_and_timesteps_for_singlestep_solver`, `singlestep_dpm_solver_*_update`,
noise prediction) written here in VP coordinates on the linear VP-SDE, with the mixture's exact
noise prediction; and dpm_solver_3's `midpoints` hook (a pair of stages).

Independent pieces: the reference steps in VP time t with alpha(t), sigma(t) and the inverse of
lambda written from the VP-SDE's formulas (not diffode's schedules), on the official time grids.
"""
from __future__ import annotations

import math

import pytest
import torch

from _reference import Recorder
from diffode.core.denoisers import make_gmm
from diffode.core.grids import make_grid
from diffode.core.sample import reachable_nfes, sample
from diffode.core.schedules import VPLinear
from diffode.core.stage import Stage

F64 = torch.float64
GMM = make_gmm(2, components=4, seed=0, std=0.2)
B0, B1, T_END = 0.1, 20.0, 1e-3  # the official NoiseScheduleVP('linear') defaults and its t_end

pytestmark = pytest.mark.usefixtures("one_thread")


# -- the official singlestep sampler, re-derived in VP coordinates --------------------------------

def log_alpha(t):
    return -0.25 * t ** 2 * (B1 - B0) - 0.5 * t * B0


def sigma_vp(t):
    return torch.sqrt(1.0 - torch.exp(2.0 * log_alpha(t)))


def lam_vp(t):
    return log_alpha(t) - torch.log(sigma_vp(t))


def t_of_lam(lmb):
    tmp = 2.0 * (B1 - B0) * torch.logaddexp(-2.0 * lmb, torch.zeros_like(lmb))
    return tmp / (torch.sqrt(B0 ** 2 + tmp) + B0) / (B1 - B0)


def time_steps(skip, t_T, t_0, n):
    t_T, t_0 = torch.as_tensor(t_T, dtype=F64), torch.as_tensor(t_0, dtype=F64)
    if skip == "logSNR":
        return t_of_lam(torch.linspace(float(lam_vp(t_T)), float(lam_vp(t_0)), n + 1, dtype=F64))
    if skip == "time_uniform":
        return torch.linspace(float(t_T), float(t_0), n + 1, dtype=F64)
    return torch.linspace(float(t_T) ** 0.5, float(t_0) ** 0.5, n + 1, dtype=F64) ** 2  # time_quadratic


def official_orders(nfe, order):
    """DPM-Solver-fast's orders (method='singlestep'), except at a multiple of 3 for order 3, where
    this compares with method='singlestep_fixed' ([3] * K; the docstring of dpm_solver.py says why)."""
    if order == 2:
        return [2] * (nfe // 2) + [1] * (nfe % 2)
    return [3] * (nfe // 3) + ([nfe % 3] if nfe % 3 else [])


def eps_vp(x, t):
    """The mixture's exact noise prediction at VP state x, time t."""
    a, s = torch.exp(log_alpha(t)), sigma_vp(t)
    return (x - a * GMM(x / a, s / a)) / s


def official_update(x, s, t, order, r1, r2):
    """singlestep_dpm_solver_{first,second,third}_update, algorithm 'dpmsolver', solver_type 'dpmsolver'."""
    h = lam_vp(t) - lam_vp(s)
    e_s = eps_vp(x, s)
    first = torch.exp(log_alpha(t) - log_alpha(s)) * x - sigma_vp(t) * torch.expm1(h) * e_s
    if order == 1:
        return first
    s1 = t_of_lam(lam_vp(s) + r1 * h)
    u1 = torch.exp(log_alpha(s1) - log_alpha(s)) * x - sigma_vp(s1) * torch.expm1(r1 * h) * e_s
    if order == 2:
        return first - (0.5 / r1) * sigma_vp(t) * torch.expm1(h) * (eps_vp(u1, s1) - e_s)
    s2 = t_of_lam(lam_vp(s) + r2 * h)
    u2 = (torch.exp(log_alpha(s2) - log_alpha(s)) * x - sigma_vp(s2) * torch.expm1(r2 * h) * e_s
          - (r2 / r1) * sigma_vp(s2) * (torch.expm1(r2 * h) / (r2 * h) - 1) * (eps_vp(u1, s1) - e_s))
    return first - (1 / r2) * sigma_vp(t) * (torch.expm1(h) / h - 1) * (eps_vp(u2, s2) - e_s)


def official_singlestep(x_T_vp, nfe, order, skip):
    orders = official_orders(nfe, order)
    fine = time_steps(skip, 1.0, T_END, nfe)
    outer = fine[torch.cumsum(torch.tensor([0] + orders), 0)]
    x = x_T_vp
    for k, o in enumerate(orders):
        s, t = outer[k], outer[k + 1]
        inner = time_steps(skip, float(s), float(t), o)
        lmb = lam_vp(inner)
        h = lmb[-1] - lmb[0]
        r1 = (lmb[1] - lmb[0]) / h if o > 1 else None
        r2 = (lmb[2] - lmb[0]) / h if o > 2 else None
        x = official_update(x, s, t, o, r1, r2)
    return x


GRID = {"time_uniform": "time_uniform", "time_quadratic": "time_quadratic", "logSNR": "logsnr"}


@pytest.mark.parametrize("skip", list(GRID))
@pytest.mark.parametrize("name,order,nfe", [("dpm_solver_2", 2, 6), ("dpm_solver_2", 2, 7),
                                            ("dpm_solver_3", 3, 6), ("dpm_solver_3", 3, 7), ("dpm_solver_3", 3, 8)])
def test_inner_grid_is_the_official_singlestep_rule(skip, name, order, nfe):
    if skip == "logSNR" and nfe % order:
        pytest.skip("the official logSNR outer grid has K uniform steps of mixed orders: not a grid's nodes")
    sch = VPLinear()
    g = torch.Generator().manual_seed(3)
    z = torch.randn(4, 2, dtype=F64, generator=g)
    x_T = sch.sigma_max * z  # VE state; the VP state is alpha(1) x_T = sigma_vp(1) z
    ours = sample(GMM, x_T, name, nfe=nfe, grid=GRID[skip], schedule=sch, inner="grid")
    t1, t0 = torch.tensor(1.0, dtype=F64), torch.tensor(T_END, dtype=F64)
    ref = official_singlestep(torch.exp(log_alpha(t1)) * x_T, nfe, order, skip) / torch.exp(log_alpha(t0))
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    # the option matters on t grids: the lambda-midpoint inner points give another answer
    if skip != "logSNR" and nfe % order == 0:
        other = sample(GMM, x_T, name, nfe=nfe, grid=make_grid(GRID[skip], nfe, sch)[::order], schedule=sch)
        assert float((other - ref).abs().max()) > 1e-6


@pytest.mark.parametrize("name,order", [("dpm_solver_2", 2), ("dpm_solver_3", 3)])
def test_inner_grid_on_logsnr_is_the_lambda_rule(name, order):
    """On a logsnr grid the grid's nodes are the lambda fractions: both options give one method."""
    x_T = 80.0 * torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    grid = make_grid("logsnr", 3 * order)
    ours = sample(GMM, x_T, name, nfe=None, grid=grid, inner="grid")
    lam_rule = sample(GMM, x_T, name, nfe=None, grid=grid[::order])
    torch.testing.assert_close(ours, lam_rule, rtol=1e-12, atol=1e-12)


def test_inner_grid_reaches_every_nfe_and_refuses_a_hook():
    for name in ("dpm_solver_2", "dpm_solver_3"):
        assert reachable_nfes(name, 9, inner="grid") == list(range(1, 10))
        assert reachable_nfes(name, 9, afs=True, inner="grid") == list(range(1, 10))
    x_T = 80.0 * torch.randn(2, 2, dtype=F64)
    with pytest.raises(ValueError, match="cannot also take a midpoints hook"):
        sample(GMM, x_T, "dpm_solver_2", nfe=4, inner="grid", midpoints=lambda i, s, t, x: torch.sqrt(s * t))
    with pytest.raises(ValueError, match="choose 'lambda'"):
        sample(GMM, x_T, "dpm_solver_2", nfe=4, inner="middle")


def test_inner_grid_conditions_the_network_on_each_nodes_net_sigma():
    """With LD3's decoupled net_sigmas every grid node, inner or outer, is called at its own net sigma,
    while the coefficients keep the grid's sigmas (the answer equals a denoiser remapped by hand)."""
    grid = make_grid("edm", 7)
    net = grid * torch.linspace(0.9, 1.1, 8, dtype=F64)
    rec = Recorder(GMM)
    ours = sample(rec, _x_T(), "dpm_solver_3", nfe=None, grid=grid, net_sigmas=net, inner="grid")
    torch.testing.assert_close(torch.stack(rec.sigmas), net[:-1], rtol=0, atol=0)

    def remapped(x, sigma):  # asked at a grid node, answers as at that node's net sigma
        j = int(torch.argmin((grid - torch.as_tensor(sigma, dtype=F64)).abs()))
        return GMM(x, net[j])

    ref = sample(remapped, _x_T(), "dpm_solver_3", nfe=None, grid=grid, inner="grid")
    torch.testing.assert_close(ours, ref, rtol=1e-13, atol=1e-13)


# -- dpm_solver_3's midpoints hook --------------------------------------------------------------------

def _x_T(n=3):
    return 80.0 * torch.randn(n, 2, dtype=F64, generator=torch.Generator().manual_seed(0))


def test_dpm_solver_3_hook_at_the_thirds_is_the_default():
    thirds = lambda i, s, t, x: (s ** (2 / 3) * t ** (1 / 3), s ** (1 / 3) * t ** (2 / 3))  # noqa: E731
    torch.testing.assert_close(sample(GMM, _x_T(), "dpm_solver_3", nfe=9, midpoints=thirds),
                               sample(GMM, _x_T(), "dpm_solver_3", nfe=9), rtol=1e-12, atol=1e-12)


def test_dpm_solver_3_hook_puts_the_inner_points():
    """A hook returning the nodes of a 3x finer edm grid is the solver on that grid with inner='grid'."""
    fine = make_grid("edm", 9)
    coarse = fine[::3]
    hook = lambda i, s, t, x: (fine[3 * i + 1], Stage(fine[3 * i + 2]))  # noqa: E731
    ours = sample(GMM, _x_T(), "dpm_solver_3", nfe=None, grid=coarse, midpoints=hook)
    ref = sample(GMM, _x_T(), "dpm_solver_3", nfe=None, grid=fine, inner="grid")
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    assert float((ours - sample(GMM, _x_T(), "dpm_solver_3", nfe=None, grid=coarse)).abs().max()) > 1e-6


def test_dpm_solver_3_stage_scales():
    """One step by hand: c of the second stage stretches the step from x_T, c of the first the update
    to u2 (which then moves x_t through eps(u2)); a moves only the network time of its stage."""
    t0, t1 = torch.tensor(2.0, dtype=F64), torch.tensor(1.0, dtype=F64)
    grid = torch.stack([t0, t1])
    p1, p2 = t0 ** 0.7 * t1 ** 0.3, t0 ** 0.4 * t1 ** 0.6
    c = torch.tensor(1.07, dtype=F64)
    run = lambda st1, st2, D=GMM: sample(D, _x_T(), "dpm_solver_3", nfe=None, grid=grid,  # noqa: E731
                                         midpoints=lambda i, s, t, x: (st1, st2))
    x1 = run(Stage(p1), Stage(p2))
    torch.testing.assert_close(run(Stage(p1), Stage(p2, c=c)), _x_T() + 1.07 * (x1 - _x_T()), rtol=1e-12, atol=1e-12)
    assert float((run(Stage(p1, c=c), Stage(p2)) - x1).abs().max()) > 1e-4
    a = torch.tensor(1.2, dtype=F64)

    def shifted(x, sigma):  # the network asked at p1 answers as at a p1
        return GMM(x, a * sigma if bool(torch.isclose(torch.as_tensor(sigma, dtype=F64), p1, rtol=1e-14)) else sigma)

    torch.testing.assert_close(run(Stage(p1, a=a), Stage(p2)), run(Stage(p1), Stage(p2), shifted),
                               rtol=1e-13, atol=1e-13)


def test_dpm_solver_3_hook_must_return_a_pair():
    with pytest.raises(ValueError, match="must return a pair"):
        sample(GMM, _x_T(), "dpm_solver_3", nfe=3, midpoints=lambda i, s, t, x: torch.sqrt(s * t))
    assert math.isfinite(float(sample(GMM, _x_T(), "dpm_solver_3", nfe=3).sum()))
