"""Log-likelihood of data under the PF-ODE, read as a continuous normalizing flow (Song et al. 2021, App. D.2).

In VE coordinates (x = x_t / alpha, sigma = sigma_t / alpha; docs/design.md) the flow is
dx/dsigma = f(x, sigma) = (x - D(x, sigma)) / sigma, whose divergence is

    div f = (d - tr dD/dx) / sigma,      d = the number of coordinates.

Along one trajectory the instantaneous change of variables gives, integrating upwards from the data:

    log p_{sigma_min}(x) = log p_{sigma_max}(x(sigma_max)) + int_{sigma_min}^{sigma_max} div f(x(sigma), sigma) dsigma.

The integral rides along x as one more coordinate ell of the state, so *any* deterministic solver of the
zoo integrates it without knowing: `DivergenceAugmented` is a denoiser of the augmented state
y = [x.flatten(), ell] whose extra output D_ell = ell - (d - tr dD/dx) makes the solver's own update
(y - D_y) / sigma equal div f in that coordinate. The likelihood is then `encode` (sigma_min ->
sigma_max) of [x, 0] with that denoiser, plus the prior term:

  - prior: N(0, sigma_max^2 I) in VE coordinates (sde_lib.VESDE.prior_logp). The true p_{sigma_max} is
    the data smoothed by sigma_max; the gap is about (1/2) sum_i s_i^2 / sigma_max^2 nats for data of
    per-coordinate variance s_i^2 (e.g. 8e-5 nats for the 2-D ring at sigma_max = 80): `prior=` takes any
    other log-density (the tests pass the mixture's exact p_{sigma_max} to isolate the ODE error).
  - trace: "exact" (d vector-Jacobian products per evaluation: small dimension), or "hutchinson":
    the Skilling-Hutchinson estimate v^T (dD/dx) v with `probes` Rademacher vectors v (never worse than
    Gaussian ones: variance 2 sum_{i != j} A_ij^2 against 2 ||A||_F^2 for the symmetric part A), drawn once
    per call and held fixed over the whole solve, as score_sde does, so the integrand stays smooth for
    adaptive solvers. "auto": exact up to EXACT_MAX_DIM coordinates.

What is returned is the density of the model's samples: diffode's sample() returns the VE state at
sigma_min, so log p is over x = x(sigma_min) in VE coordinates. Song et al. evaluate data as the VP
state x_t at t_min instead: log p^{VP}_{t_min}(x) = log p^{VE}_{sigma_min}(x / alpha) - d log alpha with
alpha = alpha(t_min) (1 - 5e-5 for VP-linear at t = 1e-3): below 1e-4 bits/dim for images.

Cost: every augmented call is one network forward plus one backward (VJP) per probe (d for the exact
trace); `info` counts them (nfe, forwards, vjps).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .conditioning import forwards_of
from .sample import encode

TRACES = ("auto", "exact", "hutchinson")
EXACT_MAX_DIM = 32  # "auto" takes the exact trace up to this many coordinates (d VJPs per evaluation)


def rademacher(shape, generator: torch.Generator | None = None, dtype=torch.float64, device=None) -> Tensor:
    """Entries +-1 with probability 1/2 each."""
    return torch.randint(0, 2, shape, generator=generator, device=device).to(dtype) * 2 - 1


def trace_exact(D: Tensor, x: Tensor) -> Tensor:
    """tr dD/dx per sample [B] by d VJPs (samples do not interact, so one VJP serves the whole batch)."""
    flat = D.reshape(D.shape[0], -1)
    tr = torch.zeros(D.shape[0], dtype=torch.float64, device=D.device)
    for i in range(flat.shape[1]):
        g = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)[0]
        tr = tr + g.reshape(g.shape[0], -1)[:, i].to(torch.float64)
    return tr


def trace_hutchinson(D: Tensor, x: Tensor, probes: Tensor) -> Tensor:
    """(1/P) sum_p v_p^T (dD/dx) v_p per sample [B], probes [P, B, ...]: one VJP per probe."""
    est = torch.zeros(D.shape[0], dtype=torch.float64, device=D.device)
    for p, v in enumerate(probes):
        g = torch.autograd.grad(D, x, grad_outputs=v.to(D.dtype), retain_graph=p < len(probes) - 1)[0]
        est = est + (g * v).reshape(g.shape[0], -1).sum(1).to(torch.float64)
    return est / len(probes)


class DivergenceAugmented:
    """The denoiser of the augmented state y = [x.flatten(1), ell] (float64, shape [B, d + 1]).

    Returns [D(x, sigma).flatten(1), ell - (d - tr dD/dx)], so that (y - D_y) / sigma is the PF-ODE's
    field in x and its divergence in ell. Counts its calls, network forwards and VJPs; `forwards(sigma)` is
    the wrapped denoiser's cost per call (conditioning.forwards_of), so sample() counts the passes."""

    def __init__(self, denoiser, shape: tuple, trace: str = "exact", probes: Tensor | None = None):
        if trace not in ("exact", "hutchinson"):
            raise ValueError(f"trace must be 'exact' or 'hutchinson', got {trace!r}")
        if trace == "hutchinson" and probes is None:
            raise ValueError("trace='hutchinson' needs probes [P, B, ...] (see rademacher)")
        self.denoiser, self.shape, self.trace, self.probes = denoiser, tuple(shape), trace, probes
        self.d = math.prod(self.shape)
        self.calls = self.passes = self.vjps = 0

    def forwards(self, sigma) -> int:
        return forwards_of(self.denoiser, sigma)

    def __call__(self, y: Tensor, sigma) -> Tensor:
        B = y.shape[0]
        x, ell = y[:, :self.d].reshape(B, *self.shape), y[:, self.d]
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            D = self.denoiser(xg, sigma)
            if self.trace == "exact":
                tr = trace_exact(D, xg)
                self.vjps += self.d
            else:
                tr = trace_hutchinson(D, xg, self.probes)
                self.vjps += len(self.probes)
        self.calls += 1
        self.passes += self.forwards(sigma)
        D_ell = ell - (self.d - tr.to(y.dtype))
        return torch.cat([D.detach().reshape(B, -1).to(y.dtype), D_ell[:, None]], 1)


