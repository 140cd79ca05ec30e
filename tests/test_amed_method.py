"""AMED's predictor and training (diffode/methods/amed): output bounds, float64 finite-difference
gradients through the solver (and through the network's second evaluation), the multistep replay
against one continuous student solve, a short training lowering the held-out loss, the runner's
checks before compute, the artifact round trip and its refusals, and DDP ranks that agree."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dataclasses import replace

from diffode.core.denoisers import ModelDenoiser
from diffode.core.sample import prior_sample, sample
from diffode.core.schedules import EDM
from diffode.methods.amed import AMEDModule, AMEDPredictor, build, check, resolve
from diffode.methods.registry import Context, method_options
from diffode.models import load_model

F64 = torch.float64
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


def _options(**kw):
    return method_options("amed", **{"n_trajectories": 64, "batch": 16, "n_val": 16, "val_every": 2, **kw})


def _module(model, **kw) -> AMEDModule:
    o = _options(**kw)
    ctx = Context(out_dir=Path("."), teacher=model, trainer={"devices": 1})
    assert check(o, ctx) == []
    return build(resolve(o, ctx), ctx)


def _tiny_unet_model():
    """A float64 UNet with a 2x2 bottleneck behind the EDM preconditioning, dressed as a Model."""
    from diffode.nets.unet import UNet

    torch.manual_seed(0)
    net = UNet(resolution=8, in_channels=1, model_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1,
               attn_resolutions=())
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    D = ModelDenoiser(net.double(), EDM(), prediction="edm").eval()
    gmm = load_model({"kind": "gmm", "preset": "gmm2d"})
    return type(gmm)(D, (1, 8, 8), EDM(), 0.002, 80.0, {"kind": "test", "name": "tiny"}, "tiny")


GMM2 = load_model({"kind": "gmm", "preset": "gmm2d"})


# -- the predictor ----------------------------------------------------------------------------------

@pytest.mark.parametrize("features", [None, (2, 2)])
def test_saturated_heads_reach_exactly_the_configured_scale_bounds(features):
    """c = 1 +- scale_dir and a = 1 +- scale_time at the saturated ends, each head with its own option
    (the module built from method.scale_dir / method.scale_time; distinct values so a swap shows)."""
    scale_dir, scale_time = 0.05, 0.2
    m = _module(_tiny_unet_model() if features else GMM2, student="ipndm", nfe=5, scale_dir=scale_dir,
                scale_time=scale_time)
    p = m.predictor
    assert p.feature_shape == features
    x = torch.randn(3, 1, 8, 8, dtype=F64) if features else torch.randn(3, 2, dtype=F64)
    feats = None if features is None else torch.randn(3, 16, *features, dtype=F64)
    cur, nxt = torch.tensor(5.0, dtype=F64), torch.tensor(1.0, dtype=F64)
    for sign_dir, sign_time in ((1, -1), (-1, 1)):
        with torch.no_grad():
            for head, sign in ((p.fc_dir, sign_dir), (p.fc_time, sign_time)):
                head.weight.zero_()
                head.bias.fill_(60.0 * sign)  # sigmoid(+-60) is 1 or 0 to float64 precision
        st = p(0, cur, nxt, x, feats)
        torch.testing.assert_close(st.c, torch.full_like(st.c, 1 + sign_dir * scale_dir), rtol=1e-15, atol=1e-15)
        torch.testing.assert_close(st.a, torch.full_like(st.a, 1 + sign_time * scale_time), rtol=1e-15, atol=1e-15)


def test_predictor_spec_rebuilds_the_same_predictor_and_ratio_inverts_the_stage():
    from diffode.methods.amed.predictor import predictor_spec
    from diffode.spec import build as build_spec

    kw = dict(feature_shape=(2, 2), scale_dir=0.05, scale_time=0.2, hidden=16, time_channels=4, feature_channels=3,
              prior={"grid": "edm", "rho": 7}, first_at_start=True)
    spec = predictor_spec(**kw)
    assert spec == {"_target_": "diffode.methods.amed.predictor.AMEDPredictor", **kw, "feature_shape": [2, 2]}
    p = build_spec(spec)
    assert (p.feature_shape, p.scale_dir, p.scale_time, p.prior, p.first_at_start) == ((2, 2), 0.05, 0.2, kw["prior"], True)
    assert p.features[0].out_features == 16 and p.features[2].out_features == 3 and p.time.out_features == 4
    bare = build_spec(predictor_spec(None, 0.0, 0.0, 8, 8, 4))
    assert bare.feature_shape is None and bare.prior is None and not bare.first_at_start
    assert bare.fc_dir is None and bare.fc_time is None
    cur, nxt = torch.tensor(5.0, dtype=F64), torch.tensor(1.0, dtype=F64)
    s = nxt ** 0.3 * cur ** 0.7
    from diffode.core.stage import Stage

    torch.testing.assert_close(p.ratio(Stage(s), cur, nxt), torch.tensor(0.3, dtype=F64), rtol=1e-12, atol=0)


@pytest.mark.parametrize("features", [None, (2, 2)])
def test_predictor_outputs_stay_in_their_bounds(features):
    p = AMEDPredictor(features, scale_dir=0.05, scale_time=0.2)
    x = torch.randn(64, 1, 2, 2, dtype=F64)
    cur, nxt = torch.tensor(5.0, dtype=F64), torch.tensor(1.0, dtype=F64)
    for scale in (1.0, 1e3):  # also with saturated heads
        with torch.no_grad():
            for q in p.parameters():
                q.mul_(scale)
        feats = None if features is None else 1e3 * torch.randn(64, 3, 2, 2, dtype=F64)
        st = p(0, cur, nxt, x, feats)
        assert st.sigma.shape == (() if features is None else (64,))
        assert bool(((st.sigma > nxt) & (st.sigma < cur)).all())  # strictly inside the step
        assert bool(((st.c >= 0.95) & (st.c <= 1.05)).all()) and bool(((st.a >= 0.8) & (st.a <= 1.2)).all())
    p0 = AMEDPredictor(features)
    st0 = p0(0, cur, nxt, x, None)
    assert st0.c is None and st0.a is None  # heads absent: c = a = 1 without a multiply
    if features is not None:  # no features (AFS) reads as zeros
        z = torch.zeros(64, 5, 2, 2, dtype=F64)
        torch.testing.assert_close(st0.sigma, p0(0, cur, nxt, x, z).sigma, rtol=0, atol=0)


def test_predictor_size_follows_the_paper_for_an_8x8_bottleneck():
    """8,929 parameters with r only, 8,950 and 8,971 with one and two scale heads (paper's network)."""
    assert sum(q.numel() for q in AMEDPredictor((8, 8)).parameters()) == 8929
    assert sum(q.numel() for q in AMEDPredictor((8, 8), 0.01).parameters()) == 8950
    assert sum(q.numel() for q in AMEDPredictor((8, 8), 0.01, 0.2).parameters()) == 8971


# -- gradients ---------------------------------------------------------------------------------------

def _directional_check(m: AMEDModule, n: int):
    x_T = prior_sample((4, *m.shape), 80.0, generator=torch.Generator().manual_seed(3))
    teacher = m.teacher_points(x_T)

    earlier = []
    with torch.no_grad():  # the earlier intervals' stages, constants as training records them
        for k in range(n):
            m.student_interval(k, teacher[k], x_T, earlier)

    def loss():
        return (m.student_interval(n, teacher[n], x_T, list(earlier)) - teacher[n + 1]).pow(2).sum()

    params = list(m.predictor.parameters())
    g = torch.autograd.grad(loss(), params)
    torch.manual_seed(1)
    v = [torch.randn_like(q) for q in params]
    eps = 1e-6
    with torch.no_grad():
        for q, d in zip(params, v):
            q.add_(eps * d)
        up = float(loss())
        for q, d in zip(params, v):
            q.sub_(2 * eps * d)
        down = float(loss())
        for q, d in zip(params, v):
            q.add_(eps * d)
    fd = (up - down) / (2 * eps)
    ad = float(sum((gi * d).sum() for gi, d in zip(g, v)))
    assert abs(ad) > 1e-8
    assert abs(fd - ad) <= 1e-5 * abs(ad), (fd, ad)


@pytest.mark.parametrize("student,n", [("amed", 0), ("amed", 1), ("dpm_solver_2", 1), ("ipndm", 1),
                                        ("dpmpp_2m", 2), ("euler", 1)])
def test_loss_gradient_matches_finite_differences_on_the_gmm(student, n):
    nfe = 7
    m = _module(GMM2, student=student, nfe=nfe, afs=True, scale_dir=0.05, scale_time=0.1)
    _directional_check(m, n)


def test_loss_gradient_through_the_networks_second_evaluation():
    """With the bottleneck predictor of a (float64) UNet: the gradient reaches phi through the
    features branch and through D(x_s, a s) of the frozen network."""
    m = _module(_tiny_unet_model(), student="amed", nfe=5, afs=True, scale_dir=0.05, scale_time=0.1)
    assert m.predictor.needs_features
    _directional_check(m, 1)


# -- the multistep replay -------------------------------------------------------------------------

@pytest.mark.parametrize("student", ["ipndm", "dpmpp_2m"])
def test_multistep_replay_is_the_students_own_continuous_solve(student):
    """Interval n of a multistep student, run by replaying the recorded stages and stopping after n,
    is the state a single full solve with the same (fixed) predictor reaches at sigmas[n + 1]."""
    m = _module(GMM2, student=student, nfe=7, afs=True, scale_dir=0.05)
    x_T = prior_sample((5, 2), 80.0, generator=torch.Generator().manual_seed(4))
    _, traj = sample(m.denoiser, x_T, m.cfg.student, nfe=7, grid=m.sigmas, afs=True, midpoints=m.predictor,
                     return_trajectory=True, **m.cfg.student_options)
    recorded = []
    with torch.no_grad():
        for n in range(m.cfg.steps):
            x = m.student_interval(n, None, x_T, recorded)
            torch.testing.assert_close(x, traj[n], rtol=1e-13, atol=1e-13)
    # As in training, the predictor changes between intervals: interval n must start from the state the
    # earlier intervals reached with the stages they had then (recorded), not with today's predictor.
    recorded = []
    with torch.no_grad():
        for n in range(m.cfg.steps):
            x = m.student_interval(n, None, x_T, recorded)
            for q in m.predictor.parameters():
                q.add_(0.3 * torch.randn_like(q))
        fixed = lambda i, s_, t_, x_: recorded[i]  # noqa: E731
        ref = sample(m.denoiser, x_T, m.cfg.student, nfe=7, grid=m.sigmas, afs=True, midpoints=fixed,
                     **m.cfg.student_options)
    torch.testing.assert_close(x, ref, rtol=1e-13, atol=1e-13)


# -- training ------------------------------------------------------------------------------------

def _fit(m: AMEDModule):
    import lightning as L

    from diffode.methods.amed import trainer_overrides

    tr = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, **trainer_overrides({}))
    tr.fit(m)


