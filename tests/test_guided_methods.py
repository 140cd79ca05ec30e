"""Every learned method on a guided teacher: a label per sample (LD3's pairs, AMED's trajectories, PD/CD batches),
the teacher guided at the fixed scale, artifacts that record it; and the label-dropout rate of training."""
from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_module

from _tiny_models import conditional_checkpoint
from diffode.artifacts import load_sampler
from diffode.cli.train import prepare, train
from diffode.core.conditioning import bind
from diffode.core.guidance import Guidance, Guided
from diffode.core.sample import sample
from diffode.core.schedules import DTYPE
from diffode.models import initial_labels, load_model

pytestmark = pytest.mark.usefixtures("one_thread")
GUIDED = {"num_classes": 10, "guidance": {"scale": 2.0, "interval": None, "threshold": None}}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return conditional_checkpoint(tmp_path_factory.mktemp("cond") / "cond.ckpt")


def _cfg(tmp_path, ckpt, *over):
    with initialize_config_module("diffode.conf", version_base="1.3"):
        return compose("train", overrides=["source=checkpoint", f"source.path={ckpt}", "logger=none", "threads=1",
                                          f"output_dir={tmp_path}", *over])


def test_ld3_pairs_carry_their_labels_and_the_guided_teacher(tmp_path, ckpt):
    from diffode.methods.ld3.teacher import make_pairs, pair_labels

    m = load_model({"kind": "checkpoint", "path": str(ckpt)}).with_guidance(Guidance(2.0))
    teacher = {"solver": "dpmpp_2m", "nfe": 4, "grid": "logsnr"}
    z, x0 = make_pairs(m.conditional, m.shape, 5, 7, teacher, m.schedule, m.sigma_min, m.sigma_max, num_classes=10)
    y = pair_labels(10, 7, range(5))
    assert torch.equal(y, initial_labels(10, range(7, 12)))  # the label eval draws for the pair's noise seed
    for i in (0, 3):
        one = sample(m.denoiser_for(y[i:i + 1]), 80.0 * z[i:i + 1], solver="dpmpp_2m", nfe=4, schedule=m.schedule,
                     sigma_min=m.sigma_min, sigma_max=m.sigma_max)
        torch.testing.assert_close(x0[i:i + 1], one, rtol=0, atol=1e-10)
    plain = sample(bind(m.denoiser, y[:1]), 80.0 * z[:1], solver="dpmpp_2m", nfe=4, schedule=m.schedule,
                   sigma_min=m.sigma_min, sigma_max=m.sigma_max)
    assert not torch.allclose(plain, x0[:1])
    res = train(_cfg(tmp_path, ckpt, "method=ld3", "method.solver=ddim", "method.nfe=3", "method.n_pairs=4",
                     "method.distance=l2", "method.rounds_logits=1", "method.rounds_joint=0", "method.teacher.nfe=4",
                     "guidance.scale=2",
                     f"method.cache_dir={tmp_path / 'pairs'}"))
    art = load_sampler(res["exported"]["artifact"])
    assert art.manifest["condition"] == GUIDED and art.guidance == Guidance(2.0)
    spec, options, ctx = prepare(_cfg(tmp_path / "b", ckpt, "method=ld3", "method.distance=l2", "guidance.scale=4"))
    module = spec.build(options, ctx)
    assert module.teacher_spec()["condition"]["guidance"]["scale"] == 4.0  # another cache entry than w = 2


def test_amed_learns_on_labelled_trajectories_of_the_guided_teacher(tmp_path, ckpt):
    res = train(_cfg(tmp_path, ckpt, "method=amed", "method.student=dpm_solver_2", "method.nfe=4",
                     "method.n_trajectories=4", "method.batch=4", "method.n_val=4", "method.val_every=1",
                     "guidance.scale=2"))
    art = load_sampler(res["exported"]["artifact"])
    assert art.manifest["condition"] == GUIDED
    spec, options, ctx = prepare(_cfg(tmp_path / "b", ckpt, "method=amed", "method.student=dpm_solver_2",
                                      "method.nfe=4", "guidance.scale=2"))
    module = spec.build(options, ctx)
    assert isinstance(module.denoiser, Guided) and module.denoiser.guidance.scale == 2.0
    x_T = module.latents(0, 6)
    y = module.labels(module.cfg.seed, 6)
    assert y.unique().numel() > 1
    pts = module.teacher_points(x_T, labels=y)
    one = module.teacher_points(x_T[2:3], labels=y[2:3])
    torch.testing.assert_close(pts[-1][2:3], one[-1], rtol=0, atol=1e-9)
    other = module.teacher_points(x_T[2:3], labels=(y[2:3] + 1) % 10)
    assert not torch.allclose(other[-1], one[-1])


