"""AMED's options: `AMEDOptions`, what `diffode train method=amed` takes (names and types; Hydra checks them when
it composes; their defaults live in conf/method/amed.yaml only), and `AMEDConfig`, what they resolve to once
for the model (methods/amed/__init__.py: resolve): the registry solvers, the AFS and prior decisions and the
student, teacher and held-out grids the module trains on."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

from omegaconf import MISSING

from ..registry import MethodOptions, choices

Objective = choices("Objective", ("interval", "endpoint"))
RPrior = choices("RPrior", ("auto", "grid", "none"))
AFSGrid = choices("AFSGrid", ("auto", "paper", "base"))
Features = choices("Features", ("auto", "bottleneck", "times_only"))
# best: the lowest held-out endpoint RMSE; fid / fid_rmse: the lowest held-out FID (fid_rmse: among the states
# whose RMSE is not above the start's); last
Select = choices("Select", ("best", "fid", "fid_rmse", "last"))
FID_SELECTS = ("fid", "fid_rmse")  # the select modes that score every validation state by its held-out FID


@dataclass
class PredictorOptions:
    features: Features = MISSING
    hidden: int = MISSING
    time_channels: int = MISSING
    feature_channels: int = MISSING


@dataclass
class AMEDOptions(MethodOptions):
    student: str = MISSING  # a conf/solver/ name: amed or a plugin's base solver (checked by the method)
    nfe: int = MISSING
    afs: Any = MISSING  # auto | true | false (a string or a boolean: checked by the method)
    grid: str = MISSING  # auto or a refinable conf/grid/ name
    grid_options: Dict[str, Any] = MISSING
    teacher_solver: Optional[str] = MISSING
    M: Optional[int] = MISSING
    scale_dir: float = MISSING
    scale_time: float = MISSING
    batch: int = MISSING
    n_trajectories: int = MISSING
    lr: float = MISSING
    objective: Objective = MISSING
    distance: str = MISSING  # a diffode.metrics.distance name (a registry: checked by the method)
    l2_weight: float = MISSING
    seed: int = MISSING
    n_val: int = MISSING
    val_every: int = MISSING
    val_refine: int = MISSING
    r_prior: RPrior = MISSING
    select: Select = MISSING
    val_fid_n: int = MISSING
    afs_grid: AFSGrid = MISSING
    predictor: PredictorOptions = MISSING


@dataclass
class AMEDConfig:
    """AMEDOptions resolved for one model, once (the module's config)."""
    student: str  # registry solver of the student (from its conf/solver name)
    student_options: dict
    teacher: str
    teacher_options: dict
    nfe: int
    steps: int
    afs: bool
    M: int
    grid: str
    grid_options: dict
    scale_dir: float
    scale_time: float
    batch: int  # global batch (all ranks)
    n_trajectories: int
    lr: float
    seed: int
    n_val: int
    val_every: int
    predictor: dict  # features (bottleneck | times_only), hidden, time_channels, feature_channels
    prior: dict | None  # the r prior (predictor.py), resolved from r_prior and the grid
    select: str
    val_fid_n: int  # select=fid: held-out latents of the FID
    first_at_start: bool  # afs_grid: base: step 0's stage at sigma_max (predictor.py)
    objective: str  # interval: the paper's, one Adam step per interval | endpoint: one per batch
    distance: str  # diffode.metrics.distance: l2_sum is the paper's |a - b|^2
    l2_weight: float  # with a network distance: plus l2_weight x the mean squared error per dimension
    # the grids, built once: the student's, the training teacher's (contains every student sigma) and the
    # held-out target's (val_refine times finer still), float64 tensors; the predictor's feature map shape
    sigmas: Any
    teacher_sigmas: Any
    val_sigmas: Any
    feature_shape: Any
    options: AMEDOptions  # what was asked (the artifact's training record)
