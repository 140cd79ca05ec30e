"""AMED: `diffode train method=amed method.student=ipndm method.nfe=5 [source=...]`.

Needs a teacher model (conf/source/), no data. Trains the predictor of AMEDModule (module.py) and
exports it as the `hook` of an artifact of kind `amed` (<run dir>/artifacts/amed), sampled as
`<student>` with midpoints=<predictor>; `diffode eval sweep.learned=[...]` evaluates it as the row
<student>/amed (<student>/amed_times for the times-only predictor of models without a bottleneck).
The options (AMEDOptions) are checked, then resolved once for the model into AMEDConfig (options.py):
the solvers, the AFS and prior decisions and the three grids the module trains on.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict

from ..registry import Context, lazy_exports, register_method
from .options import FID_SELECTS, AMEDConfig, AMEDOptions

__getattr__ = lazy_exports(__name__, {"AMEDModule": ".module", "students": ".module", "teacher_indices": ".module",
                                      "AMEDPredictor": ".predictor", "PRIOR_GRIDS": ".predictor",
                                      "predictor_spec": ".predictor"})

REFINABLE = ("edm", "logsnr", "time_uniform", "time_quadratic", "time_uniform_vp")  # uniform in a transformed variable

log = logging.getLogger(__name__)


def _world(ctx: Context) -> int:
    tr = ctx.trainer or {}
    devices, nodes = tr.get("devices", 1), tr.get("num_nodes", 1)
    return (devices if isinstance(devices, int) and devices > 0 else 1) * (nodes if isinstance(nodes, int) else 1)


def _teacher_name(o: AMEDOptions) -> str:
    return o.teacher_solver or ("heun" if o.student == "amed" else o.student)


def _afs(o: AMEDOptions) -> bool:
    """afs: auto takes the analytic first step exactly where the NFE needs it (odd NFEs)."""
    return o.nfe % 2 == 1 if o.afs == "auto" else bool(o.afs)


def _grid(o: AMEDOptions) -> str:
    """grid: auto is the student's usual grid (conf/eval.yaml sweep.usual_grid: logsnr for the DPM-Solver
    students, edm otherwise, and for the AMED-Solver)."""
    from diffode.config import usual_grid

    return usual_grid(o.student) if o.grid == "auto" else o.grid


def _M(o: AMEDOptions) -> int:
    return o.M if o.M is not None else (1 if o.student == "amed" else 2)


def _base_start(o: AMEDOptions) -> bool:
    """afs_grid: base (auto: for iPNDM with the r prior, at odd NFEs): the intervals end at the odd nodes
    of the base solver's own (2N-1)-step grid u and step 0's stage sits at sigma_max, so the analytic first
    step has length zero, its slope leaves iPNDM's history (solvers/ipndm.py), and the r prior puts every
    later stage at u's even node: the untrained plugin is iPNDM on u, the base solver at the same NFE.
    paper: AFS on the N-step grid, its first stage predicted like the others."""
    if not _afs(o):
        return False
    if o.afs_grid == "auto":
        return o.student == "ipndm" and _wants_prior(o)
    return o.afs_grid == "base"


def grids(o: AMEDOptions, model):
    """(student sigmas, teacher sigmas, held-out sigmas) for the model's schedule and range: the teacher's grid is
    the same family's, refined so that it contains every student sigma, and the held-out target's `val_refine`
    times finer still."""
    import torch

    from diffode.config import solver_config
    from diffode.core.grids import make_grid
    from diffode.core.sample import steps_for_nfe

    reg, opts = solver_config(o.student)
    steps = steps_for_nfe(reg, o.nfe, _afs(o), midpoints=True, **opts)
    kw = dict(sigma_min=model.sigma_min, sigma_max=model.sigma_max, **o.grid_options)
    if not _base_start(o):
        sigmas, fine = make_grid(_grid(o), steps, model.schedule, **kw), (_M(o) + 1) * steps
    else:
        u_steps = 2 * steps - 1  # u: the base solver's grid at NFE 2N - 1; the student's sigmas are u_0, u_1, u_3, ...
        u = make_grid(_grid(o), u_steps, model.schedule, **kw)
        k = -(-(_M(o) + 1) * steps // u_steps)  # the teacher refines u k-fold: at least (M + 1) N steps, as otherwise
        sigmas, fine = torch.cat([u[:1], u[1::2]]), k * u_steps
    teacher = make_grid(_grid(o), fine, model.schedule, **kw)
    held_out = teacher if o.val_refine == 1 else make_grid(_grid(o), o.val_refine * fine, model.schedule, **kw)
    return sigmas, teacher, held_out


def _wants_prior(o: AMEDOptions) -> bool:
    return o.r_prior == "grid" or (o.r_prior == "auto" and o.student != "amed")


def prior(o: AMEDOptions) -> dict | None:
    """r_prior: grid puts the untrained stage at the 2N-step grid's point (predictor.py); auto: grid for
    the plugins (an untrained plugin is then its base solver), none for the AMED-Solver."""
    if not _wants_prior(o):
        return None
    if _grid(o) == "logsnr":
        return {"grid": "logsnr"}
    return {"grid": "edm", "rho": float(o.grid_options.get("rho", 7.0))}


def resolve(o: AMEDOptions, ctx: Context) -> AMEDConfig:
    """The options resolved for ctx.teacher, once: the solvers, AFS, the prior and the grids (ValueError naming the
    fix when the grid family cannot be refined into the teacher's or the teacher cannot run on it)."""
    from diffode.config import solver_config
    from diffode.core.sample import check_sampling_config

    from .module import teacher_indices

    model = ctx.teacher
    reg, opts = solver_config(o.student)
    treg, topts = solver_config(_teacher_name(o))
    sigmas, teacher_sigmas, val_sigmas = grids(o, model)
    try:
        check_sampling_config(treg, None, grid=teacher_sigmas, **topts)
    except ValueError as e:
        raise ValueError(f"method=amed: {e}") from None
    if teacher_indices(sigmas, teacher_sigmas) is None:
        raise ValueError(f"method.grid={_grid(o)} with these grid_options is not refinable: the {_M(o) + 1}-fold finer "
                         "grid does not contain the student's points; use edm, logsnr or time_uniform.")
    features = None if o.predictor.features == "times_only" else getattr(model.denoiser, "feature_shape", None)
    return AMEDConfig(student=reg, student_options=opts, teacher=treg, teacher_options=topts, nfe=o.nfe,
                      steps=sigmas.numel() - 1, afs=_afs(o), M=_M(o), grid=_grid(o), grid_options=dict(o.grid_options),
                      scale_dir=o.scale_dir, scale_time=o.scale_time, batch=o.batch, n_trajectories=o.n_trajectories,
                      lr=o.lr, seed=o.seed, n_val=o.n_val, val_every=o.val_every, predictor=asdict(o.predictor),
                      prior=prior(o), select=o.select, val_fid_n=o.val_fid_n, first_at_start=_base_start(o),
                      objective=o.objective, distance=o.distance, l2_weight=o.l2_weight, sigmas=sigmas,
                      teacher_sigmas=teacher_sigmas, val_sigmas=val_sigmas, feature_shape=features, options=o)


def check(o: AMEDOptions, ctx: Context) -> list[str]:
    """Every impossible option, before any compute, each with its fix (resolve checks what needs the grids)."""
    from diffode.config import solver_config
    from diffode.core.sample import steps_for_nfe
    from diffode.metrics.distance import distance_errors

    from .module import students
    from .predictor import PRIOR_GRIDS

    errors = []
    try:
        reg, opts = solver_config(o.student)
    except ValueError:
        reg, opts = None, {}
    if reg not in students():
        return [f"method.student={o.student!r} is not an AMED student; choose amed (AMED-Solver) or one of "
                f"{', '.join(s for s in students() if s != 'amed')} (AMED-Plugin: the solvers that take the stage "
                "hook with two calls per step)."]
    if o.afs not in (True, False, "auto"):
        return [f"method.afs={o.afs!r}; choose auto (AFS exactly at odd NFEs), true or false."]
    try:
        steps_for_nfe(reg, o.nfe, _afs(o), midpoints=True, **opts)
    except (ValueError, TypeError):
        parity = "odd (3, 5, 7, 9)" if _afs(o) else "even (2, 4, 6, 8)"
        errors.append(f"method.nfe={o.nfe} is unreachable for student {o.student} with afs={o.afs}: AMED takes "
                      f"2 calls per interval and AFS saves one, so the NFE must be {parity}; set method.nfe to one of "
                      f"those, flip method.afs or leave method.afs=auto.")
    for key in ("scale_dir", "scale_time"):
        v = getattr(o, key)
        if not 0 <= v < 1:
            errors.append(f"method.{key}={v} is out of range: the scale lies in [1 - {key}, 1 + {key}] and must stay "
                          f"positive; use 0 <= method.{key} < 1 (0 turns it off; the paper uses 0.01 / 0.2).")
    try:
        teacher = _teacher_name(o)
        treg, topts = solver_config(teacher)
        if treg in ("rk45",) or "generator" in topts:
            errors.append(f"method.teacher_solver={teacher} must be a deterministic fixed-step solver (e.g. heun).")
    except ValueError as e:
        errors.append(f"method.teacher_solver: {e}")
    if o.M is not None and o.M < 1:
        errors.append(f"method.M={o.M} must be an integer >= 1 (teacher steps inserted per interval) or null.")
    if o.grid != "auto" and o.grid not in REFINABLE:
        errors.append(f"method.grid={o.grid!r}: the teacher grid must contain the student's, so use a grid uniform "
                      f"in some variable: auto, {', '.join(REFINABLE)}.")
    if _wants_prior(o) and _grid(o) not in PRIOR_GRIDS:
        errors.append(f"method.r_prior puts the stage at the grid's own 2N-step point, known for "
                      f"{' and '.join(PRIOR_GRIDS)} grids only; with method.grid={o.grid} set method.r_prior=none.")
    if o.afs_grid == "base" and _afs(o) and (o.student != "ipndm" or not _wants_prior(o)):
        errors.append(f"method.afs_grid=base starts from the base solver's own grid, which only the iPNDM plugin with "
                      f"the r prior reproduces; with method.student={o.student} (r_prior={o.r_prior}) set "
                      "method.afs_grid=auto or paper.")
    errors += distance_errors(o.distance, None if ctx.teacher is None else ctx.teacher.shape, instead="l2_sum")
    if not o.l2_weight >= 0 or (o.l2_weight and o.distance in ("l2", "l2_sum")):
        errors.append(f"method.l2_weight={o.l2_weight} adds that multiple of the mean squared error to a network "
                      f"distance (digits_perceptual, lpips): use a value >= 0, and 0 with method.distance="
                      f"{o.distance}.")
    if o.select in FID_SELECTS and ctx.teacher is not None and len(ctx.teacher.shape) != 3:
        errors.append(f"method.select={o.select} scores images with FID, but this model makes "
                      f"{tuple(ctx.teacher.shape)}-shaped samples (a mixture); use method.select=best (held-out "
                      "endpoint RMSE).")
    if o.predictor.features == "bottleneck" and ctx.teacher is not None and \
            getattr(ctx.teacher.denoiser, "feature_shape", None) is None:
        errors.append("method.predictor.features=bottleneck but this model's network has no bottleneck feature map "
                      "(the GMM denoiser, the MLP); use method.predictor.features=auto or times_only.")
    for key in ("batch", "n_trajectories", "n_val", "val_every", "val_refine", "val_fid_n"):
        if getattr(o, key) < 1:
            errors.append(f"method.{key}={getattr(o, key)} must be >= 1.")
    world = _world(ctx)
    if o.batch % world:
        errors.append(f"method.batch={o.batch} must be divisible by the {world} training processes "
                      f"(trainer.devices x num_nodes); e.g. method.batch={world * max(1, o.batch // world)}.")
    if o.n_trajectories < o.batch:
        errors.append(f"method.n_trajectories={o.n_trajectories} is less than one batch ({o.batch}).")
    if not o.lr > 0:
        errors.append(f"method.lr={o.lr} must be positive.")
    return errors


def export(module, ctx: Context) -> dict:
    from diffode.artifacts import save_artifact

    from .predictor import predictor_spec

    c, m = module.cfg, ctx.teacher
    p = module.exported()
    seconds = time.perf_counter() - module.fit_started if hasattr(module, "fit_started") else None
    hist = module.history()
    vals = hist["val"]
    metrics = {"train_seconds": seconds, "trajectories": module.n_batches * c.batch,
               "updates": module.n_batches * module.n_losses, "parameters": sum(q.numel() for q in p.parameters()),
               "predictor": p.kind}
    if vals:
        metrics.update(val_loss_start=vals[0]["loss"], val_loss_end=vals[-1]["loss"],
                       val_rmse_start=vals[0]["endpoint_rmse"], val_rmse_end=vals[-1]["endpoint_rmse"],
                       select=c.select, selected_batch=int(module.best_batch) if p is module.best else module.n_batches)
        chosen = next((v for v in vals if v["batch"] == metrics["selected_batch"]), vals[-1])
        metrics["val_rmse_selected"] = chosen["endpoint_rmse"]
        if "fid" in chosen:
            metrics.update(val_fid_start=vals[0]["fid"], val_fid_selected=chosen["fid"])
    label = f"{module.student_name}/amed" + ("" if p.needs_features else "_times")
    path = save_artifact(ctx.out_dir / "artifacts" / "amed", kind="amed", solver=module.student_name, nfe=c.nfe,
                         sigmas=module.sigmas, model=m.identity, schedule=m.schedule, solver_options=c.student_options,
                         afs=c.afs, label=label, training={**module.options, "teacher": c.teacher, "M": c.M},
                         metrics=metrics, history=[hist], hook=p, condition=m.condition,
                         hook_spec=predictor_spec(p.feature_shape, c.scale_dir, c.scale_time, c.predictor["hidden"],
                                                  c.predictor["time_channels"], c.predictor["feature_channels"],
                                                  c.prior, c.first_at_start))
    if vals:
        log.info(f"AMED {label} NFE {c.nfe}: held-out loss {vals[0]['loss']:.5g} -> {vals[-1]['loss']:.5g}, "
                 f"endpoint RMSE {vals[0]['endpoint_rmse']:.4g} -> {vals[-1]['endpoint_rmse']:.4g} "
                 f"(exported: {metrics['val_rmse_selected']:.4g}, batch {metrics['selected_batch']}); artifact {path}")
    return {"artifact": str(path)}


def trainer_overrides(config: AMEDConfig) -> dict:
    """One epoch is one pass over the batches; the module validates itself (no Lightning val loop)."""
    return {"max_epochs": 1, "max_steps": -1, "max_time": None, "limit_val_batches": 0, "val_check_interval": None,
            "check_val_every_n_epoch": None, "log_every_n_steps": 1}


@register_method("amed", options=AMEDOptions, needs_teacher=True, check=check, resolve=resolve, export=export,
                 checkpoint=False, trainer=trainer_overrides,
                 description="AMED mean-direction midpoint predictor (Zhou et al., CVPR 2024)")
def build(cfg: AMEDConfig, ctx: Context):
    from .module import AMEDModule

    m = ctx.teacher
    module = AMEDModule(m.denoiser, m.shape, cfg.sigmas, cfg.teacher_sigmas, cfg, cfg.feature_shape, cfg.val_sigmas)
    module.student_name = cfg.options.student
    module.options = {k: v for k, v in asdict(cfg.options).items() if k != "name"}  # the artifact's training record
    if cfg.select in FID_SELECTS:  # the model's FID (conf/eval.yaml fid: features and reference data), no bootstrap
        from diffode.config import eval_fid_config
        from diffode.evaluation.metrics import FIDMetrics

        fcfg = eval_fid_config()
        fcfg.bootstrap = 0
        scorer = FIDMetrics(m, fcfg)
        module.fid = lambda x0: scorer(x0, None)["fid"]
    module.fit_started = time.perf_counter()
    return module
