"""Load a diffusers `UNet2DModel` + its DDPM scheduler (saved with `save_pretrained`) as a denoiser D(x, sigma).

Layouts accepted (what `DDPMPipeline.save_pretrained` and bare `save_pretrained` calls write):
    <path>/unet/config.json + weights       or  <path>/config.json + weights
    <path>/scheduler/scheduler_config.json  or  <path>/scheduler_config.json
The scheduler fixes the noise schedule (its alphas_cumprod, computed by diffusers from betas /
beta_schedule / trained_betas exactly as in training) and the prediction type. The network is
conditioned on the discrete timestep index (fractional between indices, which UNet2DModel's
sinusoidal embedding accepts); DiscreteVP maps VE sigma to that index.

Only unconditional nets are driven here (class labels are not passed).
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
    """net(x_t, t_index) -> tensor, around UNet2DModel.forward(sample, timestep).sample."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.unet(x, t).sample


def _find(path: Path, sub: str, name: str) -> Path | None:
    for p in (path / sub / name, path / name):
        if p.is_file():
            return p
    return None


def load_diffusers_unet(path, prediction: str | None = None, torch_dtype=None) -> ModelDenoiser:
    """A ModelDenoiser (D(x, sigma) in VE coordinates) over a diffusers UNet2DModel and its DDPM schedule.

    prediction: None reads the scheduler's prediction_type; otherwise 'eps'/'x0'/'v' (or the diffusers
    names 'epsilon'/'sample'/'v_prediction') overrides it.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"diffusers model directory {str(path)!r} does not exist; pass the folder "
                                "written by UNet2DModel/DDPMPipeline.save_pretrained")
    try:
        from diffusers import DDPMScheduler, UNet2DModel
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
    cls = json.loads(unet_cfg.read_text()).get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        raise ValueError(f"{unet_cfg} describes a {cls}; only UNet2DModel (unconditional DDPM-style) is supported")

    kw = {"low_cpu_mem_usage": False}  # the default wants `accelerate`, which is not a dependency
    if torch_dtype is not None:
        kw["torch_dtype"] = torch_dtype
    unet = UNet2DModel.from_pretrained(unet_cfg.parent, **kw).eval()
    config = json.loads(sched_cfg.read_text())
    scheduler = DDPMScheduler.from_config(config)
    pred = prediction if prediction is not None else config.get("prediction_type", "epsilon")
    if pred not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction {pred!r}; choose one of {sorted(PREDICTION_TYPES)}")
    schedule = DiscreteVP(alphas_cumprod=scheduler.alphas_cumprod.to(torch.float64))
    return ModelDenoiser(DiffusersUNet(unet), schedule, prediction=PREDICTION_TYPES[pred])
