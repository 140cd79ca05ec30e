"""sample(): exact NFE accounting, AFS, denoise_to_zero, decoupled conditioning, hooks, errors, gradients."""
from __future__ import annotations

import math

import pytest
import torch

import diffode
from _reference import Recorder
from diffode.core.denoisers import make_gmm
from diffode.artifacts import save_artifact
from diffode.core.grids import make_grid
from diffode.core.sample import check_sampling_config, prior_sample, reachable_nfes, sample
from diffode.core.schedules import EDM, VPLinear
from diffode.core.solvers import SOLVERS

F64 = torch.float64
MINE = ["ddim", "euler", "heun", "dpm_solver_2", "dpm_solver_3", "dpmpp_2m", "dpmpp_3m", "unipc_bh1", "unipc_bh2"]
GMM = make_gmm(2, components=4, seed=0, std=0.2)


pytestmark = pytest.mark.usefixtures("one_thread")


def _x_T(n=3, dim=2, seed=0, sigma_max=80.0):
    return prior_sample((n, dim), sigma_max, generator=torch.Generator().manual_seed(seed))


# -- NFE accounting ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MINE)
@pytest.mark.parametrize("afs", [False, True])
@pytest.mark.parametrize("dtz", [False, True])
def test_exact_number_of_calls(name, afs, dtz):
    options = [{}] + ([dict(euler_last=True)] if name == "heun" else [])
    for opts in options:
        ok = set(reachable_nfes(name, 12, afs, dtz, **opts))
        assert ok, name
        for k in range(1, 13):
            rec = Recorder(GMM)
            if k in ok:
                x = sample(rec, _x_T(), name, nfe=k, afs=afs, denoise_to_zero=dtz, **opts)
                assert len(rec.sigmas) == k, (name, opts, k)
                assert bool(torch.isfinite(x).all())
            else:
                with pytest.raises(ValueError, match=f"cannot make exactly nfe={k}"):
                    sample(rec, _x_T(), name, nfe=k, afs=afs, denoise_to_zero=dtz, **opts)
                assert not rec.sigmas  # refused before any compute


def test_reachable_nfes():
    assert reachable_nfes("heun", 10) == [2, 4, 6, 8, 10]
    assert reachable_nfes("heun", 10, euler_last=True) == [1, 3, 5, 7, 9]
    assert reachable_nfes("heun", 10, afs=True) == [1, 3, 5, 7, 9]
    assert reachable_nfes("dpm_solver_3", 10) == [3, 6, 9]
    assert reachable_nfes("dpm_solver_3", 10, denoise_to_zero=True) == [4, 7, 10]
    assert reachable_nfes("dpmpp_2m", 5, afs=True) == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match=r"nearest reachable NFEs are \[2, 4, 6, 8\]"):
        sample(GMM, _x_T(), "heun", nfe=3)
    with pytest.raises(ValueError, match=r"cannot make exactly nfe=2.*\[3, 6"):
        sample(GMM, _x_T(), "dpm_solver_3", nfe=2)  # below the minimum


# -- AFS, denoise_to_zero, decoupled conditioning, trajectory ---------------------------------------

def _euler_by_hand(x, sig, first_d=None):
    for i in range(len(sig) - 1):
        d = (x - GMM(x, sig[i])) / sig[i] if (i > 0 or first_d is None) else first_d(x, sig[i])
        x = x + (sig[i + 1] - sig[i]) * d
    return x


def test_afs_replaces_the_first_call_analytically():
    x_T = _x_T()
    rec = Recorder(GMM)
    x = sample(rec, x_T, "ddim", nfe=5, afs=True)
    sig = make_grid("logsnr", 6)
    ref = _euler_by_hand(x_T, sig, first_d=lambda x, s: x / torch.sqrt(1 + s * s))
    torch.testing.assert_close(x, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.stack(rec.sigmas), sig[1:-1])  # the network never saw sigma_max


