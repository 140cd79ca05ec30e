"""The options of `diffode train method=reflow`: their names and types (Hydra checks them when it composes);
their defaults live in conf/method/reflow.yaml only."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from ..registry import MethodOptions, choices

TSampling = choices("TSampling", ("uniform", "lognormal"))  # Liu et al.'s uniform t | SD3's logit-normal t


@dataclass
class ReflowTeacher:
    solver: str = MISSING  # a conf/solver/ name
    nfe: int = MISSING
    grid: str = MISSING  # a conf/grid/ name
    grid_options: Dict[str, Any] = MISSING
    options: Dict[str, Any] = MISSING


@dataclass
class ReflowOptions(MethodOptions):
    teacher: ReflowTeacher = MISSING
    n_pairs: int = MISSING
    val_pairs: int = MISSING
    seed: int = MISSING
    reflow_updates: int = MISSING
    distill_updates: int = MISSING
    distill_steps: List[int] = MISSING
    rectified_steps: List[int] = MISSING
    regenerate_pairs: bool = MISSING
    grid: str = MISSING  # a conf/grid/ name (the students' k-step grid)
    grid_options: Dict[str, Any] = MISSING
    t_sampling: TSampling = MISSING
    p_mean: float = MISSING
    p_std: float = MISSING
    batch_size: int = MISSING
    lr: float = MISSING
    betas: List[float] = MISSING
    grad_clip: float = MISSING
    # null or a net spec (`_target_` ...), for teachers without a network. Any, not Optional[Dict]: OmegaConf 2.3
    # cannot merge the command line's `method.student_net={...}` into a None typed as a dict
    student_net: Any = MISSING
    cache_dir: Optional[str] = MISSING  # null: diffode.config.cache_dir("reflow_pairs")
