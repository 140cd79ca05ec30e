"""Reflow (Liu et al. 2023 "Flow straight and fast"; InstaFlow): `diffode train method=reflow [source=...]`.

Needs a teacher model (conf/source/), no data: the training data are the teacher's own (noise, sample) pairs.
The student is a flow model (flow schedule, velocity) on the teacher's sigma range: the teacher's network
when the teacher is a flow model (a copy of its weights: Liu et al.'s 2-rectified flow starts from the
1-rectified one), a copy of any other teacher's network re-read as a velocity net (InstaFlow started from
SD's weights), or `method.student_net` for a teacher without a network (the exact mixture). Stages (module.py):
reflow on the teacher's pairs, then one k-step student per k in distill_steps, distilled on pairs re-made by
the reflowed model. Exports <run dir>/artifacts/reflow_<k>/ (rows reflow/<k>: Euler at nfe k on the student's
k-step grid) and, for rectified_steps, the undistilled 2-rectified flow under Euler (rows 2rf/<k>).
"""
from __future__ import annotations

import copy
import logging
from dataclasses import asdict
from pathlib import Path

from ..registry import Context, lazy_exports, register_method
from .options import ReflowOptions

__getattr__ = lazy_exports(__name__, {"ReflowModule": ".module"})

log = logging.getLogger(__name__)

DENOISER = "diffode.core.denoisers.ModelDenoiser"


def stage_updates(reflow_updates: int, distill_updates: int, distill_steps) -> list[int]:
    """Updates of each stage: the reflow, then one distillation per step count."""
    return [int(reflow_updates)] + [int(distill_updates)] * len(distill_steps)


def _flow_range(model) -> dict:
    """The flow schedule whose VE range is the teacher's sampling range (t = s / (1 + s))."""
    lo, hi = float(model.sigma_min), float(model.sigma_max)
    return {"_target_": "diffode.core.schedules.Flow", "t_min": lo / (1 + lo), "t_max": hi / (1 + hi),
            "time_scale": 1000.0}


def _teacher_net(model):
    """(net spec, weights) of the teacher's network, or (None, None) for a teacher without one."""
    from diffode.core.denoisers import ModelDenoiser

    hp = (model.info or {}).get("hparams")
    if isinstance(model.denoiser, ModelDenoiser) and hp:
        net_state = {k[len("net."):]: v for k, v in model.denoiser.state_dict().items() if k.startswith("net.")}
        return copy.deepcopy(hp["net"]), net_state
    return None, None


def student_spec(options: ReflowOptions, ctx: Context) -> tuple[dict, dict | None]:
    """The flow student's ModelDenoiser spec and initial weights (None: fresh)."""
    from diffode.core.denoisers import straight_path

    m = ctx.teacher
    net, state = _teacher_net(m)
    hp = (m.info or {}).get("hparams") or {}
    is_flow = net is not None and hp.get("prediction") == "velocity" and straight_path(m.schedule)
    schedule = copy.deepcopy(hp["schedule"]) if is_flow else _flow_range(m)
    if options.student_net:
        net, state = dict(options.student_net), None
        if "dim" in net and net["dim"] is None:
            net["dim"] = int(m.shape[0])
    spec = {"_target_": DENOISER, "net": net, "schedule": schedule, "prediction": "velocity", "sigma_data": 0.5}
    return spec, ({f"net.{k}": v for k, v in state.items()} if state is not None else None)


def check(options: ReflowOptions, ctx: Context) -> list[str]:
    from diffode.config import grid_config, solver_config
    from diffode.core.grids import make_grid
    from diffode.core.sample import steps_for_nfe

    errors = []
    o = options
    t = o.teacher
    try:
        reg, opts = solver_config(t.solver)
        steps_for_nfe(reg, t.nfe, **{**opts, **dict(t.options)})
    except (ValueError, TypeError) as e:
        errors.append(f"method.teacher.solver={t.solver} nfe={t.nfe}: {e}")
    for key in ("n_pairs", "batch_size"):
        if getattr(o, key) < 1:
            errors.append(f"method.{key}={getattr(o, key)} must be >= 1.")
    if o.val_pairs < 0:
        errors.append(f"method.val_pairs={o.val_pairs} must be >= 0.")
    for key in ("reflow_updates", "distill_updates"):
        if getattr(o, key) < 0:
            errors.append(f"method.{key}={getattr(o, key)} must be >= 0.")
    ks = list(o.distill_steps)
    if not all(k >= 1 for k in ks):
        errors.append(f"method.distill_steps={ks} must be a list of step counts >= 1, e.g. [1, 2].")
    if not all(k >= 1 for k in o.rectified_steps):
        errors.append(f"method.rectified_steps={list(o.rectified_steps)} must be a list of step counts >= 1.")
    if sum(stage_updates(max(o.reflow_updates, 0), max(o.distill_updates, 0), ks)) < 1:
        errors.append("method.reflow_updates + distill_updates x len(distill_steps) must be >= 1.")
    for key in ("lr", "grad_clip"):
        if not getattr(o, key) > 0:
            errors.append(f"method.{key}={getattr(o, key)} must be positive.")
    m = ctx.teacher
    if m is None:
        return errors
    if m.num_classes is not None:
        errors.append(f"the teacher {m.label} is class-conditional; reflow pairs carry no labels yet: use an "
                      "unconditional teacher.")
    try:
        kind, gopts = grid_config(o.grid)
        gopts = {**gopts, **dict(o.grid_options)}
        if kind in ("explicit", "from_file"):
            errors.append(f"method.grid={o.grid} is one fixed grid; the students need a k-step grid for each "
                          "k: use time_uniform (the flow models' own), logsnr or edm.")
        else:
            for k in set(ks) | set(o.rectified_steps):
                make_grid(kind, int(k), m.schedule, sigma_min=m.sigma_min, sigma_max=m.sigma_max, **gopts)
    except ValueError as e:
        errors.append(f"method.grid={o.grid}: {e}")
    net, _ = _teacher_net(m)
    if net is None and not o.student_net:
        errors.append("the teacher has no network to copy (an exact mixture source): set method.student_net to a "
                      "network spec (e.g. the MLP of conf/net/mlp.yaml with dim: null).")
    return errors