def gaussian_prior_logp(x_T: Tensor, sigma_max: float) -> Tensor:
    """log N(x_T; 0, sigma_max^2 I) per sample."""
    flat = x_T.reshape(x_T.shape[0], -1).to(torch.float64)
    d = flat.shape[1]
    return -0.5 * (flat * flat).sum(1) / sigma_max**2 - d * math.log(sigma_max) - 0.5 * d * math.log(2 * math.pi)


def resolve_trace(trace: str, d: int) -> str:
    if trace not in TRACES:
        raise ValueError(f"trace={trace!r} is unknown; choose auto, exact (d VJPs per call: small dimension) or "
                         "hutchinson (Rademacher probes: images).")
    if trace == "auto":
        return "exact" if d <= EXACT_MAX_DIM else "hutchinson"
    return trace


def check_likelihood_config(solver: str, trace: str = "auto", probes: int = 1) -> None:
    """Refuse, in one paragraph each, what the likelihood cannot use (before any compute)."""
    from .solvers.registry import get_solver

    spec = get_solver(solver)
    if spec.stochastic:
        raise ValueError(f"solver {solver!r} is stochastic: the likelihood integrates the divergence along the "
                         "deterministic PF-ODE flow, so it needs a deterministic solver (rk45, the default, or a "
                         "fixed-NFE one such as dpmpp_3m, unipc_bh1, heun).")
    if trace not in TRACES:
        resolve_trace(trace, 0)
    if isinstance(probes, Tensor):
        if probes.ndim < 2 or probes.shape[0] < 1:
            raise ValueError(f"a probe tensor has shape [P, B, ...] with P >= 1, got {tuple(probes.shape)}.")
        return
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise ValueError(f"probes={probes!r}: the Hutchinson estimator needs at least one probe vector; set "
                         "probes to an integer >= 1 (1 is score_sde's setting).")


def log_likelihood(denoiser, x: Tensor, *, sigma_min: float, sigma_max: float, solver: str = "rk45",
                   nfe: int | None = None, grid="logsnr", schedule=None, trace: str = "auto", probes: int = 1,
                   generator: torch.Generator | None = None, prior=None, return_info: bool = False,
                   **solver_options):
    """log p_{sigma_min}(x) per sample (nats) under the model's PF-ODE, for x in VE coordinates [B, ...].

    solver / nfe / grid / schedule / solver_options: as for sample() (the adaptive rk45, rtol = atol = 1e-5 as in
    score_sde, by default; nfe=None then). trace: auto | exact | hutchinson; probes: the number of
    Rademacher vectors per point (hutchinson), drawn from `generator`, or the vectors themselves [P, B, ...]. prior: None for N(0, sigma_max^2 I), else a callable
    x_T -> log-density [B]. With return_info, also a dict: nfe (augmented calls), forwards, vjps, x_T,
    delta_logp (the divergence integral) and prior_logp, per sample where it applies."""
    check_likelihood_config(solver, trace, probes)
    if solver == "rk45":
        solver_options = {"rtol": 1e-5, "atol": 1e-5, **solver_options}
    shape = tuple(x.shape[1:])
    mode = resolve_trace(trace, math.prod(shape))
    probe = None
    if mode == "hutchinson":
        probe = probes if isinstance(probes, Tensor) else rademacher((probes, *x.shape), generator, torch.float64,
                                                                    x.device)
    aug = DivergenceAugmented(denoiser, shape, mode, probe)
    y0 = torch.cat([x.reshape(x.shape[0], -1).to(torch.float64),
                    torch.zeros(x.shape[0], 1, dtype=torch.float64, device=x.device)], 1)
    with torch.no_grad():
        y_T = encode(aug, y0, solver, nfe, grid, schedule, sigma_min=sigma_min, sigma_max=sigma_max, **solver_options)
    d = math.prod(shape)
    x_T, delta = y_T[:, :d].reshape(x.shape), y_T[:, d]
    prior_logp = gaussian_prior_logp(x_T, sigma_max) if prior is None else prior(x_T).to(torch.float64)
    logp = prior_logp + delta
    if not return_info:
        return logp
    return logp, dict(nfe=aug.calls, forwards=aug.passes, vjps=aug.vjps, trace=mode,
                      probes=0 if probe is None else len(probe), x_T=x_T, delta_logp=delta, prior_logp=prior_logp)
