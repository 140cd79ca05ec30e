"""The options of `diffode train method=progressive_distillation`: their names and types (Hydra checks them when
it composes); their defaults live in conf/method/progressive_distillation.yaml only."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List

from omegaconf import MISSING

from ..registry import MethodOptions, choices

# diffode.core.distillation.WEIGHTINGS and PREDICTIONS (tests/test_configs.py keeps them equal)
Weighting = choices("Weighting", ("snr_trunc", "v_mse"))
StudentOutput = choices("StudentOutput", ("auto", "eps", "x0", "v", "edm"))


@dataclass
class PDOptions(MethodOptions):
    n0: int = MISSING
    n_final: int = MISSING
    updates_per_stage: Any = MISSING  # one integer for every stage, or a list of one per stage
    grid: str = MISSING  # a conf/grid/ name
    grid_options: Dict[str, Any] = MISSING
    weighting: Weighting = MISSING
    student_output: StudentOutput = MISSING
    lr: float = MISSING
    betas: List[float] = MISSING
    grad_clip: float = MISSING
    eval_samples: int = MISSING
    eval_seed: int = MISSING
