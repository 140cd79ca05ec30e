"""Exact-answer tests for behaviour that mutation testing (make mutate) found unchecked: each test names
what it pins down and the independent answer it compares with."""
from __future__ import annotations

import torch

from diffode.core.stage import geometric_point

F64 = torch.float64


def test_geometric_point_defaults_to_the_lambda_midpoint():
    cur, nxt = torch.tensor(4.0, dtype=F64), torch.tensor(1.0, dtype=F64)
    assert float(geometric_point()(0, cur, nxt, None)) == 2.0  # sqrt(4 * 1)
    assert float(geometric_point(0.25)(0, cur, nxt, None)) == 4.0 ** 0.75


def test_network_conditioning_values_of_each_schedule():
    """What a network trained under each schedule is conditioned on (the papers' c_noise / time inputs)."""
    from diffode.core.schedules import EDM, VE, VPCosine, VPLinear

    t = torch.tensor([0.002, 1.0, 80.0], dtype=F64)
    torch.testing.assert_close(EDM().noise_cond(t), 0.25 * torch.log(t), rtol=1e-15, atol=0)  # EDM's ln(sigma)/4
    tv = torch.tensor([1e-3, 0.5, 1.0], dtype=F64)
    for sch in (VPLinear(), VPCosine()):
        torch.testing.assert_close(sch.noise_cond(tv), 999.0 * tv, rtol=1e-15, atol=0)  # DDPM's 0..999 scale
    sigma_ve = 0.01 * (50.0 / 0.01) ** tv  # VE(): sigma_min (sigma_max / sigma_min)^t, NCSN++ takes log(sigma / 2)
    torch.testing.assert_close(VE().noise_cond(tv), torch.log(0.5 * sigma_ve), rtol=1e-13, atol=0)


# -- solvers/_order.py: the per-step orders, written out by hand -------------------------------------

def _grid_with_lambda_steps(h):
    """A sigma grid whose lambda = -log sigma steps are exactly h (from sigma 1)."""
    lam = torch.cumsum(torch.tensor([0.0, *h], dtype=F64), 0)
    return torch.exp(-lam)


def test_step_orders_for_every_rule():
    from diffode.core.solvers._order import H_AUTO, step_orders

    assert H_AUTO == 1.25
    g6 = _grid_with_lambda_steps([0.5] * 6)
    assert step_orders(g6, 3, False) == [1, 2, 3, 3, 3, 3]
    assert step_orders(g6, 3, True) == [1, 2, 3, 3, 2, 1]
    assert step_orders(g6, 2, True) == [1, 2, 2, 2, 2, 1]
    assert step_orders(g6, 3, "official") == [1, 2, 3, 3, 2, 1]  # 6 < 10 steps
    assert step_orders(g6, 3, "auto") == [1, 2, 3, 3, 3, 3]  # no step longer than H_AUTO
    g10 = _grid_with_lambda_steps([0.5] * 10)
    assert step_orders(g10, 3, "official") == [1, 2, 3, 3, 3, 3, 3, 3, 3, 3]  # 10 steps: off
    g9 = _grid_with_lambda_steps([0.5] * 9)
    assert step_orders(g9, 3, "official")[-2:] == [2, 1]
    # auto lowers exactly the steps longer than 1.25 in lambda (1.25 itself is not "longer")
    g = _grid_with_lambda_steps([0.5, 0.5, 0.5, 0.5, 1.25, 1.3])
    assert step_orders(g, 3, "auto") == [1, 2, 3, 3, 2, 1][:4] + [3, 1]
    g = _grid_with_lambda_steps([0.5, 0.5, 0.5, 2.0, 0.5, 0.5])
    assert step_orders(g, 3, "auto") == [1, 2, 3, 3, 3, 3]  # long step with steps - i = 3 left: no cap
    g = _grid_with_lambda_steps([0.5, 0.5, 0.5, 0.5, 2.0, 0.5])
    assert step_orders(g, 3, "auto") == [1, 2, 3, 3, 2, 3]


# -- solvers/_common.py ---------------------------------------------------------------------------

