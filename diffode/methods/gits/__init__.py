"""GITS time steps: `diffode train method=gits [method.solver=ipndm] [method.nfe=[4,5,6]] [source=...]`.

Needs a teacher model (conf/source/), no data, no gradients: one pass of the teacher over the warm-up
noise builds the cost matrix, the DP picks the grid (diffode/core/gits.py). Exports one artifact of kind
`gits` per (solver, NFE) under <run dir>/artifacts/gits/<solver>_nfe<k>, which `diffode eval
sweep.learned=[...]` evaluates as the row <solver>/gits and `grid=gits grid.options.path=...` reads.
Not checkpointed: the search is re-made faster than a checkpoint would be restored.
"""
from __future__ import annotations

import logging
import time

from ..registry import Context, lazy_exports, register_method
from .options import GITSConfig

__getattr__ = lazy_exports(__name__, {"GITSModule": ".module", "student_steps": ".module", "warmup_noise": ".module"})

log = logging.getLogger(__name__)


def check(cfg: GITSConfig, ctx: Context) -> list[str]:
    from diffode.config import solver_config
    from diffode.core.grids import GRIDS
    from diffode.core.solvers import get_solver

    from .module import student_steps

    errors = []
    t = cfg.teacher
    steps = t.steps
    if steps < 2:
        errors.append(f"method.teacher.steps={steps!r} must be an integer >= 2 (the fine grid GITS picks from; "
                      "the paper uses 60).")
        steps = None
    try:
        reg, _ = solver_config(t.solver)
        spec = get_solver(reg)
        if spec.adaptive or spec.stochastic:
            errors.append(f"method.teacher.solver={t.solver} must be a fixed-step ODE solver (ipndm, dpmpp_3m...).")
    except ValueError as e:
        errors.append(f"method.teacher.solver: {e}")
    if t.grid not in GRIDS or t.grid in ("explicit", "from_file"):
        errors.append(f"method.teacher.grid={t.grid!r} must be one of time_uniform, time_quadratic, logsnr, edm.")
    try:
        pairs = cfg.pairs()
    except (TypeError, ValueError):
        pairs = []
        errors.append(f"method.solver={cfg.solver!r} / method.nfe={cfg.nfe!r}: give a solver name (or a list) and "
                      "an NFE (or a list of them).")
    for solver, nfe in pairs:
        try:
            K = student_steps(solver, nfe, cfg.solver_options)
            if steps is not None and K > steps:
                errors.append(f"method.solver={solver} at nfe={nfe} takes {K} steps, more than the teacher grid's "
                              f"{steps}; raise method.teacher.steps.")
        except ValueError as e:
            errors.append(f"method.solver={solver} nfe={nfe}: {e}")
    if not float(cfg.coeff) > 0:
        errors.append(f"method.coeff={cfg.coeff} must be > 0 (the paper's 1.15 for pixel models).")
    for key in ("n_warmup", "batch_size"):
        if int(getattr(cfg, key)) < 1:
            errors.append(f"method.{key}={getattr(cfg, key)} must be >= 1.")
    return errors


def export(module, ctx: Context) -> dict:
    seconds = time.perf_counter() - module.fit_started if hasattr(module, "fit_started") else None
    paths = module.save(ctx.out_dir / "artifacts" / "gits", train_seconds=seconds, condition=ctx.teacher.condition)
    for (solver, nfe), r in module.results.items():
        log.info(f"GITS {solver} NFE {nfe}: indices {r['indices']} sigmas "
                 f"{[round(float(s), 4) for s in r['sigmas']]} (cost {r['cost']:.4g})")
    return paths


def trainer_overrides(cfg: GITSConfig) -> dict:
    """One pass over the warm-up batches; no validation loop, no optimizer."""
    return {"max_epochs": 1, "max_steps": -1, "max_time": None, "limit_val_batches": 0, "val_check_interval": None,
            "check_val_every_n_epoch": None, "limit_train_batches": None}


@register_method("gits", options=GITSConfig, needs_teacher=True, check=check, export=export, checkpoint=False, trainer=trainer_overrides,
                 description="GITS time steps by dynamic programming over teacher trajectories (Chen et al., ICML 2024)")
def build(cfg: GITSConfig, ctx: Context):
    from .module import GITSModule

    m = ctx.teacher
    module = GITSModule(m.denoiser, m.shape, m.schedule, m.sigma_min, m.sigma_max, m.identity, cfg)
    module.fit_started = time.perf_counter()
    return module
