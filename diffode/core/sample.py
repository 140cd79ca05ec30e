"""sample(denoiser, x_T, solver=..., nfe=..., grid=...): the one entry point users call.

What it adds around a registered solver (diffode/core/solvers/registry.py):

- NFE budget -> steps. `nfe` is the exact number of denoiser calls. The step count is found by
  searching steps with spec.n_calls(steps, **options) - afs + denoise_to_zero == nfe; an NFE no step
  count reaches raises ValueError listing the reachable values near it (`reachable_nfes`).
  Adaptive solvers (rk45) choose their own NFE: `nfe` is ignored, the grid defaults to one step
  [sigma_max, sigma_min] (an explicit grid gives output points), and return_info reports the calls made.
- AFS (analytic first step, `afs=True`): the first denoiser call, always at sigmas[0], is answered in
  closed form with D = x - sigma x / sqrt(1 + sigma^2) (d = x / sqrt(1 + sigma^2)) and costs no NFE.
  It is a wrapper around the denoiser, so every solver gets it without knowing.
- denoise_to_zero: one extra call D(x, sigma_min) whose output is the sample (counted in the NFE).
- net_sigmas: decoupled network conditioning (LD3), handed to the solver; a from_file grid supplies
  its own unless given.
- Checks: the state is tested for NaN/Inf after every step (FloatingPointError naming the first bad step
  and its sigma), and the calls made are checked against the solver's n_calls accounting. The per-step
  test is one reduction, x.sum() (float32 accumulation for half-precision states), kept as a 0-d
  tensor and read once after the solve: no full-size scan, no host sync per step (on a GPU the solver
  runs ahead). The sum is non-finite when an entry is; it could also overflow, but only for entries
  near 3e38 / numel in float32 (1e308 / numel in float64), far beyond any sampling state.
- return_trajectory: the list of x after each step (through the callback; plus the final denoised
  sample when denoise_to_zero). return_info: a dict with nfe (calls actually made), forwards (network
  passes: a denoiser whose call costs more than one, e.g. a guided one, says so through its
  `forwards(sigma)`, core/conditioning.py; AFS costs none), steps, sigmas, net_sigmas, start, stop.
  The return value is x, or a tuple (x, [trajectory], [info]) in that order.
- Partial solves: the plan (grid, steps, options) is always the full solve's. `stop=k` returns the state
  after step k (1 <= k <= steps), exactly what the full solve holds there, for every solver (its later
  steps are not taken; denoise_to_zero only follows the last step). `start=j` takes x_T as the state at
  sigmas[j] and runs steps j.. on the grid's tail; step indices (callback, stage hook) stay those of the
  full grid. A single-step solver's tail is the full solve's; a multistep solver (SolverSpec.multistep)
  starts its history afresh there. AFS only at start 0.

Per-step hook for AMED (and any learned intermediate point), diffode/core/stage.py: the solvers amed,
heun, dpm_solver_2, euler/ddim, ipndm and dpmpp_2m take an option `midpoints` (dpm_solver_3 too, whose hook
returns a pair of stages), a callable
(i, sigma_cur, sigma_next, x) -> Stage(sigma, c, a) or a bare sigma tensor, the stage point of step i
(keep it differentiable: no .item()). The default is sigma_next for heun (the trapezoid rule; any other
point gives the second-order two-stage RK family with weights 1 - 1/(2c), 1/(2c), c the stage's
fraction of the step in sigma), the lambda midpoint sqrt(sigma_cur sigma_next) for dpm_solver_2 and
amed (r1 = 1/2; r1 is recomputed from whatever sigma_mid the hook returns); euler, ipndm and dpmpp_2m
have no stage without a hook and with one insert it as an extra grid node (2 calls per step). With
net_sigmas the conditioning of the stage point is interpolated at the same lambda fraction
(solvers/_common.py: net_sigma_between). It is passed like any solver option:
sample(D, x_T, solver="dpm_solver_2", nfe=6, midpoints=amed_head). A hook with `needs_features = True`
also receives the bottleneck features of the step's first evaluation (`features=`, None after AFS or
for denoisers without `forward_with_features`); sample() taps them, so the solvers never see them.

Callback protocol: after step i the solver calls callback(dict(i, x, sigma, sigma_cur, denoised))
with x the state at sigma = sigmas[i + 1] (solvers/_common.py: report); a callback that returns a
tensor replaces the state the solver continues from (the predictor-corrector sampler's corrector).

Encoding (`encode`, or sample(..., direction="encode")): the same solver on the grid reversed, from
sigma_min up to sigma_max (x0 -> x_T). Grid names build the usual decreasing grid and flip it; a grid
tensor must be given increasing. Every deterministic solver's update is written for a step of either
sign, so none of them has an encoding branch; stochastic solvers, afs and denoise_to_zero are refused.

A solver may declare a `check(sigmas, options)` (registry.SolverSpec) that check_sampling_config runs on
the final grid, so a bad option (a Langevin step the grid makes unstable) is refused before any call.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import Tensor

from .conditioning import forwards_of
from .grids import GRIDS, load_grid_file, make_grid, validate_sigmas
from .schedules import DTYPE
from .solvers.registry import SolverSpec, get_solver

_FRAMEWORK_ARGS = {"denoiser", "x", "sigmas", "net_sigmas", "callback"}


def prior_sample(shape, sigma_max, generator: torch.Generator | None = None, dtype=DTYPE, device=None) -> Tensor:
    """x_T = sigma_max * z, z ~ N(0, I): the start state in VE coordinates."""
    return float(sigma_max) * torch.randn(shape, generator=generator, dtype=dtype, device=device)


# -- NFE accounting --------------------------------------------------------------------------

_ACCEPTS: dict = {}  # solver function -> (option names, has **kwargs): inspect.signature costs ~0.3 ms a call


def _accepts(spec) -> tuple[set, bool]:
    if spec.fn not in _ACCEPTS:
        params = inspect.signature(spec.fn).parameters
        named = {n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
        _ACCEPTS[spec.fn] = (named, any(p.kind == p.VAR_KEYWORD for p in params.values()))
    return _ACCEPTS[spec.fn]


def _solver_options(spec, options: dict) -> dict:
    """Defaults merged with the user's options; unknown names raise with the list of valid ones."""
    named, has_var_kw = _accepts(spec)
    allowed = (set(spec.defaults) | named) - _FRAMEWORK_ARGS
    if spec.stochastic:
        allowed.add("generator")
    unknown = set(options) - allowed
    if unknown and not (has_var_kw and not spec.defaults):
        raise ValueError(f"solver {spec.name!r} does not take option(s) {sorted(unknown)}; it accepts "
                         f"{sorted(allowed) or 'no options'} (defaults {spec.defaults}). Remove the option or "
                         f"pick a solver that has it (conf/solver/{spec.name}.yaml lists its options).")
    return {**spec.defaults, **options}