@pytest.mark.parametrize("student", ["amed", "ipndm"])
def test_short_training_lowers_the_heldout_loss(student):
    m = _module(GMM2, student=student, nfe=5, afs=True, n_trajectories=256, batch=32, n_val=32, val_every=4)
    _fit(m)
    h = m.history()["val"]
    assert len(h) == 3 and not torch.isnan(m.train_loss).any()
    assert h[-1]["loss"] < 0.7 * h[0]["loss"], h
    assert h[-1]["endpoint_rmse"] < h[0]["endpoint_rmse"], h


def test_endpoint_objective_trains_on_the_whole_solve():
    """objective=endpoint: one loss and one Adam step per batch, the distance of the student's endpoint to
    the teacher's; a short training lowers it on held-out noise."""
    m = _module(GMM2, student="ipndm", nfe=6, afs=False, objective="endpoint", n_trajectories=512, batch=32, n_val=32,
                val_every=8, lr=2e-2)
    assert m.train_loss.shape == (16, 1)
    _fit(m)
    h = m.history()["val"]
    assert m.trainer.global_step == 16 and not torch.isnan(m.train_loss).any()
    assert h[-1]["loss"] < 0.7 * h[0]["loss"], h
    x_T, teacher = m.heldout()
    with torch.no_grad():  # the held-out loss is the endpoint objective itself
        want = (m.sample(x_T) - teacher[-1]).flatten(1).pow(2).sum(1).mean()
    assert abs(float(want) - h[-1]["loss"]) < 1e-12 * max(1.0, float(want))


