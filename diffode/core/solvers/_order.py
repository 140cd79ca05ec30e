"""Per-step orders of the multistep solvers (DPM-Solver++ 2M/3M, UniPC, DEIS): warm-up and `lower_order_final`.

Step i (0-based) of a multistep method of order p has i + 1 model outputs, so it uses order
k_i = min(p, i + 1) (the warm-up). `lower_order_final` may lower the order of the last steps as well:

  False       never.
  True        always: k_i <= steps - i, so the last step is first order, the one before second order.
              This caps a third-order method's global order at 2 (a first-order step has an O(h^2)
              local error), which is why the official code turns it off on longer grids.
  "official"  True when steps < 10, else False: the official DPM-Solver code. Its step-count threshold
              is a cliff: on the EDM (rho = 7) grid DPM-Solver++(3M) on the digits UNet goes from FID 12.7
              at NFE 9 to 188 at NFE 10 (issue 9). diffusers uses 15 instead of 10, which moves the cliff.
  "auto"      (default) grid-aware: k_i <= steps - i where the step is long in lambda, i.e. only where
              h_i = lambda_{i+1} - lambda_i > H_AUTO. The lambda step is what the extrapolation error of
              the multistep terms grows with (their local error is O(h^(k+1)) with constants that grow
              quickly with h); on a fine grid no step is that long and the method keeps its full order,
              on a coarse one the lowering follows the grid, not the step count, so there is no NFE at
              which it switches off at once. H_AUTO was chosen by measurement
              (experiments/lower_order_final/README.md).

The rule is a discrete choice made from the grid's values before the loop (a detached read of the
sigmas, no graph through it), as the official rule is from the step count.
"""
from __future__ import annotations

import torch
from torch import Tensor

RULES = (False, True, "official", "auto")
H_AUTO = 1.25  # lambda step above which "auto" lowers the final steps' order (measured, see above)


def check_rule(rule) -> None:
    if not (isinstance(rule, bool) or rule in ("official", "auto")):
        raise ValueError(f"lower_order_final must be one of {RULES} (\"auto\" is the default: grid-aware; "
                         f"\"official\" is the official code's steps < 10 rule), got {rule!r}.")


def final_caps(sigmas: Tensor, rule) -> list[bool]:
    """Per step: True where `rule` lowers the order to steps - i."""
    check_rule(rule)
    steps = len(sigmas) - 1
    if rule is True or (rule == "official" and steps < 10):
        return [True] * steps
    if rule == "auto":
        lams = -torch.log(sigmas.detach().to(torch.float64))
        h = (lams[1:] - lams[:-1]).abs().tolist()  # |h|: an encoding grid (sigma increasing) has h < 0
        return [h[i] > H_AUTO for i in range(steps)]
    return [False] * steps


def step_orders(sigmas: Tensor, order: int, rule) -> list[int]:
    """k_i for every step i: warm-up min(order, i + 1), lowered to steps - i where `rule` says so."""
    steps = len(sigmas) - 1
    caps = final_caps(sigmas, rule)
    return [min(order, i + 1, steps - i) if caps[i] else min(order, i + 1) for i in range(steps)]