def _calls(spec, steps: int, options: dict, afs: bool, denoise_to_zero: bool) -> int:
    return spec.n_calls(steps, **options) - int(afs) + int(denoise_to_zero)


def reachable_nfes(solver: str, max_nfe: int = 50, afs: bool = False, denoise_to_zero: bool = False,
                   **solver_options) -> list[int]:
    """The NFEs in 1..max_nfe that `solver` reaches exactly with these options."""
    spec = get_solver(solver)
    opts = _solver_options(spec, solver_options)
    if spec.adaptive:
        raise ValueError(f"solver {solver!r} is adaptive: it reaches no fixed NFE (its error control picks it); "
                         "run sample(..., nfe=None, return_info=True) and read info['nfe'].")
    found = {_calls(spec, s, opts, afs, denoise_to_zero) for s in range(1, max_nfe + 2)}
    return sorted(n for n in found if 1 <= n <= max_nfe)


def steps_for_nfe(solver: str, nfe: int, afs: bool = False, denoise_to_zero: bool = False, **solver_options) -> int:
    """The step count whose exact number of denoiser calls is `nfe`; ValueError naming nearby NFEs if none."""
    spec = get_solver(solver)
    opts = _solver_options(spec, solver_options)
    if not isinstance(nfe, int) or isinstance(nfe, bool) or nfe < 1:
        raise ValueError(f"nfe must be an integer >= 1, got {nfe!r}.")
    for steps in range(1, nfe + 3):
        if _calls(spec, steps, opts, afs, denoise_to_zero) == nfe:
            return steps
    near = reachable_nfes(solver, max(2 * nfe, nfe + 10), afs, denoise_to_zero, **solver_options)
    below = [n for n in near if n < nfe][-3:]
    above = [n for n in near if n > nfe][:3]
    extra = " heun: euler_last=True reaches odd NFEs." if solver == "heun" else ""
    raise ValueError(f"solver {solver!r} cannot make exactly nfe={nfe} denoiser calls (afs={afs}, "
                     f"denoise_to_zero={denoise_to_zero}, options {solver_options}); the nearest reachable NFEs are "
                     f"{below + above}. Pick one of them, or toggle afs / denoise_to_zero to shift by one.{extra}")


