"""Every learned method on a flow model, through the one runner (`diffode train method=...`), and reflow's own
behaviour on the exact flow mixture.

- LD3, GITS, AMED and consistency distillation train a few steps on source=gmm2d_flow (the mixture's exact
  velocity network under the flow schedule); progressive distillation needs a teacher network to copy, so it
  distils a tiny velocity MLP trained here under schedule=flow (a flow model of the same mixture). Each
  exported artifact loads with load_sampler, passes check() against its model and samples finite values.
- reflow: its loss is flow matching on the coupled pairs (checked against the formula), a short run on the
  exact flow mixture makes the 1-step Euler sample much closer to the teacher's solve than the teacher's own
  1-step Euler (the straightening), and a run resumed mid-distillation ends with the same students.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from diffode.artifacts import load_sampler
from diffode.cli.train import prepare, train
from diffode.models import load_model

pytestmark = pytest.mark.usefixtures("one_thread")

MLP = "{_target_: diffode.nets.mlp.MLP, dim: 2, hidden: 32, depth: 2}"
FLOW_MIXTURE = ["source=gmm2d_flow", "logger=none", "threads=1"]
TINY_REFLOW = ["method=reflow", f"method.student_net={MLP}", "method.n_pairs=64", "method.val_pairs=16",
               "method.reflow_updates=6", "method.distill_updates=4", "method.batch_size=16", "method.teacher.nfe=8"]


def cfg(tmp_path, *overrides):
    with initialize_config_module("diffode.conf", version_base="1.3"):
        return compose("train", overrides=[*overrides, f"output_dir={tmp_path}"])


def artifacts_load_and_sample(paths, model):
    assert paths
    x_T = model.sigma_max * torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for path in paths:
        s = load_sampler(path)
        s.check(model)
        assert s.manifest["schedule"]["name"] == "flow"
        with torch.no_grad():
            x = s.sample(model, x_T)
        assert x.shape == x_T.shape and bool(torch.isfinite(x).all()), path


METHODS = {
    "ld3": ["method=ld3", "method.distance=l2", "method.solver=ipndm", "method.nfe=4", "method.n_pairs=8",
            "method.rounds_logits=1", "method.rounds_joint=1", "method.batch_size=4", "method.val_batch_size=4",
            "method.teacher.nfe=12"],
    "gits": ["method=gits", "method.nfe=[4]", "method.solver=[ipndm]", "method.metric=l2", "method.n_warmup=8",
             "method.batch_size=8", "method.teacher.steps=10"],
    "amed": ["method=amed", "method.student=ipndm", "method.nfe=5", "method.n_trajectories=16", "method.batch=8",
             "method.n_val=8", "method.val_every=1"],
    "consistency_distillation": ["method=consistency_distillation", "dataset=gmm2d", "net=mlp", "net.hidden=32",
                                 "net.depth=2", "trainer.max_steps=3", "dataset.batch_size=16", "dataset.n_train=64",
                                 "method.n_val=8", "method.reference_nfe=10", "method.sample_steps=[1,2]",
                                 "trainer.limit_val_batches=1", "sample_every_n_steps=3"],
    "reflow": TINY_REFLOW,
}


@pytest.mark.parametrize("method", list(METHODS))
def test_each_learned_method_runs_on_the_exact_flow_mixture(tmp_path, method):
    res = train(cfg(tmp_path, *FLOW_MIXTURE, *METHODS[method]))
    exported = res["exported"]
    paths = [v for k, v in exported.items() if k != "ema_checkpoint" and Path(v).joinpath("manifest.json").is_file()]
    if not paths and "artifact" in exported:
        paths = [exported["artifact"]]
    artifacts_load_and_sample(paths, load_model({"kind": "gmm", "preset": "gmm2d", "prediction": "velocity",
                                                 "schedule": {"_target_": "diffode.core.schedules.Flow"}}))


@pytest.fixture(scope="module")
def flow_mlp(tmp_path_factory):
    """A tiny flow-matching MLP of the 2-D mixture: `diffode train schedule=flow method.prediction=velocity`."""
    out = tmp_path_factory.mktemp("flow_mlp")
    train(cfg(out, "dataset=gmm2d", "net=mlp", "net.hidden=32", "net.depth=2", "schedule=flow",
              "method.prediction=velocity", "method.t_sampling=lognormal", "method.p_mean=0", "method.p_std=1",
              "trainer.max_steps=6", "dataset.n_train=64", "dataset.batch_size=16", "method.n_samples=0",
              "debug=fast", "logger=none", "threads=1"))
    return out / "denoiser_ema.ckpt"


def test_a_flow_matching_model_trains_and_loads_as_a_flow_model(flow_mlp):
    m = load_model({"kind": "checkpoint", "path": str(flow_mlp)})
    assert m.schedule.name == "flow" and m.denoiser.prediction == "velocity"
    assert m.sigma_max == pytest.approx(999.0) and m.sigma_min == pytest.approx(1e-3 / (1 - 1e-3))


def test_progressive_distillation_of_a_flow_model(tmp_path, flow_mlp):
    res = train(cfg(tmp_path, f"source.path={flow_mlp}", "method=progressive_distillation", "dataset=gmm2d",
                    "dataset.n_train=64", "dataset.batch_size=16", "method.n0=4", "method.n_final=1",
                    "method.updates_per_stage=2", "method.eval_samples=8", "method.grid=time_uniform",
                    "logger=none", "threads=1"))
    paths = list(res["exported"].values())
    assert len(paths) == 2  # students of 2 and 1 steps
    m = load_model({"kind": "checkpoint", "path": str(flow_mlp)})
    artifacts_load_and_sample(paths, m)
    assert load_sampler(paths[0]).student.prediction == "velocity"  # the flow teacher's parameterization is kept


def test_reflow_of_a_flow_model_starts_from_the_teachers_network(tmp_path, flow_mlp):
    spec, options, ctx = prepare(cfg(tmp_path, f"source.path={flow_mlp}", "method=reflow", "logger=none"))
    module = spec.build(options, ctx)
    assert module.student.prediction == "velocity" and module.student.schedule.name == "flow"
    for k, v in ctx.teacher.denoiser.state_dict().items():
        torch.testing.assert_close(module.student.state_dict()[k], v.to(module.student.state_dict()[k].dtype))


def test_the_reflow_loss_is_flow_matching_on_the_coupled_pairs(tmp_path):
    spec, options, ctx = prepare(cfg(tmp_path, *FLOW_MIXTURE, *TINY_REFLOW))
    module = spec.build(options, ctx)
    g = torch.Generator().manual_seed(0)
    z, x0 = torch.randn(2, 8, 2, dtype=torch.float64, generator=g)
    t = torch.rand(8, dtype=torch.float64, generator=g) * 0.9 + 0.05
    x_t = (1 - t[:, None]) * x0 + t[:, None] * z
    net = module.student.net
    u = net(x_t.float(), (1000 * t).float()).double()
    torch.testing.assert_close(module.loss(z, x0, t).double(), (u - (z - x0)).square().mean(), rtol=1e-5, atol=1e-7)
    # a distillation stage trains at its k-step grid's start times only
    times = module.stage_times(1 + options.distill_steps.index(1))
    assert times.numel() == 1 and float(times[0]) == pytest.approx(ctx.teacher.schedule.t_max)


def test_reflow_straightens_the_exact_flow_mixture(tmp_path):
    """After reflow, one Euler step from z lands near the teacher's solve from z; the teacher's own one Euler step
    lands on the mixture's mean (its velocity at t_max points there), far from it. Straightness (Liu et al.):
    E_t |(z - x0) - u(x_t, t)|^2 on the held-out pairs, which the exact teacher's curved paths make large."""
    res = train(cfg(tmp_path, *FLOW_MIXTURE, "method=reflow", f"method.student_net={MLP.replace('32', '64')}",
                    "method.n_pairs=1024", "method.val_pairs=128", "method.reflow_updates=150",
                    "method.distill_updates=0", "method.distill_steps=[]", "method.rectified_steps=[1]",
                    "method.batch_size=128", "method.lr=3e-3", "method.teacher.nfe=12"))
    man = load_sampler(res["exported"]["rectified_1"]).manifest["metrics"]
    # measured: 1-step RMSE 0.13 against the teacher's 0.68; straightness 0.018 against 0.26
    assert man["rmse_vs_teacher"] < 0.3 * man["teacher_euler_rmse_vs_teacher"], man
    assert man["straightness_2rf"] < 0.2 * man["straightness_teacher"], man


