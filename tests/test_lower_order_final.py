"""`lower_order_final` (diffode/core/solvers/_order.py): exact per-step orders, and no error cliff in the NFE.

The jump test: on a 16-D mixture, each multistep solver's error against a reference solve from the
same noise must not grow by more than 2x from one NFE to the next between NFE 5 and 20, on the logSNR
and the EDM grid. The official rule (lower the final orders only below 10 steps) fails it at 9 -> 10 on
the EDM grid (the digits cliff of issue 9); `test_official_rule_has_the_cliff` keeps the test honest.
"""
from __future__ import annotations

import math
from functools import lru_cache

import pytest
import torch

from diffode.core.denoisers import GaussianMixture
from diffode.core.grids import make_grid
from diffode.core.sample import sample
from diffode.core.solvers._order import H_AUTO, step_orders

F64 = torch.float64
SOLVERS = [("dpmpp_2m", {}), ("dpmpp_3m", {}), ("dpmpp_3m", {"coefficients": "official"}), ("unipc_bh1", {}),
           ("unipc_bh2", {}), ("deis", {})]
NFES = range(5, 21)


def _multiscale_gmm():
    """4 well-separated modes in 16-D, per-coordinate stds log-spaced over [0.01, 0.1] (experiments/
    lower_order_final: sharp like image data at small sigma, yet no sample sits near a mode boundary)."""
    g = torch.Generator().manual_seed(0)
    stds = torch.logspace(-2, -1, 16, dtype=F64).repeat(4, 1)
    return GaussianMixture(torch.ones(4, dtype=F64), torch.randn(4, 16, dtype=F64, generator=g), stds=stds)


@lru_cache(maxsize=1)
def _case():
    from torchdiffeq import odeint

    gmm = _multiscale_gmm()
    x_T = 80.0 * torch.randn(32, 16, dtype=F64, generator=torch.Generator().manual_seed(0))
    u = torch.tensor([math.log(80.0), math.log(0.002)], dtype=F64)
    ref = odeint(lambda u_, y: y - gmm(y, torch.exp(u_)), x_T, u, method="dopri5", rtol=1e-10, atol=1e-10)[-1]
    return gmm, x_T, ref


def _largest_jump(solver, opts, grid, rule):
    gmm, x_T, ref = _case()
    errs = [float((sample(gmm, x_T, solver, nfe=n, grid=grid, lower_order_final=rule, **opts) - ref).pow(2).mean().sqrt())
            for n in NFES]
    jumps = [b / a for a, b in zip(errs[:-1], errs[1:])]
    j = max(range(len(jumps)), key=jumps.__getitem__)
    return jumps[j], NFES[j]


@pytest.mark.parametrize("grid", ["logsnr", "edm"])
@pytest.mark.parametrize("solver,opts", SOLVERS, ids=[s + "".join(f"-{v}" for v in o.values()) for s, o in SOLVERS])
def test_no_jump_over_2x_with_the_default_rule(one_thread, solver, opts, grid):
    jump, at = _largest_jump(solver, opts, grid, "auto")
    assert jump <= 2.0, f"{solver} {opts} on {grid}: error grows {jump:.2f}x from NFE {at} to {at + 1}"


def test_official_rule_has_the_cliff(one_thread):
    """The step-count rule jumps at 9 -> 10 steps on the EDM grid: the failure the jump test guards against."""
    for solver in ("dpmpp_3m", "unipc_bh1"):
        jump, at = _largest_jump(solver, {}, "edm", "official")
        assert jump > 2.0 and at == 9, (solver, jump, at)


# -- the rules' orders, by hand ----------------------------------------------------------------

def test_official_true_false_orders():
    short, long_ = make_grid("logsnr", 5), make_grid("logsnr", 12)
    assert step_orders(short, 3, "official") == [1, 2, 3, 2, 1]
    assert step_orders(long_, 3, "official") == [1, 2] + [3] * 10  # 12 >= 10 steps: off
    assert step_orders(long_, 3, True) == [1, 2] + [3] * 8 + [2, 1]
    assert step_orders(short, 3, False) == [1, 2, 3, 3, 3]
    assert step_orders(short, 2, True) == [1, 2, 2, 2, 1]


def test_auto_lowers_exactly_the_long_lambda_steps():
    # lambda steps (= log sigma ratios) 0.5, 0.5, 0.5, H_AUTO / 2, 2 H_AUTO: only the last one is long
    logs = torch.tensor([0.0, -0.5, -1.0, -1.5, -1.5 - H_AUTO / 2, -1.5 - 2.5 * H_AUTO], dtype=F64)
    sig = 10.0 * torch.exp(logs)
    assert step_orders(sig, 3, "auto") == [1, 2, 3, 3, 1]
    # both final steps long: 3M ends 2, 1 as with True
    logs2 = torch.tensor([0.0, -0.5, -1.0, -1.5, -1.5 - 2 * H_AUTO, -1.5 - 4 * H_AUTO], dtype=F64)
    assert step_orders(10.0 * torch.exp(logs2), 3, "auto") == [1, 2, 3, 2, 1]
    # a long step early on caps nothing: steps - i is above the order there
    assert step_orders(10.0 * torch.exp(torch.tensor([0.0, -3 * H_AUTO, -3 * H_AUTO - 0.5, -3 * H_AUTO - 1.0,
                                                       -3 * H_AUTO - 1.5], dtype=F64)), 3, "auto") == [1, 2, 3, 3]


def test_auto_keeps_full_order_on_fine_grids():
    """No lambda step of a 40-step grid is long: auto then equals False, so the method keeps its order."""
    for grid in ("logsnr", "edm"):
        sig = make_grid(grid, 40)
        assert step_orders(sig, 3, "auto") == step_orders(sig, 3, False)


def test_bad_rule_fails_before_any_call():
    calls = []

    def D(x, s):
        calls.append(1)
        return x

    for solver in ("dpmpp_3m", "unipc_bh1", "deis"):
        with pytest.raises(ValueError, match="lower_order_final must be one of"):
            sample(D, torch.ones(2, 2, dtype=F64), solver, nfe=5, lower_order_final="sometimes")
    assert not calls
