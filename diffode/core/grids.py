"""Time-step grids: decreasing float64 tensors of VE sigmas, length steps + 1, from sigma_max to sigma_min.

The range is the schedule's [sigma_min, sigma_max] (VE sigmas at t_min, t_max), narrowed by explicit
sigma_min / sigma_max; without a schedule it is EDM's [0.002, 80] and t = sigma (EDM's own schedule).

    time_uniform    uniform in the schedule's t                        (DPM-Solver 'time_uniform');
                    without a schedule (EDM, t = sigma) that is uniform in SIGMA, which is not
                    diff-sampler's / AMED's 'time_uniform': that one is time_uniform_vp
    time_uniform_vp uniform in the time of the linear VP-SDE fitted to [sigma_min, sigma_max]
                    (diff-sampler's 'time_uniform', whatever the schedule; rho, t_min options)
    time_quadratic  uniform in sqrt(t)                                 (DPM-Solver 'time_quadratic')
    logsnr          uniform in lambda = -log sigma                      (DPM-Solver 'logSNR')
    edm             sigma^(1/rho) uniform, rho = 7 (rho = 1: uniform in sigma)   (Karras et al.)
    explicit        sigmas=[...] given by the user, validated
    from_file       path=...: a learned grid (LD3) saved by `save_grid_file`, validated against the
                    solver, NFE and schedule it is used with

Shifts (every grid kind but explicit / from_file; grid_options shift=s or mu=m): SD3's static shift
t' = s t / (1 + (s - 1) t) and Flux's dynamic shift t' = e^m / (e^m + 1/t - 1) are, in VE coordinates,
sigma' = s sigma (s = e^m): lambda moves by -log s. A shifted grid is the grid built on [sigma_min / s,
sigma_max / s] with every point multiplied by s, so it keeps the range and moves its points toward noise
(s > 1). Grids uniform in lambda or in sigma^(1/rho) (logsnr, edm) are scale-invariant, so a shift leaves them
as they are; it redistributes grids uniform in a schedule's t (time_uniform under the flow schedule is
diffusers' FlowMatchEuler grid). diffusers shifts the ends too: give its shifted ends as sigma_min /
sigma_max to reproduce its grids (tests/test_flow.py, to 1e-12).

Endpoints are set exactly to sigma_max / sigma_min so no grid leaves the range by round-off.
Explicit grids given as tensors keep their autograd graph (LD3 learns them).
"""
from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import torch
from torch import Tensor

from .schedules import DTYPE, Schedule

EDM_SIGMA_MIN, EDM_SIGMA_MAX = 0.002, 80.0
_RTOL = 1e-9  # relative slack when checking a grid against the schedule's range


def sigma_range(schedule: Schedule | None = None, sigma_min=None, sigma_max=None) -> tuple[float, float]:
    """The (sigma_min, sigma_max) a grid spans, checked against the schedule's own range."""
    lo_s, hi_s = (schedule.sigma_min, schedule.sigma_max) if schedule is not None else (EDM_SIGMA_MIN, EDM_SIGMA_MAX)
    lo = lo_s if sigma_min is None else float(sigma_min)
    hi = hi_s if sigma_max is None else float(sigma_max)
    if not (0 < lo < hi and math.isfinite(hi)):
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={lo:g}, sigma_max={hi:g}; "
                         "fix the sigma_min / sigma_max you pass.")
    if schedule is not None and (lo < lo_s * (1 - _RTOL) or hi > hi_s * (1 + _RTOL)):
        raise ValueError(f"sigma range [{lo:g}, {hi:g}] leaves the schedule's range [{lo_s:.6g}, {hi_s:.6g}] "
                         f"({schedule!r}); choose sigma_min/sigma_max inside it or widen the schedule's t_min/t_max.")
    return lo, hi


def _with_endpoints(sigmas: Tensor, lo: float, hi: float) -> Tensor:
    return torch.cat([sigmas.new_tensor([hi]), sigmas[1:-1], sigmas.new_tensor([lo])])


