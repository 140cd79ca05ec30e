"""AMED: `diffode train method=amed method.student=ipndm method.nfe=5 [source=...]`.

Needs a teacher model (conf/source/), no data. Trains the predictor of AMEDModule (module.py) and
exports it as the `hook` of an artifact of kind `amed` (<run dir>/artifacts/amed), sampled as
`<student>` with midpoints=<predictor>; `diffode eval sweep.learned=[...]` evaluates it as the row
<student>/amed (<student>/amed_times for the times-only predictor of models without a bottleneck).
"""
from __future__ import annotations

import time

import torch

from diffode.metrics.distance import distance_errors

from ..registry import Context, register_method
from .module import FID_SELECTS, AMEDConfig, AMEDModule, students, teacher_indices  # noqa: F401
from .predictor import PRIOR_GRIDS, AMEDPredictor, predictor_spec  # noqa: F401

KEYS = ("student", "nfe", "afs", "grid", "grid_options", "teacher_solver", "M", "scale_dir", "scale_time", "batch",
        "n_trajectories", "lr", "seed", "n_val", "val_every", "predictor",
        "r_prior", "select", "afs_grid", "val_refine", "objective", "val_fid_n", "distance", "l2_weight")
DISTANCES = ("l2", "digits_perceptual", "lpips")  # l2: the paper's squared distance (module.squared_distance)
FEATURES = ("auto", "bottleneck", "times_only")
REFINABLE = ("edm", "logsnr", "time_uniform", "time_quadratic")  # uniform in a transformed variable


def _world(ctx: Context) -> int:
    tr = ctx.trainer or {}
    devices, nodes = tr.get("devices", 1), tr.get("num_nodes", 1)
    return (devices if isinstance(devices, int) and devices > 0 else 1) * (nodes if isinstance(nodes, int) else 1)


def _teacher_name(o: dict) -> str:
    return o["teacher_solver"] or ("heun" if o["student"] == "amed" else o["student"])


def _afs(o: dict) -> bool:
    """afs: auto takes the analytic first step exactly where the NFE needs it (odd NFEs)."""
    return int(o["nfe"]) % 2 == 1 if o["afs"] == "auto" else bool(o["afs"])


def _grid(o: dict) -> str:
    """grid: auto is the student's usual grid (conf/eval.yaml sweep.usual_grid: logsnr for the DPM-Solver
    students, edm otherwise, and for the AMED-Solver)."""
    from diffode.config import usual_grid

    return usual_grid(o["student"]) if o["grid"] == "auto" else o["grid"]


def _M(o: dict) -> int:
    return int(o["M"]) if o["M"] is not None else (1 if o["student"] == "amed" else 2)


def _feature_shape(o: dict, model):
    want = o["predictor"]["features"]
    have = getattr(model.denoiser, "feature_shape", None) if model is not None else None
    return None if want == "times_only" else have


def _base_start(o: dict) -> bool:
    """afs_grid: base (auto: for iPNDM with the r prior, at odd NFEs): the intervals end at the odd nodes
    of the base solver's own (2N-1)-step grid u and step 0's stage sits at sigma_max, so the analytic first
    step has length zero, its slope leaves iPNDM's history (solvers/ipndm.py), and the r prior puts every
    later stage at u's even node: the untrained plugin is iPNDM on u, the base solver at the same NFE.
    paper: AFS on the N-step grid, its first stage predicted like the others."""
    if not _afs(o):
        return False
    if o["afs_grid"] == "auto":
        return o["student"] == "ipndm" and _wants_prior(o)
    return o["afs_grid"] == "base"