def _save(ctx, name, student, spec, m, k, sigmas, label, kind, metrics, training):
    from diffode.artifacts import save_artifact

    return save_artifact(Path(ctx.out_dir) / "artifacts" / name, kind=kind, label=label, solver="euler", nfe=int(k),
                         sigmas=sigmas, model=m.identity, schedule=m.schedule, training=training, metrics=metrics,
                         student=student, student_spec=spec, condition=m.condition)


def rmse_vs(student, sigmas, z, x0, sigma_max) -> float:
    import torch

    import diffode

    with torch.no_grad():
        x = diffode.sample(student, sigma_max * z.to(torch.float64), solver="euler", nfe=None, grid=sigmas)
    return float((x - x0).square().mean().sqrt())


def export(module, ctx: Context) -> dict:
    """One artifact per distilled student (reflow/<k>) and per rectified_steps count of the 2-RF (2rf/<k>)."""
    import torch

    from diffode.models import load_denoiser

    hp, m = module.hparams, ctx.teacher
    last = Path(ctx.out_dir) / "checkpoints" / "last.ckpt"
    if last.is_file():  # after ddp_spawn the main process's module is untrained
        module.load_state_dict(torch.load(last, map_location="cpu", weights_only=True)["state_dict"])
    module.cpu()
    spec = copy.deepcopy(hp.student_spec)
    _, _, z_val, x0_val = module.pairs_of(0)
    metrics_common = {"val_pairs": int(z_val.shape[0]), "teacher": dict(hp.teacher)}
    training = {k: v for k, v in dict(hp).items() if k not in ("teacher_id", "student_spec")}
    out = {}
    rect_path = module.students_dir() / "rectified.ckpt"
    if rect_path.is_file():
        rect, _ = load_denoiser(rect_path, ema=False)
        straight = {"straightness_2rf": module.val_loss(rect, 0)}
        if getattr(m.denoiser, "prediction", None) == "velocity":
            straight["straightness_teacher"] = module.val_loss(m.denoiser, 0)
        for k in hp.rectified_steps:
            sig = module.student_grid(k)
            met = {**metrics_common, **straight, "rmse_vs_teacher": rmse_vs(rect, sig, z_val, x0_val, m.sigma_max),
                   "teacher_euler_rmse_vs_teacher": rmse_vs(m.denoiser, sig, z_val, x0_val, m.sigma_max)}
            out[f"rectified_{k}"] = str(_save(ctx, f"rectified_{k}", rect, spec, m, k, sig, f"2rf/{k}", "rectified",
                                              met, training))
    for k in hp.distill_steps:
        path = module.students_dir() / f"{k}.ckpt"
        if not path.is_file():
            continue
        stu, _ = load_denoiser(path, ema=False)
        sig = module.student_grid(k)
        met = {**metrics_common, "rmse_vs_teacher": rmse_vs(stu, sig, z_val, x0_val, m.sigma_max),
               "teacher_euler_rmse_vs_teacher": rmse_vs(m.denoiser, sig, z_val, x0_val, m.sigma_max)}
        out[f"reflow_{k}"] = str(_save(ctx, f"reflow_{k}", stu, spec, m, k, sig, f"reflow/{k}", "reflow", met, training))
        log.info("reflow/%d: %s (rmse vs teacher %.4f)", k, out[f"reflow_{k}"], met["rmse_vs_teacher"])
    return out


def trainer_overrides(options: ReflowOptions) -> dict:
    n = sum(stage_updates(options.reflow_updates, options.distill_updates, options.distill_steps))
    return {"max_steps": n, "max_epochs": -1, "limit_val_batches": 0, "val_check_interval": None,
            "check_val_every_n_epoch": None, "gradient_clip_val": None}


@register_method("reflow", options=ReflowOptions, needs_teacher=True, check=check, export=export,
                 trainer=trainer_overrides,
                 description="reflow (rectified flow): straighten the teacher's paths, distil to 1-2 Euler steps")
def build(options: ReflowOptions, ctx: Context):
    import torch

    from diffode.config import cache_dir, grid_config

    from .module import ReflowModule

    m = ctx.teacher
    spec, state = student_spec(options, ctx)
    kind, gopts = grid_config(options.grid)
    opts = {k: v for k, v in asdict(options).items()  # plain data: the checkpoint's hparams
            if k not in ("name", "student_net", "grid", "grid_options", "cache_dir")}
    torch.manual_seed(ctx.seed)  # a fresh student_net's initial weights
    module = ReflowModule(spec, m.identity, m.shape, m.sigma_min, m.sigma_max, grid=kind,
                          grid_options={**gopts, **dict(options.grid_options)},
                          cache_dir=str(options.cache_dir or cache_dir("reflow_pairs")), out_dir=str(ctx.out_dir),
                          student_state=state, teacher_denoiser=m.denoiser, run_seed=ctx.seed, **opts)
    module.teacher_schedule = m.schedule
    return module
