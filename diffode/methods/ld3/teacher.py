"""LD3's training data: (x_T, x_0) pairs from a many-step teacher solve, made once and cached.

Pair i always starts from z_i ~ N(0, I) drawn from its own generator seeded with seed + i, so the
pairs do not depend on how many devices made them: under DDP each rank solves the indices
rank, rank + world, ... and the shards are all-gathered back into index order.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from diffode.cache import cached
from diffode.core.schedules import DTYPE

def start_noise(indices, shape, seed: int) -> Tensor:
    """Unit-variance z for the given pair indices [len, *shape], float64, one generator per index."""
    out = [torch.randn(shape, generator=torch.Generator().manual_seed(seed + int(i)), dtype=DTYPE) for i in indices]
    return torch.stack(out) if out else torch.empty(0, *shape, dtype=DTYPE)


def pair_labels(num_classes: int, seed: int, indices) -> Tensor:
    """The class label of each pair index: the label `diffode eval` would draw for the seed of its noise."""
    from diffode.models import initial_labels

    return initial_labels(num_classes, [seed + int(i) for i in indices])


def solve_teacher(denoiser, z: Tensor, teacher: dict, schedule, sigma_min: float, sigma_max: float,
                  batch_size: int = 256, cond=None) -> Tensor:
    """The teacher's x_0 from sigma_max z; cond: one condition per row of z (a conditional denoiser)."""
    from diffode.config import solver_config
    from diffode.core.conditioning import bind, take
    from diffode.core.sample import sample

    name, options = solver_config(teacher["solver"])  # a solver config name, like every command's
    options = {**options, **dict(teacher.get("options") or {})}
    outs = []
    with torch.no_grad():
        for k, zb in enumerate(z.split(batch_size)):
            D = bind(denoiser, take(cond, slice(k * batch_size, (k + 1) * batch_size)))
            outs.append(sample(D, sigma_max * zb, solver=name, nfe=teacher["nfe"],
                               grid=teacher["grid"], grid_options=dict(teacher.get("grid_options") or {}),
                               schedule=schedule, sigma_min=sigma_min, sigma_max=sigma_max,
                               **options).to(DTYPE))
    return torch.cat(outs) if outs else z.clone()


def make_pairs(denoiser, shape, count: int, seed: int, teacher: dict, schedule, sigma_min: float,
               sigma_max: float, rank: int = 0, world: int = 1,
               all_gather: Callable[[Tensor], Tensor] | None = None, device=None,
               num_classes: int | None = None) -> tuple[Tensor, Tensor]:
    """(z, x_0): z [count, *shape] unit-variance start noise (x_T = sigma_max z) and the teacher's x_0; a
    class-conditional teacher (num_classes) solves pair i under its label pair_labels(num_classes, seed, [i])."""
    per_rank = -(-count // world)
    idx = list(range(rank, per_rank * world, world))  # padded so every rank solves the same number
    z = start_noise(idx, shape, seed).to(device)  # drawn on the CPU: the same numbers on every machine
    cond = None if num_classes is None else pair_labels(num_classes, seed, idx).to(device)
    x0 = solve_teacher(denoiser, z, teacher, schedule, sigma_min, sigma_max, cond=cond)
    if world > 1:
        z_all, x0_all = all_gather(z), all_gather(x0)  # [world, per_rank, ...]
        # rank r holds indices r, r + world, ...: interleave back into index order.
        z = z_all.transpose(0, 1).reshape(-1, *shape)[:count]
        x0 = x0_all.transpose(0, 1).reshape(-1, *shape)[:count]
    return z.cpu(), x0.cpu()


PAIRS_VERSION = 1  # bump when the same spec would give other pairs


def cached_pairs(cache_dir: str | Path | None, spec: dict, make: Callable[[], tuple[Tensor, Tensor]],
                 rank: int = 0, barrier: Callable[[], None] | None = None) -> tuple[Tensor, Tensor, Path | None]:
    """Load the pairs for `spec` from cache_dir, or make (on every rank) and save them (rank 0)."""
    if not cache_dir:
        z, x0 = make()
        return z, x0, None
    data, _, path = cached("ld3_pairs", spec, lambda: dict(zip(("z", "x0"), make())), version=PAIRS_VERSION,
                           fields=("z", "x0"), directory=cache_dir, write=rank == 0)
    if barrier is not None:
        barrier()
    return data["z"], data["x0"], path