def grids(o: dict, model, refine: int = 1):
    """(student sigmas, teacher sigmas) for the model's schedule and range; the teacher's grid is the same
    family's, refined so that it contains every student sigma, and `refine` times finer still (the held-out
    target's grid: val_refine)."""
    from diffode.core.grids import make_grid
    from diffode.core.sample import steps_for_nfe

    from diffode.config import solver_config

    reg, opts = solver_config(o["student"])
    steps = steps_for_nfe(reg, int(o["nfe"]), _afs(o), midpoints=True, **opts)
    kw = dict(sigma_min=model.sigma_min, sigma_max=model.sigma_max, **(o["grid_options"] or {}))
    if not _base_start(o):
        return (make_grid(_grid(o), steps, model.schedule, **kw),
                make_grid(_grid(o), refine * (_M(o) + 1) * steps, model.schedule, **kw))
    u_steps = 2 * steps - 1  # u: the base solver's grid at NFE 2N - 1; the student's sigmas are u_0, u_1, u_3, ...
    u = make_grid(_grid(o), u_steps, model.schedule, **kw)
    k = -(-(_M(o) + 1) * steps // u_steps)  # the teacher refines u k-fold: at least (M + 1) N steps, as otherwise
    return torch.cat([u[:1], u[1::2]]), make_grid(_grid(o), refine * k * u_steps, model.schedule, **kw)


def _wants_prior(o: dict) -> bool:
    return o["r_prior"] == "grid" or (o["r_prior"] == "auto" and o["student"] != "amed")


def prior(o: dict) -> dict | None:
    """r_prior: grid puts the untrained stage at the 2N-step grid's point (predictor.py); auto: grid for
    the plugins (an untrained plugin is then its base solver), none for the AMED-Solver."""
    if not _wants_prior(o):
        return None
    if _grid(o) == "logsnr":
        return {"grid": "logsnr"}
    return {"grid": "edm", "rho": float((o["grid_options"] or {}).get("rho", 7.0))}


def resolve(o: dict, model) -> AMEDConfig:
    from diffode.config import solver_config

    reg, opts = solver_config(o["student"])
    treg, topts = solver_config(_teacher_name(o))
    sigmas, _ = grids(o, model)
    return AMEDConfig(student=reg, student_options=opts, teacher=treg, teacher_options=topts, nfe=int(o["nfe"]),
                      steps=sigmas.numel() - 1, afs=_afs(o), M=_M(o), grid=_grid(o),
                      grid_options=dict(o["grid_options"] or {}), scale_dir=float(o["scale_dir"]),
                      scale_time=float(o["scale_time"]), batch=int(o["batch"]), n_trajectories=int(o["n_trajectories"]),
                      lr=float(o["lr"]), seed=int(o["seed"]), n_val=int(o["n_val"]), val_every=int(o["val_every"]),
                      predictor=dict(o["predictor"]), prior=prior(o), select=o["select"],
                      first_at_start=_base_start(o), objective=o["objective"], val_fid_n=int(o["val_fid_n"]),
                      distance=o["distance"], l2_weight=float(o["l2_weight"]))


def check(options: dict, ctx: Context) -> list[str]:
    """Every impossible option, before any compute, each with its fix."""
    from diffode.config import solver_config
    from diffode.core.sample import check_sampling_config, steps_for_nfe

    o = options
    missing = [k for k in KEYS if k not in o]
    unknown = sorted(set(o) - set(KEYS))
    if missing or unknown:
        return [f"method=amed options do not match conf/method/amed.yaml (missing {missing}, unknown {unknown}); "
                "remove unknown method.* keys."]
    errors = []
    try:
        reg, opts = solver_config(o["student"])
    except ValueError:
        reg, opts = None, {}
    if reg not in students():
        return [f"method.student={o['student']!r} is not an AMED student; choose amed (AMED-Solver) or one of "
                f"{', '.join(s for s in students() if s != 'amed')} (AMED-Plugin: the solvers that take the stage "
                "hook with two calls per step)."]
    if o["afs"] not in (True, False, "auto"):
        return [f"method.afs={o['afs']!r}; choose auto (AFS exactly at odd NFEs), true or false."]
    try:
        steps_for_nfe(reg, int(o["nfe"]), _afs(o), midpoints=True, **opts)
    except (ValueError, TypeError):
        parity = "odd (3, 5, 7, 9)" if _afs(o) else "even (2, 4, 6, 8)"
        errors.append(f"method.nfe={o['nfe']} is unreachable for student {o['student']} with afs={o['afs']}: AMED takes "
                      f"2 calls per interval and AFS saves one, so the NFE must be {parity}; set method.nfe to one of "
                      f"those, flip method.afs or leave method.afs=auto.")
    for key in ("scale_dir", "scale_time"):
        v = float(o[key])
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
    if o["M"] is not None and (int(o["M"]) != o["M"] or int(o["M"]) < 1):
        errors.append(f"method.M={o['M']} must be an integer >= 1 (teacher steps inserted per interval) or null.")
    if o["grid"] != "auto" and o["grid"] not in REFINABLE:
        errors.append(f"method.grid={o['grid']!r}: the teacher grid must contain the student's, so use a grid uniform "
                      f"in some variable: auto, {', '.join(REFINABLE)}.")
    if o["r_prior"] not in ("auto", "grid", "none"):
        errors.append(f"method.r_prior={o['r_prior']!r}; choose auto, grid or none.")
    elif _wants_prior(o) and _grid(o) not in PRIOR_GRIDS:
        errors.append(f"method.r_prior puts the stage at the grid's own 2N-step point, known for "
                      f"{' and '.join(PRIOR_GRIDS)} grids only; with method.grid={o['grid']} set method.r_prior=none.")
    if o["afs_grid"] not in ("auto", "paper", "base"):
        errors.append(f"method.afs_grid={o['afs_grid']!r}; choose auto, paper or base.")
    elif o["afs_grid"] == "base" and _afs(o) and (o["student"] != "ipndm" or not _wants_prior(o)):
        errors.append(f"method.afs_grid=base starts from the base solver's own grid, which only the iPNDM plugin with "
                      f"the r prior reproduces; with method.student={o['student']} (r_prior={o['r_prior']}) set "
                      "method.afs_grid=auto or paper.")
    if o["objective"] not in ("interval", "endpoint"):
        errors.append(f"method.objective={o['objective']!r}; choose interval (the paper's) or endpoint.")
    errors += distance_errors(o["distance"], None if ctx.teacher is None else ctx.teacher.shape, DISTANCES)
    if not float(o["l2_weight"]) >= 0 or (float(o["l2_weight"]) and o["distance"] == "l2"):
        errors.append(f"method.l2_weight={o['l2_weight']} adds that multiple of the mean squared error to a network "
                      "distance (digits_perceptual, lpips): use a value >= 0, and 0 with method.distance=l2.")
    if o["select"] not in ("best", *FID_SELECTS, "last"):
        errors.append(f"method.select={o['select']!r}; choose best (lowest held-out endpoint RMSE), fid (lowest "
                      "held-out FID), fid_rmse (lowest held-out FID with no larger RMSE than the start's) or last.")
    elif o["select"] in FID_SELECTS and ctx.teacher is not None and len(ctx.teacher.shape) != 3:
        errors.append(f"method.select={o['select']} scores images with FID, but this model makes {tuple(ctx.teacher.shape)}-shaped "
                      "samples (a mixture); use method.select=best (held-out endpoint RMSE).")
    if o["predictor"].get("features") not in FEATURES:
        errors.append(f"method.predictor.features={o['predictor'].get('features')!r}; choose one of {', '.join(FEATURES)}.")
    elif o["predictor"]["features"] == "bottleneck" and ctx.teacher is not None and \
            getattr(ctx.teacher.denoiser, "feature_shape", None) is None:
        errors.append("method.predictor.features=bottleneck but this model's network has no bottleneck feature map "
                      "(the GMM denoiser, the MLP); use method.predictor.features=auto or times_only.")
    for key in ("batch", "n_trajectories", "n_val", "val_every", "val_refine", "val_fid_n"):
        if int(o[key]) < 1:
            errors.append(f"method.{key}={o[key]} must be >= 1.")
    world = _world(ctx)
    if int(o["batch"]) % world:
        errors.append(f"method.batch={o['batch']} must be divisible by the {world} training processes "
                      f"(trainer.devices x num_nodes); e.g. method.batch={world * max(1, int(o['batch']) // world)}.")
    if int(o["n_trajectories"]) < int(o["batch"]):
        errors.append(f"method.n_trajectories={o['n_trajectories']} is less than one batch ({o['batch']}).")
    if not float(o["lr"]) > 0:
        errors.append(f"method.lr={o['lr']} must be positive.")
    if errors or ctx.teacher is None:
        return errors
    try:
        sigmas, teacher_sigmas = grids(o, ctx.teacher)
        cfg = resolve(o, ctx.teacher)
        check_sampling_config(cfg.teacher, None, grid=teacher_sigmas, **cfg.teacher_options)
        if teacher_indices(sigmas, teacher_sigmas) is None:
            errors.append(f"method.grid={_grid(o)} with these grid_options is not refinable: the {cfg.M + 1}-fold finer "
                          "grid does not contain the student's points; use edm, logsnr or time_uniform.")
    except ValueError as e:
        errors.append(f"method=amed: {e}")
    return errors


def export(module: AMEDModule, ctx: Context) -> dict:
    from diffode.artifacts import save_artifact

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
        print(f"AMED {label} NFE {c.nfe}: held-out loss {vals[0]['loss']:.5g} -> {vals[-1]['loss']:.5g}, endpoint RMSE "
              f"{vals[0]['endpoint_rmse']:.4g} -> {vals[-1]['endpoint_rmse']:.4g} (exported: {metrics['val_rmse_selected']:.4g}, "
              f"batch {metrics['selected_batch']}); artifact {path}")
    return {"artifact": str(path)}


def trainer_overrides(options: dict) -> dict:
    """One epoch is one pass over the batches; the module validates itself (no Lightning val loop)."""
    return {"max_epochs": 1, "max_steps": -1, "max_time": None, "limit_val_batches": 0, "val_check_interval": None,
            "check_val_every_n_epoch": None, "log_every_n_steps": 1}


@register_method("amed", needs_teacher=True, check=check, export=export, checkpoint=False, trainer=trainer_overrides,
                 description="AMED mean-direction midpoint predictor (Zhou et al., CVPR 2024)")
def build(options: dict, ctx: Context) -> AMEDModule:
    m = ctx.teacher
    cfg = resolve(options, m)
    sigmas, teacher_sigmas = grids(options, m)
    _, val_sigmas = grids(options, m, int(options["val_refine"]))
    module = AMEDModule(m.conditional, m.shape, sigmas, teacher_sigmas, cfg, _feature_shape(options, m), val_sigmas,
                        num_classes=m.num_classes)
    module.student_name, module.options = options["student"], dict(options)
    if cfg.select in FID_SELECTS:  # the model's FID (conf/eval.yaml fid: features and reference data), no bootstrap
        from diffode.config import eval_fid_config
        from diffode.evaluation.metrics import FIDMetrics

        fcfg = eval_fid_config()
        fcfg.bootstrap = 0
        scorer = FIDMetrics(m, fcfg)
        module.fid = lambda x0: scorer(x0, None)["fid"]
    module.fit_started = time.perf_counter()
    return module
