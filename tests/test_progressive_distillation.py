"""Progressive distillation: the target identity, the nested-grid check, the weightings (core math),
then the staged LightningModule (short distillation, exact resume, DDP) and the method protocol."""

import re

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

def test_updates_per_stage_is_one_count_or_one_per_stage():
    assert pd.stage_updates(5, 3) == [5, 5, 5] and pd.stage_updates([1, 2, 3], 3) == [1, 2, 3]
    for bad in (0, [1, 2], [1, 0, 1], 2.5, True):
        with pytest.raises(ValueError, match="one per stage"):
            pd.stage_updates(bad, 3)


def test_stage_steps_halve_down_to_n_final():
    assert pd.stage_steps(128, 1) == [64, 32, 16, 8, 4, 2, 1]
    assert pd.stage_steps(96, 3) == [48, 24, 12, 6, 3]
    assert pd.stage_steps(2, 1) == [1]


@pytest.mark.parametrize("n0,n_final", [(100, 1), (4, 4), (2, 3), (12, 5), (0, 1), (8, 0), (6.0, 1)])
def test_stage_counts_that_do_not_halve_are_refused(n0, n_final):
    with pytest.raises(ValueError, match="power of two"):
        pd.stage_steps(n0, n_final)


# -- 4. the staged module ---------------------------------------------------------------------

MLP_SPEC = {"_target_": "diffode.nets.mlp.MLP", "dim": 2, "hidden": 32, "depth": 2, "emb_channels": 16,
            "embedding": "positional", "dropout": 0.0}
VP_SPEC = {"_target_": "diffode.core.schedules.VPLinear", "beta_0": 0.1, "beta_1": 20.0, "t_min": 1e-3, "t_max": 1.0}


def tiny_teacher(steps=150, seed=0):
    """(hparams, ModelDenoiser state): an eps-MLP fitted briefly to the 2-D ring with the eps loss."""
    from diffode.core.denoisers import ModelDenoiser
    from diffode.spec import build

    torch.manual_seed(seed)
    sched = build(VP_SPEC)
    D = ModelDenoiser(build(MLP_SPEC), sched, "eps")
    gmm = make_gmm(dim=2, components=8, layout="ring")
    opt = torch.optim.Adam(D.net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x0 = gmm.sample(256, generator=g).float()
        t = sched.t_min + (sched.t_max - sched.t_min) * torch.rand(256, generator=g, dtype=F64)
        eps = torch.randn(256, 2, generator=g)
        x_t = sched.alpha(t).float()[:, None] * x0 + sched.sigma(t).float()[:, None] * eps
        loss = (D.net(x_t, sched.noise_cond(t).float()) - eps).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    hp = {"net": MLP_SPEC, "schedule": VP_SPEC, "data": {"name": "gmm2d", "shape": [2]}, "prediction": "eps",
          "sigma_data": 0.5}
    return hp, D.state_dict()


@pytest.fixture(scope="module")
def teacher():
    return tiny_teacher()


def pd_module(teacher, out_dir, **kw):
    from diffode.config import method_defaults
    from diffode.methods.progressive_distillation import ProgressiveDistillationModule

    hp, state = teacher
    sched = VPLinear()
    opts = {**method_defaults("progressive_distillation"), "n0": 8, "n_final": 2, "updates_per_stage": 12,
            "lr": 1e-3, **kw}
    for k in ("eval_samples", "eval_seed"):
        opts.pop(k)
    from diffode.config import grid_config

    kind, gopts = grid_config(opts.pop("grid"))
    opts.pop("grid_options")
    return ProgressiveDistillationModule(teacher=hp, teacher_state=state, grid=kind, grid_options=gopts,
                                         sigma_min=sched.sigma_min, sigma_max=sched.sigma_max, out_dir=str(out_dir),
                                         **opts)


class Losses:
    """Records (global step, loss) of every training step."""

    def __init__(self):
        import lightning as L

        rec = self.rec = []

        class CB(L.Callback):
            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                rec.append((trainer.global_step - 1, float(outputs["loss"])))

        self.callback = CB()


def fit(module, max_steps, out_dir, ckpt_path=None, callbacks=()):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from diffode.data.gmm import GMMDataModule

    dm = GMMDataModule(preset="gmm2d", n_train=256, n_val=16, batch_size=32, seed=0)  # 8 steps per epoch
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False, limit_val_batches=0,
                        callbacks=[ModelCheckpoint(dirpath=str(out_dir / "checkpoints"), save_last=True,
                                                   save_top_k=0, every_n_epochs=1, save_on_train_epoch_end=True),
                                   *callbacks], default_root_dir=str(out_dir))
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return trainer