def test_denoise_to_zero_is_one_final_call():
    x_T = _x_T()
    x = sample(GMM, x_T, "dpmpp_2m", nfe=6, denoise_to_zero=True)
    x5 = sample(GMM, x_T, "dpmpp_2m", nfe=5)
    torch.testing.assert_close(x, GMM(x5, torch.tensor(0.002, dtype=F64)))


def test_net_sigmas_condition_the_network_only():
    x_T = _x_T()
    sig = make_grid("logsnr", 4)
    net = sig * torch.tensor([1.0, 1.1, 0.9, 1.05, 1.0], dtype=F64)
    rec = Recorder(GMM)
    x = sample(rec, x_T, "ddim", nfe=4, net_sigmas=net)
    torch.testing.assert_close(torch.stack(rec.sigmas), net[:-1])
    xh = x_T
    for i in range(4):  # Euler whose coefficients use sig but whose D is conditioned on net
        r = sig[i + 1] / sig[i]
        xh = r * xh + (1 - r) * GMM(xh, net[i])
    torch.testing.assert_close(x, xh)
    # The same conditioning as the grid is a no-op.
    for name in MINE:
        nfe = reachable_nfes(name, 12)[-1]
        steps = check_sampling_config(name, nfe).steps
        a = sample(GMM, x_T, name, nfe=nfe)
        b = sample(GMM, x_T, name, nfe=nfe, net_sigmas=make_grid("logsnr", steps))
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)


def test_trajectory_and_info():
    x_T = _x_T()
    x, traj, info = sample(GMM, x_T, "heun", nfe=8, return_trajectory=True, return_info=True)
    assert len(traj) == 4 and traj[-1] is x
    assert info["nfe"] == 8 and info["steps"] == 4
    torch.testing.assert_close(info["sigmas"], make_grid("logsnr", 4))
    seen = []
    sample(GMM, x_T, "dpmpp_3m", nfe=5, callback=lambda d: seen.append((d["i"], float(d["sigma"]))))
    assert [i for i, _ in seen] == list(range(5))
    assert seen[-1][1] == pytest.approx(0.002)
    x, traj = sample(GMM, x_T, "ddim", nfe=4, denoise_to_zero=True, return_trajectory=True)
    assert len(traj) == 4 and traj[-1] is x


def test_grid_from_file_brings_its_net_sigmas(tmp_path):
    sig = make_grid("edm", 5, EDM())
    net = sig * 1.02
    p = tmp_path / "g"
    save_artifact(p, kind="ld3", sigmas=sig, solver="dpmpp_2m", nfe=5, schedule=EDM(), net_sigmas=net, model={"kind": "gmm"})
    rec = Recorder(GMM)
    sample(rec, _x_T(), "dpmpp_2m", nfe=5, grid="from_file", grid_options=dict(path=str(p)), schedule=EDM())
    torch.testing.assert_close(torch.stack(rec.sigmas), net[:-1])
    with pytest.raises(ValueError, match="nfe=5 but is used with nfe=6"):
        check_sampling_config("dpmpp_2m", 6, "from_file", dict(path=str(p)), EDM())


def test_adaptive_solver_reports_its_nfe():
    rec = Recorder(GMM)
    x, info = sample(rec, _x_T(), "rk45", nfe=None, return_info=True)
    assert info["nfe"] == len(rec.sigmas) > 0 and bool(torch.isfinite(x).all())


def _diffusers_run(scheduler_cls, gmm, x_T_ve, sch, **kw):
    """Sample with a diffusers scheduler on DiscreteVP linear betas, 9 steps [999, 888, .., 111] -> index 0,
    driven by the exact eps of `gmm`; returns the VE endpoint."""
    s = scheduler_cls(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                      timestep_spacing="linspace", final_sigmas_type="sigma_min", lower_order_final=False, **kw)
    s.set_timesteps(9)
    assert s.timesteps.tolist() == [999 - 111 * k for k in range(9)]
    alpha = torch.exp(sch.log_alphas)
    x = x_T_ve * alpha[999]
    for t in s.timesteps.tolist():
        a = alpha[t]
        sg = torch.sqrt(1 - a * a)
        eps = (x - a * gmm(x / a, sg / a)) / sg
        x = s.step(eps, t, x).prev_sample
    return x / alpha[0]


