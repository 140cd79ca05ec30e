"""GITS: time steps by dynamic programming over teacher trajectories (Chen et al., ICML 2024,
"On the Trajectory Regularity of ODE-based Diffusion Sampling"; reference/amed.md section 9).

1. A teacher solves the PF-ODE on a fine grid sigma_0 > ... > sigma_M (iPNDM, M = 60, EDM rho = 7 by
   default) from n noises: states x_i and directions d_i = (x_i - D(x_i, sigma_i)) / sigma_i.
2. Cost of a coarse step i -> j (j > i) = the error of ONE Euler step from the teacher state,
       x_hat_ij = x_i + (sigma_j - sigma_i) d_i,   C[i, j] = mean over samples of dist(x_hat_ij, x_j),
   dist: "l2" (per-sample L2 norm), "l1", or "dev" (the jump's deviation from the trajectory's
   start-end chord minus the teacher's own deviation at j; can be negative).
3. The K-step sub-grid 0 = i_0 < i_1 < ... < i_K = M minimising
       C[i_0, i_1] + coeff C[i_1, i_2] + coeff^2 C[i_2, i_3] + ... + coeff^(K-1) C[i_(K-1), M]
   by the recursion V[j, 1] = C[j, M], V[j, k] = min_{j < i < M} C[j, i] + coeff V[i, k - 1].
   coeff > 1 (1.15 for pixel models, the paper's) weighs later steps more: the DP adds local errors,
   while a late error is not damped by the rest of the solve (zju-pi/diff-sampler issue 18).

The costs use Euler jumps whatever solver then runs on the grid; only K depends on the solver (the
steps its NFE buys). Everything here is detached data: the result is a list of indices.
"""
from __future__ import annotations

import torch
from torch import Tensor

METRICS = ("l2", "l1", "dev")
# solvers whose per-step callback `denoised` is D(x_i, sigma_i) at the step's start point: their
# trajectory gives the directions d_i for free; other teachers pay one call per point for them
START_POINT_SOLVERS = ("ddim", "euler", "ipndm", "ipndm_v", "deis", "dpmpp_2m", "dpmpp_3m")


@torch.no_grad()
def teacher_trajectory(denoiser, x_T: Tensor, sigmas: Tensor, solver: str = "ipndm", **options):
    """(xs [M + 1, n, ...], ds [M, n, ...]): the teacher's states at every fine-grid point and the
    Euler directions d_i = (x_i - D(x_i, sigma_i)) / sigma_i at the first M of them."""
    from .sample import sample

    xs, denoised = [x_T], []

    def keep(info):
        xs.append(info["x"])
        denoised.append(info["denoised"])

    sample(denoiser, x_T, solver=solver, nfe=None, grid=sigmas, callback=keep, **options)
    xs = torch.stack(xs)
    s = sigmas.to(xs).reshape(-1, *[1] * (xs.ndim - 1))
    if solver in START_POINT_SOLVERS:
        D = torch.stack(denoised)
    else:
        D = torch.stack([denoiser(xs[i], sigmas[i]) for i in range(len(sigmas) - 1)])
    return xs, (xs[:-1] - D) / s[:-1]


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1)


def deviation(a: Tensor, start: Tensor, end: Tensor) -> Tensor:
    """Per-sample distance of the points a [n, ...] from the chord start -> end (GITS' 'dev')."""
    ac, u = _flat(end - a), _flat(end - start)
    u = u / u.norm(dim=1, keepdim=True)
    return (ac - (ac * u).sum(1, keepdim=True) * u).norm(dim=1)


def cost_matrix(xs: Tensor, ds: Tensor, sigmas: Tensor, metric: str = "l2") -> Tensor:
    """C [M + 1, M + 1] float64: C[i, j] for j > i the mean cost of an Euler jump i -> j; inf elsewhere."""
    if metric not in METRICS:
        raise ValueError(f"unknown GITS metric {metric!r}; choose one of {METRICS}")
    M = len(sigmas) - 1
    s = sigmas.to(torch.float64).tolist()
    C = torch.full((M + 1, M + 1), float("inf"), dtype=torch.float64)
    dev_teacher = [deviation(xs[j], xs[0], xs[-1]).mean() for j in range(M + 1)] if metric == "dev" else None
    for i in range(M):
        for j in range(i + 1, M + 1):
            x_hat = xs[i] + (s[j] - s[i]) * ds[i]
            if metric == "dev":
                c = deviation(x_hat, xs[0], xs[-1]).mean() - dev_teacher[j]
            else:
                c = _flat(x_hat - xs[j]).norm(p=2 if metric == "l2" else 1, dim=1).mean()
            C[i, j] = c.double()
    return C


def gits_dp(C: Tensor, K: int, coeff: float = 1.15) -> list[int]:
    """Indices 0 = i_0 < ... < i_K = M of the K-step path of least coeff-weighted cost (module docstring).
    Ties go to the smallest next index."""
    C = torch.as_tensor(C, dtype=torch.float64)
    M = C.shape[0] - 1
    if not 1 <= K <= M:
        raise ValueError(f"GITS needs 1 <= K <= M: {K} coarse steps from a fine grid of {M} steps; "
                         "use a finer teacher grid (more teacher steps) or fewer steps.")
    inf = float("inf")
    V = torch.full((M + 1, K + 1), inf, dtype=torch.float64)
    nxt = torch.full((M + 1, K + 1), -1, dtype=torch.long)
    V[:, 1] = C[:, M]
    V[M, 1] = inf  # no step from the end to itself
    nxt[:, 1] = M
    idx = torch.arange(M + 1)
    allowed = (idx[None, :] > idx[:, None]) & (idx[None, :] < M)  # j < i < M
    for k in range(2, K + 1):
        total = torch.where(allowed, C + coeff * V[:, k - 1][None, :], torch.full_like(C, inf))
        V[:, k], nxt[:, k] = total.min(dim=1)  # first index on ties
    if not torch.isfinite(V[0, K]):
        raise ValueError(f"no finite {K}-step path through the cost matrix (every route has an inf cost).")
    path, j = [0], 0
    for k in range(K, 0, -1):
        j = int(nxt[j, k])
        path.append(j)
    return path


def path_cost(C: Tensor, path, coeff: float) -> float:
    """The DP's objective for a given path (tests, reports)."""
    return sum(coeff**m * float(C[a, b]) for m, (a, b) in enumerate(zip(path[:-1], path[1:])))