def _ddim(D, x_T, sigmas):
    with torch.no_grad():
        return diffode.sample(D, x_T, solver="ddim", nfe=None, grid=sigmas)


def test_a_short_distillation_closes_the_student_teacher_gap(teacher, tmp_path, one_thread):
    module = pd_module(teacher, tmp_path, n0=4, n_final=2, updates_per_stage=200)
    assert module.output == "v" and module.student.prediction == "v"  # an eps teacher cannot step from sigma_max
    x_T = VPLinear().sigma_max * torch.randn(512, 2, generator=torch.Generator().manual_seed(5), dtype=F64)
    fine, coarse = module.grid(4), module.grid(2)
    teacher_fine = _ddim(module.teacher, x_T, fine)
    rms = lambda a: float((a - teacher_fine).square().mean().sqrt())  # noqa: E731
    before = rms(_ddim(module.teacher, x_T, coarse))  # the teacher itself at half the steps
    fit(module, 200, tmp_path)
    from diffode.models import load_denoiser

    student, info = load_denoiser(tmp_path / "students" / "2.ckpt", ema=False)
    assert info["prediction"] == "v" and info["hparams"]["distilled"]["teacher_steps"] == 4
    torch.testing.assert_close(info["hparams"]["distilled"]["sigmas"], coarse.tolist())
    after = rms(_ddim(student, x_T, coarse))
    assert after < 0.5 * before, (before, after)


@pytest.mark.parametrize("updates", [12, [8, 16]])
def test_stages_halve_save_each_student_and_restart_adam(teacher, tmp_path, one_thread, updates):
    module = pd_module(teacher, tmp_path, updates_per_stage=updates)  # 8 -> 4 -> 2
    u = [updates] * 2 if isinstance(updates, int) else updates
    lrs = []

    import lightning as L

    class LR(L.Callback):
        def on_before_optimizer_step(self, trainer, m, optimizer):  # after the module's on_train_batch_start
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])
            if trainer.global_step == u[0]:  # first step of stage 2: fresh Adam, teacher = the 4-step student
                assert not trainer.optimizers[0].state
                s4 = torch.load(tmp_path / "students" / "4.ckpt", weights_only=True)["state_dict"]
                for k, v in m.teacher.state_dict().items():
                    assert torch.equal(v, s4[f"denoiser.{k}"])

    fit(module, 24, tmp_path, callbacks=[LR()])
    assert sorted(p.name for p in (tmp_path / "students").glob("*.ckpt")) == ["2.ckpt", "4.ckpt"]
    assert int(module.stage) == 2
    want = [1e-3 * (1 - s / u[0]) for s in range(u[0])] + [1e-3 * (1 - s / u[1]) for s in range(u[1])]
    assert lrs == pytest.approx(want, rel=1e-12)


