"""Consistency distillation: `diffode train method=consistency_distillation [source=...] [dataset=...]`.

Needs data and a teacher model (conf/source/): the student is the teacher's network in the
boundary-exact consistency parameterisation, initialised from the teacher's EMA weights (a teacher
without a network, the exact GMM, gets a fresh `method.student_net` instead: then it is distillation
from an exact ODE, not from a copy). Exports one artifact per step count k in `sample_steps`
(<run dir>/artifacts/cd_<k>/, row `cd/<k>` at NFE k): the evaluation-EMA consistency function as the
`student` piece, sampled by the zoo solver `consistency` on the k-step sigmas.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict
from pathlib import Path

from ..registry import Context, lazy_exports, register_method
from .options import CDConfig

__getattr__ = lazy_exports(__name__, {"ConsistencyDistillationModule": ".module", "sampling_sigmas": ".module",
                                      "OPTIMIZERS": ".module"})

CF_TARGET = "diffode.core.consistency.ConsistencyFunction"

log = logging.getLogger(__name__)


def single_step_ode_solvers() -> list[str]:
    """Deterministic fixed-step solvers whose step reads only x at sigma_n (SolverSpec.multistep false)."""
    from diffode.core.solvers import SOLVERS, get_solver

    get_solver("heun")  # registers every solver
    return sorted(n for n, s in SOLVERS.items() if not (s.multistep or s.stochastic or s.adaptive))


def _has_network(model) -> bool:
    from diffode.core.denoisers import ModelDenoiser

    return isinstance(model.denoiser, ModelDenoiser) and bool((model.info or {}).get("hparams"))


def _fresh_net_spec(cfg: CDConfig, ctx: Context) -> dict:
    net = dict(cfg.student_net or ctx.net or {})
    if "dim" in net and net["dim"] is None:
        net["dim"] = int(ctx.teacher.shape[0])  # the MLP's input follows vector data
    return net


def check(cfg: CDConfig, ctx: Context) -> list[str]:
    from diffode.config import solver_config
    from diffode.metrics.distance import distance_errors

    from .module import sampling_sigmas

    errors = []
    if not cfg.N >= 2:
        errors.append(f"method.N={cfg.N!r} must be an integer >= 2 (points of the Karras training grid; the paper "
                      "uses 18 on CIFAR-10, 40 on ImageNet-64).")
    if not cfg.rho > 0:
        errors.append(f"method.rho={cfg.rho} must be positive (7 is Karras').")
    if not 0 <= cfg.mu < 1:
        errors.append(f"method.mu={cfg.mu} must be in [0, 1) (target EMA decay; 0 = the online network under "
                      "stop-gradient).")
    if not 0 <= cfg.ema_decay < 1:
        errors.append(f"method.ema_decay={cfg.ema_decay} must be in [0, 1) (the evaluation EMA).")
    try:
        reg, _ = solver_config(str(cfg.teacher_solver))
        if reg not in single_step_ode_solvers():
            errors.append(f"method.teacher_solver={cfg.teacher_solver} is not a single-step ODE solver; one teacher "
                          f"step must use only x at sigma_n: choose one of {', '.join(single_step_ode_solvers())}.")
    except ValueError as e:
        errors.append(f"method.teacher_solver: {e}")
    errors += distance_errors(cfg.distance, None if ctx.teacher is None else ctx.teacher.shape, cfg.lpips_net,
                              cfg.lpips_random_backbone, instead="pseudo_huber (iCT) or l2")
    if cfg.huber_c is not None and not cfg.huber_c > 0:
        errors.append(f"method.huber_c={cfg.huber_c} must be positive, or null for 0.00054 sqrt(dim).")
    if not cfg.lr > 0:
        errors.append(f"method.lr={cfg.lr} must be positive, e.g. method.lr=1e-4.")
    if len(cfg.betas) != 2 or not all(0 <= b < 1 for b in cfg.betas):
        errors.append(f"method.betas={cfg.betas} must be two numbers in [0, 1).")
    for key in ("warmup_steps", "snapshot_every"):
        if int(getattr(cfg, key)) < 0:
            errors.append(f"method.{key}={getattr(cfg, key)} must be >= 0.")
    if int(cfg.n_val) < 1:
        errors.append(f"method.n_val={cfg.n_val} must be >= 1 (noises of the validation distillation error).")
    if cfg.clip is not None and not cfg.clip > 0:
        errors.append(f"method.clip={cfg.clip} must be positive (1.0 for images in [-1, 1]) or null.")
    from diffode.core.sample import steps_for_nfe

    try:
        steps_for_nfe("heun", int(cfg.reference_nfe))
    except ValueError as e:
        errors.append(f"method.reference_nfe={cfg.reference_nfe} (the teacher's Heun reference solve): {e}")
    ks = list(cfg.sample_steps or [])
    if not ks or not all(k >= 1 for k in ks):
        errors.append(f"method.sample_steps={cfg.sample_steps} must be a non-empty list of step counts >= 1, "
                      "e.g. [1, 2, 4].")
    elif ctx.teacher is not None:
        lo, hi = ctx.teacher.sigma_min, ctx.teacher.sigma_max
        for k in ks:
            s = sampling_sigmas(cfg, k, lo, hi)
            if s.numel() != k + 1 or not bool((s[1:] < s[:-1]).all()) or abs(float(s[0]) - hi) > 1e-9 * hi \
                    or abs(float(s[-1]) - lo) > 1e-9 * lo:
                errors.append(f"method.sample_sigmas[{k}]={s.tolist()} must be {k + 1} decreasing sigmas from "
                              f"sigma_max={hi:g} to sigma_min={lo:g} (the model's range).")
    unknown = set(map(str, (cfg.sample_sigmas or {}))) - set(map(str, ks))
    if unknown:
        errors.append(f"method.sample_sigmas has grids for {sorted(unknown)} steps, which are not in "
                      f"method.sample_steps={ks}; add them there or remove the grids.")
    if ctx.teacher is not None and not _has_network(ctx.teacher):
        net = _fresh_net_spec(cfg, ctx)
        if not net.get("_target_"):
            errors.append("the teacher has no network to copy (an exact GMM source): set method.student_net to a "
                          "network spec (e.g. the MLP of conf/net/mlp.yaml) or pass net=mlp.")
        elif str(net["_target_"]).endswith("MLP") and len(ctx.teacher.shape) != 1:
            errors.append(f"method.student_net is an MLP but the model makes shape {tuple(ctx.teacher.shape)}; use a UNet.")
    return errors


def build_student(cfg: CDConfig, ctx: Context):
    """(the ConsistencyFunction spec, its initial weights or None): the teacher's EMA network when it has one."""
    import torch

    from diffode.core.consistency import ConsistencyFunction
    from diffode.spec import build

    from ..student import choose_output, make_student, student_spec, teacher_hparams

    m = ctx.teacher
    sigma_data = float(getattr(m.schedule, "sigma_data", 0.5))
    if _has_network(m):
        hp = teacher_hparams(m)
        den = make_student(m.denoiser, choose_output(hp["prediction"], "auto"))
        spec = student_spec(hp, den)
        sigma_data = float(den.sigma_data)
        state = ConsistencyFunction(den, m.sigma_min, sigma_data).state_dict()
    else:
        spec = {"_target_": "diffode.core.denoisers.ModelDenoiser", "net": _fresh_net_spec(cfg, ctx),
                "schedule": {"_target_": "diffode.core.schedules.EDM", "sigma_min": float(m.sigma_min),
                             "sigma_max": float(m.sigma_max), "sigma_data": sigma_data},
                "prediction": "edm", "sigma_data": sigma_data}
        torch.manual_seed(ctx.seed)
        build(spec)  # fails here, before training, if the spec does not build
        state = None
    return {"_target_": CF_TARGET, "denoiser": spec, "sigma_min": float(m.sigma_min), "sigma_data": sigma_data}, state


