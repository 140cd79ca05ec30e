"""LD3 learned time steps: `diffode train method=ld3 method.solver=ipndm method.nfe=4 [source=...]`.

Needs a teacher model (conf/source/), no data; exports the learned grid as an artifact of kind `ld3`
(<run dir>/artifacts/ld3), which `diffode eval sweep.learned=[...]` evaluates as the row <solver>/ld3.
Not checkpointed: its state is 2N+2 numbers and the cached teacher pairs, re-made in seconds.
"""
from __future__ import annotations

import logging

from ..registry import Context, lazy_exports, register_method
from .options import LD3Config

__getattr__ = lazy_exports(__name__, {"LD3Module": ".module", "Checkpointed": ".module", "steps_for_nfe": ".module"})

log = logging.getLogger(__name__)


def check(cfg: LD3Config, ctx: Context) -> list[str]:
    from diffode.config import solver_config
    from diffode.core.grids import GRIDS
    from diffode.core.sample import steps_for_nfe as steps
    from diffode.core.solvers import get_solver
    from diffode.metrics.distance import distance_errors

    errors = []
    for what, name, nfe, extra in (("method.solver", cfg.solver, cfg.nfe, cfg.solver_options),
                                   ("method.teacher.solver", cfg.teacher.solver, cfg.teacher.nfe, cfg.teacher.options)):
        try:
            reg, opts = solver_config(str(name))
            steps(reg, int(nfe), **{**opts, **dict(extra)})
            if what == "method.solver" and not get_solver(reg).differentiable:
                errors.append(f"method.solver={name} is not differentiable in its sigmas; LD3 backpropagates through "
                              "the solver: pick a deterministic solver (ddim, dpmpp_3m, unipc_bh1, ipndm, ...).")
        except (ValueError, TypeError) as e:
            errors.append(f"{what}={name} nfe={nfe}: {e}")
    errors += distance_errors(cfg.distance, None if ctx.teacher is None else ctx.teacher.shape,
                              lpips_net=cfg.lpips_net, random_backbone=cfg.lpips_random_backbone)
    if cfg.gamma < 0:
        errors.append(f"method.gamma={cfg.gamma} must be >= 0 (the soft-loss ball radius; 0 gives the hard loss).")
    if not 0 < cfg.win_rate <= 0.5:
        errors.append(f"method.win_rate={cfg.win_rate} must be in (0, 0.5] (shifts stay inside half a gap).")
    if not 0 < cfg.val_fraction < 1:
        errors.append(f"method.val_fraction={cfg.val_fraction} must be in (0, 1).")
    n_val = round(cfg.val_fraction * cfg.n_pairs)
    if cfg.n_pairs < 2 or n_val < 1 or cfg.n_pairs - n_val < 1:
        errors.append(f"method.n_pairs={cfg.n_pairs} with val_fraction={cfg.val_fraction} leaves an empty train or "
                      "validation split; use at least method.n_pairs=4.")
    for key in ("batch_size", "val_batch_size", "val_every", "patience"):
        if int(getattr(cfg, key)) < 1:
            errors.append(f"method.{key}={getattr(cfg, key)} must be >= 1.")
    for key in ("lr_logits", "lr_shift", "lr_latent", "clip"):
        if not float(getattr(cfg, key)) > 0:
            errors.append(f"method.{key}={getattr(cfg, key)} must be positive.")
    if cfg.rounds_logits < 0 or cfg.rounds_joint < 0 or cfg.rounds_logits + cfg.rounds_joint < 1:
        errors.append("method.rounds_logits + method.rounds_joint must be >= 1 (both >= 0).")
    bad = [g for g in [cfg.init_grid] + list(cfg.init_candidates)
           if g not in ("best", "uniform") and g not in GRIDS]
    if bad:
        errors.append(f"method.init_grid / init_candidates name unknown grids {bad}; use best, uniform or "
                      f"{', '.join(GRIDS)}.")
    return errors


def export(module, ctx: Context) -> dict:
    path = module.save(ctx.out_dir / "artifacts" / "ld3", condition=ctx.teacher.condition)
    log.info(f"LD3 {module.cfg.solver} NFE {module.cfg.nfe}: val {module.cfg.distance} {module.val_first:.5g} -> "
             f"{module.best['val']:.5g}; artifact {path}")
    return {"artifact": str(path)}


def trainer_overrides(cfg: LD3Config) -> dict:
    """One epoch is one pass over the training pairs; LD3 validates itself (no Lightning val loop)."""
    return {"max_epochs": cfg.rounds_logits + cfg.rounds_joint, "max_steps": -1,
            "max_time": None, "limit_val_batches": 0, "val_check_interval": None, "check_val_every_n_epoch": None}


@register_method("ld3", options=LD3Config, needs_teacher=True, check=check, export=export, checkpoint=False,
                 trainer=trainer_overrides, description="LD3 learned time steps (Tong et al., ICLR 2025)")
def build(cfg: LD3Config, ctx: Context):
    from diffode.core.grids import make_grid

    from .module import LD3Module, steps_for_nfe

    m = ctx.teacher
    init = None
    if cfg.init_grid not in ("uniform", "best"):
        init = make_grid(cfg.init_grid, steps_for_nfe(cfg), m.schedule, sigma_min=m.sigma_min, sigma_max=m.sigma_max,
                         **cfg.init_grid_options)
    return LD3Module(m.denoiser, m.shape, m.schedule, m.sigma_min, m.sigma_max, m.identity, cfg, init_sigmas=init)
