"""The options of `diffode train method=ld3`: their names and types (Hydra checks them when it composes);
their defaults live in conf/method/ld3.yaml only."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from ..registry import LPIPSNet, MethodOptions, choices

Space = choices("Space", ("lambda", "t"))  # where the grid's gaps are learned: logSNR or the schedule's time


@dataclass
class LD3Teacher:
    solver: str = MISSING  # a conf/solver/ name
    nfe: int = MISSING
    grid: str = MISSING  # a conf/grid/ name
    grid_options: Dict[str, Any] = MISSING
    options: Dict[str, Any] = MISSING


@dataclass
class LD3Config(MethodOptions):
    solver: str = MISSING  # a solver config name (conf/solver/<name>.yaml)
    nfe: int = MISSING
    solver_options: Dict[str, Any] = MISSING
    teacher: LD3Teacher = MISSING
    n_pairs: int = MISSING
    val_fraction: float = MISSING
    seed: int = MISSING
    distance: str = MISSING  # a diffode.metrics.distance name (a registry: checked by the method)
    lpips_net: LPIPSNet = MISSING
    lpips_random_backbone: bool = MISSING
    gamma: float = MISSING
    decoupled: bool = MISSING
    win_rate: float = MISSING
    space: Space = MISSING
    init_grid: str = MISSING  # best | uniform | a conf/grid/ name
    init_candidates: List[str] = MISSING
    init_grid_options: Dict[str, Any] = MISSING
    rounds_logits: int = MISSING
    rounds_joint: int = MISSING
    batch_size: int = MISSING
    lr_logits: float = MISSING
    momentum: float = MISSING
    lr_shift: float = MISSING
    lr_latent: float = MISSING
    clip: float = MISSING
    patience: int = MISSING
    lr_decay: float = MISSING
    lr_floor_logits: float = MISSING
    lr_floor_shift: float = MISSING
    val_every: int = MISSING
    val_batch_size: int = MISSING
    checkpointing: bool = MISSING
    cache_dir: Optional[str] = MISSING  # null: diffode.config.cache_dir("ld3_pairs")

    def solver_spec(self) -> tuple[str, dict]:
        """(registry solver, complete options): the config name's options under solver_options."""
        from diffode.config import solver_config

        name, opts = solver_config(self.solver)
        return name, {**opts, **dict(self.solver_options)}
