"""Convergence orders of every solver on the exact flow mixture equal their orders on the VP mixture.

Two exact models of the suite's mixtures (tests/_reference.py: 2-D ring, 16-D anisotropic), each through the
code path of a trained network (ModelDenoiser around core/mixture_nets.MixtureNet): the flow-matching model
(velocity under the flow schedule, t in [0.001, 0.999], VE sigma 0.001 .. 999) and the VP model (eps under
the linear VP-SDE, VE sigma 0.0105 .. 152). Each is solved on its own full range with logsnr grids of the
same lambda step (steps proportional to the range's lambda span: 80, 113, 160 on VP), and the endpoint
max-error against a float64 dopri8 solve (rtol 1e-12) of the same model gives the order (least-squares
slope), as tests/test_solver_convergence.py does. The two orders agree within 0.1 for every solver, and each
is within 0.3 of theory (EXPECTED_ORDERS there). Measured: the largest gap is 0.06 (DPM-Solver++(3M), 16-D).
"""
from __future__ import annotations

import math
from functools import lru_cache

import pytest
import torch

from _reference import empirical_order, make_test_gmm, reference_solve, start_points
from diffode.core.denoisers import ModelDenoiser
from diffode.core.mixture_nets import MixtureNet
from diffode.core.sample import sample
from diffode.core.schedules import Flow, VPLinear
from diffode.core.solvers import SOLVERS
from test_solver_convergence import EXPECTED_ORDERS

pytestmark = pytest.mark.usefixtures("one_thread")
VP_STEPS = (80, 113, 160)
MODELS = {"flow": (Flow, "velocity"), "vp": (VPLinear, "eps")}


def _span(s) -> float:
    return math.log(s.sigma_max / s.sigma_min)


@lru_cache(maxsize=None)
def case(model: str, dim: int):
    """(denoiser, schedule, x_T, reference endpoint, steps) of one exact model."""
    cls, prediction = MODELS[model]
    sch = cls()
    D = ModelDenoiser(MixtureNet(make_test_gmm(dim), sch, prediction), sch, prediction)
    x_T = start_points(16, dim, sch.sigma_max)
    with torch.no_grad():
        ref = reference_solve(D, x_T, sch.sigma_max, sch.sigma_min, rtol=1e-12, atol=1e-12)
    steps = [round(n * _span(sch) / _span(VPLinear())) for n in VP_STEPS]
    return D, sch, x_T, ref, steps


def order(model: str, dim: int, name: str, options) -> float:
    D, sch, x_T, ref, steps = case(model, dim)
    spec = SOLVERS[name]
    kw = dict(options)
    if "lower_order_final" in spec.defaults:
        kw["lower_order_final"] = False
    errs = []
    with torch.no_grad():
        for n in steps:
            x = sample(D, x_T, name, nfe=spec.n_calls(n, **{**spec.defaults, **kw}), grid="logsnr", schedule=sch, **kw)
            errs.append(float((x - ref).abs().max()))
    return empirical_order(steps, errs)


@pytest.mark.parametrize("dim", [2, pytest.param(16, marks=pytest.mark.slow)])  # 16-D: 20 s more
@pytest.mark.parametrize("key", list(EXPECTED_ORDERS), ids=lambda k: k[0] + "".join(f"-{a}={b}" for a, b in k[1]))
def test_orders_on_the_flow_mixture_equal_those_on_the_vp_mixture(key, dim):
    name, options = key
    assert name in SOLVERS, f"solver {name!r} is not registered"
    flow, vp = order("flow", dim, name, options), order("vp", dim, name, options)
    assert abs(flow - vp) < 0.1, f"{name}{dict(options)} dim {dim}: flow {flow:.3f} vs VP {vp:.3f}"
    assert abs(flow - EXPECTED_ORDERS[key]) < 0.3, f"{name}{dict(options)} dim {dim}: flow order {flow:.3f}"