def test_digits_perceptual_distance_is_the_objective_and_reaches_the_predictor():
    """distance=digits_perceptual: the endpoint objective is the batch mean of DigitsPerceptual between the
    student's and the teacher's endpoints (not the squared L2), and its gradient reaches the predictor."""
    from diffode.metrics.digits_perceptual import DigitsPerceptual

    m = _module(_tiny_unet_model(), student="dpm_solver_2", nfe=4, afs=False, objective="endpoint",
                distance="digits_perceptual", n_trajectories=8, batch=4, n_val=4)
    x_T = prior_sample((4, 1, 8, 8), 80.0, generator=torch.Generator().manual_seed(0)).double()
    teacher = m.teacher_points(x_T)
    (loss,) = m.interval_losses(x_T, teacher, update=False)
    with torch.no_grad():
        want = DigitsPerceptual()(m.sample(x_T), teacher[-1]).mean()
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-9)
    assert abs(float(loss) - float((m.sample(x_T) - teacher[-1]).flatten(1).pow(2).sum(1).mean())) > 1e-3
    m2 = _module(_tiny_unet_model(), student="dpm_solver_2", nfe=4, afs=False, objective="endpoint",
                 distance="digits_perceptual", l2_weight=0.5, n_trajectories=8, batch=4, n_val=4)
    with torch.no_grad():
        a, b = m.sample(x_T), teacher[-1]
        torch.testing.assert_close(m2.distance(a, b), want + 0.5 * (a - b).pow(2).mean(), rtol=1e-6, atol=1e-9)
    m.predictor.zero_grad()
    m.distance(m.sample(x_T), teacher[-1]).backward()
    assert sum(float(p.grad.abs().sum()) for p in m.predictor.parameters() if p.grad is not None) > 0