@pytest.mark.parametrize("name,options,diffusers_kw", [
    ("dpmpp_2m", {}, dict(solver_order=2, algorithm_type="dpmsolver++", solver_type="midpoint")),
    ("dpmpp_3m", dict(coefficients="official"), dict(solver_order=3, algorithm_type="dpmsolver++")),
    ("unipc_bh2", dict(order=2), dict(solver_order=2, solver_type="bh2")),
    ("unipc_bh1", dict(order=3), dict(solver_order=3, solver_type="bh1")),
], ids=["dpmpp_2m", "dpmpp_3m", "unipc_bh2", "unipc_bh1"])
def test_matches_diffusers_schedulers(name, options, diffusers_kw):
    """Independent implementation: diffusers' multistep schedulers on the same discrete-VP grid
    (DESIGN oracle 4). diffusers steps in float32, hence the tolerance."""
    import diffusers  # a required dev dependency: a missing peer fails the test
    from diffode.core.schedules import DiscreteVP

    sch = DiscreteVP()
    sig = sch.ve_sigma(sch.ts)  # index i sits at t = (i + 1)/N
    grid = torch.cat([sig[[999 - 111 * k for k in range(9)]], sig[:1]])
    x_T = grid[0] * torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    cls = diffusers.DPMSolverMultistepScheduler if name.startswith("dpmpp") else diffusers.UniPCMultistepScheduler
    ref = _diffusers_run(cls, GMM, x_T, sch, **diffusers_kw)
    ours = sample(GMM, x_T, name, nfe=None, grid=grid, schedule=sch, lower_order_final=False, **options)
    torch.testing.assert_close(ours, ref.to(F64), rtol=1e-4, atol=1e-4)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # diffusers deprecates the noise-prediction 'dpmsolver'
def test_dpm_solver_2_with_hook_matches_diffusers_singlestep():
    """diffusers' singlestep DPM-Solver-2 takes its intermediate points from its own t grid; handing the
    same points to our `midpoints` hook must reproduce it (checks the general-r1 update and the hook)."""
    import diffusers  # a required dev dependency: a missing peer fails the test
    from diffode.core.schedules import DiscreteVP

    sch = DiscreteVP()
    alpha, sig = torch.exp(sch.log_alphas), sch.ve_sigma(sch.ts)
    s = diffusers.DPMSolverSinglestepScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                               beta_end=0.02, final_sigmas_type="sigma_min", lower_order_final=False,
                                               solver_order=2, algorithm_type="dpmsolver", solver_type="midpoint")
    s.set_timesteps(6)
    ts = s.timesteps.tolist()
    assert s.order_list == [1, 2] * 3
    pts = torch.cat([sig[ts], sig[:1]])
    x_T = pts[0] * torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    x = x_T * alpha[ts[0]]
    for t in ts:
        a = alpha[t]
        sg = torch.sqrt(1 - a * a)
        x = s.step((x - a * GMM(x / a, sg / a)) / sg, t, x).prev_sample
    ref = x / alpha[0]
    mids = pts[1::2]
    ours = sample(GMM, x_T, "dpm_solver_2", nfe=6, grid=pts[::2], schedule=sch, midpoints=lambda i, a, b, x: mids[i])
    torch.testing.assert_close(ours, ref.to(F64), rtol=1e-4, atol=1e-4)
    # inner='grid' is the same rule without a hook: the grid's own nodes are the inner points
    ours = sample(GMM, x_T, "dpm_solver_2", nfe=6, grid=pts, schedule=sch, inner="grid")
    torch.testing.assert_close(ours, ref.to(F64), rtol=1e-4, atol=1e-4)

