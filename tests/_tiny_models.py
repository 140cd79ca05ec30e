"""Tiny randomly initialised models written in the real on-disk formats, for tests that need a model file."""
from __future__ import annotations

from pathlib import Path

import torch

from diffode.nets.unet import UNet

NET = {"_target_": "diffode.nets.unet.UNet", "resolution": 8, "in_channels": 1, "model_channels": 8,
       "channel_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0,
       "embedding": "positional", "num_classes": 10}


def conditional_checkpoint(path, seed: int = 0, num_classes: int | None = 10) -> Path:
    """A diffode denoiser checkpoint (what `diffode train` exports) of a tiny class-conditional digits UNet whose
    weights are random and non-zero, so that its output depends on the label."""
    torch.manual_seed(seed)
    spec = {**NET, "num_classes": num_classes}
    net = UNet(**{k: v for k, v in spec.items() if k != "_target_"})
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.15)
    hp = {"net": spec, "schedule": {"_target_": "diffode.core.schedules.EDM", "sigma_min": 0.002, "sigma_max": 80.0,
                                    "sigma_data": 0.5},
          "data": {"name": "digits", "shape": [1, 8, 8], "num_classes": num_classes}, "prediction": "edm",
          "sigma_data": 0.5}
    state = {f"denoiser.net.{k}": v for k, v in net.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"hyper_parameters": hp, "state_dict": state, "ema": True, "global_step": 0}, path)
    return path
