"""The options of `diffode train method=consistency_distillation`: their names and types (Hydra checks them when
it composes); their defaults live in conf/method/consistency_distillation.yaml only."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from ..registry import LPIPSNet, MethodOptions, choices

Optimizer = choices("Optimizer", ("radam", "adam"))  # radam: the paper's (no warm-up, no decay)


@dataclass
class CDConfig(MethodOptions):
    N: int = MISSING
    rho: float = MISSING
    mu: float = MISSING
    ema_decay: float = MISSING
    teacher_solver: str = MISSING  # a conf/solver/ name (a single-step ODE solver: checked by the method)
    distance: str = MISSING  # a diffode.metrics.distance name (a registry: checked by the method)
    huber_c: Optional[float] = MISSING
    lpips_net: LPIPSNet = MISSING
    lpips_random_backbone: bool = MISSING
    optimizer: Optimizer = MISSING
    lr: float = MISSING
    betas: List[float] = MISSING
    warmup_steps: int = MISSING
    # null or a net spec (`_target_` ...), for teachers without a network. Any, not Optional[Dict]: OmegaConf 2.3
    # cannot merge the command line's `method.student_net={...}` into a None typed as a dict
    student_net: Any = MISSING
    sample_steps: List[int] = MISSING
    sample_sigmas: Dict[Any, Any] = MISSING  # k: [sigma_max, ..., sigma_min]
    clip: Optional[float] = MISSING
    reference_nfe: int = MISSING
    n_val: int = MISSING
    snapshot_every: int = MISSING
