"""Conditions belong to the model: class-conditional nets, Model.denoiser_for, per-batch binding, label dropout,
training on (image, label) batches, and the unconditional path left bitwise as it was."""
from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_module

from diffode.cli.errors import ConfigError
from diffode.cli.train import train
from diffode.core.conditioning import Conditioned, take
from diffode.core.denoisers import ModelDenoiser, edm_scalings
from diffode.core.sample import sample
from diffode.core.schedules import DTYPE, EDM
from diffode.methods.batch import drop_labels
from diffode.methods.denoiser import load_denoiser
from diffode.models import Model, initial_labels, initial_noise, load_model
from diffode.nets.unet import UNet

pytestmark = pytest.mark.usefixtures("one_thread")


def _conditional_model(num_classes=10) -> Model:
    torch.manual_seed(0)
    net = UNet(resolution=8, in_channels=1, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
               attn_resolutions=(), num_classes=num_classes)
    for p in net.parameters():  # a fresh UNet outputs 0 (zero-initialised output): make it depend on the label
        torch.nn.init.normal_(p, std=0.2)
    D = ModelDenoiser(net.double(), EDM(), "edm").eval().requires_grad_(False)  # float64: batch-size independent
    return Model(D, (1, 8, 8), EDM(), 0.002, 80.0, {"kind": "test", "name": "cond"}, "digits")


def test_the_label_changes_the_output_and_none_is_the_null_label():
    m = _conditional_model()
    x = torch.randn(4, 1, 8, 8, dtype=DTYPE)
    y = torch.tensor([0, 1, 2, 3])
    out = m.denoiser(x, 1.0, cond=y)
    assert not torch.allclose(out, m.denoiser(x, 1.0, cond=torch.tensor([4, 5, 6, 7])))
    assert torch.equal(m.denoiser(x, 1.0), m.denoiser(x, 1.0, cond=torch.full((4,), 10)))  # None = the null label
    assert torch.equal(m.denoiser_for(y)(x, 1.0), out)
    assert m.denoiser_for(None) is m.denoiser and m.num_classes == 10


def test_sampling_binds_each_batchs_own_labels():
    """Model.sample cuts the labels with the noise: the same samples at any batch size, each with its own label."""
    m = _conditional_model()
    seeds = range(7)
    x_T, y = initial_noise(m.shape, seeds, 80.0), initial_labels(10, seeds)
    kw = dict(solver="dpmpp_2m", nfe=4, grid="logsnr")
    a, info = m.sample(x_T, 3, cond=y, return_info=True, **kw)
    b = m.sample(x_T, 7, cond=y, **kw)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    one = sample(Conditioned(m.denoiser, y[4:5]), x_T[4:5], schedule=m.schedule, sigma_min=0.002, sigma_max=80.0, **kw)
    torch.testing.assert_close(a[4:5], one, rtol=0, atol=1e-12)
    assert info == {"nfe": 4, "forwards": 4}
    assert not torch.allclose(a, m.sample(x_T, 7, cond=(y + 1) % 10, **kw))


def test_labels_are_drawn_per_seed():
    y = initial_labels(10, range(100, 140))
    assert torch.equal(y[5:], initial_labels(10, range(105, 140)))  # a label depends on its seed alone
    assert y.min() >= 0 and y.max() <= 9 and len(set(initial_labels(10, range(2000)).tolist())) == 10
    assert take({"a": torch.arange(5), "b": torch.arange(5) * 2}, slice(1, 3))["b"].tolist() == [2, 4]


def test_conditions_that_do_not_fit_are_refused():
    m = _conditional_model()
    with pytest.raises(ValueError, match="out of range.*0..9"):
        m.denoiser_for(torch.tensor([3, 11]))
    unconditional = load_model({"kind": "checkpoint"})
    with pytest.raises(ValueError, match="unconditional"):
        unconditional.denoiser_for(torch.tensor([1]))
    with pytest.raises(ValueError, match="2 conditions for 3 samples"):
        m.sample(torch.randn(3, 1, 8, 8, dtype=DTYPE), 3, cond=torch.tensor([1, 2]), solver="ddim", nfe=2)


def test_label_dropout_rate():
    labels = torch.randint(10, (40000,), generator=torch.Generator().manual_seed(0))
    out = drop_labels(labels, 0.2, 10, torch.Generator().manual_seed(1))
    dropped = (out == 10).float().mean().item()
    assert abs(dropped - 0.2) < 4 * (0.2 * 0.8 / 40000) ** 0.5  # binomial: within 4 standard deviations
    assert torch.equal(out[out != 10], labels[out != 10])  # the others are kept as they were
    assert torch.equal(drop_labels(labels, 0.0, 10, torch.Generator()), labels)


def _old_edm_denoiser(net, x, sigma):
    """ModelDenoiser(prediction='edm') as it was before conditions existed (written out here)."""
    s = torch.as_tensor(sigma, dtype=DTYPE).expand(x.shape[0])
    c_skip, c_out, c_in, c_noise = edm_scalings(s, 0.5)
    b = lambda v: v.reshape(-1, 1, 1, 1)  # noqa: E731
    F = net((b(c_in) * x).to(torch.float32), c_noise.to(torch.float32))
    return (b(c_skip) * x + b(c_out) * F.to(DTYPE)).to(x.dtype)


def test_the_unconditional_shipped_model_samples_bitwise_as_before():
    m = load_model({"kind": "checkpoint"})
    assert m.num_classes is None and m.denoiser.net.label_emb is None
    x_T = initial_noise(m.shape, range(6), m.sigma_max)
    kw = dict(solver="dpmpp_3m", nfe=5, grid="logsnr")
    new = m.sample(x_T, 4, **kw)
    with torch.no_grad():
        old = torch.cat([sample(lambda x, s: _old_edm_denoiser(m.denoiser.net, x, s), xb, schedule=m.schedule,
                                sigma_min=m.sigma_min, sigma_max=m.sigma_max, **kw) for xb in x_T.split(4)])
    assert torch.equal(new, old)


def test_a_class_conditional_unet_trains_on_image_label_batches(tmp_path):
    with initialize_config_module("diffode.conf", version_base="1.3"):
        cfg = compose("train", overrides=["experiment=digits", "debug=fast", "logger=none", "net.model_channels=8",
                                          "net.num_classes=10", "trainer.max_steps=2", "method.n_samples=0",
                                          "trainer.max_time=null", "threads=1", f"output_dir={tmp_path}"])
    res = train(cfg)
    assert res["global_step"] == 2
    D, info = load_denoiser(tmp_path / "denoiser_ema.ckpt")
    assert D.num_classes == 10 and info["hparams"]["data"]["num_classes"] == 10
    x = torch.randn(2, 1, 8, 8, dtype=DTYPE)
    assert D(x, 1.0, cond=torch.tensor([3, 3])).shape == x.shape
    model = load_model({"kind": "checkpoint", "path": str(tmp_path / "denoiser_ema.ckpt")})
    assert model.num_classes == 10 and model.condition == {"num_classes": 10}


@pytest.mark.parametrize("overrides,match", [
    (["dataset=gmm2d", "net=mlp", "net.num_classes=3"], "has no labels"),
    (["experiment=digits", "net.num_classes=7"], "has 10 classes; set net.num_classes=10"),
    (["experiment=digits", "net.num_classes=10", "method.p_uncond=1.5"], "p_uncond=1.5 must be in"),
])
def test_bad_conditional_training_configs_are_refused_before_compute(tmp_path, overrides, match):
    with initialize_config_module("diffode.conf", version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "logger=none", f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=match):
        train(cfg)
