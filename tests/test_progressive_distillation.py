"""Progressive distillation: the target identity, the nested-grid check, the weightings (core math),
then the staged LightningModule (short distillation, exact resume, DDP) and the method protocol."""
import math

import pytest
import torch

import diffode
from diffode.core import distillation as pd
from diffode.core.denoisers import make_gmm, v_from_x0_eps
from diffode.core.grids import make_grid
from diffode.core.schedules import EDM, DiscreteVP, VPCosine, VPLinear

F64 = torch.float64


# -- 1. the target --------------------------------------------------------------------------

def _points(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    sigmas = make_grid("edm", 16, EDM())
    st, sm, ss = pd.draw_points(sigmas, n, g)
    return g, st, sm, ss


def test_one_ddim_step_with_the_target_reproduces_the_teachers_two_steps(one_thread):
    gmm = make_gmm(dim=2, components=8, layout="ring")
    g, st, sm, ss = _points(64)
    x_t = gmm.sample(64, generator=g) + st[:, None] * torch.randn(64, 2, generator=g, dtype=F64)
    # teacher: two DDIM steps, computed per sample by diffode.sample (an independent DDIM) on its own grid
    x_s = torch.stack([diffode.sample(gmm, x_t[b:b + 1], solver="ddim", nfe=2, grid=torch.stack([st[b], sm[b], ss[b]]))[0]
                       for b in range(64)])
    torch.testing.assert_close(pd.teacher_two_steps(gmm, x_t, st, sm, ss), x_s, rtol=0, atol=1e-13)
    target = pd.pd_target(x_t, x_s, st, ss)
    # one Euler step of dx/dsigma = (x - D) / sigma with D = x_target, written out here
    one_step = x_t + (ss - st)[:, None] * (x_t - target) / st[:, None]
    assert float((one_step - x_s).abs().max()) < 1e-12
    assert float((pd.ddim_step(x_t, target, st, ss) - x_s).abs().max()) < 1e-12


def test_target_is_the_teacher_itself_when_the_teacher_is_exact_on_a_single_point():
    # data = one point y: D = y at every sigma, DDIM is exact, and every target is y
    y = torch.tensor([[0.3, -1.2]], dtype=F64)

    def D(x, sigma):
        return y.expand_as(x)

    g, st, sm, ss = _points(8, seed=1)
    x_t = y + st[:, None] * torch.randn(8, 2, generator=g, dtype=F64)
    target = pd.pd_target(x_t, pd.teacher_two_steps(D, x_t, st, sm, ss), st, ss)
    assert float((target - y).abs().max()) < 1e-12


# -- 2. nested grids ------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", [EDM(), VPLinear(), VPCosine(), DiscreteVP()], ids=lambda s: s.name)
@pytest.mark.parametrize("grid,opts", [("logsnr", {}), ("edm", {}), ("edm", {"rho": 3.0}), ("time_uniform", {}),
                                       ("time_quadratic", {})])
def test_halving_grid_families_nest(schedule, grid, opts):
    steps = pd.stage_steps(256, 1)
    pd.check_nested(lambda n: make_grid(grid, n, schedule, **opts), steps)
    for n in steps:  # the same, checked here without the helper
        fine, coarse = make_grid(grid, 2 * n, schedule, **opts), make_grid(grid, n, schedule, **opts)
        assert float(((fine[::2] - coarse) / coarse).abs().max()) < 1e-9


def test_a_non_nested_grid_is_refused():
    # diffusers' "leading" DDPM spacing: t_i = i * (1000 // N) + 1; 1000 // 3 = 333 but 1000 // 6 = 166
    sched = DiscreteVP()

    def leading(n):
        ratio = sched.N // n
        idx = torch.arange(n, -1, -1, dtype=F64) * ratio + 1
        return sched.ve_sigma(idx / sched.N)

    with pytest.raises(ValueError, match="the 3-step grid is not the even points of the 6-step grid"):
        pd.check_nested(leading, [3])
    pd.check_nested(leading, [4, 2, 1])  # 1000 divisible by 8, 4, 2: those do nest
    assert not pd.is_nested(make_grid("logsnr", 4), make_grid("logsnr", 7))


# -- 3. weightings ---------------------------------------------------------------------------

def test_weightings_match_their_formulas():
    sched = VPLinear()
    t = torch.linspace(sched.t_min, sched.t_max, 101, dtype=F64)
    snr = (sched.alpha(t) / sched.sigma(t)) ** 2  # alpha^2 / sigma^2 in the schedule's own coordinates
    s = sched.ve_sigma(t)
    torch.testing.assert_close(pd.loss_weight(s, "snr_trunc"), torch.maximum(snr, torch.ones_like(snr)), rtol=1e-12,
                               atol=0)
    torch.testing.assert_close(pd.loss_weight(s, "v_mse"), 1 + snr, rtol=1e-12, atol=0)
    assert {float(pd.loss_weight(torch.tensor(0.5, dtype=F64), w)) for w in pd.WEIGHTINGS} == {4.0, 5.0}
    assert float(pd.loss_weight(torch.tensor(3.0, dtype=F64), "snr_trunc")) == 1.0
    with pytest.raises(ValueError, match="snr_trunc, v_mse"):
        pd.loss_weight(s, "snr")


@pytest.mark.parametrize("weighting", pd.WEIGHTINGS)
def test_loss_is_the_papers_x_eps_and_v_errors(weighting, one_thread):
    """snr_trunc = mean over samples of max(x0 MSE, eps MSE); v_mse = v MSE, with eps and v derived from
    the student's x0 in VP coordinates (alpha = 1 / sqrt(1 + s^2), sigma_vp = s alpha)."""
    gmm = make_gmm(dim=3, components=4)
    g, st, sm, ss = _points(32, seed=2)
    x0 = gmm.sample(32, generator=g)
    eps = torch.randn(32, 3, generator=g, dtype=F64)

    def student(x, sigma):  # any smooth map will do
        return 0.7 * torch.tanh(x) + 0.1 * sigma[:, None]

    loss = pd.pd_loss(student, gmm, x0, eps, st, sm, ss, weighting)
    x_t = x0 + st[:, None] * eps
    target = pd.pd_target(x_t, pd.teacher_two_steps(gmm, x_t, st, sm, ss), st, ss)
    D = student(x_t, st)
    a = (1 / torch.sqrt(1 + st ** 2))[:, None]
    s_vp = st[:, None] * a
    xt_vp = a * x_t
    eps_hat, eps_tgt = (xt_vp - a * D) / s_vp, (xt_vp - a * target) / s_vp
    if weighting == "snr_trunc":
        want = torch.maximum((D - target).square().mean(1), (eps_hat - eps_tgt).square().mean(1)).mean()
    else:
        want = (v_from_x0_eps(D, eps_hat, a, s_vp) - v_from_x0_eps(target, eps_tgt, a, s_vp)).square().mean()
    torch.testing.assert_close(loss, want, rtol=1e-10, atol=0)


# -- stages -----------------------------------------------------------------------------------

def test_stage_steps_halve_down_to_n_final():
    assert pd.stage_steps(128, 1) == [64, 32, 16, 8, 4, 2, 1]
    assert pd.stage_steps(96, 3) == [48, 24, 12, 6, 3]
    assert pd.stage_steps(2, 1) == [1]


@pytest.mark.parametrize("n0,n_final", [(100, 1), (4, 4), (2, 3), (12, 5), (0, 1), (8, 0), (6.0, 1)])
def test_stage_counts_that_do_not_halve_are_refused(n0, n_final):
    with pytest.raises(ValueError, match="power of two"):
        pd.stage_steps(n0, n_final)