# -- planning: everything that can fail before compute ------------------------------------------

@dataclass(frozen=True, eq=False)
class Plan:
    """What a solve follows, decided once before any denoiser call: the solver, its complete options, the
    grid and the counted calls. `check_sampling_config` makes it (and is where every check lives); `run_plan`
    follows it on any number of batches, so a sweep or a batched `Model.sample` plans a cell once."""
    spec: SolverSpec
    options: dict  # the solver's defaults merged with the caller's (a hook module included)
    given: dict  # the caller's solver options, as given (for messages)
    sigmas: Tensor  # float64, steps + 1 points (a tensor grid keeps its graph: LD3 learns through it)
    net_sigmas: Tensor | None
    afs: bool
    denoise_to_zero: bool
    nfe: int | None  # the calls the whole solve makes; None for an adaptive solver (its error control decides)

    @property
    def steps(self) -> int:
        return self.sigmas.numel() - 1

    @property
    def solver(self) -> str:
        return self.spec.name


DIRECTIONS = ("decode", "encode")


def _check_direction(spec, direction, afs, denoise_to_zero):
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'decode' (sigma_max -> sigma_min, sampling) or 'encode' (sigma_min -> "
                         f"sigma_max, diffode.encode), got {direction!r}.")
    if direction == "encode":
        if spec.stochastic:
            raise ValueError(f"solver {spec.name!r} is stochastic: an encoding (x0 -> x_T) is the deterministic PF-ODE "
                             "flow, so it needs a deterministic solver (ddim, heun, dpmpp_2m, dpmpp_3m, unipc_bh2, "
                             "rk45, ...).")
        if afs or denoise_to_zero:
            raise ValueError("afs and denoise_to_zero belong to sampling (the first call at sigma_max, a last call to "
                             "sigma 0); an encoding starts at sigma_min and ends at sigma_max: drop them.")