# -- the AMED hook -------------------------------------------------------------------------------

def test_midpoints_hook():
    x_T = _x_T()
    calls = []

    def next_point(i, s_cur, s_next, x):
        calls.append(i)
        return s_next

    a = sample(GMM, x_T, "heun", nfe=8)
    torch.testing.assert_close(sample(GMM, x_T, "heun", nfe=8, midpoints=next_point), a, rtol=1e-13, atol=1e-13)
    assert calls == [0, 1, 2, 3]
    geo = lambda i, s, t, x: torch.sqrt(s * t)  # noqa: E731
    torch.testing.assert_close(sample(GMM, x_T, "dpm_solver_2", nfe=8, midpoints=geo),
                               sample(GMM, x_T, "dpm_solver_2", nfe=8), rtol=1e-13, atol=1e-13)
    # Any interior stage point keeps second order: halving the steps cuts the error ~4x.
    off = lambda i, s, t, x: s ** 0.3 * t ** 0.7  # noqa: E731
    ref = sample(GMM, x_T, "dpm_solver_3", nfe=1500)
    for name in ("heun", "dpm_solver_2"):
        e1 = float((sample(GMM, x_T, name, nfe=160, midpoints=off) - ref).abs().max())
        e2 = float((sample(GMM, x_T, name, nfe=320, midpoints=off) - ref).abs().max())
        assert 3.0 < e1 / e2 < 5.0, (name, e1, e2)


# -- errors ----------------------------------------------------------------------------------------

def test_clear_errors_before_compute():
    with pytest.raises(ValueError, match="unknown solver 'rk4'; available"):
        check_sampling_config("rk4", 10)
    with pytest.raises(ValueError, match="unknown grid 'karras'"):
        check_sampling_config("ddim", 10, grid="karras")
    with pytest.raises(ValueError, match="does not take option\\(s\\) \\['order'\\]"):
        check_sampling_config("dpmpp_2m", 10, order=3)
    with pytest.raises(ValueError, match="does not take option"):
        check_sampling_config("ddim", 10, "edm", dict(rh0=7))
    with pytest.raises(ValueError, match="strictly decreasing"):
        check_sampling_config("ddim", 3, torch.tensor([80.0, 1.0, 2.0, 0.002], dtype=F64))
    with pytest.raises(ValueError, match="outside the schedule's range"):
        check_sampling_config("ddim", 3, [200.0, 1.0, 0.1, 0.01], schedule=EDM())
    with pytest.raises(ValueError, match="4 sigmas \\(3 steps\\) but 4 steps"):
        check_sampling_config("ddim", 4, "explicit", dict(sigmas=[80.0, 1.0, 0.1, 0.01]))
    with pytest.raises(ValueError, match="nfe must be an integer >= 1"):
        check_sampling_config("ddim", 0)
    plan = check_sampling_config("dpm_solver_2", 10, "time_uniform", None, VPLinear(), afs=True, denoise_to_zero=True)
    assert plan.steps == 5 and plan.nfe == 10


def test_nan_reports_step_and_sigma():
    def broken(x, sigma):
        D = GMM(x, sigma)
        return D * float("nan") if float(sigma) < 1.0 else D

    sig = make_grid("logsnr", 8)
    first_bad = int((sig < 1.0).nonzero()[0, 0])  # the step that first calls D below sigma 1
    with pytest.raises(FloatingPointError, match=f"at step {first_bad} \\(sigma={float(sig[first_bad + 1]):.6g}\\)"):
        sample(broken, _x_T(), "ddim", nfe=8)