def load_last(module, ctx: Context) -> None:
    """After ddp_spawn the main process's module is untrained: take the weights from last.ckpt."""
    import torch

    last = Path(ctx.out_dir) / "checkpoints" / "last.ckpt"
    if last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)


def export(module, ctx: Context) -> dict:
    from diffode.artifacts import save_artifact

    from .module import sampling_sigmas

    load_last(module, ctx)
    module.cpu()
    m, cfg = ctx.teacher, module.cfg
    ema = module.ema
    spec = copy.deepcopy(module.student_spec)
    seconds = time.perf_counter() - module.fit_started if hasattr(module, "fit_started") else None
    out = {}
    for k in cfg.sample_steps:
        sig = sampling_sigmas(cfg, k, m.sigma_min, m.sigma_max)
        # k >= 2 adds fresh noise between steps: the sample leaves x_T's trajectory, so only the 1-step sample
        # has a distance to the teacher's solve; the evaluation scores every k by FID.
        err = module.distillation_error(ema, 1) if k == 1 else None
        path = save_artifact(Path(ctx.out_dir) / "artifacts" / f"cd_{k}", kind="cd", label=f"cd/{k}",
                             solver="consistency", solver_options={"clip": cfg.clip}, nfe=k, sigmas=sig,
                             model=m.identity, schedule=m.schedule,
                             training={**asdict(cfg), "seed": ctx.seed, "train_seconds": seconds,
                                       "global_step": int(module.global_step)},
                             metrics={"distill_l2": err, "reference": f"heun/edm nfe {cfg.reference_nfe}",
                                      "n_val": cfg.n_val},
                             student=ema, student_spec=spec, condition=m.condition)
        log.info(f"CD {k} step(s): artifact {path}" + (f"; 1-step l2 to the teacher's solve {err:.5g}" if err else ""))
        out[f"cd_{k}"] = str(path)
    return out


@register_method("consistency_distillation", options=CDConfig, needs_data=True, needs_teacher=True, check=check, export=export,
                 description="consistency distillation (Song et al., ICML 2023): 1- and few-step students")
def build(cfg: CDConfig, ctx: Context):
    from diffode.config import solver_config

    from .module import ConsistencyDistillationModule

    spec, state = build_student(cfg, ctx)
    reg, solver_opts = solver_config(str(cfg.teacher_solver))
    m = ctx.teacher
    module = ConsistencyDistillationModule(m.denoiser, spec, state, m.shape, m.sigma_min, m.sigma_max,
                                           cfg, seed=ctx.seed, teacher_solver=reg, teacher_options=solver_opts,
                                           out_dir=str(ctx.out_dir))
    module.fit_started = time.perf_counter()
    return module