def test_common_pieces_exactly():
    from diffode.core.solvers._common import coef, lam, net_sigma, net_sigma_between, report, weighted_sum

    assert float(lam(torch.tensor(2.0, dtype=F64))) == -torch.log(torch.tensor(2.0, dtype=F64)).item()
    x32 = torch.ones(3, 2, dtype=torch.float32)
    c = coef(torch.tensor([1.0, 2.0, 3.0], dtype=F64), x32)
    assert c.dtype == torch.float32 and c.shape == (3, 1)
    assert coef(torch.tensor(2.0, dtype=F64), x32).shape == ()
    sig, net = torch.tensor([8.0, 2.0, 1.0], dtype=F64), torch.tensor([9.0, 3.0, 1.5], dtype=F64)
    assert float(net_sigma(sig, None, 1)) == 2.0 and float(net_sigma(sig, net, 1)) == 3.0
    mid = torch.tensor(4.0, dtype=F64)  # halfway from 8 to 2 in log sigma
    assert net_sigma_between(sig, None, 0, mid) is mid
    torch.testing.assert_close(net_sigma_between(sig, net, 0, mid), torch.tensor(27.0 ** 0.5, dtype=F64))
    torch.testing.assert_close(net_sigma_between(sig, net, 0, sig[1]), net[1])
    seen = []
    report(seen.append, 1, x32, sig, 2 * x32)
    assert seen[0]["i"] == 1 and seen[0]["x"] is x32 and float(seen[0]["sigma"]) == 1.0
    assert float(seen[0]["sigma_cur"]) == 2.0 and torch.equal(seen[0]["denoised"], 2 * x32)
    report(None, 0, x32, sig, x32)  # no callback: nothing to call
    t = [torch.full((2, 2), v, dtype=F64) for v in (1.0, 10.0, 100.0)]
    w = [torch.tensor(v, dtype=F64) for v in (2.0, -0.5, 0.25)]
    torch.testing.assert_close(weighted_sum(w, t), torch.full((2, 2), 2.0 - 5.0 + 25.0, dtype=F64))


def test_directed_keeps_the_state_dtype():
    from diffode.core.stage import Stage, directed

    x_from, x_to = torch.zeros(2, 3, dtype=torch.float32), torch.ones(2, 3, dtype=torch.float32)
    out = directed(Stage(torch.tensor(1.0), c=torch.tensor([0.5, 2.0], dtype=F64)), x_from, x_to)
    assert out.dtype == torch.float32 and out.tolist() == [[0.5] * 3, [2.0] * 3]
    assert directed(Stage(torch.tensor(1.0)), x_from, x_to) is x_to


def test_dpmpp_plugin_orders_come_from_the_grid_with_lambda_midpoints():
    from diffode.core.solvers.dpmpp import _lambda_midpoints_inserted

    sig = torch.tensor([8.0, 2.0, 1.0], dtype=F64)
    torch.testing.assert_close(_lambda_midpoints_inserted(sig),
                               torch.tensor([8.0, 4.0, 2.0, 2.0 ** 0.5, 1.0], dtype=F64), rtol=1e-15, atol=0)


def _model_inputs(spec, gmm, sig) -> dict:
    """What a solver takes from the model (Analytic-DPM's moments), estimated on exact samples of the mixture."""
    if "eps_moments" not in spec.model_inputs:
        return {}
    from diffode.core.solvers.analytic_dpm import estimate_eps_moments

    g = torch.Generator().manual_seed(1)
    return {"eps_moments": estimate_eps_moments(gmm, gmm.sample(256, g), sig[:-1], g)}


def test_every_solver_conditions_the_network_on_net_sigmas():
    """LD3's decoupled grid: with net_sigmas the network never sees a grid sigma itself (the coefficients use
    the grid, the conditioning the net_sigmas), and the first call is at net_sigmas[0]."""
    from diffode.core.denoisers import make_gmm
    from diffode.core.grids import make_grid
    from diffode.core.solvers import SOLVERS

    gmm = make_gmm(2, components=3, seed=0, std=0.3)
    x = 80.0 * torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    sig = make_grid("logsnr", 5)
    net = sig * 1.1
    for name, spec in SOLVERS.items():
        if spec.adaptive or name == "consistency":
            continue
        seen = []

        def D(x, s):
            seen.append(float(torch.as_tensor(s).reshape(-1)[0]))
            return gmm(x, s)

        opts = {"generator": torch.Generator().manual_seed(0)} if spec.stochastic else {}
        spec.fn(D, x, sig, net_sigmas=net, **opts, **_model_inputs(spec, gmm, sig))
        # annealed Langevin makes no call at sigma_0 (x_T is the prior sample there): its first level is sigma_1
        assert seen[0] == float(net[1] if name == "annealed_langevin" else net[0]), name
        assert not set(seen) & set(sig.tolist()), (name, seen)


def test_every_solver_reports_each_step_to_its_callback():
    from diffode.core.denoisers import make_gmm
    from diffode.core.grids import make_grid
    from diffode.core.solvers import SOLVERS

    gmm = make_gmm(2, components=3, seed=0, std=0.3)
    x = 80.0 * torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    sig = make_grid("logsnr", 5)
    for name, spec in SOLVERS.items():
        if spec.adaptive:
            continue
        got = []
        opts = {"generator": torch.Generator().manual_seed(0)} if spec.stochastic else {}
        out = spec.fn(gmm, x, sig, callback=got.append, **opts, **_model_inputs(spec, gmm, sig))
        assert [c["i"] for c in got] == list(range(5)), name
        assert [float(c["sigma"]) for c in got] == sig[1:].tolist(), name
        assert got[-1]["x"] is out or torch.equal(got[-1]["x"], out), name
