"""Progressive distillation (Salimans & Ho, ICLR 2022) in VE coordinates: the math, torch only.

A student step sigma_t -> sigma_s of an N-step grid must land where the teacher lands with two DDIM
steps sigma_t -> sigma_mid -> sigma_s on the 2N-step grid. DDIM in VE coordinates is
x_s = (sigma_s / sigma_t) x_t + (1 - sigma_s / sigma_t) D, so the denoised value that makes one step
reach the teacher's x_s is

    x_target = x_t - sigma_t (x_s - x_t) / (sigma_s - sigma_t)        (= the paper's x-tilde)

The student D_student(x_t, sigma_t) regresses x_target with the paper's weights on the x0 error
(SNR = alpha^2 / sigma^2 = 1 / sigma^2 in VE coordinates):

    snr_trunc   max(SNR, 1)    (= max of the x0 and eps errors; the paper's default)
    v_mse       1 + SNR        (= the v error)

Training points: x_t = x0 + sigma_t eps at a grid point drawn uniformly among the student's N steps.
The N-step grid must be the even points of the 2N-step one (`check_nested`), for every stage.
The grid ends at sigma_min > 0, so the last step needs no special case (the paper's t = 0 does).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .schedules import DTYPE

WEIGHTINGS = ("snr_trunc", "v_mse")


def _b(v, x: Tensor) -> Tensor:
    """A scalar or per-sample [B] coefficient broadcast against x [B, ...], in x's dtype and device."""
    v = torch.as_tensor(v, dtype=DTYPE)
    v = v.expand(x.shape[0]) if v.ndim == 0 else v
    return v.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def ddim_step(x: Tensor, D: Tensor, sigma_cur: Tensor, sigma_next: Tensor) -> Tensor:
    """One DDIM (Euler) step in VE coordinates with per-sample sigmas [B] (or scalars)."""
    ratio = _b(torch.as_tensor(sigma_next, dtype=DTYPE) / torch.as_tensor(sigma_cur, dtype=DTYPE), x)
    return ratio * x + (1 - ratio) * D


def teacher_two_steps(teacher, x_t: Tensor, sigma_t: Tensor, sigma_mid: Tensor, sigma_s: Tensor) -> Tensor:
    """The teacher's two DDIM steps sigma_t -> sigma_mid -> sigma_s (two denoiser calls)."""
    x_mid = ddim_step(x_t, teacher(x_t, sigma_t), sigma_t, sigma_mid)
    return ddim_step(x_mid, teacher(x_mid, sigma_mid), sigma_mid, sigma_s)


def pd_target(x_t: Tensor, x_s: Tensor, sigma_t: Tensor, sigma_s: Tensor) -> Tensor:
    """x_target = x_t - sigma_t (x_s - x_t) / (sigma_s - sigma_t): one DDIM step from x_t lands on x_s."""
    st, ss = _b(sigma_t, x_t), _b(sigma_s, x_t)
    return x_t - st * (x_s - x_t) / (ss - st)


def loss_weight(sigma: Tensor, weighting: str) -> Tensor:
    """The paper's weight on |x0 - x0_hat|^2 at VE sigma (SNR = 1 / sigma^2)."""
    snr = 1.0 / (torch.as_tensor(sigma, dtype=DTYPE) ** 2)
    if weighting == "snr_trunc":
        return torch.clamp(snr, min=1.0)
    if weighting == "v_mse":
        return 1.0 + snr
    raise ValueError(f"unknown weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}.")


def draw_points(sigmas_2n: Tensor, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(sigma_t, sigma_mid, sigma_s), each [n]: a student step of the N-step grid (the even points of the
    2N-step grid sigmas_2n) drawn uniformly, with the teacher's midpoint between."""
    steps = (sigmas_2n.numel() - 1) // 2
    i = torch.randint(0, steps, (n,), generator=generator)
    return sigmas_2n[2 * i], sigmas_2n[2 * i + 1], sigmas_2n[2 * i + 2]


def pd_loss(student, teacher, x0: Tensor, eps: Tensor, sigma_t: Tensor, sigma_mid: Tensor, sigma_s: Tensor,
            weighting: str = "snr_trunc") -> Tensor:
    """Weighted mean of |D_student(x_t, sigma_t) - x_target|^2 with x_t = x0 + sigma_t eps."""
    x_t = x0 + _b(sigma_t, x0) * eps
    with torch.no_grad():
        target = pd_target(x_t, teacher_two_steps(teacher, x_t, sigma_t, sigma_mid, sigma_s), sigma_t, sigma_s)
    err = (student(x_t, sigma_t) - target).square()
    return (_b(loss_weight(sigma_t, weighting), err) * err).mean()


# -- stages and grids ------------------------------------------------------------------------

def stage_steps(n0: int, n_final: int) -> list[int]:
    """The students' step counts n0/2, n0/4, ..., n_final (the teacher samples with n0 steps)."""
    check_stages(n0, n_final)
    out, n = [], n0
    while n > n_final:
        n //= 2
        out.append(n)
    return out


def check_stages(n0, n_final) -> None:
    ok = isinstance(n0, int) and isinstance(n_final, int) and n_final >= 1 and n0 > n_final
    if ok:
        ratio = n0 // n_final
        ok = n0 % n_final == 0 and ratio & (ratio - 1) == 0
    if not ok:
        both = isinstance(n0, int) and isinstance(n_final, int) and n0 >= 1 and n_final >= 1
        nf = n_final if both else 1
        fix = nf * 2 ** max(1, round(math.log2(n0 / nf))) if both else 128
        raise ValueError(f"progressive distillation halves the step count each stage, so n0 must be n_final times a "
                         f"power of two (> 1), got n0={n0!r}, n_final={n_final!r}; e.g. n0={fix} for "
                         f"n_final={n_final}.")


def is_nested(coarse: Tensor, fine: Tensor, rtol: float = 1e-9) -> bool:
    """True when the N-step grid `coarse` is the even points of the 2N-step grid `fine`."""
    if fine.numel() - 1 != 2 * (coarse.numel() - 1):
        return False
    return bool(torch.allclose(fine[::2].to(DTYPE), coarse.to(DTYPE), rtol=rtol, atol=0.0))


def check_nested(make_grid: Callable[[int], Tensor], steps: list[int], what: str = "grid") -> None:
    """Every student's N-step grid must be the even points of its teacher's 2N-step grid.

    make_grid(N) -> sigmas (N + 1 points); steps: the students' N (see stage_steps)."""
    for n in steps:
        coarse, fine = make_grid(n), make_grid(2 * n)
        if not is_nested(coarse, fine):
            d = float((fine[::2] - coarse).abs().max()) if fine.numel() == 2 * coarse.numel() - 1 else float("nan")
            raise ValueError(f"{what}: the {n}-step grid is not the even points of the {2 * n}-step grid (max "
                             f"difference {d:.3g}), so a student step is not two teacher steps. Use a grid family "
                             f"that nests under halving: logsnr, edm (any rho), time_uniform or time_quadratic.")


def stage_updates(updates, n_stages: int) -> list[int]:
    """Updates of each stage: one integer for every stage (the paper's fixed count) or one per stage."""
    if isinstance(updates, int) and not isinstance(updates, bool):
        u = [updates] * n_stages
    else:
        u = list(updates) if isinstance(updates, (list, tuple)) else []
    if len(u) != n_stages or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in u):
        raise ValueError(f"updates_per_stage={updates!r}: give one integer >= 1 (every stage) or a list of "
                         f"{n_stages} integers >= 1 (one per stage, {n_stages} stages).")
    return u
