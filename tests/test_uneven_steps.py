"""Multistep solvers on uneven steps: measured orders against a float64 dopri8 reference (tests/_reference.py).

The order tests in test_solver_convergence.py run on logsnr grids, where every step has the same length
in lambda, so a multistep weight that is wrong only when consecutive steps differ passes them. Here:

- the EDM grid (rho = 7, sigma 80 -> 0.002): steps that shrink towards both ends in lambda;
- the same grid with every step split 1:2 in lambda, so the ratio of consecutive steps alternates 2 and
  1/2 at every resolution. On a smooth grid like EDM's the ratio tends to 1 as the steps shrink, and a
  method that ignores it loses nothing in the order (measured: DPM-Solver++(2M) with its constant-step
  weights is still 2.0 there); on the split grid it falls to about 0.8.

Multistep solvers run with lower_order_final=False (the rule is tested in test_lower_order_final.py), on
the 16-D mixture, steps 80, 112, 160; the order is the least-squares slope of -log(max error) against
log(steps), asserted within 0.3 of the expected value.
"""
from __future__ import annotations

import pytest
import torch

from _reference import SIGMA_MAX, SIGMA_MIN, empirical_order, gmm_case
from diffode.core.grids import make_grid
from diffode.core.sample import sample
from diffode.core.solvers import SOLVERS

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = [80, 112, 160]


def edm_grid(steps: int) -> torch.Tensor:
    return make_grid("edm", steps, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=7.0)


def split_grid(steps: int) -> torch.Tensor:
    """The EDM grid of steps/2 steps with each step cut at 1/3 of its length in lambda = -log sigma."""
    lam = -torch.log(edm_grid(steps // 2))
    third = lam[:-1] + (lam[1:] - lam[:-1]) / 3
    return torch.exp(-torch.cat([torch.stack([lam[:-1], third], 1).reshape(-1), lam[-1:]]))


GRIDS = {"edm": edm_grid, "edm_split": split_grid}

# (solver, options) -> expected order on (edm, edm_split)
CASES = {
    ("dpmpp_2m", ()): (2, 2),
    ("dpmpp_3m", ()): (3, 3),
    ("dpmpp_3m", (("coefficients", "official"),)): (2, 2),  # the published coefficients: second order
    ("unipc_bh1", (("order", 1),)): (2, 2),  # UniP-1 + UniC
    ("unipc_bh1", (("order", 2),)): (3, 3),
    ("unipc_bh2", (("order", 1), ("use_corrector", False))): (1, 1),
    ("unipc_bh2", (("order", 2), ("use_corrector", False))): (2, 2),
    ("unipc_bh2", (("order", 3), ("use_corrector", False))): (3, 3),
    ("unipc_bh2", (("order", 2),)): (3, 3),
    ("deis", (("order", 2),)): (2, 2),
    ("deis", (("order", 3),)): (3, 3),
    ("deis", (("order", 3), ("tau", "sigma"))): (3, 3),
    ("deis", (("order", 3), ("tau", "vp_t"))): (3, 3),
    # iPNDM's Adams-Bashforth weights assume equal steps: second order on a smooth grid, first on the split one
    ("ipndm", (("max_order", 3),)): (2, 1),
    ("ipndm_v", (("max_order", 2),)): (2, 2),
    ("ipndm_v", (("max_order", 3),)): (3, 3),
    ("ipndm_v", (("max_order", 4),)): (4, 4),
}


def test_the_split_grid_is_uneven_at_every_resolution():
    for steps in STEPS:
        h = -torch.diff(torch.log(split_grid(steps)))
        ratio = h[1:] / h[:-1]
        assert torch.allclose(ratio[0::2], torch.full_like(ratio[0::2], 2.0), rtol=1e-9)
        assert float(ratio[1::2].max()) < 0.6  # the next step is back to a third of a (shorter) EDM step
        assert len(h) == steps


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("key", list(CASES), ids=lambda k: k[0] + "".join(f"-{a}={b}" for a, b in k[1]))
def test_multistep_order_on_uneven_steps(key, grid):
    name, options = key
    spec = SOLVERS[name]
    kw = dict(options)
    if "lower_order_final" in spec.defaults:
        kw["lower_order_final"] = False
    gmm, x_T, ref = gmm_case(16)
    errs = [float((sample(gmm, x_T, name, nfe=None, grid=GRIDS[grid](n), **kw) - ref).abs().max()) for n in STEPS]
    order = empirical_order(STEPS, errs)
    expected = CASES[key][list(GRIDS).index(grid)]
    assert abs(order - expected) < 0.3, f"{name}{dict(options)} on {grid}: measured order {order:.2f} " \
                                        f"(errors {errs}), expected {expected}"
