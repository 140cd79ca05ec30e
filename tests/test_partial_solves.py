"""Partial solves (sample(start=, stop=)), the solver specs' multistep flag, and the forwards count."""
from __future__ import annotations

import pytest
import torch

from diffode.core.denoisers import make_gmm
from diffode.core.sample import prior_sample, sample
from diffode.core.schedules import EDM
from diffode.core.solvers import SOLVERS

GMM = make_gmm(2, components=4, seed=0, std=0.2)
FIXED = sorted(n for n, s in SOLVERS.items() if not s.adaptive)

pytestmark = pytest.mark.usefixtures("one_thread")


def _x_T(n=4):
    return prior_sample((n, 2), 80.0, generator=torch.Generator().manual_seed(0))


def _model_inputs(name, grid) -> dict:
    """Options a Model would compute for the solver (SolverSpec.model_inputs): Analytic-DPM's moments."""
    if "eps_moments" not in SOLVERS[name].model_inputs:
        return {}
    from diffode.core.solvers.analytic_dpm import estimate_eps_moments

    x0 = GMM.sample(2000, torch.Generator().manual_seed(2))
    return {"eps_moments": estimate_eps_moments(GMM, x0, grid[:-1], torch.Generator().manual_seed(3))}


def _run(name, x, **kw):
    g = torch.Generator().manual_seed(1)  # the stochastic solvers draw the same noise in every run
    grid = kw.pop("grid")
    return sample(GMM, x, solver=name, nfe=None, grid=grid, generator=g, **_model_inputs(name, grid), **kw)


@pytest.mark.parametrize("name", FIXED)
def test_a_stopped_solve_is_the_first_k_steps_of_the_full_solve(name):
    grid = torch.tensor([80.0, 20.0, 5.0, 1.0, 0.3, 0.05, 0.002], dtype=torch.float64)
    x_T = _x_T()
    full, traj = _run(name, x_T, grid=grid, return_trajectory=True)
    assert torch.equal(traj[-1], full)
    for k in range(1, len(grid)):
        x, info = _run(name, x_T, grid=grid, stop=k, return_info=True)
        assert torch.equal(x, traj[k - 1]), (name, k)
        assert info["stop"] == k and info["steps"] == len(grid) - 1


@pytest.mark.parametrize("name", [n for n in FIXED if not SOLVERS[n].stochastic])
def test_the_multistep_flag_says_whether_a_tail_solve_is_the_full_solves_tail(name):
    """start=j continues from the full solve's state at sigmas[j]: a single-step solver then ends exactly where
    the full solve ends; a multistep one starts its history afresh there, so it ends elsewhere."""
    grid = torch.tensor([80.0, 20.0, 5.0, 1.0, 0.3, 0.05, 0.002], dtype=torch.float64)
    full, traj = _run(name, _x_T(), grid=grid, return_trajectory=True)
    seen = []
    tail = _run(name, traj[1], grid=grid, start=2, callback=lambda info: seen.append(info["i"]))
    assert seen == [2, 3, 4, 5]  # step indices of the full grid
    same = torch.allclose(tail, full, rtol=0, atol=1e-12)
    assert same != SOLVERS[name].multistep, f"{name}: multistep={SOLVERS[name].multistep} but tail==full is {same}"


def test_the_stage_hook_sees_the_full_grids_step_index():
    grid = torch.tensor([80.0, 10.0, 1.0, 0.1, 0.002], dtype=torch.float64)
    seen = []

    def hook(i, sigma_cur, sigma_next, x):
        seen.append(i)
        return torch.sqrt(sigma_cur * sigma_next)

    sample(GMM, _x_T(), solver="dpm_solver_2", nfe=None, grid=grid, start=1, stop=3, midpoints=hook)
    assert seen == [1, 2]


def test_a_solver_whose_steps_span_several_intervals_stops_only_between_them():
    """dpm_solver_3 with inner=grid takes one step of order 3 over three grid intervals: it can stop after
    interval 3 (the state the full solve holds there), not inside."""
    grid = torch.tensor([80.0, 20.0, 5.0, 1.0, 0.3, 0.05, 0.002], dtype=torch.float64)
    kw = dict(solver="dpm_solver_3", nfe=None, grid=grid, inner="grid")
    full, traj = sample(GMM, _x_T(), **kw, return_trajectory=True)
    assert len(traj) == 2
    assert torch.equal(sample(GMM, _x_T(), **kw, stop=3), traj[0])
    with pytest.raises(ValueError, match="cannot stop after step 2"):
        sample(GMM, _x_T(), **kw, stop=2)


def test_partial_solve_errors():
    grid = torch.tensor([80.0, 1.0, 0.002], dtype=torch.float64)
    for kw, match in ((dict(stop=3), "sub-range"), (dict(start=2), "sub-range"), (dict(start=1, stop=1), "sub-range"),
                      (dict(start=1, afs=True), "afs"), (dict(stop=1.5), "integer")):
        with pytest.raises(ValueError, match=match):
            sample(GMM, _x_T(), solver="heun", nfe=None, grid=grid, **kw)


class _Costly(torch.nn.Module):
    """The mixture's denoiser whose calls above sigma = 1 cost two network passes (as a guided call would)."""

    def forward(self, x, sigma):
        return GMM(x, sigma)

    def forwards(self, sigma):
        return 2 if float(torch.as_tensor(sigma).max()) > 1.0 else 1


@pytest.mark.parametrize("afs", [False, True])
def test_forwards_add_up_each_calls_cost(afs):
    nfe = 8 - int(afs)  # AFS answers the first call in closed form
    x, info = sample(_Costly(), _x_T(), solver="heun", nfe=nfe, grid="edm", schedule=EDM(), afs=afs, return_info=True)
    sig = info["sigmas"]
    # heun on 4 steps calls at sigmas[i] and sigmas[i + 1] of each step (the last step's second call at 0.002)
    calls = [s for i in range(4) for s in (sig[i], sig[i + 1])][int(afs):]
    assert info["nfe"] == len(calls) == nfe
    assert info["forwards"] == sum(2 if float(s) > 1 else 1 for s in calls)
    plain = sample(GMM, _x_T(), solver="heun", nfe=nfe, grid="edm", schedule=EDM(), afs=afs, return_info=True)[1]
    assert plain["forwards"] == plain["nfe"]