def check_sampling_config(solver: str, nfe: int | None, grid="logsnr", grid_options=None, schedule=None,
                          afs: bool = False, denoise_to_zero: bool = False, *, sigma_min=None, sigma_max=None,
                          net_sigmas=None, direction: str = "decode", **solver_options) -> Plan:
    """Validate a sampling (or, direction="encode", encoding) setup before any compute (ValueError with the
    fix otherwise) and return the Plan sample() follows: its steps, sigmas, net_sigmas and nfe."""
    spec = get_solver(solver)
    opts = _solver_options(spec, solver_options)
    _check_direction(spec, direction, afs, denoise_to_zero)
    encode = direction == "encode"
    grid_options = dict(grid_options or {})
    is_tensor_grid = isinstance(grid, (Tensor, list, tuple))
    if not is_tensor_grid and grid not in GRIDS:
        raise ValueError(f"unknown grid {grid!r}; choose one of {', '.join(GRIDS)} or pass a tensor of sigmas.")
    given = None  # a grid whose length fixes the steps
    if is_tensor_grid:
        given = grid
    elif grid == "explicit" and grid_options.get("sigmas") is not None:
        given = grid_options["sigmas"]
    if spec.adaptive:
        steps = None if given is not None else 1
    elif nfe is None:
        if given is None:
            raise ValueError(f"nfe=None needs an explicit grid (its length gives the steps) or an adaptive solver; "
                             f"pass nfe=... for solver {solver!r}.")
        steps = len(given) - 1
    else:
        steps = steps_for_nfe(solver, nfe, afs, denoise_to_zero, **solver_options)
    file_net = None
    if is_tensor_grid:  # taken as given: decreasing for sampling, increasing for an encoding
        sigmas = validate_sigmas(grid, steps, schedule, what="grid tensor", increasing=encode)
        encode = False  # already in the encoding's order
    elif grid == "from_file":
        if "path" not in grid_options:
            raise ValueError("grid 'from_file' needs grid_options={'path': ...} (a file written by LD3).")
        unknown = set(grid_options) - {"path"}
        if unknown:
            raise ValueError(f"grid 'from_file' takes only path=..., got also {sorted(unknown)}.")
        sigmas, file_net = load_grid_file(grid_options["path"], steps, schedule, solver=solver, nfe=nfe)
    else:
        sigmas = make_grid(grid, steps, schedule, sigma_min=sigma_min, sigma_max=sigma_max, **grid_options)
    if encode:  # a named grid runs backwards: sigma_min -> sigma_max, conditioning flipped with it
        sigmas = sigmas.flip(0)
        file_net = None if file_net is None else file_net.flip(0)
    if net_sigmas is None:
        net_sigmas = file_net
    if net_sigmas is not None:
        net_sigmas = net_sigmas.to(DTYPE) if isinstance(net_sigmas, Tensor) else torch.as_tensor(net_sigmas, dtype=DTYPE)
        if net_sigmas.shape != sigmas.shape:
            raise ValueError(f"net_sigmas has shape {tuple(net_sigmas.shape)} but the grid has {sigmas.numel()} "
                             "points; give one conditioning sigma per grid point.")
    if spec.check is not None:
        spec.check(sigmas, opts)
    expected = None if spec.adaptive else _calls(spec, sigmas.numel() - 1, opts, afs, denoise_to_zero)
    return Plan(spec, opts, dict(solver_options), sigmas, net_sigmas, bool(afs), bool(denoise_to_zero), expected)


# -- denoiser wrappers ---------------------------------------------------------------------------

class _Counted:
    """Counts the calls (NFE) and the network passes (forwards) of the denoiser it wraps."""

    def __init__(self, denoiser, cost):
        self.denoiser, self.cost, self.calls, self.forwards = denoiser, cost, 0, 0

    def __call__(self, x, sigma):
        self.calls += 1
        self.forwards += forwards_of(self.cost, sigma)
        return self.denoiser(x, sigma)


class _FeatureTap:
    """Calls the denoiser's forward_with_features (if it has one) and keeps the last call's features."""

    def __init__(self, denoiser):
        self.denoiser, self.features = denoiser, None
        self.fn = getattr(denoiser, "forward_with_features", None)

    def __call__(self, x, sigma):
        if self.fn is None:
            return self.denoiser(x, sigma)
        D, f = self.fn(x, sigma)
        self.features = None if f is None else f.detach()
        return D


def _feeding(hook, tap: _FeatureTap | None, offset: int):
    """The solver-facing hook: the user's hook at the full grid's step index, with the tapped features of
    the step's first call when it asks for them. Solvers call their hook right after that call, so the tap
    holds its features (None after AFS)."""

    def fed(i, sigma_cur, sigma_next, x):
        if tap is None:
            return hook(i + offset, sigma_cur, sigma_next, x)
        return hook(i + offset, sigma_cur, sigma_next, x, features=tap.features)

    return fed


class _Stop(Exception):
    """Raised by sample()'s own callback after the last step asked for (stop=k); carries that state."""

    def __init__(self, x):
        super().__init__()
        self.x = x