def _t_maps(schedule):
    """(t_of_sigma, sigma_of_t); without a schedule t = sigma (EDM)."""
    if schedule is None:
        return (lambda s: torch.as_tensor(s, dtype=DTYPE)), (lambda t: t)
    return schedule.t_from_ve_sigma, schedule.ve_sigma


def time_uniform(steps, lo, hi, schedule=None):
    """Uniform in the schedule's t; without a schedule t = sigma (EDM), so uniform in sigma."""
    t_of, sigma_of = _t_maps(schedule)
    t = torch.linspace(float(t_of(hi)), float(t_of(lo)), steps + 1, dtype=DTYPE)
    return _with_endpoints(sigma_of(t), lo, hi)


def time_uniform_vp(steps, lo, hi, schedule=None, rho: float = 1.0, t_min: float = 1e-3):
    """diff-sampler's `time_uniform` (zju-pi/diff-sampler, solver_utils.get_schedule): the linear VP-SDE
    whose VE sigma, sigma(t)^2 = exp(beta_d t^2 / 2 + beta_min t) - 1, is hi at t = 1 and lo at t = t_min,
    sampled at t = (1 + u (t_min^(1/rho) - 1))^rho, u uniform in [0, 1] (rho = 1: uniform in t, as the
    AMED recipes use it; diff-sampler's schedule_rho). The schedule only sets the range."""
    if not rho > 0 or not 0 < t_min < 1:
        raise ValueError(f"time_uniform_vp needs rho > 0 and 0 < t_min < 1, got rho={rho!r}, t_min={t_min!r}.")
    L_lo, L_hi = math.log1p(lo * lo), math.log1p(hi * hi)  # log(1 + sigma^2) = beta_d t^2 / 2 + beta_min t
    beta_d = 2.0 * (L_lo / t_min - L_hi) / (t_min - 1.0)
    beta_min = L_hi - 0.5 * beta_d
    u = torch.linspace(0, 1, steps + 1, dtype=DTYPE)
    t = (1 + u * (t_min ** (1 / rho) - 1)) ** rho
    return _with_endpoints(torch.sqrt(torch.expm1(0.5 * beta_d * t * t + beta_min * t)), lo, hi)


def time_quadratic(steps, lo, hi, schedule=None):
    t_of, sigma_of = _t_maps(schedule)
    u = torch.linspace(math.sqrt(float(t_of(hi))), math.sqrt(float(t_of(lo))), steps + 1, dtype=DTYPE)
    return _with_endpoints(sigma_of(u * u), lo, hi)


def logsnr(steps, lo, hi, schedule=None):
    return _with_endpoints(torch.exp(torch.linspace(math.log(hi), math.log(lo), steps + 1, dtype=DTYPE)), lo, hi)


def edm(steps, lo, hi, schedule=None, rho: float = 7.0):
    if not rho > 0:
        raise ValueError(f"edm grid needs rho > 0, got {rho!r}")
    ramp = torch.linspace(0, 1, steps + 1, dtype=DTYPE)
    sig = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    return _with_endpoints(sig, lo, hi)


