"""Load a diffusers flow-matching transformer (`SD3Transformer2DModel`, saved with `save_pretrained`) as a flow
model: D(x, sigma) through ModelDenoiser with the flow schedule and the velocity parameterization.

Layout (what `StableDiffusion3Pipeline.save_pretrained` writes for these two parts):
    <path>/transformer/config.json + weights
    <path>/scheduler/scheduler_config.json      (FlowMatchEulerDiscreteScheduler)
The transformer predicts the velocity eps - x0 of x_t = (1 - t) x0 + t eps and is conditioned on
timestep = num_train_timesteps * t (diffusers' FlowMatchEuler timesteps), which is the flow schedule's
noise_cond with time_scale = num_train_timesteps. The sampling range is t in [1/T, 1 - 1/T] (T =
num_train_timesteps; diffusers' DPM / UniPC flow grids start at 1 - 1/T). The scheduler's `shift` is a
property of the grid, not of the model: it is returned in the info dict, and grid.options.shift=<it>
(or mu=... for a dynamically shifted model) samples on that model's grid (core/grids.py).

The model runs in pixel space here: diffode has no VAE path yet, so a latent model's samples are its
latents. SD3 is text-conditioned: `cond` is a dict with encoder_hidden_states [B, L, joint_attention_dim]
and pooled_projections [B, pooled_projection_dim] (its text encoders' outputs, made elsewhere); without
one the transformer gets zeros of those shapes, which is not SD3's empty-prompt embedding.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from diffode.core.denoisers import ModelDenoiser
from diffode.core.schedules import Flow

TRANSFORMERS = ("SD3Transformer2DModel",)


class DiffusersFlowTransformer(nn.Module):
    """net(x_t, timestep, cond=None) -> velocity, around SD3Transformer2DModel.forward(...).sample."""

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer

    def _zeros(self, x: Tensor) -> dict:
        cfg = self.transformer.config
        return {"encoder_hidden_states": x.new_zeros(x.shape[0], 1, cfg.joint_attention_dim),
                "pooled_projections": x.new_zeros(x.shape[0], cfg.pooled_projection_dim)}

    def forward(self, x: Tensor, t: Tensor, cond: dict | None = None) -> Tensor:
        kw = self._zeros(x) if cond is None else dict(cond)
        return self.transformer(x, timestep=t.to(x.dtype).reshape(-1).expand(x.shape[0]), **kw).sample


def is_flow_folder(path) -> bool:
    return (Path(path) / "transformer" / "config.json").is_file()


def load_diffusers_flow(path, torch_dtype=None) -> tuple[ModelDenoiser, dict]:
    """(ModelDenoiser over the transformer, info with shape, scheduler config and the grid shift to use)."""
    path = Path(path)
    cfg_path = path / "transformer" / "config.json"
    sched_path = path / "scheduler" / "scheduler_config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"no transformer/config.json in {path}; save the transformer with "
                                "save_pretrained(<path>/transformer)")
    if not sched_path.is_file():
        raise FileNotFoundError(f"no scheduler/scheduler_config.json in {path}; save the model's "
                                "FlowMatchEulerDiscreteScheduler with save_pretrained(<path>/scheduler)")
    cls = json.loads(cfg_path.read_text()).get("_class_name")
    if cls not in TRANSFORMERS:
        raise ValueError(f"{cfg_path} describes a {cls}; the flow loader takes {', '.join(TRANSFORMERS)}")
    sched = json.loads(sched_path.read_text())
    if sched.get("_class_name") != "FlowMatchEulerDiscreteScheduler":
        raise ValueError(f"{sched_path} is a {sched.get('_class_name')}; a flow transformer comes with a "
                         "FlowMatchEulerDiscreteScheduler (its num_train_timesteps and shift are read)")
    import diffusers

    kw = {"low_cpu_mem_usage": False}  # the default wants `accelerate`, which is not a dependency
    if torch_dtype is not None:
        kw["torch_dtype"] = torch_dtype
    net = getattr(diffusers, cls).from_pretrained(cfg_path.parent, **kw).eval()
    T = int(sched.get("num_train_timesteps", 1000))
    schedule = Flow(t_min=1.0 / T, t_max=1.0 - 1.0 / T, time_scale=float(T))
    c = net.config
    size = c.sample_size if isinstance(c.sample_size, int) else tuple(c.sample_size)
    shape = (c.in_channels, *((size, size) if isinstance(size, int) else size))
    shift = {"mu": None} if sched.get("use_dynamic_shifting") else {"shift": float(sched.get("shift", 1.0))}
    info = {"shape": shape, "scheduler": sched, "grid_shift": shift, "class": cls}
    return ModelDenoiser(DiffusersFlowTransformer(net), schedule, "velocity"), info