def _span(start: int, stop, steps: int, afs: bool) -> tuple[int, int]:
    stop = steps if stop is None else stop
    for name, v in (("start", start), ("stop", stop)):
        if not isinstance(v, int) or isinstance(v, bool):
            raise ValueError(f"{name}={v!r} must be a step index (an integer).")
    if not 0 <= start < stop <= steps:
        raise ValueError(f"start={start}, stop={stop} is not a sub-range of the {steps} steps; need "
                         f"0 <= start < stop <= {steps}.")
    if afs and start > 0:
        raise ValueError(f"afs answers the grid's first call in closed form; with start={start} the solve begins "
                         "mid-grid: drop afs or start at 0.")
    return start, stop


class _AnalyticFirstStep:
    """Answers the first call (at sigmas[0]) with D = x - sigma x / sqrt(1 + sigma^2), free of NFE."""

    def __init__(self, denoiser, sigma0: Tensor):
        self.denoiser, self.sigma0, self.used = denoiser, sigma0, False

    def __call__(self, x, sigma):
        if self.used:
            return self.denoiser(x, sigma)
        self.used = True
        s = self.sigma0.to(x.dtype)
        return x - (s / torch.sqrt(1 + s * s)) * x


def _finite_flag(x: Tensor) -> Tensor:
    """A 0-d tensor that is finite when every entry of x is (one reduction, no host sync)."""
    x = x.detach()
    return x.sum(dtype=torch.float32) if x.dtype in (torch.float16, torch.bfloat16) else x.sum()


def _raise_nonfinite(where, i, sigma, bad=None):
    count = "" if bad is None else f"{bad} "
    raise FloatingPointError(f"sampling produced {count}NaN/Inf values at {where} {i} (sigma={float(sigma):.6g}); "
                             "check the denoiser at that noise level, use float64, a finer grid or a lower order.")


def _check_finite(x: Tensor, i, sigma, where="step"):
    if not bool(torch.isfinite(_finite_flag(x))):
        _raise_nonfinite(where, i, sigma, int((~torch.isfinite(x)).sum()))


def _check_steps(flags: list, steps_at: list, sigmas: Tensor):
    """One read of the per-step flags after the solve; names the first step whose state was not finite."""
    if flags:
        ok = torch.isfinite(torch.stack(flags))
        if not bool(ok.all()):
            j = int((~ok).nonzero()[0, 0])
            _raise_nonfinite("step", steps_at[j], sigmas[steps_at[j] + 1])


def sample(denoiser, x_T: Tensor, solver: str = "dpmpp_2m", nfe: int | None = 10, grid="logsnr", schedule=None, *,
           grid_options=None, sigma_min=None, sigma_max=None, afs: bool = False, denoise_to_zero: bool = False,
           net_sigmas=None, start: int = 0, stop: int | None = None, callback=None,
           return_trajectory: bool = False, return_info: bool = False, generator: torch.Generator | None = None,
           direction: str = "decode", **solver_options):
    """Integrate the PF-ODE from x_T at sigmas[0] (x_T = sigma_max * z) with exactly `nfe` denoiser calls.

    grid: a name in GRIDS (options in grid_options) or a tensor/list of sigmas. start / stop: a partial
    solve (steps start..stop-1 of the plan). direction="encode" runs the same solver the other way, from
    sigma_min to sigma_max (see `encode`). See the module docstring. The same as
    run_plan(denoiser, x_T, check_sampling_config(solver, nfe, grid, ...), ...)."""
    plan = check_sampling_config(solver, nfe, grid, grid_options, schedule, afs, denoise_to_zero, sigma_min=sigma_min,
                                 sigma_max=sigma_max, net_sigmas=net_sigmas, direction=direction, **solver_options)
    return run_plan(denoiser, x_T, plan, start=start, stop=stop, callback=callback,
                    return_trajectory=return_trajectory, return_info=return_info, generator=generator)


