"""ConsistencyDistillationModule on the exact 2-D mixture (a fresh MLP student) and the digits UNet.

EMA rules checked against their formulas after real optimizer steps; a short run must lower the
consistency loss and the distillation error to the teacher's reference solve; a resumed run must give
the very losses of an uninterrupted one; bad configs must fail in `check`, before any compute.
"""
from __future__ import annotations


import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from diffode.core import consistency as cm
from diffode.data.gmm import GMMDataModule
from diffode.methods import consistency_distillation  # noqa: F401  (registers the method)
from diffode.methods.registry import METHODS, Context, method_options
from diffode.models import load_model

SMALL_MLP = {"_target_": "diffode.nets.mlp.MLP", "dim": None, "hidden": 64, "depth": 2, "emb_channels": 32,
             "embedding": "positional", "dropout": 0.0}


def _ctx(tmp_path, n_train=256, batch_size=64, seed=0):
    dm = GMMDataModule(preset="gmm2d", n_train=n_train, n_val=128, batch_size=batch_size, seed=seed)
    return Context(out_dir=tmp_path, seed=seed, teacher=load_model({"kind": "gmm", "preset": "gmm2d"}), datamodule=dm,
                   net=dict(SMALL_MLP))


def _options(**over):
    return method_options("consistency_distillation", **{"n_val": 64, "reference_nfe": 20, "sample_steps": [1, 2],
                                                        **over})


def _build(tmp_path, **over):
    spec = METHODS["consistency_distillation"]
    ctx = _ctx(tmp_path)
    options = _options(**over)
    assert spec.check(options, ctx) == []
    return spec.build(options, ctx), ctx


class Losses(Callback):
    def __init__(self):
        self.values = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.values.append(float(outputs["loss"]))


def _trainer(tmp_path, callbacks=(), **kw):
    kw = {"max_steps": -1, **kw}
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                     use_distributed_sampler=False, default_root_dir=str(tmp_path), callbacks=list(callbacks),
                     enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks), **kw)


def _params(m):
    return [p.detach().clone() for p in m.parameters()]


