"""Consistency models (Song et al., ICML 2023): the parameterisation, the training grid, the teacher step.

A consistency function maps every point (x, sigma) of a PF-ODE trajectory to the trajectory's origin.
It is parameterised (CM Sec. 3, App. C) so that the boundary condition f(x, sigma_min) = x holds exactly
whatever the weights:

    f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(x, sigma)
    c_skip = sigma_d^2 / ((sigma - sigma_min)^2 + sigma_d^2)
    c_out  = sigma_d (sigma - sigma_min) / sqrt(sigma^2 + sigma_d^2)     (sigma, not sigma - sigma_min)

At sigma = sigma_min these are 1 and 0 in floating point, so f = 1 * x + 0 * F = x bit for bit. The
boundary is what rules out the trivial solution f = const (CM Sec. 4).

F is the raw network of an EDM-preconditioned denoiser D = c_skip^EDM x + c_out^EDM F (same c_in and
c_noise, so a student copied from the teacher starts from the teacher's F). A denoiser of any other
parameterisation (eps / x0 / v, exact mixtures) is read in EDM form, F = (D - c_skip^EDM x) / c_out^EDM,
which is the same network function, written in the coordinates the boundary scalings expect.

Training pairs (Alg. 2): the Karras grid of N points sigma_0 = sigma_max > ... > sigma_{N-1} = sigma_min
(descending, as both OpenAI repositories index it); n ~ U{0..N-2}; x_n = x0 + sigma_n z; x_hat = one
step of a teacher ODE solver from sigma_n to sigma_{n+1}; loss d(f_theta(x_n, sigma_n),
f_target(x_hat, sigma_{n+1})). `teacher_step` runs a solver of the zoo (diffode/core/solvers) with one
(sigma_n, sigma_{n+1}) pair per sample, by giving it a grid of per-sample sigma tensors: the solvers'
arithmetic broadcasts, so it is exactly the zoo's step.
"""
from __future__ import annotations


import torch
from torch import Tensor, nn

from .denoisers import ModelDenoiser, edm_scalings
from .grids import edm as _edm_grid
from .schedules import DTYPE
from .solvers.registry import get_solver



def _per_sample(sigma, x: Tensor) -> Tensor:
    """sigma as float64 [B] on x's device (a scalar is broadcast to the batch)."""
    s = torch.as_tensor(sigma, dtype=DTYPE, device=x.device)
    return s.expand(x.shape[0]) if s.ndim == 0 else s.reshape(x.shape[0])


def _bcast(v: Tensor, x: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)


# -- parameterisation ------------------------------------------------------------------------

def boundary_scalings(sigma: Tensor, sigma_min: float, sigma_data: float = 0.5) -> tuple[Tensor, Tensor]:
    """(c_skip, c_out) with c_skip(sigma_min) = 1 and c_out(sigma_min) = 0 exactly."""
    sd2 = sigma_data * sigma_data
    c_skip = sd2 / ((sigma - sigma_min) ** 2 + sd2)
    c_out = sigma_data * (sigma - sigma_min) / torch.sqrt(sigma * sigma + sd2)
    return c_skip, c_out


def edm_network_output(denoiser: nn.Module, x: Tensor, sigma: Tensor, sigma_data: float, cond=None) -> Tensor:
    """F(x, sigma) of D = c_skip^EDM x + c_out^EDM F, in float64 (cond: a conditional denoiser's condition).

    For an EDM ModelDenoiser this calls its raw network (no round trip through D, so no loss of
    digits to the division by c_out ~ sigma near sigma_min)."""
    kw = {} if cond is None else {"cond": cond}
    if isinstance(denoiser, ModelDenoiser) and denoiser.prediction == "edm":
        _, _, c_in, c_noise = edm_scalings(sigma, denoiser.sigma_data)
        dt = denoiser.net_dtype
        return denoiser.net((_bcast(c_in, x) * x).to(dt), c_noise.to(dt), **kw).to(DTYPE)
    c_skip, c_out, _, _ = edm_scalings(sigma, sigma_data)
    D = denoiser(x, sigma, **kw).to(DTYPE)
    return (D - _bcast(c_skip, D) * x.to(DTYPE)) / _bcast(c_out, D)


