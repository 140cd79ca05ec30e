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
  sample when denoise_to_zero). return_info: a dict with nfe (calls actually made), steps, sigmas,
  net_sigmas. The return value is x, or a tuple (x, [trajectory], [info]) in that order.

Per-step hook for AMED (and any learned intermediate point), diffode/core/stage.py: the solvers amed,
heun, dpm_solver_2, euler/ddim, ipndm and dpmpp_2m take an option `midpoints`, a callable
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

A solver may declare a `check(sigmas, options)` (registry.SolverSpec) that _plan runs on the final grid,
so a bad option (a Langevin step the grid makes unstable) is refused before any denoiser call.
"""
from __future__ import annotations

import inspect

import torch
from torch import Tensor

from .grids import GRIDS, load_grid_file, make_grid, validate_sigmas
from .schedules import DTYPE
from .solvers.registry import get_solver

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


def _plan(solver, nfe, grid, grid_options, schedule, afs, denoise_to_zero, sigma_min, sigma_max, net_sigmas,
          solver_options, direction="decode"):
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
    steps = sigmas.numel() - 1
    if spec.check is not None:
        spec.check(sigmas, opts)
    expected = None if spec.adaptive else _calls(spec, steps, opts, afs, denoise_to_zero)
    return spec, opts, steps, sigmas, net_sigmas, expected


def check_sampling_config(solver: str, nfe: int | None, grid="logsnr", grid_options=None, schedule=None,
                          afs: bool = False, denoise_to_zero: bool = False, *, sigma_min=None, sigma_max=None,
                          net_sigmas=None, direction: str = "decode", **solver_options) -> dict:
    """Validate a sampling (or, direction="encode", encoding) setup before any compute; ValueError with
    the fix otherwise.

    Returns dict(steps, sigmas, net_sigmas, nfe) of the plan sample() would follow."""
    spec, opts, steps, sigmas, net, expected = _plan(solver, nfe, grid, grid_options, schedule, afs, denoise_to_zero,
                                                     sigma_min, sigma_max, net_sigmas, solver_options, direction)
    return dict(steps=steps, sigmas=sigmas, net_sigmas=net, nfe=expected)


# -- denoiser wrappers ---------------------------------------------------------------------------

class _Counted:
    def __init__(self, denoiser):
        self.denoiser, self.calls = denoiser, 0

    def __call__(self, x, sigma):
        self.calls += 1
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


def _feeding(hook, tap: _FeatureTap):
    """The solver-facing hook: the user's hook with the tapped features of the step's first call.
    Solvers call their hook right after that call, so the tap holds its features (None after AFS)."""

    def fed(i, sigma_cur, sigma_next, x):
        return hook(i, sigma_cur, sigma_next, x, features=tap.features)

    return fed


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
           net_sigmas=None, callback=None, return_trajectory: bool = False, return_info: bool = False,
           generator: torch.Generator | None = None, direction: str = "decode", **solver_options):
    """Integrate the PF-ODE from x_T at sigmas[0] (x_T = sigma_max * z) with exactly `nfe` denoiser calls.

    grid: a name in GRIDS (options in grid_options) or a tensor/list of sigmas. See the module docstring.
    direction="encode" runs the same solver the other way, from sigma_min to sigma_max (see `encode`)."""
    spec, opts, steps, sigmas, net_sigmas, expected = _plan(solver, nfe, grid, grid_options, schedule, afs,
                                                            denoise_to_zero, sigma_min, sigma_max, net_sigmas,
                                                            solver_options, direction)
    sigmas = sigmas.to(x_T.device)
    net_sigmas = None if net_sigmas is None else net_sigmas.to(x_T.device)
    hook = opts.get("midpoints")
    if hook is not None and getattr(hook, "needs_features", False):
        denoiser = _FeatureTap(denoiser)
        opts["midpoints"] = _feeding(hook, denoiser)
    counted = _Counted(denoiser)
    D = _AnalyticFirstStep(counted, sigmas[0]) if afs else counted
    if spec.stochastic:
        opts["generator"] = generator
    trajectory = []
    flags, steps_at, last = [], [], [None]  # per-step finiteness flags, read once after the solve

    def on_step(info):
        flags.append(_finite_flag(info["x"]))
        steps_at.append(info["i"])
        last[0] = info["x"]
        if return_trajectory:
            trajectory.append(info["x"])
        if callback is not None:
            callback(info)

    x = spec.fn(D, x_T, sigmas, net_sigmas=net_sigmas, callback=on_step, **opts)
    _check_steps(flags, steps_at, sigmas)
    if last[0] is not x:  # a returned state no step reported: test it too
        _check_finite(x, steps - 1, sigmas[-1])
    if denoise_to_zero:
        x = D(x, sigmas[-1] if net_sigmas is None else net_sigmas[-1])
        _check_finite(x, steps, sigmas[-1], where="the final denoise-to-zero call after step")
        if return_trajectory:
            trajectory.append(x)
    if expected is not None and counted.calls != expected:
        raise RuntimeError(f"solver {solver!r} made {counted.calls} denoiser calls but its n_calls accounting "
                           f"promises {expected} for {steps} steps; fix the solver's registration.")
    out = (x,)
    if return_trajectory:
        out += (trajectory,)
    if return_info:
        out += (dict(nfe=counted.calls, steps=steps, sigmas=sigmas, net_sigmas=net_sigmas),)
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
