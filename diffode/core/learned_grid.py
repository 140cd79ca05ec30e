"""LD3's learnable time-step grid (Tong et al., ICLR 2025) and its soft-loss ball.

A grid of N steps is N+1 logits xi. The gaps of the grid in a chosen space u (lambda =
-log sigma, i.e. logSNR, or the schedule's time t) are softmax(xi[1:]): their cumulative sum
runs from 0 to 1 and is rescaled onto [u(sigma_max), u(sigma_min)], so the endpoints are fixed
and the grid is monotone for every xi. xi[0] cancels (as in the reference code) and is kept
only so that the parameter has the N+1 entries the paper describes.

The decoupled variant adds shifts xi_c that move only the sigmas the network is conditioned
on: net_u_i = u_i + clamp(xi_c_i, +-win_rate * min(neighbouring gaps of u)), zero at both ends.
The reference code takes that window from the raw logits in lambda mode (so it is ~0 and the
decoupling is off); here it is always the real gaps of the grid in u.

Everything is float64 and differentiable in xi and xi_c.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .schedules import DTYPE, Schedule

SPACES = ("lambda", "t")

# Every gap gets at least this fraction of the range: a softmax underflowing to an exact 0 gap
# would give a repeated sigma, and multistep solvers divide by the step size h.
MIN_GAP_FRACTION = 1e-6


def to_space(sigmas: Tensor, space: str, schedule: Schedule | None = None) -> Tensor:
    """VE sigmas -> the coordinate u the grid is uniform in at init."""
    sigmas = torch.as_tensor(sigmas, dtype=DTYPE)
    if space == "lambda":
        return -torch.log(sigmas)
    if space == "t":
        if schedule is None:
            raise ValueError("space='t' needs the schedule whose time t the grid is laid in; or use space='lambda'")
        return schedule.t_from_ve_sigma(sigmas)
    raise ValueError(f"unknown grid space {space!r}; choose one of {SPACES}")


def from_space(u: Tensor, space: str, schedule: Schedule | None = None) -> Tensor:
    if space == "lambda":
        return torch.exp(-u)
    if space == "t":
        if schedule is None:
            raise ValueError("space='t' needs the schedule whose time t the grid is laid in; or use space='lambda'")
        return schedule.ve_sigma(u)
    raise ValueError(f"unknown grid space {space!r}; choose one of {SPACES}")


def unit_grid(xi: Tensor) -> Tensor:
    """Logits [N+1] -> positions [N+1] in [0, 1]: 0, strictly increasing, exactly 1 at the end."""
    xi = xi.to(DTYPE)
    n = xi.numel() - 1
    if n < 1:
        raise ValueError("a grid needs at least 2 logits (1 step)")
    gaps = MIN_GAP_FRACTION + (1.0 - n * MIN_GAP_FRACTION) * torch.softmax(xi[1:], 0)
    pos = torch.cumsum(gaps, 0)
    pos = pos / pos[-1]  # cumsum round-off: make the last point exactly 1
    return torch.cat([pos.new_zeros(1), pos])


def shift_window(u: Tensor, win_rate: float) -> Tensor:
    """Per-point bound on the conditioning shift: win_rate * the smaller neighbouring gap of u
    (detached: a bound, not something to optimise); 0 at both endpoints."""
    gaps = (u[1:] - u[:-1]).abs().detach()
    inner = win_rate * torch.minimum(gaps[:-1], gaps[1:])
    return torch.cat([inner.new_zeros(1), inner, inner.new_zeros(1)])


def ld3_sigmas(xi: Tensor, sigma_min: float, sigma_max: float, space: str = "lambda",
               schedule: Schedule | None = None, xi_c: Tensor | None = None,
               win_rate: float = 0.5) -> tuple[Tensor, Tensor]:
    """(sigmas, net_sigmas), float64 [N+1], decreasing from sigma_max to sigma_min.

    net_sigmas is sigmas itself when xi_c is None (no decoupling).
    """
    u0 = to_space(torch.tensor(sigma_max, dtype=DTYPE), space, schedule)
    u1 = to_space(torch.tensor(sigma_min, dtype=DTYPE), space, schedule)
    u = u0 + (u1 - u0) * unit_grid(xi)
    sigmas = from_space(u, space, schedule)
    # Pin the endpoints exactly (the round trip through u costs an ulp or two).
    sigmas = torch.cat([sigmas.new_tensor([sigma_max]), sigmas[1:-1], sigmas.new_tensor([sigma_min])])
    if xi_c is None:
        return sigmas, sigmas
    if not 0.0 <= win_rate <= 0.5:
        # Two neighbours may each move win_rate of their shared gap towards each other.
        raise ValueError(f"win_rate must be in [0, 0.5] so conditioning sigmas keep their order; got {win_rate}")
    w = shift_window(u, win_rate)
    u_c = u + torch.clamp(xi_c.to(DTYPE), -w, w)
    net_sigmas = from_space(u_c, space, schedule)
    net_sigmas = torch.cat([sigmas[:1], net_sigmas[1:-1], sigmas[-1:]])
    return sigmas, net_sigmas


def logits_for_grid(sigmas: Tensor, space: str = "lambda", schedule: Schedule | None = None) -> Tensor:
    """Closed-form inverse of ld3_sigmas: logits [N+1] reproducing a given decreasing grid
    (its own endpoints are mapped onto the learned grid's endpoints). xi[0] = 0."""
    u = to_space(torch.as_tensor(sigmas, dtype=DTYPE).detach(), space, schedule)
    frac = (u[1:] - u[:-1]) / (u[-1] - u[0])
    n = frac.numel()
    if not bool((frac > MIN_GAP_FRACTION).all()):
        raise ValueError("the grid to fit must be strictly decreasing with gaps above MIN_GAP_FRACTION of its range")
    p = (frac - MIN_GAP_FRACTION) / (1.0 - n * MIN_GAP_FRACTION)
    xi = torch.log(p)
    return torch.cat([xi.new_zeros(1), xi - xi.mean()])


class LearnedGrid(nn.Module):
    """The learnable parameters of one LD3 grid: logits xi [N+1] and (optionally) shifts xi_c [N+1]."""

    def __init__(self, steps: int, sigma_min: float, sigma_max: float, space: str = "lambda",
                 schedule: Schedule | None = None, init: Tensor | None = None, decoupled: bool = True,
                 win_rate: float = 0.5):
        super().__init__()
        if space not in SPACES:
            raise ValueError(f"unknown grid space {space!r}; choose one of {SPACES}")
        self.steps, self.sigma_min, self.sigma_max = steps, float(sigma_min), float(sigma_max)
        self.space, self.schedule, self.decoupled, self.win_rate = space, schedule, decoupled, win_rate
        if init is None:
            xi = torch.zeros(steps + 1, dtype=DTYPE)  # equal logits: uniform in the space
        else:
            if init.numel() != steps + 1:
                raise ValueError(f"init grid has {init.numel() - 1} steps, the learned grid {steps}")
            xi = logits_for_grid(init, space, schedule)
        self.xi = nn.Parameter(xi)
        self.xi_c = nn.Parameter(torch.zeros(steps + 1, dtype=DTYPE), requires_grad=decoupled)

    def forward(self) -> tuple[Tensor, Tensor]:
        return ld3_sigmas(self.xi, self.sigma_min, self.sigma_max, self.space, self.schedule,
                          self.xi_c if self.decoupled else None, self.win_rate)


# -- the soft loss's ball ------------------------------------------------------------------

def ball_radius(gamma: float, dim: int, steps: int) -> float:
    """LD3's r = gamma * dim / N^2, an L2 radius on unit-variance noise (times sigma_T on x_T)."""
    return gamma * dim / steps**2


def project_ball(x: Tensor, center: Tensor, radius: float) -> Tensor:
    """Per sample, the nearest point to x in the L2 ball of `radius` around `center`."""
    d = x - center
    norm = d.flatten(1).norm(dim=1).clamp_min(torch.finfo(d.dtype).tiny)
    scale = torch.clamp(radius / norm, max=1.0).reshape(-1, *([1] * (x.ndim - 1)))
    return center + d * scale


__all__ = ["SPACES", "to_space", "from_space", "unit_grid", "shift_window", "ld3_sigmas", "logits_for_grid",
           "LearnedGrid", "ball_radius", "project_ball"]