def test_val_refine_makes_the_heldout_target_closer_to_the_ode_solution():
    """val_refine = 4: the held-out teacher (iPNDM, order 2 on these grids) runs on a 4x finer grid that
    contains the student's sigmas, so its endpoint is >= 8x closer to a fine Heun solve than the training
    teacher's; the training teacher is unchanged."""
    m1 = _module(GMM2, student="ipndm", nfe=6, afs=False)
    m4 = _module(GMM2, student="ipndm", nfe=6, afs=False, val_refine=4)
    assert m4.val_sigmas.numel() - 1 == 4 * (m1.teacher_sigmas.numel() - 1)
    torch.testing.assert_close(m4.teacher_sigmas, m1.teacher_sigmas, rtol=0, atol=0)
    (x_T, t1), (_, t4) = m1.heldout(), m4.heldout()
    exact = sample(GMM2.denoiser, x_T, "heun", nfe=800, grid="edm", schedule=EDM(), sigma_min=0.002, sigma_max=80.0)
    e1, e4 = (float((t[-1] - exact).pow(2).mean().sqrt()) for t in (t1, t4))
    assert e4 < e1 / 8, (e1, e4)


# -- the runner's checks --------------------------------------------------------------------------

def _cfg(tmp_path, *ov):
    from hydra import compose, initialize_config_module

    with initialize_config_module("diffode.conf", version_base="1.3"):
        return compose("train", overrides=["method=amed", "source=gmm2d", f"output_dir={tmp_path}", *ov])


