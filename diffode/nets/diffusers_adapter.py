"""Load a diffusers `UNet2DModel` or `UNet2DConditionModel` + its DDPM scheduler (saved with `save_pretrained`)
as a denoiser D(x, sigma[, cond]), and an `AutoencoderKL` beside it for latent diffusion.

Layouts accepted (what `DDPMPipeline.save_pretrained` / `StableDiffusionPipeline`-style folders and bare
`save_pretrained` calls write):
    <path>/unet/config.json + weights       or  <path>/config.json + weights
    <path>/scheduler/scheduler_config.json  or  <path>/scheduler_config.json
    <path>/vae/config.json + weights        optional: the model samples latents, decoded to images
The scheduler fixes the noise schedule (its alphas_cumprod, computed by diffusers from betas /
beta_schedule / trained_betas exactly as in training) and the prediction type. The network is
conditioned on the discrete timestep index (fractional between indices, which the sinusoidal
embedding accepts); DiscreteVP maps VE sigma to that index.

Conditions (core/conditioning.py): class labels [B] (a net with `num_class_embeds`: the last embedding is
the null label, as classifier-free guidance trains it, unless num_classes says otherwise), a float tensor
[B, L, D] (`encoder_hidden_states` of a UNet2DConditionModel: text-like embeddings), or a dict of the
keyword arguments (encoder_hidden_states, class_labels, encoder_attention_mask). The null condition of
classifier-free guidance is the null label and, for encoder_hidden_states, a given embedding [L, D] (e.g.
the empty prompt's), zeros when none is given.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from diffode.core.denoisers import ModelDenoiser
from diffode.core.schedules import DiscreteVP

# diffusers' prediction_type -> ModelDenoiser's prediction
PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v", "eps": "eps", "x0": "x0", "v": "v"}


class DiffusersUNet(nn.Module):
    """net(x_t, t_index, cond=None) -> tensor, around UNet2D(Condition)Model.forward(sample, timestep, ...).sample.

    num_classes: class labels 0..num_classes-1 and the null label num_classes (a class-conditional net);
    null_embedding: the encoder_hidden_states [L, D] of "no condition" (a UNet2DConditionModel; None: zeros)."""

    def __init__(self, unet: nn.Module, num_classes: int | None = None, null_embedding: Tensor | None = None):
        super().__init__()
        self.unet, self.num_classes = unet, num_classes
        self.cross_attention = type(unet).__name__ == "UNet2DConditionModel"  # takes encoder_hidden_states
        self.conditional = num_classes is not None or self.cross_attention
        self.register_buffer("null_embedding", null_embedding, persistent=False)

    def _null_states(self, n: int, like: Tensor | None, device, dtype) -> Tensor | None:
        if self.null_embedding is not None:
            return self.null_embedding.to(device=device, dtype=dtype).expand(n, *self.null_embedding.shape)
        return None if like is None else torch.zeros_like(like)

    def null_condition(self, cond):
        """The "no condition" of a batch whose conditions are `cond` (classifier-free guidance's other half)."""
        if isinstance(cond, dict):
            return {k: self.null_condition(v) if k != "encoder_attention_mask" else torch.ones_like(v)
                    for k, v in cond.items()}
        if not cond.is_floating_point():
            if self.num_classes is None:
                raise ValueError("class labels given to a diffusers UNet without class embeddings")
            return torch.full_like(cond, self.num_classes)
        return self._null_states(cond.shape[0], cond, cond.device, cond.dtype)

    def forward(self, x: Tensor, t: Tensor, cond=None) -> Tensor:
        if cond is None:
            kw = {}
            if self.num_classes is not None:
                kw["class_labels"] = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
        elif isinstance(cond, dict):
            kw = dict(cond)
        elif not cond.is_floating_point():
            kw = {"class_labels": cond}
        else:
            kw = {"encoder_hidden_states": cond}
        if not self.cross_attention:
            return self.unet(x, t, **kw).sample
        states = kw.pop("encoder_hidden_states", None)
        if states is None:
            states = self._null_states(x.shape[0], None, x.device, x.dtype)
        if states is not None:
            states = states.to(x.dtype)
        return self.unet(x, t, states, **kw).sample


def _find(path: Path, sub: str, name: str) -> Path | None:
    for p in (path / sub / name, path / name):
        if p.is_file():
            return p
    return None


def load_diffusers_unet(path, prediction: str | None = None, torch_dtype=None, num_classes: int | None = None,
                        null_embedding: Tensor | None = None) -> ModelDenoiser:
    """A ModelDenoiser (D(x, sigma[, cond]) in VE coordinates) over a diffusers UNet2DModel or
    UNet2DConditionModel and its DDPM schedule.

    prediction: None reads the scheduler's prediction_type; otherwise 'eps'/'x0'/'v' (or the diffusers
    names 'epsilon'/'sample'/'v_prediction') overrides it. num_classes: the class labels of a net with class
    embeddings (None: num_class_embeds - 1, the last embedding being the null label). null_embedding: the
    encoder_hidden_states [L, D] of no condition (None: zeros).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"diffusers model directory {str(path)!r} does not exist; pass the folder "
                                "written by UNet2DModel/DDPMPipeline.save_pretrained")
    try:
        from diffusers import DDPMScheduler, UNet2DConditionModel, UNet2DModel
    except ImportError as e:  # an optional extra
        from diffode.extras import missing_message

        raise ImportError(missing_message("diffusers")) from e

    unet_cfg = _find(path, "unet", "config.json")
    sched_cfg = _find(path, "scheduler", "scheduler_config.json")
    if unet_cfg is None:
        raise FileNotFoundError(f"no UNet config.json in {path} or {path / 'unet'}")
    if sched_cfg is None:
        raise FileNotFoundError(f"no scheduler_config.json in {path} or {path / 'scheduler'}; the noise schedule "
                                "(betas) and prediction_type come from it")
    classes = {"UNet2DModel": UNet2DModel, "UNet2DConditionModel": UNet2DConditionModel}
    cls = json.loads(unet_cfg.read_text()).get("_class_name", "UNet2DModel")
    if cls not in classes:
        raise ValueError(f"{unet_cfg} describes a {cls}; supported: {', '.join(classes)}")

    kw = {"low_cpu_mem_usage": False}  # the default wants `accelerate`, which is not a dependency
    if torch_dtype is not None:
        kw["torch_dtype"] = torch_dtype
    unet = classes[cls].from_pretrained(unet_cfg.parent, **kw).eval()
    config = json.loads(sched_cfg.read_text())
    scheduler = DDPMScheduler.from_config(config)
    pred = prediction if prediction is not None else config.get("prediction_type", "epsilon")
    if pred not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction {pred!r}; choose one of {sorted(PREDICTION_TYPES)}")
    schedule = DiscreteVP(alphas_cumprod=scheduler.alphas_cumprod.to(torch.float64))
    embeds = unet.config.get("num_class_embeds")
    if num_classes is None and embeds:
        num_classes = int(embeds) - 1
    if num_classes is not None and (not embeds or not 0 < num_classes < int(embeds) + 1):
        raise ValueError(f"num_classes={num_classes} but the UNet has {embeds or 'no'} class embeddings; give at most "
                         f"num_class_embeds - 1 = {int(embeds or 1) - 1} (the last embedding is the null label).")
    net = DiffusersUNet(unet, num_classes, null_embedding)
    return ModelDenoiser(net, schedule, prediction=PREDICTION_TYPES[pred])


class LatentDecoder(nn.Module):
    """A diffusers AutoencoderKL between latents and images: decode(z) = vae.decode(z / scaling_factor) (Stable
    Diffusion's convention; latents are encode(x).latent_dist.mean * scaling_factor)."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        self.scaling_factor = float(vae.config.get("scaling_factor", 1.0) or 1.0)
        self.shift_factor = float(vae.config.get("shift_factor", 0.0) or 0.0)

    @property
    def image_shape(self) -> tuple:
        size = self.vae.config.sample_size
        return (int(self.vae.config.in_channels), *((size, size) if isinstance(size, int) else tuple(size)))

    def encode(self, x: Tensor) -> Tensor:
        z = self.vae.encode(x.to(self.vae.dtype)).latent_dist.mean
        return (z - self.shift_factor) * self.scaling_factor

    def decode(self, z: Tensor) -> Tensor:
        return self.vae.decode((z / self.scaling_factor + self.shift_factor).to(self.vae.dtype)).sample


def load_vae(path) -> LatentDecoder | None:
    """The AutoencoderKL in <path>/vae (None when the folder has none: a pixel-space model)."""
    vae_dir = Path(path) / "vae"
    if not (vae_dir / "config.json").is_file():
        return None
    from diffusers import AutoencoderKL

    return LatentDecoder(AutoencoderKL.from_pretrained(vae_dir, low_cpu_mem_usage=False))