def test_consistency_distillation_of_a_flow_model(tmp_path, flow_mlp):
    res = train(cfg(tmp_path, f"source.path={flow_mlp}", "method=consistency_distillation", "dataset=gmm2d",
                    "dataset.n_train=64", "dataset.batch_size=16", "trainer.max_steps=3", "method.n_val=8",
                    "method.reference_nfe=10", "method.sample_steps=[1,2]", "trainer.limit_val_batches=1",
                    "sample_every_n_steps=3", "logger=none", "threads=1"))
    paths = list(res["exported"].values())
    m = load_model({"kind": "checkpoint", "path": str(flow_mlp)})
    artifacts_load_and_sample(paths, m)
    assert load_sampler(paths[0]).student.denoiser.prediction == "velocity"


def _fit(module, max_steps, out_dir, ckpt_path=None, record=None):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    class Rec(L.Callback):
        def on_train_batch_end(self, trainer, m, outputs, batch, batch_idx):
            record.append((trainer.global_step - 1, float(outputs["loss"])))

    module.epoch_updates = 4
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0,
                        callbacks=[ModelCheckpoint(dirpath=str(out_dir / "checkpoints"), save_last=True, save_top_k=0,
                                                   every_n_epochs=1, save_on_train_epoch_end=True), Rec()],
                        default_root_dir=str(out_dir))
    trainer.fit(module, ckpt_path=ckpt_path)


