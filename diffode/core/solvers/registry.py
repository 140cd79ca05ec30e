"""The solver registry: every solver module registers itself here with its NFE accounting.

A solver is a plain function

    fn(denoiser, x, sigmas, *, net_sigmas=None, callback=None, **options) -> x

over a VE-coordinate denoiser D(x, sigma) and a decreasing float64 grid `sigmas` of length
steps + 1. `net_sigmas` (same length, optional) are the sigmas the network is conditioned on
at each grid point (LD3's decoupled variant); the update coefficients always use `sigmas`.
`callback(dict(i=..., x=..., sigma=..., denoised=...))` is called once per step.

`n_calls(steps, **options)` is the exact number of denoiser calls the solver makes on a grid
with `steps` steps; `sample()` inverts it to turn an NFE budget into a step count. `multistep`
says whether a step reads earlier steps' evaluations (methods that restart a solve mid-grid ask it).

Deterministic solvers also run on an increasing grid (encoding, x0 -> x_T; `diffode.encode`): their
updates are written in lambda = -log sigma or in sigma and hold for a step of either sign, so no solver
has a special case for it (tests/test_encode.py runs every one of them both ways).

A callback may return a replacement for the state it was shown (`_common.report`); the solver then
continues from it. The predictor-corrector sampler (solvers/langevin.py) corrects the state that way
after each step of any predictor, multistep ones included.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class SolverSpec:
    name: str
    fn: Callable
    n_calls: Callable[..., int]  # (steps, **options) -> denoiser calls (AFS not counted here)
    order: int  # the theoretical convergence order (0 for adaptive / stochastic)
    differentiable: bool = True  # in x_T and in the sigmas
    stochastic: bool = False
    adaptive: bool = False  # NFE is whatever the error control used
    # multistep: a step reuses evaluations of earlier steps (a history), so a solve started mid-grid
    # (sample(start=j)) is not the full solve's tail; a single-step solver's step uses only x at sigma_n.
    multistep: bool = False
    defaults: dict = field(default_factory=dict)  # option defaults: the function's own (see register)
    description: str = ""
    # (sigmas, options) -> None, raising ValueError that names the fix: checks of the options against the
    # grid, run by sample()'s planning before any denoiser call (e.g. a Langevin step size that the grid's
    # smallest sigma makes unstable).
    check: Callable | None = None
    # Options that depend on the model, not on the user: names of inputs a model-level provider computes
    # when they are not given (diffode/solver_inputs.py; e.g. Analytic-DPM's eps_moments, estimated from
    # the model and its training data on the grid). The solver itself takes them as plain options.
    model_inputs: tuple = ()


SOLVERS: dict[str, SolverSpec] = {}


FRAMEWORK_ARGS = ("denoiser", "x", "sigmas", "net_sigmas", "callback")


def signature_defaults(fn: Callable) -> dict:
    """The option defaults of a solver function: its keyword parameters' defaults (the one place they live)."""
    import inspect

    return {n: p.default for n, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty and n not in FRAMEWORK_ARGS}


def register(name: str, n_calls: Callable[..., int], order: int, **kwargs):
    """Decorator: @register("ddim", n_calls=lambda steps, **o: steps, order=1).

    The option defaults are the function's signature defaults. A `defaults=` given here must agree
    with them (it is only a statement of what they are), so the two can never drift apart."""

    def wrap(fn):
        if name in SOLVERS:
            raise ValueError(f"solver {name!r} registered twice")
        own = signature_defaults(fn)
        given = kwargs.pop("defaults", None)
        if given is not None:
            bad = {k: (v, own.get(k, "<no such option>")) for k, v in given.items() if own.get(k, object()) != v}
            if bad:
                raise ValueError(f"solver {name!r}: register(defaults=...) disagrees with the function's signature "
                                 f"{bad}; the signature holds the defaults, remove them from register().")
        SOLVERS[name] = SolverSpec(name=name, fn=fn, n_calls=n_calls, order=order, defaults=own, **kwargs)
        return fn

    return wrap


def get_solver(name: str) -> SolverSpec:
    import diffode.core.solvers  # noqa: F401  (importing the package registers every solver)

    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; available: {', '.join(sorted(SOLVERS))}")
    return SOLVERS[name]