def validate_sigmas(sigmas, steps=None, schedule=None, what="explicit grid", increasing: bool = False) -> Tensor:
    """A 1-D float64 tensor, strictly decreasing (strictly increasing for an encoding grid, `increasing=True`),
    positive, inside the schedule's range, steps + 1 long.

    Tensors keep their graph (only a detached copy is inspected)."""
    if isinstance(sigmas, Tensor):
        s = sigmas.to(DTYPE)
    else:  # lists, tuples, OmegaConf ListConfig from a Hydra config
        s = torch.as_tensor([float(v) for v in sigmas], dtype=DTYPE)
    v = s.detach()
    if v.ndim != 1 or v.numel() < 2:
        raise ValueError(f"{what}: need a 1-D list of at least 2 sigmas, got shape {tuple(v.shape)}.")
    if steps is not None and v.numel() != steps + 1:
        raise ValueError(f"{what}: has {v.numel()} sigmas ({v.numel() - 1} steps) but {steps} steps were asked "
                         f"for (steps + 1 = {steps + 1} points); pass a grid of the right length or change the NFE.")
    if not bool(torch.isfinite(v).all()) or not bool((v > 0).all()):
        raise ValueError(f"{what}: sigmas must be finite and > 0 (grids end at sigma_min > 0; use "
                         "denoise_to_zero=True for a final step to 0), got {v.tolist()}.")
    bad = ((v[1:] <= v[:-1]) if increasing else (v[1:] >= v[:-1])).nonzero()
    if bad.numel():
        j = int(bad[0, 0])
        if increasing:
            raise ValueError(f"{what}: an encoding grid must be strictly increasing, but sigma[{j}]={v[j]:.6g} >= "
                             f"sigma[{j + 1}]={v[j + 1]:.6g}; sort it from sigma_min up to sigma_max.")
        raise ValueError(f"{what}: sigmas must be strictly decreasing, but sigma[{j}]={v[j]:.6g} <= "
                         f"sigma[{j + 1}]={v[j + 1]:.6g}; sort them from sigma_max down to sigma_min.")
    if schedule is not None:
        lo_s, hi_s = schedule.sigma_min, schedule.sigma_max
        lo, hi = v.min(), v.max()
        if hi > hi_s * (1 + _RTOL) or lo < lo_s * (1 - _RTOL):
            raise ValueError(f"{what}: sigmas span [{lo:.6g}, {hi:.6g}], outside the schedule's range "
                             f"[{lo_s:.6g}, {hi_s:.6g}] ({schedule!r}); clip the grid to that range.")
    return s


def explicit(steps, lo, hi, schedule=None, sigmas=None):
    if sigmas is None:
        raise ValueError("grid 'explicit' needs sigmas=[...] (grid_options={'sigmas': [...]}).")
    return validate_sigmas(sigmas, steps, schedule)


# -- learned grids on disk (written by LD3) ---------------------------------------------------

def _schedule_name(schedule) -> str:
    if schedule is None:
        return "edm"
    if isinstance(schedule, dict):
        return str(schedule.get("name"))
    return schedule if isinstance(schedule, str) else schedule.name


_ANY = object()


def load_grid_file(path, steps=None, schedule=_ANY, solver=None, nfe=None) -> tuple[Tensor, Tensor | None]:
    """(sigmas, net_sigmas or None) from a learned grid (an artifact directory or its manifest.json,
    written by diffode.artifacts.save_artifact), refusing a mismatch of solver, NFE or schedule.

    solver / nfe / steps left None are not checked; schedule=None means EDM's (t = sigma), and leaving
    it out skips that check."""
    p = Path(path)
    if p.is_dir():  # an artifact directory (diffode.artifacts)
        p = p / "manifest.json"
    if not p.is_file():
        raise ValueError(f"grid file {str(p)!r} does not exist; pass grid_options={{'path': ...}} pointing "
                         "to an artifact directory (e.g. <run dir>/artifacts/ld3 of `diffode train method=ld3`).")
    try:
        rec = json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"grid file {str(p)!r} is not valid JSON ({e}); re-export it (`diffode train method=ld3`)."
                         ) from None
    missing = [k for k in ("sigmas", "solver", "nfe", "schedule") if k not in rec]
    if missing:
        raise ValueError(f"grid file {str(p)!r} lacks the keys {missing}; it needs sigmas, solver, nfe, schedule.")
    for field, want, have in (("solver", solver, rec["solver"]), ("nfe", nfe, rec["nfe"]),
                              ("schedule", None if schedule is _ANY else _schedule_name(schedule),
                               _schedule_name(rec["schedule"]))):
        if want is not None and want != have:
            raise ValueError(f"grid file {str(p)!r} was learned for {field}={have!r} but is used with "
                             f"{field}={want!r}; use a grid learned for this setting or set {field}={have!r}.")
    sig = validate_sigmas(rec["sigmas"], steps, None if schedule is _ANY or isinstance(schedule, (str, dict)) else schedule,
                          what=f"grid file {str(p)!r}")
    net = rec.get("net_sigmas")
    if net is not None:
        net = torch.as_tensor(net, dtype=DTYPE)
        if net.shape != sig.shape or not bool((net > 0).all()):
            raise ValueError(f"grid file {str(p)!r}: net_sigmas must be {sig.numel()} positive values like sigmas.")
    return sig, net