def test_target_and_evaluation_ema_follow_their_rules(tmp_path):
    module, ctx = _build(tmp_path, mu=0.9, ema_decay=0.999, lr=1e-3)
    init = _params(module.student)
    assert all(torch.equal(a, b) for a, b in zip(init, _params(module.target)))
    _trainer(tmp_path, max_steps=1).fit(module, datamodule=ctx.datamodule)
    online = _params(module.student)
    assert not all(torch.equal(a, b) for a, b in zip(init, online))
    d0 = min(0.999, 1 / 10)  # the evaluation EMA's warm-up decay after 0 updates
    for t, e, i, o in zip(module.target.parameters(), module.ema.parameters(), init, online):
        torch.testing.assert_close(t, 0.9 * i + 0.1 * o, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(e, d0 * i + (1 - d0) * o, rtol=1e-6, atol=1e-7)
    # mu = 0: no copy is kept; the target is the online network itself (under no_grad)
    m0, _ = _build(tmp_path, mu=0.0)
    assert m0.target is None


def test_short_run_on_the_mixture_lowers_the_consistency_loss(tmp_path):
    torch.manual_seed(0)
    module, ctx = _build(tmp_path, lr=2e-3, ema_decay=0.0, N=10)
    ctx.datamodule.setup()
    x0 = ctx.datamodule.val_set.tensors[0][:128]

    def measure():
        g = torch.Generator().manual_seed(123)
        with torch.no_grad():
            return float(module.consistency_loss(x0, g, module.student, module.student)), \
                module.distillation_error(module.student, 1)

    loss0, err0 = measure()
    _trainer(tmp_path, max_steps=150).fit(module, datamodule=ctx.datamodule)
    loss1, err1 = measure()
    assert loss1 < 0.5 * loss0, (loss0, loss1)
    assert err1 < 0.5 * err0, (err0, err1)


def test_resume_gives_the_identical_next_losses(tmp_path):
    def run(root, epochs, ckpt=None, ckpt_cb=None):
        module, ctx = _build(root, mu=0.5, lr=1e-3)
        losses = Losses()
        cbs = [losses] + ([ckpt_cb] if ckpt_cb else [])
        _trainer(root, cbs, max_epochs=epochs).fit(module, datamodule=ctx.datamodule, ckpt_path=ckpt)
        return losses.values, module

    full, m_full = run(tmp_path / "full", 2)  # 256 / 64 = 4 steps per epoch
    ck = ModelCheckpoint(dirpath=str(tmp_path / "part" / "ck"), save_last=True, save_on_train_epoch_end=True)
    first, _ = run(tmp_path / "part", 1, ckpt_cb=ck)
    rest, m_rest = run(tmp_path / "part", 2, ckpt=str(tmp_path / "part" / "ck" / "last.ckpt"))
    assert len(full) == 8 and first == full[:4]
    assert rest == full[4:]  # bit-identical: noise, pairs, data order, optimizer and both EMAs restored
    for a, b in zip(m_full.ema.parameters(), m_rest.ema.parameters()):
        assert torch.equal(a, b)


def test_student_starts_as_the_teachers_ema_network(tmp_path):
    """On the shipped digits UNet: the student's F is the teacher's F, and the boundary is exact."""
    teacher = load_model({"kind": "checkpoint", "path": None})
    ctx = Context(out_dir=tmp_path, seed=0, teacher=teacher)
    module = METHODS["consistency_distillation"].build(_options(), ctx)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    s = torch.tensor([0.01, 0.3, 2.0, 40.0], dtype=torch.float64)
    with torch.no_grad():
        F_teacher = cm.edm_network_output(teacher.denoiser, x, s, 0.5)
        F_student = cm.edm_network_output(module.student.denoiser, x, s, 0.5)
        assert torch.equal(F_teacher, F_student)
        assert torch.equal(module.student(x, torch.tensor(0.002, dtype=torch.float64)), x)
        # away from sigma_min the consistency scalings approach EDM's, so f starts close to the teacher's D
        D = teacher.denoiser(x, s)
        f = module.student(x, s)
        assert float((f - D).abs().max()) < 0.05
    assert all(p.requires_grad for p in module.student.parameters())
    assert not any(p.requires_grad for p in module.teacher.parameters())


@pytest.mark.parametrize("override,needle", [
    (dict(mu=1.0), "method.mu=1.0"),
    (dict(N=1), "method.N=1"),
    (dict(teacher_solver="dpmpp_2m"), "not a single-step"),
    (dict(teacher_solver="nope"), "unknown solver"),
    (dict(distance="lpip"), "method.distance='lpip'"),
    (dict(distance="lpips"), "needs images"),
    (dict(lr=0.0), "method.lr"),
    (dict(reference_nfe=5), "reference_nfe=5"),
    (dict(sample_steps=[0]), "sample_steps"),
    (dict(sample_sigmas={2: [80.0, 0.002]}), "sample_sigmas[2]"),
    (dict(sample_sigmas={3: [80.0, 2.0, 0.5, 0.002]}), "not in method.sample_steps"),
    (dict(ema_decay=-0.1), "ema_decay"),
])
def test_bad_config_fails_in_check(tmp_path, override, needle):
    spec = METHODS["consistency_distillation"]
    errors = spec.check(_options(**override), _ctx(tmp_path))
    assert errors and any(needle in e for e in errors), errors


@pytest.mark.parametrize("override,needle", [
    (dict(optimizer="sgd"), "method.optimizer: Invalid value 'sgd', expected one of [radam, adam]"),
    (dict(unknown_key=1), "method.unknown_key is not an option of method=consistency_distillation"),
    (dict(N="many"), "method.N: Value 'many'"),
])
def test_the_schema_refuses_a_bad_choice_an_unknown_key_and_a_wrong_type(override, needle):
    with pytest.raises(ValueError) as e:  # as Hydra does when it composes the config (tests/test_configs.py)
        _options(**override)
    assert needle in str(e.value)


def test_gmm_teacher_needs_a_student_net(tmp_path):
    ctx = _ctx(tmp_path)
    ctx.net = None
    errors = METHODS["consistency_distillation"].check(_options(), ctx)
    assert any("student_net" in e for e in errors), errors


def test_lpips_without_weights_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    teacher = load_model({"kind": "checkpoint", "path": None})
    errors = METHODS["consistency_distillation"].check(_options(distance="lpips"),
                                                          Context(out_dir=tmp_path, teacher=teacher))
    assert any("fetch-weights lpips-vgg" in e for e in errors), errors


@pytest.mark.slow
def test_runner_with_ddp_sim_keeps_the_ranks_identical(tmp_path):
    """`diffode train method=consistency_distillation trainer=ddp_sim` on the mixture: 2 gloo processes,
    identical weights on both ranks after 4 steps, three artifacts exported from last.ckpt."""
    import json
    import os
    import subprocess
    import sys

    from diffode.artifacts import load_sampler

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "diffode.cli", "train", "method=consistency_distillation", "source=gmm2d",
           "dataset=gmm2d", "net=mlp", "trainer=ddp_sim", "trainer.max_steps=4", "sample_every_n_steps=2",
           "trainer.limit_val_batches=1", "dataset.batch_size=64", "dataset.n_train=512", "method.n_val=16",
           "method.reference_nfe=10", "trainer.enable_progress_bar=false", "threads=1", f"output_dir={out}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    digests = [json.loads((out / f"weights_rank{i}.json").read_text()) for i in (0, 1)]
    assert digests[0]["world_size"] == 2 and digests[0]["global_step"] == 4
    assert digests[0]["sha256"] == digests[1]["sha256"]
    for k in (1, 2, 4):
        s = load_sampler(out / "artifacts" / f"cd_{k}")
        assert s.label == f"cd/{k}" and s.nfe == k and s.student is not None
        s.check(load_model({"kind": "gmm", "preset": "gmm2d"}))


def test_export_writes_one_cd_artifact_per_step_count(tmp_path):
    from diffode.artifacts import load_sampler
    from diffode.core.sample import prior_sample

    spec = METHODS["consistency_distillation"]
    ctx = _ctx(tmp_path)
    sig2 = [80.0, 0.8, 0.002]
    options = _options(sample_steps=[1, 2, 4], sample_sigmas={2: sig2}, lr=1e-3)
    assert spec.check(options, ctx) == []
    module = spec.build(options, ctx)
    ck = ModelCheckpoint(dirpath=str(tmp_path / "checkpoints"), save_last=True, save_on_train_epoch_end=True)
    _trainer(tmp_path, [ck], max_epochs=1).fit(module, datamodule=ctx.datamodule)
    out = spec.export(module, ctx)
    assert sorted(out) == ["cd_1", "cd_2", "cd_4"]
    x_T = prior_sample((5, 2), 80.0, torch.Generator().manual_seed(0))
    for k in (1, 2, 4):
        s = load_sampler(tmp_path / "artifacts" / f"cd_{k}")
        assert (s.label, s.kind, s.solver, s.nfe) == (f"cd/{k}", "cd", "consistency", k)
        s.check(ctx.teacher)
        expected = sig2 if k == 2 else cm.karras_grid(k + 1, 0.002, 80.0).tolist()
        torch.testing.assert_close(s.sigmas, torch.tensor(expected, dtype=torch.float64))
        for a, b in zip(s.student.state_dict().values(), module.ema.state_dict().values()):
            assert torch.equal(a, b)  # the evaluation EMA is what is exported
        calls = []
        orig = s.student.forward
        s.student.forward = lambda x, sigma: (calls.append(1), orig(x, sigma))[1]
        x, info = s.sample(None, x_T, generator=torch.Generator().manual_seed(1), return_info=True)
        assert info["nfe"] == k == len(calls) and x.shape == x_T.shape
    assert load_sampler(tmp_path / "artifacts" / "cd_1").manifest["metrics"]["distill_l2"] > 0
    other = load_model({"kind": "gmm", "preset": "gmm16d"})
    with pytest.raises(ValueError, match="another model"):
        load_sampler(tmp_path / "artifacts" / "cd_1").check(other)


def test_a_student_net_given_on_the_command_line_composes():
    """method.student_net={...} (a teacher without a network needs it) merges into the typed options: typed as an
    Optional[Dict], OmegaConf 2.3 refused the dict with a traceback."""
    from hydra import compose, initialize_config_module

    with initialize_config_module("diffode.conf", version_base="1.3"):
        cfg = compose("train", overrides=["method=consistency_distillation", "source=gmm2d",
                                          "method.student_net={_target_: diffode.nets.mlp.MLP, dim: 2}"])
    assert dict(cfg.method.student_net) == {"_target_": "diffode.nets.mlp.MLP", "dim": 2}