def run_plan(denoiser, x_T: Tensor, plan: Plan, *, start: int = 0, stop: int | None = None, callback=None,
             return_trajectory: bool = False, return_info: bool = False, generator: torch.Generator | None = None):
    """sample() along a Plan made beforehand (check_sampling_config): the plan is read, never changed, so one
    plan serves every batch."""
    spec, steps, afs, denoise_to_zero = plan.spec, plan.steps, plan.afs, plan.denoise_to_zero
    opts = dict(plan.options)  # this solve's copy: the hook and the generator are set per call
    start, stop = (0, steps) if spec.adaptive else _span(start, stop, steps, afs)
    whole = start == 0 and stop == steps
    sigmas = plan.sigmas.to(x_T.device)
    net_sigmas = None if plan.net_sigmas is None else plan.net_sigmas.to(x_T.device)
    cost = denoiser
    hook = opts.get("midpoints")
    if hook is not None and not isinstance(hook, (Tensor, float, int)):
        tap = _FeatureTap(denoiser) if getattr(hook, "needs_features", False) else None
        denoiser = tap or denoiser
        opts["midpoints"] = _feeding(hook, tap, start) if (tap is not None or start) else hook
    counted = _Counted(denoiser, cost)
    D = _AnalyticFirstStep(counted, sigmas[0]) if afs else counted
    if spec.stochastic:
        opts["generator"] = generator
    trajectory = []
    flags, steps_at, last = [], [], [None]  # per-step finiteness flags, read once after the solve

    def on_step(info):
        if start:
            info = {**info, "i": info["i"] + start}
        flags.append(_finite_flag(info["x"]))
        steps_at.append(info["i"])
        last[0] = info["x"]
        if return_trajectory:
            trajectory.append(info["x"])
        if callback is not None:
            callback(info)
        if info["i"] == stop - 1 and stop < steps:
            raise _Stop(info["x"])

    tail = sigmas[start:], None if net_sigmas is None else net_sigmas[start:]
    try:
        x = spec.fn(D, x_T, tail[0], net_sigmas=tail[1], callback=on_step, **opts)
        if stop < steps:  # the solver never reported step stop-1: one of its steps spans several grid intervals
            raise ValueError(f"solver {plan.solver!r} with options {plan.given} takes steps spanning several grid "
                             f"intervals (it reported after {steps_at}), so it cannot stop after step {stop}; stop "
                             "at one of those, or solve the whole grid.")
    except _Stop as reached:
        x = reached.x
    _check_steps(flags, steps_at, sigmas)
    if last[0] is not x:  # a returned state no step reported: test it too
        _check_finite(x, stop - 1, sigmas[stop])
    if denoise_to_zero and stop == steps:
        x = D(x, sigmas[-1] if net_sigmas is None else net_sigmas[-1])
        _check_finite(x, steps, sigmas[-1], where="the final denoise-to-zero call after step")
        if return_trajectory:
            trajectory.append(x)
    if plan.nfe is not None and whole and counted.calls != plan.nfe:
        raise RuntimeError(f"solver {plan.solver!r} made {counted.calls} denoiser calls but its n_calls accounting "
                           f"promises {plan.nfe} for {steps} steps; fix the solver's registration.")
    out = (x,)
    if return_trajectory:
        out += (trajectory,)
    if return_info:
        out += (dict(nfe=counted.calls, forwards=counted.forwards, steps=steps, sigmas=sigmas, net_sigmas=net_sigmas,
                     start=start, stop=stop),)
    return out[0] if len(out) == 1 else out


def encode(denoiser, x0: Tensor, solver: str = "dpmpp_2m", nfe: int | None = 10, grid="logsnr", schedule=None,
           **options):
    """The PF-ODE flow from data to noise: x(sigma_min) = x0 -> x(sigma_max), with exactly `nfe` calls.

    The same solvers, grids and NFE accounting as sample(), run on the grid reversed (sigma increasing; a
    grid tensor must be given increasing). DDIM inversion is encode(..., solver="ddim"); its higher-order
    successors are the multistep solvers. sample(denoiser, encode(denoiser, x0, ...), ...) with the same
    solver, grid and NFE is the encode-decode round trip; explicit solvers are not exactly invertible,
    so it returns x0 up to their discretisation error (both ways). Stochastic solvers, afs and
    denoise_to_zero are refused. x0 is taken as the state at sigma_min (VE coordinates, x = x_t / alpha)."""
    return sample(denoiser, x0, solver, nfe, grid, schedule, direction="encode", **options)