def test_kill_and_resume_mid_stage_gives_the_same_next_losses(teacher, tmp_path, one_thread):
    full = Losses()
    fit(pd_module(teacher, tmp_path / "full"), 24, tmp_path / "full", callbacks=[full.callback])
    part = Losses()
    fit(pd_module(teacher, tmp_path / "part"), 8, tmp_path / "part", callbacks=[part.callback])  # killed at step 8
    fit(pd_module(teacher, tmp_path / "part"), 24, tmp_path / "part",
        ckpt_path=str(tmp_path / "part" / "checkpoints" / "last.ckpt"), callbacks=[part.callback])
    assert [s for s, _ in full.rec] == [s for s, _ in part.rec] == list(range(24))
    assert [v for _, v in full.rec] == [v for _, v in part.rec]  # bit-identical, across the stage switch at 12
    assert len({v for _, v in full.rec[8:]}) == 16
    for n in (4, 2):
        a = torch.load(tmp_path / "full" / "students" / f"{n}.ckpt", weights_only=True)["state_dict"]
        b = torch.load(tmp_path / "part" / "students" / f"{n}.ckpt", weights_only=True)["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_gradient_norm_is_clipped(teacher, tmp_path, one_thread):
    norms = []

    module = pd_module(teacher, tmp_path, grad_clip=0.01)
    orig = module.configure_gradient_clipping

    def spy(optimizer, **kw):
        orig(optimizer, **kw)
        norms.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.student.parameters()
                                                                 if p.grad is not None]))))

    module.configure_gradient_clipping = spy
    fit(module, 3, tmp_path)
    assert len(norms) == 3 and max(norms) <= 0.01 * (1 + 1e-5)


# -- 5. the method protocol: diffode train method=progressive_distillation --------------------

def _teacher_ckpt(teacher, path):
    """The tiny eps-MLP as a denoiser checkpoint (the format source=checkpoint loads)."""
    from diffode.core.denoisers import ModelDenoiser
    from diffode.methods.student import save_student_checkpoint
    from diffode.spec import build

    hp, state = teacher
    D = ModelDenoiser(build(hp["net"]), build(hp["schedule"]), "eps")
    D.load_state_dict(state)
    return save_student_checkpoint(D, hp, path)


def pd_cfg(tmp_path, *overrides, teacher_path=None):
    from hydra import compose, initialize_config_module

    src = [f"source.path={teacher_path}", "dataset=gmm2d", "dataset.n_train=256", "dataset.batch_size=32"] \
        if teacher_path else []
    with initialize_config_module("diffode.conf", version_base="1.3"):
        return compose("train", overrides=["method=progressive_distillation", "logger=none", "threads=1",
                                           "method.eval_samples=64", *src, *overrides, f"output_dir={tmp_path}"])


@pytest.fixture(scope="module")
def teacher_path(teacher, tmp_path_factory):
    return _teacher_ckpt(teacher, tmp_path_factory.mktemp("teacher") / "mlp_eps.ckpt")


def test_the_runner_distils_and_exports_one_artifact_per_student(teacher_path, tmp_path, one_thread):
    from diffode.artifacts import load_sampler
    from diffode.cli.train import train
    from diffode.models import load_denoiser, load_model

    res = train(pd_cfg(tmp_path, "method.n0=4", "method.n_final=1", "method.updates_per_stage=3",
                       teacher_path=teacher_path))
    assert res["global_step"] == 6 and sorted(res["exported"]) == ["pd_1", "pd_2"]
    model = load_model({"kind": "checkpoint", "path": str(teacher_path), "ema": True})
    calls = {"n": 0}

    def counted_teacher(x, sigma):
        calls["n"] += 1
        return model.denoiser(x, sigma)

    x_T = model.sigma_max * torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    for n in (2, 1):
        s = load_sampler(tmp_path / "artifacts" / f"pd_{n}")
        assert (s.label, s.nfe, s.solver) == (f"pd/{n}", n, "ddim")
        s.check(model)  # made for this teacher
        torch.testing.assert_close(s.sigmas, make_grid("logsnr", n, model.schedule))
        student, info = load_denoiser(tmp_path / "students" / f"{n}.ckpt", ema=False)
        x = s.sample(counted_teacher, x_T)
        assert calls["n"] == 0  # the student replaced the teacher
        torch.testing.assert_close(x, _ddim(student, x_T, s.sigmas), rtol=0, atol=1e-12)
        m = s.manifest["metrics"]
        assert m["eval_samples"] == 64 and m["rmse_vs_teacher"] > 0
        assert s.manifest["training"]["output"] == "v" and s.manifest["model"]["sha256"] == model.identity["sha256"]
    other = load_model({"kind": "checkpoint", "path": None, "ema": True})  # the digits UNet
    with pytest.raises(ValueError, match="another model"):
        s.check(other)


