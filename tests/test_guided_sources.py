"""The models users have, as conditional sources, each a tiny randomly initialised model saved in its real
on-disk format (no download): a diffusers UNet2DConditionModel with class embeddings and with
encoder_hidden_states (a dict / tensor condition, its null embedding), and latent diffusion with an
AutoencoderKL (encode, sample in latent space, decode for FID and accuracy, the decode timed apart)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from diffode.cli.errors import ConfigError
from diffode.evaluation.runner import evaluate
from diffode.core.guidance import Guidance
from diffode.core.schedules import DTYPE
from diffode.evaluation.results import read_rows
from diffode.models import initial_labels, load_model

pytestmark = pytest.mark.usefixtures("one_thread")
diffusers = pytest.importorskip("diffusers")

SCHED = dict(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")


def _perturb(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():  # zero-initialised output layers: make every input matter
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def _save(folder: Path, unet, vae=None) -> Path:
    unet.save_pretrained(folder / "unet")
    diffusers.DDPMScheduler(**SCHED).save_pretrained(folder / "scheduler")
    if vae is not None:
        vae.save_pretrained(folder / "vae")
    return folder


def class_unet(folder: Path, channels: int = 1, size: int = 8) -> Path:
    unet = diffusers.UNet2DConditionModel(
        sample_size=size, in_channels=channels, out_channels=channels, down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), mid_block_type=None, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=4, cross_attention_dim=8, num_class_embeds=11, attention_head_dim=2)
    _perturb(unet, 0)
    return _save(folder, unet)


def text_unet(folder: Path) -> tuple[Path, Path, Path]:
    from safetensors.torch import save_file

    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=4, cross_attention_dim=8, attention_head_dim=2)
    _perturb(unet, 1)
    g = torch.Generator().manual_seed(2)
    save_file({"encoder_hidden_states": torch.randn(5, 3, 8, generator=g)}, str(folder / "prompts.safetensors"))
    save_file({"encoder_hidden_states": torch.randn(3, 8, generator=g)}, str(folder / "empty.safetensors"))
    return _save(folder / "unet_text", unet), folder / "prompts.safetensors", folder / "empty.safetensors"


def latent_pipeline(folder: Path) -> Path:
    vae = diffusers.AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8),
                                  latent_channels=2, norm_num_groups=4, sample_size=8, layers_per_block=1)
    unet = diffusers.UNet2DModel(sample_size=4, in_channels=2, out_channels=2, down_block_types=("DownBlock2D",) * 2,
                                 up_block_types=("UpBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                                 norm_num_groups=4, num_class_embeds=11)
    _perturb(unet, 3)
    _perturb(vae, 4)
    return _save(folder, unet, vae)


def _eps_to_D(model, eps, x, sigma):
    """D from a diffusers epsilon output, by hand: x_t = alpha x, D = (x_t - sigma_t eps) / alpha."""
    sch = model.schedule
    s = torch.as_tensor(sigma, dtype=DTYPE)
    alpha = sch.alpha_from_ve_sigma(s)
    return (alpha * x - alpha * s * eps.to(DTYPE)) / alpha


def test_class_conditional_unet2dcondition_guided_by_its_null_label(tmp_path):
    m = load_model({"kind": "diffusers", "path": str(class_unet(tmp_path / "cls")), "dataset": "digits"})
    assert m.num_classes == 10 and m.takes_condition
    x, y, s = torch.randn(4, 1, 8, 8, dtype=DTYPE), torch.tensor([0, 3, 7, 9]), torch.tensor(2.0, dtype=DTYPE)
    unet = m.denoiser.net.unet
    t = m.schedule.noise_cond(m.schedule.t_from_ve_sigma(s)).float()
    alpha = float(m.schedule.alpha_from_ve_sigma(s))
    with torch.no_grad():
        eps_c = unet((alpha * x).float(), t, None, class_labels=y).sample
        eps_u = unet((alpha * x).float(), t, None, class_labels=torch.full_like(y, 10)).sample
        D = m.with_guidance(Guidance(3.0)).denoiser_for(y)(x, s)
    D_c, D_u = _eps_to_D(m, eps_c, x, s), _eps_to_D(m, eps_u, x, s)
    torch.testing.assert_close(D, D_u + 3.0 * (D_c - D_u), rtol=0, atol=1e-5)
    assert not torch.allclose(D_c, D_u)
    _, info = m.with_guidance(Guidance(3.0)).sample(80.0 * torch.randn(4, 1, 8, 8, dtype=DTYPE), 4, cond=y,
                                                    return_info=True, solver="dpmpp_2m", nfe=3)
    assert info == {"nfe": 3, "forwards": 6}


def test_text_like_conditions_are_a_table_sampled_per_seed_and_guided_by_the_null_embedding(tmp_path):
    path, prompts, empty = text_unet(tmp_path)
    src = {"kind": "diffusers", "path": str(path), "dataset": "digits", "conditions": str(prompts),
           "null_condition": str(empty)}
    m = load_model(src)
    assert m.num_classes is None and m.takes_condition
    cond = m.labels(range(6))
    table = __import__("safetensors.torch", fromlist=["load_file"]).load_file(str(prompts))["encoder_hidden_states"]
    assert torch.equal(cond["encoder_hidden_states"], table[initial_labels(5, range(6))])
    null = __import__("safetensors.torch", fromlist=["load_file"]).load_file(str(empty))["encoder_hidden_states"]
    x, s = torch.randn(6, 1, 8, 8, dtype=DTYPE), torch.tensor(1.5, dtype=DTYPE)
    unet = m.denoiser.net.unet
    t = m.schedule.noise_cond(m.schedule.t_from_ve_sigma(s)).float()
    a = float(m.schedule.alpha_from_ve_sigma(s))
    with torch.no_grad():
        eps_c = unet((a * x).float(), t, cond["encoder_hidden_states"]).sample
        eps_u = unet((a * x).float(), t, null.expand(6, 3, 8)).sample
        D = m.with_guidance(Guidance(2.0)).denoiser_for(cond)(x, s)
    D_c, D_u = _eps_to_D(m, eps_c, x, s), _eps_to_D(m, eps_u, x, s)
    torch.testing.assert_close(D, D_u + 2.0 * (D_c - D_u), rtol=0, atol=1e-5)
    assert not torch.allclose(D_c, D_u)
    # a plain tensor condition is the encoder_hidden_states
    with torch.no_grad():
        torch.testing.assert_close(m.denoiser_for(cond["encoder_hidden_states"])(x, s), D_c, rtol=0, atol=1e-6)
    # and through diffode eval, one table row per seed, guided
    with initialize_config_module("diffode.conf", version_base="1.3"):
        cfg = compose("eval", overrides=["source=diffusers", *[f"source.{k}={v}" for k, v in src.items() if k != "kind"],
                                         "n_samples=12", "batch_size=12", "progress=false", "save_images=0",
                                         "fid.bootstrap=5", "reference.nfe=4", "reference.check_nfe=null",
                                         "reference.solver=dpmpp_2m", "sweep.solvers=[ddim]",
                                         "sweep.grids=[logsnr]", "sweep.nfes=[2]", "sweep.learned=[]",
                                         "guidance.scale=[1,2]", f"output_dir={tmp_path / 'eval'}"])
    rows = read_rows(evaluate(cfg)["csv"])
    assert sorted((r["guidance"], r["forwards"]) for r in rows) == [(1, 2), (2, 4)]
    assert all(r["condition"].startswith("conditions: one of the table's 5 rows") for r in rows)


def test_latent_pipeline_end_to_end(tmp_path):
    """encode, sample in latent space, decode, FID and class accuracy on the decoded images; the decode is timed
    apart and is no NFE; dynamic thresholding (a pixel-space clip) is refused for it."""
    path = latent_pipeline(tmp_path / "ldm")
    m = load_model({"kind": "diffusers", "path": str(path), "dataset": "digits"})
    assert m.shape == (2, 4, 4) and m.image_shape == (1, 8, 8) and m.num_classes == 10
    from diffode.data.digits import load_digits_tensors

    real = load_digits_tensors("train")[0][:16]
    z = m.encode(real)
    assert z.shape == (16, 2, 4, 4) and z.dtype == DTYPE
    vae = m.decoder.vae
    with torch.no_grad():  # the decoder is the VAE's, with SD's latent scaling
        want = vae.decode((z / vae.config.scaling_factor).float()).sample
    torch.testing.assert_close(m.decode(z), want, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="latents"):
        m.with_guidance(Guidance(2.0, threshold=0.995))
    with initialize_config_module("diffode.conf", version_base="1.3"):
        cfg = compose("eval", overrides=["source=diffusers", f"source.path={path}", "source.dataset=digits",
                                         "n_samples=16", "batch_size=16", "progress=false", "save_images=8",
                                         "fid.bootstrap=5", "reference.nfe=6", "reference.check_nfe=4",
                                         "reference.solver=dpmpp_2m", "sweep.solvers=[dpmpp_2m]", "sweep.grids=[logsnr]",
                                         "sweep.nfes=[3]", "sweep.learned=[]", "guidance.scale=2",
                                         f"output_dir={tmp_path / 'eval'}"])
    out = evaluate(cfg)
    row = read_rows(out["csv"])[0]
    assert row["status"] == "ok" and row["forwards"] == 6 and row["decode_time"] > 0
    assert row["fid"] > 0 and 0 <= row["accuracy"] <= 1 and row["rmse"] > 0
    assert "decoded to images" in Path(out["report"]).read_text()
    with initialize_config_module("diffode.conf", version_base="1.3"):
        bad = compose("eval", overrides=["source=diffusers", f"source.path={path}", "source.dataset=digits",
                                         "guidance.scale=2", "guidance.threshold=0.995", f"output_dir={tmp_path / 'x'}"])
    with pytest.raises(ConfigError, match="unsuitable"):
        evaluate(bad)