@pytest.mark.parametrize("overrides,match", [
    (["method.student=dpmpp_3m"], "not an AMED student; choose amed"),
    (["method.nfe=6", "method.afs=true"], "NFE must be odd"),
    (["method.nfe=5", "method.afs=false"], "NFE must be even"),
    (["method.scale_dir=1.5"], "scale_dir=1.5 is out of range"),
    (["method.scale_time=-0.1"], "scale_time=-0.1 is out of range"),
    (["method.grid=explicit"], "teacher grid must contain"),
    (["method.predictor.features=bottleneck"], "no bottleneck"),
    (["method.batch=7", "trainer=ddp_sim"], "divisible by the 2 training processes"),
    (["method.teacher_solver=nope"], "unknown solver 'nope'"),
    (["method.select=fid"], "select=fid scores images"),
    (["method.distance=digits_perceptual"], "compares 8x8 grey digits"),
    (["method.distance=l3"], "method.distance='l3' is unknown; choose one of l2, l2_sum, l1, pseudo_huber"),
    (["method.l2_weight=0.5"], "0 with method.distance=l2_sum"),
])
def test_bad_options_fail_before_compute_naming_the_fix(tmp_path, overrides, match, monkeypatch):
    from diffode.cli.errors import ConfigError
    from diffode.cli.train import prepare

    built = []
    monkeypatch.setattr(AMEDModule, "__init__", lambda *a, **k: built.append(1))
    with pytest.raises(ConfigError, match=match):
        prepare(_cfg(tmp_path, *overrides))
    assert not built


def test_runner_builds_the_configured_student(tmp_path):
    from diffode.cli.train import prepare

    spec, config, ctx = prepare(_cfg(tmp_path, "method.student=ipndm", "method.nfe=7"))
    m = spec.build(config, ctx)
    assert (m.cfg.student, m.cfg.teacher, m.cfg.M, m.cfg.steps) == ("ipndm", "ipndm", 2, 4)
    # afs_grid auto -> base at odd NFE: the intervals end at the odd nodes of iPNDM's 7-step edm grid u,
    # the teacher runs on u refined 2-fold (14 >= (M + 1) N = 12 steps)
    from diffode.core.grids import make_grid

    u = make_grid("edm", 7, EDM(), sigma_min=GMM2.sigma_min, sigma_max=GMM2.sigma_max)
    torch.testing.assert_close(m.sigmas, torch.cat([u[:1], u[1::2]]), rtol=1e-12, atol=0)
    torch.testing.assert_close(m.teacher_sigmas[::2], u, rtol=1e-12, atol=0)
    assert m.cfg.first_at_start and m.teacher_at == [2, 6, 10, 14]
    assert not m.predictor.needs_features  # the mixture has no bottleneck: times-only predictor
    options = config.options
    paper = resolve(replace(options, afs_grid="paper"), ctx)  # the paper's: the 4-step grid, 3-fold refined
    s, t = paper.sigmas, paper.teacher_sigmas
    assert s.numel() == 5 and t.numel() == 13 and torch.allclose(t[::3], s, rtol=1e-12)
    assert resolve(replace(options, student="amed", nfe=5), ctx).teacher == "heun"
    assert [resolve(replace(options, nfe=k), ctx).afs for k in (3, 4, 5, 6)] == [True, False, True, False]
    # grid auto: the student's usual grid; r_prior auto: the grid's own point for the plugins only
    got = {st: resolve(replace(options, student=st, nfe=6), ctx) for st in ("amed", "ipndm", "dpm_solver_2")}
    assert {st: (c.grid, c.prior) for st, c in got.items()} == {
        "amed": ("edm", None), "ipndm": ("edm", {"grid": "edm", "rho": 7.0}),
        "dpm_solver_2": ("logsnr", {"grid": "logsnr"})}


# -- the artifact ---------------------------------------------------------------------------------

def test_artifact_round_trip_and_refusals(tmp_path):
    from diffode.artifacts import load_sampler
    from diffode.methods.amed import export

    m = _module(GMM2, student="dpm_solver_2", nfe=5, afs=True, n_trajectories=32, batch=16)
    _fit(m)
    ctx = Context(out_dir=tmp_path, teacher=GMM2)
    path = Path(export(m, ctx)["artifact"])
    man = json.loads((path / "manifest.json").read_text())
    assert man["kind"] == "amed" and man["label"] == "dpm_solver_2/amed_times" and man["nfe"] == 5 and man["afs"]
    assert man["hook"]["option"] == "midpoints" and man["metrics"]["updates"] == 2 * 3
    s = load_sampler(path)
    s.check(GMM2, nfe=5)
    x_T = prior_sample((8, 2), 80.0, generator=torch.Generator().manual_seed(7))
    calls = []

    def counted(x, sigma):
        calls.append(1)
        return GMM2.denoiser(x, sigma)

    with torch.no_grad():
        torch.testing.assert_close(s.sample(counted, x_T), m.sample(x_T, m.exported()), rtol=0, atol=0)
    assert len(calls) == 5
    with pytest.raises(ValueError, match="nfe=5, not nfe=7"):
        s.check(GMM2, nfe=7)
    with pytest.raises(ValueError, match="another model"):
        s.check(load_model({"kind": "gmm", "preset": "gmm16d"}))