def test_reflow_resumed_mid_distillation_ends_with_the_same_students(tmp_path):
    """Stages 6 (reflow) + 4 + 4 (1- and 2-step students): a run killed at step 8, in the first distillation,
    and resumed from its last checkpoint gives the same losses and the same students as an uninterrupted one."""
    def module(out):
        spec, options, ctx = prepare(cfg(out, *FLOW_MIXTURE, *TINY_REFLOW, f"method.cache_dir={tmp_path / 'cache'}"))
        return spec.build(options, ctx)

    full, part = [], []
    _fit(module(tmp_path / "full"), 14, tmp_path / "full", record=full)
    _fit(module(tmp_path / "part"), 8, tmp_path / "part", record=part)
    _fit(module(tmp_path / "part"), 14, tmp_path / "part", ckpt_path=str(tmp_path / "part" / "checkpoints" / "last.ckpt"),
         record=part)
    assert [s for s, _ in full] == [s for s, _ in part] == list(range(14))
    assert [v for _, v in full] == [v for _, v in part]
    for name in ("rectified", "1", "2"):
        a = torch.load(tmp_path / "full" / "students" / f"{name}.ckpt", weights_only=True)["state_dict"]
        b = torch.load(tmp_path / "part" / "students" / f"{name}.ckpt", weights_only=True)["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_each_distillation_stage_starts_from_the_rectified_flow(tmp_path):
    spec, options, ctx = prepare(cfg(tmp_path, *FLOW_MIXTURE, *TINY_REFLOW))
    m = spec.build(options, ctx)

    def perturb():
        with torch.no_grad():
            for p in m.student.parameters():
                p.add_(torch.randn_like(p))
        return {k: v.clone() for k, v in m.student.state_dict().items()}

    reflowed = perturb()
    m._finish_stage()  # end of reflow: the student becomes the rectified flow
    assert all(torch.equal(m.rectified.state_dict()[k], v) for k, v in reflowed.items())
    one_step = perturb()
    m._finish_stage()  # end of the 1-step student: saved, and the 2-step one starts from the rectified flow again
    assert all(torch.equal(m.student.state_dict()[k], v) for k, v in reflowed.items())
    saved = torch.load(tmp_path / "students" / "1.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(saved[f"denoiser.{k}"], v) for k, v in one_step.items())
    assert int(m.stage) == 2
