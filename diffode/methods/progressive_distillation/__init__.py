"""Progressive distillation (Salimans & Ho, ICLR 2022): `diffode train method=progressive_distillation
[source=checkpoint source.path=...] [dataset=...]` (preset: experiment=pd_digits).

Needs a teacher network (conf/source/, a diffode checkpoint; default the shipped digits UNet) and its
training data (conf/dataset/). Trains students of n0/2, n0/4, ..., n_final DDIM steps, one stage
each (module.py), writes <run dir>/students/<N>.ckpt (denoiser checkpoints) and exports one artifact
per student, <run dir>/artifacts/pd_<N>/ (solver ddim at nfe = N on the student's own grid, the
student's weights, the teacher's identity), which `diffode eval sweep.learned=[...]` rows as pd/<N>.
"""
from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from ..registry import Context, lazy_exports, register_method
from .options import PDOptions

__getattr__ = lazy_exports(__name__, {"ProgressiveDistillationModule": ".module", "StageProgressBar": ".module"})

log = logging.getLogger(__name__)

NON_NESTED = ("explicit", "from_file")


def _grid(options: PDOptions) -> tuple[str, dict]:
    """(grid kind, options) from method.grid (a conf/grid/ name) and method.grid_options (overrides)."""
    from diffode.config import grid_config

    kind, opts = grid_config(options.grid)
    return kind, {**opts, **options.grid_options}


def check(options: PDOptions, ctx: Context) -> list[str]:
    from diffode.core import distillation as pd
    from diffode.core.grids import make_grid
    from diffode.methods.student import choose_output, teacher_hparams

    errors = []
    try:
        pd.check_stages(options.n0, options.n_final)
        steps = pd.stage_steps(options.n0, options.n_final)
    except ValueError as e:
        errors.append(f"method.n0 / method.n_final: {e}")
        steps = None
    for key in ("lr", "grad_clip"):
        if not getattr(options, key) > 0:
            errors.append(f"method.{key}={getattr(options, key)} must be positive (e.g. method.{key}=1e-4 / 1.0).")
    if steps:
        try:
            pd.stage_updates(options.updates_per_stage, len(steps))
        except (ValueError, TypeError) as e:
            errors.append(f"method.{e}")
    if options.eval_samples < 0:
        errors.append(f"method.eval_samples={options.eval_samples} must be >= 0 (0 skips the distillation error).")
    teacher = ctx.teacher
    try:
        hp = teacher_hparams(teacher)
        out = choose_output(hp["prediction"], options.student_output)
        if out == "eps":
            errors.append("method.student_output=eps cannot take a step from sigma_max (x0 = x - sigma eps multiplies "
                          "the error by sigma); use auto, x0, v or edm.")
    except ValueError as e:
        errors.append(f"method.student_output / source: {e}")
    try:
        kind, gopts = _grid(options)
    except ValueError as e:
        errors.append(f"method.grid: {e}")
        kind = None
    if kind in NON_NESTED:
        errors.append(f"method.grid={options.grid} gives one fixed grid, but each stage needs an N-step grid that is "
                      "the even points of a 2N-step one; use logsnr, edm, time_uniform or time_quadratic.")
    elif kind is not None and steps and teacher is not None:
        try:
            pd.check_nested(lambda n: make_grid(kind, n, teacher.schedule, sigma_min=teacher.sigma_min,
                                                sigma_max=teacher.sigma_max, **gopts), steps,
                            what=f"method.grid={options.grid}")
        except ValueError as e:
            errors.append(str(e))
    return errors


# -- export ----------------------------------------------------------------------------------

def distillation_error(D_student, D_teacher, sigmas_student, sigmas_teacher, x_T) -> dict:
    """RMSE per coordinate of the student's DDIM sample, and of the teacher's DDIM at the student's grid,
    against the original teacher's DDIM sample on the n0-step grid, all from the same noise."""
    import torch

    import diffode

    with torch.no_grad():
        ref = diffode.sample(D_teacher, x_T, solver="ddim", nfe=None, grid=sigmas_teacher)
        stu = diffode.sample(D_student, x_T, solver="ddim", nfe=None, grid=sigmas_student)
        tea = diffode.sample(D_teacher, x_T, solver="ddim", nfe=None, grid=sigmas_student)
    rmse = lambda a: float((a - ref).square().mean().sqrt())  # noqa: E731
    return {"rmse_vs_teacher": rmse(stu), "teacher_ddim_rmse_vs_teacher": rmse(tea), "eval_samples": int(x_T.shape[0])}


def export(module, ctx: Context) -> dict:
    """One artifact per student found in <run dir>/students/: <run dir>/artifacts/pd_<N>/."""
    import torch

    from diffode.models import initial_noise, load_denoiser
    from diffode.methods.student import save_student_artifact

    hp, m = module.hparams, ctx.teacher
    options = {k: v for k, v in dict(hp).items() if k not in ("teacher",)}
    n_eval, seed = getattr(module, "eval_noise", (0, 0))
    x_T = initial_noise(tuple(m.shape), range(seed, seed + n_eval), m.sigma_max) if n_eval else None
    out = {}
    for k, n in enumerate(module.steps):
        path = module.students_dir() / f"{n}.ckpt"
        if not path.is_file():
            continue
        student, info = load_denoiser(path, ema=False)
        record = info["hparams"].get("distilled", {})
        sigmas = torch.tensor(record["sigmas"], dtype=torch.float64)
        metrics = {}
        if x_T is not None:
            metrics = distillation_error(student, m.denoiser, sigmas, module.grid(hp.n0), x_T)
        art = save_student_artifact(Path(ctx.out_dir) / "artifacts" / f"pd_{n}", student, info["hparams"], kind="pd",
                                    solver="ddim", nfe=n, sigmas=sigmas, model=m, label=f"pd/{n}",
                                    training={**options, **record}, metrics=metrics)
        out[f"pd_{n}"] = str(art)
        log.info("pd/%d: %s%s", n, art, f" (rmse vs teacher {metrics['rmse_vs_teacher']:.4f})" if metrics else "")
    return out


def trainer_overrides(options: PDOptions) -> dict:
    """The stages fix the length; there is no validation loop (the distillation error is measured at export)."""
    from diffode.core import distillation as pd

    n = len(pd.stage_steps(options.n0, options.n_final))
    return {"max_steps": sum(pd.stage_updates(options.updates_per_stage, n)), "max_epochs": -1, "limit_val_batches": 0,
            "val_check_interval": None, "check_val_every_n_epoch": None, "gradient_clip_val": None}


@register_method("progressive_distillation", options=PDOptions, needs_data=True, needs_teacher=True, check=check,
                 export=export, trainer=trainer_overrides,
                 description="progressive distillation: students that halve the DDIM step count")
def build(options: PDOptions, ctx: Context):
    from diffode.methods.student import teacher_hparams

    from .module import ProgressiveDistillationModule

    m = ctx.teacher
    kind, gopts = _grid(options)
    opts = {k: v for k, v in asdict(options).items()  # plain data: the checkpoint's hparams
            if k not in ("name", "grid", "grid_options", "eval_samples", "eval_seed")}
    module = ProgressiveDistillationModule(teacher=teacher_hparams(m), teacher_state=m.denoiser.state_dict(),
                                           grid=kind, grid_options=gopts, sigma_min=m.sigma_min,
                                           sigma_max=m.sigma_max, seed=ctx.seed, out_dir=str(ctx.out_dir), **opts)
    module.eval_noise = (options.eval_samples, options.eval_seed)  # for export only
    return module
