"""The options of `diffode train method=denoiser`: their names and types (Hydra checks them when it composes);
their defaults live in conf/method/denoiser.yaml only."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from omegaconf import MISSING

from ..registry import MethodOptions, choices

# the parameterizations of diffode.core.denoisers.PREDICTIONS (tests/test_configs.py keeps them equal)
Prediction = choices("Prediction", ("eps", "x0", "v", "velocity", "edm"))
TSampling = choices("TSampling", ("auto", "uniform", "lognormal"))


@dataclass
class EMAOptions:
    decay: float = MISSING  # 0 turns EMA off
    start_step: int = MISSING
    every_n_steps: int = MISSING


@dataclass
class DenoiserOptions(MethodOptions):
    prediction: Prediction = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING
    betas: List[float] = MISSING
    warmup_steps: int = MISSING
    t_sampling: TSampling = MISSING
    p_mean: float = MISSING
    p_std: float = MISSING
    sigma_data: float = MISSING
    n_samples: int = MISSING
    sample_nfe: int = MISSING
    sample_seed: int = MISSING
    ema: Optional[EMAOptions] = MISSING
    p_uncond: float = MISSING
    score_order: int = MISSING  # 1: DSM; 2 / 3: + Lu et al. 2022's high-order DSM (checked in check())
    hdsm_trace_only: bool = MISSING
    hdsm_weight: float = MISSING
    dequantize: bool = MISSING
    init_checkpoint: Optional[str] = MISSING