class ConsistencyFunction(nn.Module):
    """f(x, sigma) = c_skip x + c_out F(x, sigma) around a denoiser module (whose weights are trained).

    Called like a denoiser, f(x, sigma) with sigma a scalar or [B], so every solver of the zoo, and
    diffode.sample, take it where they take D."""

    def __init__(self, denoiser: nn.Module, sigma_min: float, sigma_data: float = 0.5):
        super().__init__()
        self.denoiser, self.sigma_min, self.sigma_data = denoiser, float(sigma_min), float(sigma_data)

    @property
    def num_classes(self) -> int | None:
        return getattr(self.denoiser, "num_classes", None)

    def forward(self, x: Tensor, sigma, cond=None) -> Tensor:
        s = _per_sample(sigma, x)
        c_skip, c_out = boundary_scalings(s, self.sigma_min, self.sigma_data)
        F = edm_network_output(self.denoiser, x, s, self.sigma_data, cond)
        return (_bcast(c_skip, x).to(DTYPE) * x.to(DTYPE) + _bcast(c_out, x).to(DTYPE) * F).to(x.dtype)


# -- training grid and teacher step ------------------------------------------------------------

def karras_grid(N: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """The N Karras points, descending: sigma_0 = sigma_max, sigma_{N-1} = sigma_min (float64)."""
    if not (isinstance(N, int) and N >= 2):
        raise ValueError(f"a consistency grid needs N >= 2 points, got N={N!r}")
    return _edm_grid(N - 1, float(sigma_min), float(sigma_max), rho=rho)


def sample_pairs(sigmas: Tensor, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """(sigma_n, sigma_{n+1}) for n ~ U{0..N-2}: the online net sees the larger sigma."""
    idx = torch.randint(0, sigmas.numel() - 1, (n,), generator=generator)
    return sigmas[idx], sigmas[idx + 1]


def teacher_step(denoiser, x: Tensor, sigma_cur: Tensor, sigma_next: Tensor, solver: str = "heun",
                 **options) -> Tensor:
    """One step of the zoo's `solver` from sigma_cur to sigma_next, a separate pair per sample ([B] each).

    The solver gets a grid of two [B, 1, ...] sigma tensors; the denoiser sees them as [B]."""
    spec = get_solver(solver)
    if spec.stochastic or spec.adaptive:
        raise ValueError(f"the teacher solver must be a deterministic fixed-step ODE solver; {solver!r} is "
                         f"{'stochastic' if spec.stochastic else 'adaptive'}. Use heun (default), euler, "
                         "dpm_solver_2 or dpm_solver_3.")
    shape = (-1, *([1] * (x.ndim - 1)))
    grid = torch.stack([_per_sample(sigma_cur, x).reshape(shape), _per_sample(sigma_next, x).reshape(shape)])

    def D(x_, s):
        return denoiser(x_, s.reshape(x_.shape[0]) if s.ndim else s)

    return spec.fn(D, x, grid, **options)


# -- target network ---------------------------------------------------------------------------

@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, mu: float) -> None:
    """theta^- <- mu theta^- + (1 - mu) theta (CM Eq. 8), parameters and floating buffers; mu = 0 copies."""
    t_params = [p for p in target.parameters()] + [b for b in target.buffers() if b.is_floating_point()]
    o_params = [p for p in online.parameters()] + [b for b in online.buffers() if b.is_floating_point()]
    if len(t_params) != len(o_params):
        raise ValueError("target and online networks differ in structure")
    if mu == 0.0:
        torch._foreach_copy_(t_params, o_params)
    else:
        torch._foreach_lerp_(t_params, o_params, 1.0 - float(mu))