# -- DDP -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_ddp_sim_ranks_end_with_identical_predictors(tmp_path):
    out = tmp_path / "ddp"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    args = ["method=amed", "source=gmm2d", "trainer=ddp_sim", "method.student=ipndm", "method.nfe=5",
            "method.n_trajectories=64", "method.batch=16", "method.n_val=8", "logger=none", "threads=1",
            f"output_dir={out}"]
    p = subprocess.run([sys.executable, "-m", "diffode.cli.train", *args], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    recs = [json.loads((out / f"weights_rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 for r in recs) and recs[0]["sha256"] == recs[1]["sha256"]
    assert all(r["global_step"] == 4 * 3 for r in recs)  # 4 batches x 3 intervals, one Adam step each
    assert (out / "artifacts" / "amed" / "manifest.json").is_file()


# -- the r prior and the exported state -----------------------------------------------------------

def test_untrained_ipndm_plugin_at_odd_nfe_is_ipndm_at_that_nfe():
    """afs_grid auto (base) at NFE 5: AFS moves x by nothing, its slope leaves the history, the stages sit
    at the even nodes of the 5-step edm grid: exactly iPNDM on that grid without AFS, 5 calls."""
    model = _tiny_unet_model()
    m = _module(model, student="ipndm", nfe=5, scale_time=0.2)
    assert m.cfg.afs and m.cfg.first_at_start and m.sigmas.numel() == 4
    x_T = prior_sample((6, *m.shape), 80.0, generator=torch.Generator().manual_seed(5))
    calls = []

    def counted(x, sigma):
        calls.append(1)
        return model.denoiser(x, sigma)

    with torch.no_grad():
        got = sample(counted, x_T, "ipndm", nfe=5, grid=m.sigmas, afs=True, midpoints=m.predictor)
        want = sample(model.denoiser, x_T, "ipndm", nfe=5, grid="edm", schedule=EDM(), sigma_min=0.002,
                      sigma_max=80.0)
    assert len(calls) == 5
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("student,grid,afs", [("ipndm", "edm", False), ("dpm_solver_2", "logsnr", False),
                                              ("dpm_solver_2", "logsnr", True), ("euler", "edm", False)])
def test_untrained_plugin_with_the_r_prior_is_its_base_solver(student, grid, afs):
    """r_prior=grid, untrained: ipndm / euler with K intervals on edm are the base on the 2K-step edm
    grid (its odd points are the prior's stages); dpm_solver_2 on logsnr is DPM-Solver-2 (r0 = 1/2)."""
    model = _tiny_unet_model()
    nfe = 5 if afs else 6
    m = _module(model, student=student, nfe=nfe, afs=afs, grid=grid, r_prior="grid", scale_time=0.2)
    assert m.predictor.needs_features
    x_T = prior_sample((6, *m.shape), 80.0, generator=torch.Generator().manual_seed(5))
    from diffode.core.grids import make_grid

    K = m.sigmas.numel() - 1
    base_grid = make_grid(grid, 2 * K if student != "dpm_solver_2" else K, EDM(), sigma_min=0.002, sigma_max=80.0)
    with torch.no_grad():
        got = m.sample(x_T)
        want = sample(model.denoiser, x_T, student, nfe=nfe if student == "dpm_solver_2" else 2 * K, grid=base_grid,
                      afs=afs)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def _validate_states(m: AMEDModule, biases, record) -> list[float]:
    """Validate m (no trainer) once per hand-set state, the r head's bias at each value; returns what each
    validation wrote into `record` (m.val_rmse or m.val_fid)."""
    m.log = lambda *a, **k: None
    out = []
    for slot, bias in enumerate(biases):
        with torch.no_grad():
            m.predictor.fc_r.bias.fill_(bias)
        m.record_validation(slot)
        out.append(float(record[slot]))
    return out


def test_select_fid_exports_the_state_of_the_lowest_heldout_fid():
    """select=fid on the shipped digits UNet: three hand-set states (r head's bias +3, 0, -3 around the
    prior); every validation records the FID of the same held-out samples (seeds 2.1e9..), the export is
    the state of the lowest one, and that FID is what the digits FID of `diffode eval` gives those samples."""
    from diffode.config import eval_fid_config
    from diffode.evaluation.metrics import FIDMetrics
    from diffode.models import initial_noise

    digits = load_model({"kind": "checkpoint", "path": None})
    m = _module(digits, student="ipndm", nfe=4, select="fid", val_fid_n=300, n_val=8, val_every=1)
    fids = _validate_states(m, (3.0, 0.0, -3.0), m.val_fid)
    best = min(range(3), key=fids.__getitem__)
    assert len(set(fids)) == 3 and float(m.best_score) == fids[best] and int(m.best_batch) == best
    assert m.exported() is m.best and float(m.best.fc_r.bias) == (3.0, 0.0, -3.0)[best]
    assert [v["fid"] for v in m.history()["val"]] == fids
    fcfg = eval_fid_config()
    fcfg.bootstrap = 0
    x_T = initial_noise(digits.shape, range(2_100_000_000, 2_100_000_300), digits.sigma_max)
    with torch.no_grad():
        again = FIDMetrics(digits, fcfg)(m.sample(x_T, m.exported()).float(), x_T)["fid"]
    assert again == pytest.approx(fids[best], rel=1e-6)


def test_select_fid_rmse_skips_states_with_a_larger_solver_error_than_the_start():
    """select=fid_rmse: the state of the lowest held-out FID among those whose endpoint RMSE is not above the
    start's (slot 0). Hand-set states on the digits UNet with the FID stubbed to fall as the RMSE grows, so
    select=fid would take the state of the largest RMSE and fid_rmse must not."""
    digits = load_model({"kind": "checkpoint", "path": None})
    biases = (0.5, 0.0, -3.0, 3.0)
    picks = {}
    for select in ("fid", "fid_rmse"):
        m = _module(digits, student="ipndm", nfe=4, select=select, n_val=8, val_every=1)
        slot = iter(range(len(biases)))
        m.fid = lambda x0, m=m, slot=slot: 100.0 - 10.0 * float(m.val_rmse[next(slot)])  # the RMSE is recorded first
        rmses = _validate_states(m, biases, m.val_rmse)
        picks[select] = int(m.best_batch)
    worst = max(range(4), key=rmses.__getitem__)
    allowed = [i for i in range(4) if i == 0 or rmses[i] <= rmses[0]]
    assert worst not in allowed, rmses  # some state has a larger RMSE than the start
    assert picks["fid"] == worst and picks["fid_rmse"] == max(allowed, key=rmses.__getitem__), (rmses, picks)


def test_export_keeps_the_state_with_the_lowest_heldout_rmse():
    """Validation with three hand-set states (r head's bias +2, 0, -2 around the prior): the export is
    the state of the lowest held-out endpoint RMSE, here the middle one, not the last."""
    m = _module(GMM2, student="ipndm", nfe=6, afs=False, val_every=1)
    rmse = _validate_states(m, (2.0, 0.0, -2.0), m.val_rmse)
    assert rmse[1] < min(rmse[0], rmse[2]), rmse
    assert float(m.best_score) == rmse[1] and int(m.best_batch) == 1
    assert m.exported() is m.best and float(m.best.fc_r.bias) == 0.0
    x_T, teacher = m.heldout()
    with torch.no_grad():
        again = float((m.sample(x_T, m.exported()) - teacher[-1]).pow(2).mean().sqrt())
    assert again == pytest.approx(rmse[1], rel=1e-12)
    m.cfg.select = "last"
    assert m.exported() is m.predictor
