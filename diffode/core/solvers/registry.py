"""The solver registry: every solver module registers itself here with its NFE accounting.

A solver is a plain function

    fn(denoiser, x, sigmas, *, net_sigmas=None, callback=None, **options) -> x

over a VE-coordinate denoiser D(x, sigma) and a decreasing float64 grid `sigmas` of length
steps + 1. `net_sigmas` (same length, optional) are the sigmas the network is conditioned on
at each grid point (LD3's decoupled variant); the update coefficients always use `sigmas`.
`callback(dict(i=..., x=..., sigma=..., denoised=...))` is called once per step.

`n_calls(steps, **options)` is the exact number of denoiser calls the solver makes on a grid
with `steps` steps; `sample()` inverts it to turn an NFE budget into a step count.
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
    defaults: dict = field(default_factory=dict)  # option defaults, shown in errors and configs
    description: str = ""


SOLVERS: dict[str, SolverSpec] = {}


def register(name: str, n_calls: Callable[..., int], order: int, **kwargs):
    """Decorator: @register("ddim", n_calls=lambda steps, **o: steps, order=1)."""

    def wrap(fn):
        if name in SOLVERS:
            raise ValueError(f"solver {name!r} registered twice")
        SOLVERS[name] = SolverSpec(name=name, fn=fn, n_calls=n_calls, order=order, **kwargs)
        return fn

    return wrap


def get_solver(name: str) -> SolverSpec:
    import diffode.core.solvers  # noqa: F401  (importing the package registers every solver)

    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; available: {', '.join(sorted(SOLVERS))}")
    return SOLVERS[name]