@pytest.mark.parametrize("overrides,match", [
    (["method.n0=100"], "power of two"),
    (["method.n0=4", "method.n_final=4"], "power of two"),
    (["method.grid=explicit"], "fixed grid"),
    (["method.grid=nonesuch"], "method.grid"),
    (["method.student_output=eps"], "cannot take a step from sigma_max"),
    (["method.updates_per_stage=0"], "updates_per_stage"),
    (["method.updates_per_stage=[5,5]"], "a list of 7 integers"),
    (["method.lr=0"], "method.lr"),
    (["source.path=/nonexistent/teacher.ckpt"], "not found"),
    (["source=gmm2d", "dataset=gmm2d"], "needs a teacher network"),
])
def test_bad_configs_fail_before_any_compute(tmp_path, overrides, match):
    from diffode.cli.errors import ConfigError
    from diffode.cli.train import train

    with pytest.raises(ConfigError, match=match):
        train(pd_cfg(tmp_path, *overrides))
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "students").exists()


@pytest.mark.parametrize("override,match", [
    ("method.weighting=snr", r"Invalid value 'snr', expected one of \[snr_trunc, v_mse\]"),
    ("method.student_output=pixels", r"Invalid value 'pixels', expected one of \[auto, eps, x0, v, velocity, edm\]"),
])
def test_an_unknown_choice_is_refused_when_the_config_is_composed(tmp_path, override, match):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as e:
        pd_cfg(tmp_path, override)
    assert re.search(match, str(e.value.__cause__)), e.value.__cause__


def test_a_non_nesting_grid_option_is_refused_by_check():
    """check() runs the nested-grid test on the grid the config names (here with a stubbed grid family)."""
    from types import SimpleNamespace

    from diffode.core import grids
    from diffode.methods.progressive_distillation import check
    from diffode.methods.registry import method_options

    def shifted(steps, lo, hi, schedule=None):  # uniform in sigma with a step-dependent end point
        return torch.linspace(hi, lo * (1 + 1 / steps), steps + 1, dtype=F64)

    grids.GRIDS["_shifted"] = shifted
    try:
        opts = method_options("progressive_distillation", grid="logsnr", grid_options={})
        ctx = SimpleNamespace(teacher=SimpleNamespace(schedule=EDM(), sigma_min=0.002, sigma_max=80.0, info={},
                                                      identity={"kind": "gmm"}, denoiser=None))
        import diffode.methods.progressive_distillation as pdm

        orig = pdm._grid
        pdm._grid = lambda o: ("_shifted", {})
        try:
            errs = check(opts, ctx)
        finally:
            pdm._grid = orig
        assert any("not the even points" in e for e in errs), errs
        assert any("needs a teacher network" in e for e in errs), errs
    finally:
        del grids.GRIDS["_shifted"]


@pytest.mark.slow
def test_ddp_sim_ends_with_identical_students_on_both_ranks(teacher_path, tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "ddp"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="disabled", DIFFODE_OUTPUTS=str(tmp_path / "outputs"))
    args = ["method=progressive_distillation", "trainer=ddp_sim", "logger=none", "threads=1", "method.n0=4",
            "method.n_final=1", "method.updates_per_stage=3", "method.eval_samples=0", f"source.path={teacher_path}",
            "dataset=gmm2d", "dataset.n_train=256", "dataset.batch_size=16", f"output_dir={out}"]
    p = subprocess.run([sys.executable, "-m", "diffode.cli.train", *args], cwd=Path(__file__).resolve().parents[1],
                       env=env, capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    recs = [json.loads((out / f"weights_rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 and r["global_step"] == 6 for r in recs)
    assert recs[0]["sha256"] == recs[1]["sha256"]
    assert sorted(p.name for p in (out / "artifacts").iterdir()) == ["pd_1", "pd_2"]