def test_progressive_distillation_distils_the_guided_teacher_at_stage_zero(ckpt):
    from diffode.core import distillation as pd
    from diffode.methods.progressive_distillation import ProgressiveDistillationModule
    from diffode.methods.student import teacher_hparams

    m = load_model({"kind": "checkpoint", "path": str(ckpt)}).with_guidance(Guidance(3.0))
    mod = ProgressiveDistillationModule(teacher=teacher_hparams(m), teacher_state=m.denoiser.state_dict(), n0=4,
                                        n_final=1, updates_per_stage=1, grid="logsnr", grid_options={},
                                        weighting="snr_trunc", student_output="auto", lr=1e-4, betas=[0.9, 0.99],
                                        grad_clip=1.0, sigma_min=m.sigma_min, sigma_max=m.sigma_max,
                                        guidance=m.guidance.record())
    assert isinstance(mod.stage_teacher(0), Guided) and mod.stage_teacher(1) is mod.teacher
    x0 = torch.rand(6, 1, 8, 8, dtype=DTYPE) * 2 - 1
    y = torch.arange(6)
    loss = mod.loss(x0, torch.Generator().manual_seed(0), 0, y)
    g = torch.Generator().manual_seed(0)
    st, sm, ss = pd.draw_points(mod.grids[0], 6, g)
    eps = torch.randn(x0.shape, generator=g, dtype=DTYPE)
    want = pd.pd_loss(bind(mod.student, y), bind(Guided(mod.teacher, Guidance(3.0)), y), x0, eps, st, sm, ss,
                      "snr_trunc")
    unguided = pd.pd_loss(bind(mod.student, y), bind(mod.teacher, y), x0, eps, st, sm, ss, "snr_trunc")
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=0)
    assert not torch.allclose(loss, unguided)


def test_consistency_distillation_validates_against_the_guided_teacher_under_labels(tmp_path, ckpt):
    spec, options, ctx = prepare(_cfg(tmp_path, ckpt, "method=consistency_distillation", "dataset=digits",
                                      "guidance.scale=2", "method.n_val=3", "method.reference_nfe=4"))
    module = spec.build(options, ctx)
    assert isinstance(module.teacher, Guided)
    x_T, ref, y = module.reference(torch.device("cpu"))
    want = sample(ctx.teacher.denoiser_for(y), x_T, solver="heun", nfe=4, grid="edm", sigma_min=ctx.teacher.sigma_min,
                  sigma_max=ctx.teacher.sigma_max)
    torch.testing.assert_close(ref, want, rtol=0, atol=1e-10)


def test_label_dropout_rate_of_training():
    """DenoiserModule drops each label to the null label with probability p_uncond, a fresh draw every step."""
    from diffode.config import method_defaults
    from diffode.methods.denoiser import DenoiserModule

    from _tiny_models import NET

    opts = method_defaults("denoiser")
    opts.update(prediction="edm", n_samples=0, p_uncond=0.2)
    mod = DenoiserModule(net=NET, schedule={"_target_": "diffode.core.schedules.EDM"},
                         data={"name": "digits", "shape": [1, 8, 8], "num_classes": 10}, **opts)
    labels = torch.randint(10, (2000,), generator=torch.Generator().manual_seed(0))
    drops = [mod.training_condition(labels, step, 0) == 10 for step in range(10)]
    rate = float(torch.stack(drops).double().mean())
    assert abs(rate - 0.2) < 4 * (0.2 * 0.8 / 20000) ** 0.5
    assert not torch.equal(drops[0], drops[1])  # a fresh draw each step
    kept = mod.training_condition(labels, 3, 0)
    assert torch.equal(kept[kept != 10], labels[kept != 10])