# -- dtypes and gradients ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", MINE)
def test_float32_state(name):
    x_T = _x_T()
    nfe = reachable_nfes(name, 12)[-1]
    x32 = sample(GMM, x_T.float(), name, nfe=nfe)
    assert x32.dtype == torch.float32
    torch.testing.assert_close(x32.double(), sample(GMM, x_T, name, nfe=nfe), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", MINE)
def test_gradients_match_finite_differences(name):
    """Every deterministic solver is differentiable in x_T and in the grid's sigmas (LD3, AMED)."""
    steps = 5  # enough for the third-order branches (UniPC linalg.solve, 3M) to run
    x_T = _x_T(n=2, sigma_max=10.0).requires_grad_(True)
    sig = make_grid("logsnr", steps, sigma_min=0.05, sigma_max=10.0).requires_grad_(True)
    w = torch.linspace(-1, 1, 4, dtype=F64).reshape(2, 2)

    def loss(x, s):
        return (w * sample(GMM, x, name, nfe=None, grid=s, afs=(name == "dpmpp_2m"))).sum()

    assert torch.autograd.gradcheck(loss, (x_T, sig), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", MINE)
def test_any_state_shape(name):
    """Image-shaped states [B, C, H, W] give the same numbers as the flattened [B, D] ones (no 4-D einsum)."""
    from diffode.core.denoisers import FiniteSetDenoiser

    pts = torch.randn(5, 1, 2, 3, dtype=F64, generator=torch.Generator().manual_seed(4))
    D = FiniteSetDenoiser(pts)
    x_T = prior_sample((3, 1, 2, 3), 80.0, generator=torch.Generator().manual_seed(5))
    nfe = reachable_nfes(name, 9)[-1]
    img = sample(D, x_T, name, nfe=nfe)
    flat = sample(D, x_T.reshape(3, -1), name, nfe=nfe)
    assert img.shape == x_T.shape
    torch.testing.assert_close(img.reshape(3, -1), flat, rtol=1e-12, atol=1e-12)

def test_prior_sample_and_package_export():
    x = prior_sample((4000, 3), 80.0, generator=torch.Generator().manual_seed(0))
    assert x.dtype == F64 and x.shape == (4000, 3)
    assert float(x.std()) == pytest.approx(80.0, rel=0.03)
    assert diffode.sample is sample
    assert math.isfinite(float(sample(GMM, x[:2, :2], "unipc_bh2", nfe=4).sum()))


# -- Hydra configs --------------------------------------------------------------------------------

CONTRACT_SOLVERS = ["ddim", "euler", "heun", "dpm_solver_2", "dpm_solver_3", "dpmpp_2m", "dpmpp_3m", "unipc_bh1",
                    "unipc_bh2", "ipndm", "deis", "rk45", "ddpm", "euler_maruyama"]


def test_solver_and_grid_configs_are_valid():
    from pathlib import Path

    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[1] / "conf"
    for name in CONTRACT_SOLVERS + [n for n in SOLVERS if n not in CONTRACT_SOLVERS]:
        cfg = OmegaConf.load(conf / "solver" / f"{name}.yaml")
        assert cfg.name == name
        if name not in SOLVERS:
            continue  # its module has not landed yet
        opts = dict(cfg.options)
        # annealed_langevin: 100 calls per level by default
        nfe = None if SOLVERS[name].adaptive else (reachable_nfes(name, 12, **opts) or reachable_nfes(name, 400, **opts))[-1]
        check_sampling_config(cfg.name, nfe, "logsnr", **opts)
    for name in ["time_uniform", "time_quadratic", "logsnr", "edm", "explicit", "from_file"]:
        cfg = OmegaConf.load(conf / "grid" / f"{name}.yaml")
        assert cfg.name == name
        if name not in ("explicit", "from_file"):  # these two have mandatory options (???)
            check_sampling_config("dpmpp_2m", 6, cfg.name, cfg.options, VPLinear())
    cfg = OmegaConf.create(dict(name="explicit", options=dict(sigmas=[80.0, 5.0, 0.5, 0.002])))
    x = sample(GMM, _x_T(), "dpmpp_2m", nfe=3, grid=cfg.name, grid_options=cfg.options, schedule=EDM())
    assert bool(torch.isfinite(x).all())
