"""Time-step grids: exact definitions, ranges, validation, learned-grid files, gradients."""
from __future__ import annotations

import json
import math

import pytest
import torch

from diffode.artifacts import save_artifact
from diffode.core.grids import GRIDS, load_grid_file, make_grid
from diffode.core.schedules import EDM, VE, DiscreteVP, VPCosine, VPLinear

F64 = torch.float64
SCHEDULES = [None, EDM(), VE(), VPLinear(), VPCosine(), DiscreteVP()]


@pytest.mark.parametrize("name", ["time_uniform", "time_uniform_vp", "time_quadratic", "logsnr", "edm"])
@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: "none" if s is None else s.name)
def test_named_grids_are_decreasing_and_span_the_range(name, schedule):
    g = make_grid(name, 7, schedule)
    lo, hi = (0.002, 80.0) if schedule is None else (schedule.sigma_min, schedule.sigma_max)
    assert g.dtype == F64 and g.shape == (8,)
    assert bool((g[1:] < g[:-1]).all())
    assert float(g[0]) == pytest.approx(hi, rel=1e-12) and float(g[-1]) == pytest.approx(lo, rel=1e-12)


def test_definitions_against_closed_forms():
    n, lo, hi = 6, 0.002, 80.0
    k = torch.arange(n + 1, dtype=F64)
    torch.testing.assert_close(make_grid("logsnr", n), hi * (lo / hi) ** (k / n))
    rho = 7.0
    edm = (hi ** (1 / rho) + k / n * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    torch.testing.assert_close(make_grid("edm", n), edm)
    # EDM's schedule has t = sigma, so time_uniform is uniform in sigma, as is the edm grid with rho = 1.
    torch.testing.assert_close(make_grid("time_uniform", n, EDM()), torch.linspace(hi, lo, n + 1, dtype=F64))
    torch.testing.assert_close(make_grid("edm", n, rho=1.0), torch.linspace(hi, lo, n + 1, dtype=F64))
    q = torch.linspace(math.sqrt(hi), math.sqrt(lo), n + 1, dtype=F64) ** 2
    torch.testing.assert_close(make_grid("time_quadratic", n), q)


def test_vp_time_grids_are_uniform_in_t():
    sch = VPLinear()
    t = sch.t_from_ve_sigma(make_grid("time_uniform", 5, sch))
    torch.testing.assert_close(t, torch.linspace(sch.t_max, sch.t_min, 6, dtype=F64))
    t = sch.t_from_ve_sigma(make_grid("time_quadratic", 5, sch))
    torch.testing.assert_close(t.sqrt(), torch.linspace(sch.t_max**0.5, sch.t_min**0.5, 6, dtype=F64))
    lam = -torch.log(make_grid("logsnr", 5, sch))
    torch.testing.assert_close(lam, torch.linspace(float(sch.lambda_(sch.t_max)), float(sch.lambda_(sch.t_min)),
                                                   6, dtype=F64))


@pytest.mark.parametrize("rho", [1.0, 7.0])
@pytest.mark.parametrize("lo,hi", [(0.002, 80.0), (0.03, 14.6)])
def test_time_uniform_vp_is_diff_samplers_time_uniform(rho, lo, hi):
    """diff-sampler's get_schedule('time_uniform'), re-derived: the VP sigma sqrt(e^(beta_d t^2/2 +
    beta_min t) - 1) with beta_d, beta_min fitted to sigma(1) = sigma_max, sigma(1e-3) = sigma_min, at
    t = (1 + k/N (eps^(1/rho) - 1))^rho."""
    n, eps = 6, 1e-3
    beta_d = 2 * (math.log(lo ** 2 + 1) / eps - math.log(hi ** 2 + 1)) / (eps - 1)
    beta_min = math.log(hi ** 2 + 1) - 0.5 * beta_d
    ts = [(1 + k / n * (eps ** (1 / rho) - 1)) ** rho for k in range(n + 1)]
    ref = torch.tensor([(math.e ** (0.5 * beta_d * t ** 2 + beta_min * t) - 1) ** 0.5 for t in ts], dtype=F64)
    torch.testing.assert_close(make_grid("time_uniform_vp", n, sigma_min=lo, sigma_max=hi, rho=rho), ref,
                               rtol=1e-10, atol=0)
    # not the no-schedule time_uniform (uniform in sigma)
    assert float((make_grid("time_uniform", n, sigma_min=lo, sigma_max=hi) - ref).abs().max()) > 1e-3 * hi


def test_time_uniform_vp_on_the_vp_sde_range_is_its_time_uniform():
    """On VPLinear's own range the fit recovers its betas: the grid is time_uniform under that schedule."""
    sch = VPLinear()
    torch.testing.assert_close(make_grid("time_uniform_vp", 7, sch), make_grid("time_uniform", 7, sch),
                               rtol=1e-10, atol=0)
    with pytest.raises(ValueError, match="0 < t_min < 1"):
        make_grid("time_uniform_vp", 4, t_min=1.0)


def test_sigma_overrides_and_range_checks():
    g = make_grid("logsnr", 4, EDM(), sigma_min=0.01, sigma_max=10.0)
    assert float(g[0]) == 10.0 and float(g[-1]) == 0.01
    with pytest.raises(ValueError, match="leaves the schedule's range"):
        make_grid("logsnr", 4, EDM(), sigma_max=100.0)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        make_grid("logsnr", 4, sigma_min=5.0, sigma_max=1.0)


def test_unknown_grid_and_option():
    with pytest.raises(ValueError, match="unknown grid 'karras'"):
        make_grid("karras", 4)
    with pytest.raises(ValueError, match="does not take option"):
        make_grid("logsnr", 4, rho=7)
    with pytest.raises(ValueError, match="steps >= 1"):
        make_grid("logsnr", 0)
    assert set(GRIDS) == {"time_uniform", "time_uniform_vp", "time_quadratic", "logsnr", "edm", "explicit", "from_file"}


def test_explicit_grid_validation():
    good = [80.0, 10.0, 1.0, 0.1, 0.002]
    torch.testing.assert_close(make_grid("explicit", 4, sigmas=good), torch.tensor(good, dtype=F64))
    with pytest.raises(ValueError, match="strictly decreasing.*sigma\\[1\\]"):
        make_grid("explicit", 4, sigmas=[80.0, 10.0, 10.0, 0.1, 0.002])
    with pytest.raises(ValueError, match="outside the schedule's range"):
        make_grid("explicit", 4, EDM(), sigmas=[100.0, 10.0, 1.0, 0.1, 0.002])
    with pytest.raises(ValueError, match="outside the schedule's range"):
        make_grid("explicit", 4, EDM(), sigmas=[80.0, 10.0, 1.0, 0.1, 0.001])
    with pytest.raises(ValueError, match="5 sigmas \\(4 steps\\) but 3 steps"):
        make_grid("explicit", 3, sigmas=good)
    with pytest.raises(ValueError, match="finite and > 0"):
        make_grid("explicit", 4, sigmas=[80.0, 10.0, 1.0, 0.1, 0.0])


def test_explicit_tensor_keeps_grad():
    s = torch.tensor([80.0, 5.0, 0.3, 0.002], dtype=F64, requires_grad=True)
    g = make_grid("explicit", 3, EDM(), sigmas=s)
    (g * torch.arange(4, dtype=F64)).sum().backward()
    torch.testing.assert_close(s.grad, torch.arange(4, dtype=F64))


def test_grid_file_roundtrip_and_mismatches(tmp_path):
    p = tmp_path / "ld3"
    sig = make_grid("logsnr", 5, EDM())
    save_artifact(p, kind="ld3", sigmas=sig, solver="dpmpp_2m", nfe=5, schedule=EDM(), net_sigmas=sig * 1.01,
                  model={"kind": "gmm"})
    rec = json.loads((p / "manifest.json").read_text())
    assert rec["solver"] == "dpmpp_2m" and rec["nfe"] == 5 and rec["schedule"]["name"] == "edm"
    g = make_grid("from_file", 5, EDM(), path=str(p), solver="dpmpp_2m", nfe=5)
    torch.testing.assert_close(g, sig)
    s2, net = load_grid_file(p, 5, EDM(), "dpmpp_2m", 5)
    torch.testing.assert_close(net, sig * 1.01)
    with pytest.raises(ValueError, match="learned for solver='dpmpp_2m' but is used with solver='heun'"):
        make_grid("from_file", 5, EDM(), path=str(p), solver="heun", nfe=5)
    with pytest.raises(ValueError, match="learned for nfe=5 but is used with nfe=6"):
        make_grid("from_file", 5, EDM(), path=str(p), solver="dpmpp_2m", nfe=6)
    with pytest.raises(ValueError, match="learned for schedule='edm' but is used with schedule='vp_linear'"):
        make_grid("from_file", 5, VPLinear(), path=str(p), solver="dpmpp_2m", nfe=5)
    with pytest.raises(ValueError, match="6 sigmas \\(5 steps\\) but 4 steps"):
        make_grid("from_file", 4, EDM(), path=str(p), solver="dpmpp_2m", nfe=5)
    with pytest.raises(ValueError, match="does not exist"):
        make_grid("from_file", 5, path=str(tmp_path / "missing.json"))


def test_grid_file_with_ld3_style_schedule_record(tmp_path):
    """LD3 artifacts record the schedule as {"name": ..., "params": ...} plus extra keys."""
    p = tmp_path / "ld3.json"
    sig = make_grid("logsnr", 3, VPLinear())
    p.write_text(json.dumps(dict(format="diffode.learned_grid/1", sigmas=sig.tolist(), net_sigmas=sig.tolist(),
                                 solver="ipndm", nfe=3, steps=3, schedule={"name": "vp_linear", "params": {}})))
    torch.testing.assert_close(make_grid("from_file", 3, VPLinear(), path=str(p), solver="ipndm", nfe=3), sig)
    with pytest.raises(ValueError, match="schedule='vp_linear' but is used with schedule='edm'"):
        make_grid("from_file", 3, None, path=str(p), solver="ipndm", nfe=3)