def from_file(steps, lo, hi, schedule=None, path=None, solver=None, nfe=None):
    if path is None:
        raise ValueError("grid 'from_file' needs path=... (grid_options={'path': 'ld3_grid.json'}).")
    return load_grid_file(path, steps, schedule, solver, nfe)[0]


GRIDS = dict(time_uniform=time_uniform, time_uniform_vp=time_uniform_vp, time_quadratic=time_quadratic, logsnr=logsnr,
             edm=edm, explicit=explicit, from_file=from_file)


def grid_options(name: str) -> dict:
    """The options a grid accepts, with their defaults (None: required or optional without default)."""
    params = list(inspect.signature(GRIDS[name]).parameters.values())[4:]
    return {p.name: (None if p.default is inspect.Parameter.empty else p.default) for p in params}


def shift_factor(shift=None, mu=None) -> float:
    """The VE factor of a shifted grid: SD3's static shift s, or Flux's dynamic shift mu (s = e^mu)."""
    if mu is not None:
        if shift not in (None, 1, 1.0):
            raise ValueError(f"grid options shift={shift} and mu={mu} both set the shift; give one (mu = log shift).")
        if not math.isfinite(float(mu)):
            raise ValueError(f"grid option mu={mu} must be finite (Flux: 0.5 at 256 image tokens .. 1.15 at 4096).")
        return math.exp(float(mu))
    s = 1.0 if shift is None else float(shift)
    if not (s > 0 and math.isfinite(s)):
        raise ValueError(f"grid option shift={shift} must be a finite number > 0 (SD3 uses 3.0; 1 is no shift; "
                         "a shift s moves every VE sigma to s sigma).")
    return s


def make_grid(name: str, steps: int, schedule: Schedule | None = None, *, sigma_min=None, sigma_max=None,
              shift=None, mu=None, **options) -> Tensor:
    """A decreasing float64 grid of steps + 1 VE sigmas (see the module docstring for the names and shifts)."""
    if name not in GRIDS:
        raise ValueError(f"unknown grid {name!r}; choose one of {', '.join(GRIDS)} (conf/grid/<name>.yaml).")
    s = shift_factor(shift, mu)
    if name in ("explicit", "from_file") and s != 1.0:
        raise ValueError(f"grid {name!r} is given point by point and takes no shift / mu; shift its sigmas yourself "
                         "(multiply each by the shift) or use a grid kind such as time_uniform.")
    unknown = set(options) - set(grid_options(name)) if options else set()  # inspect only when needed (~0.3 ms)
    if unknown:
        raise ValueError(f"grid {name!r} does not take option(s) {sorted(unknown)}; it accepts "
                         f"{grid_options(name) or 'no options'}" + (", and shift / mu" if name not in ("explicit", "from_file")
                                                                      else "") + ".")
    if name not in ("explicit", "from_file") and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"grid {name!r} needs an integer steps >= 1, got {steps!r}.")
    lo, hi = sigma_range(schedule, sigma_min, sigma_max)
    if s == 1.0:
        return GRIDS[name](steps, lo, hi, schedule, **options)
    return _with_endpoints(s * GRIDS[name](steps, lo / s, hi / s, schedule, **options), lo, hi)
