"""The options of `diffode train method=gits`: their names and types (Hydra checks them when it composes);
their defaults live in conf/method/gits.yaml only."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

from omegaconf import MISSING

from ..registry import MethodOptions, choices

Metric = choices("Metric", ("dev", "l2", "l1"))  # diffode.core.gits.METRICS (tests/test_configs.py keeps them equal)


@dataclass
class GITSTeacher:
    solver: str = MISSING  # a conf/solver/ name (a fixed-step ODE solver)
    steps: int = MISSING
    grid: str = MISSING
    grid_options: Dict[str, Any] = MISSING
    options: Dict[str, Any] = MISSING


@dataclass
class GITSConfig(MethodOptions):
    solver: Any = MISSING  # a conf/solver/ name or a list of them (the students: only their step counts matter)
    nfe: Any = MISSING  # an int or a list; one artifact per (solver, nfe)
    solver_options: Dict[str, Any] = MISSING
    teacher: GITSTeacher = MISSING
    metric: Metric = MISSING
    coeff: float = MISSING
    n_warmup: int = MISSING
    batch_size: int = MISSING
    seed: int = MISSING

    def pairs(self) -> list[tuple[str, int]]:
        solvers = [self.solver] if isinstance(self.solver, str) else list(self.solver)
        nfes = [self.nfe] if isinstance(self.nfe, int) else list(self.nfe)
        return [(str(s), int(n)) for s in solvers for n in nfes]
