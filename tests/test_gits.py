"""GITS (diffode/core/gits.py): the DP against hand-solved and brute-force answers, the costs by hand."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from diffode.core.denoisers import make_gmm
from diffode.core.gits import START_POINT_SOLVERS, cost_matrix, deviation, gits_dp, path_cost, teacher_trajectory
from diffode.core.grids import make_grid

F64 = torch.float64
INF = math.inf


def _toy():
    """5 fine points (M = 4). Two-step paths 0 -> i -> 4 cost C[0, i] + coeff C[i, 4]:
        i = 1: 1 + 5 coeff,  i = 2: 3 + 2.5 coeff,  i = 3: 5 + 1 coeff
    coeff = 1: 6, 5.5, 6 -> i = 2;  coeff = 2: 11, 8, 7 -> i = 3;  coeff = 0.5: 3.5, 4.25, 5.5 -> i = 1.
    Three-step paths 0 -> a -> b -> 4 at coeff = 1 (C[1, 2] = 1, C[1, 3] = 4, C[2, 3] = 0.5):
        (1, 2): 1 + 1 + 2.5 = 4.5,  (1, 3): 1 + 4 + 1 = 6,  (2, 3): 3 + 0.5 + 1 = 4.5 -> tie, the smaller
        next index wins: (1, 2). At coeff = 2: (1, 2): 1 + 2 + 10 = 13, (1, 3): 1 + 8 + 4 = 13,
        (2, 3): 3 + 1 + 4 = 8 -> (2, 3).
    One step: 0 -> 4, cost C[0, 4] = 9."""
    C = torch.full((5, 5), INF, dtype=F64)
    for (i, j), v in {(0, 1): 1, (0, 2): 3, (0, 3): 5, (0, 4): 9, (1, 2): 1, (1, 3): 4, (1, 4): 5,
                      (2, 3): 0.5, (2, 4): 2.5, (3, 4): 1}.items():
        C[i, j] = v
    return C


@pytest.mark.parametrize("K,coeff,path", [(2, 1.0, [0, 2, 4]), (2, 2.0, [0, 3, 4]), (2, 0.5, [0, 1, 4]),
                                          (3, 1.0, [0, 1, 2, 4]), (3, 2.0, [0, 2, 3, 4]), (1, 1.15, [0, 4]),
                                          (4, 1.15, [0, 1, 2, 3, 4])])
def test_dp_on_a_hand_solved_cost_matrix(K, coeff, path):
    assert gits_dp(_toy(), K, coeff) == path


def _brute_force(C, K, coeff):
    M = C.shape[0] - 1
    best = None
    for mid in itertools.combinations(range(1, M), K - 1):
        p = [0, *mid, M]
        c = path_cost(C, p, coeff)
        if best is None or c < best[0] - 1e-12:
            best = (c, p)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_dp_equals_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    M = 9
    C = torch.triu(torch.rand(M + 1, M + 1, dtype=F64, generator=g) * 3 - 0.5, diagonal=1)  # some negative costs
    C[torch.tril(torch.ones(M + 1, M + 1, dtype=torch.bool))] = INF
    for K in (1, 2, 3, 5, 9):
        for coeff in (0.8, 1.0, 1.15):
            cost, _ = _brute_force(C, K, coeff)
            p = gits_dp(C, K, coeff)
            assert len(p) == K + 1 and p[0] == 0 and p[-1] == M and all(a < b for a, b in zip(p, p[1:]))
            assert path_cost(C, p, coeff) == pytest.approx(cost, abs=1e-12)


def test_dp_rejects_impossible_step_counts():
    with pytest.raises(ValueError, match="1 <= K <= M"):
        gits_dp(_toy(), 5)


def test_costs_by_hand():
    """One sample in 2-D, sigmas 3 > 2 > 1 (M = 2); the teacher bends at sigma 2."""
    sigmas = torch.tensor([3.0, 2.0, 1.0], dtype=F64)
    xs = torch.tensor([[[0.0, 0.0]], [[1.0, 0.0]], [[1.0, 1.0]]], dtype=F64)
    ds = torch.tensor([[[-1.0, 0.0]], [[0.0, -1.0]]], dtype=F64)  # exact slopes of each straight piece
    l2, l1 = cost_matrix(xs, ds, sigmas, "l2"), cost_matrix(xs, ds, sigmas, "l1")
    # 0 -> 1 and 1 -> 2 are exact; 0 -> 2 lands at (0, 0) + (1 - 3)(-1, 0) = (2, 0), off by (1, -1)
    assert l2[0, 1] == 0 and l2[1, 2] == 0 and l2[0, 2] == pytest.approx(math.sqrt(2))
    assert l1[0, 2] == pytest.approx(2.0)
    assert math.isinf(l2[1, 0]) and math.isinf(l2[0, 0])
    # dev: chord (0,0) -> (1,1); (2, 0) is sqrt(2) off it, the teacher's end point 0: cost sqrt(2) - 0
    dev = cost_matrix(xs, ds, sigmas, "dev")
    assert dev[0, 2] == pytest.approx(math.sqrt(2))
    # 0 -> 1 lands on the teacher's (1, 0): its deviation minus the teacher's own there is 0
    assert dev[0, 1] == pytest.approx(0.0, abs=1e-15)
    assert deviation(xs[1], xs[0], xs[-1]).item() == pytest.approx(1 / math.sqrt(2))


@pytest.mark.parametrize("solver", START_POINT_SOLVERS)
def test_teacher_directions_are_at_the_start_points(solver):
    """The free directions from the callback equal (x_i - D(x_i, sigma_i)) / sigma_i recomputed."""
    gmm = make_gmm(2, 4, seed=0, std=0.2)
    sig = make_grid("edm", 8)
    x_T = 80.0 * torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    xs, ds = teacher_trajectory(gmm, x_T, sig, solver)
    assert xs.shape == (9, 5, 2) and ds.shape == (8, 5, 2)
    redo = torch.stack([(xs[i] - gmm(xs[i], sig[i])) / sig[i] for i in range(8)])
    torch.testing.assert_close(ds, redo, rtol=1e-12, atol=1e-12)


def test_teacher_of_another_solver_pays_for_directions():
    gmm = make_gmm(2, 4, seed=0, std=0.2)
    sig = make_grid("logsnr", 6)
    x_T = 80.0 * torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    xs, ds = teacher_trajectory(gmm, x_T, sig, "unipc_bh1")
    redo = torch.stack([(xs[i] - gmm(xs[i], sig[i])) / sig[i] for i in range(6)])
    torch.testing.assert_close(ds, redo, rtol=1e-12, atol=1e-12)


def test_straight_trajectories_cost_nothing():
    """x(sigma) = a + b sigma is followed exactly by Euler: every cost is 0 and every path is optimal."""
    sig = make_grid("edm", 10)
    a, b = torch.randn(4, 3, dtype=F64), torch.randn(4, 3, dtype=F64)
    xs = a[None] + b[None] * sig[:, None, None]
    ds = b[None].expand(10, 4, 3)
    C = cost_matrix(xs, ds, sig, "l2")
    assert float(C[torch.isfinite(C)].abs().max()) < 1e-12


# -- the method (diffode/methods/gits) ------------------------------------------------------------

def _cfg(tmp_path, *ov):
    from hydra import compose, initialize_config_module

    with initialize_config_module("diffode.conf", version_base="1.3"):
        return compose("train", overrides=["method=gits", "source=gmm2d", f"output_dir={tmp_path}", "trainer=cpu",
                                           "logger=none", "method.n_warmup=12", "method.batch_size=5",
                                           "method.teacher.steps=10", *ov])


def test_method_search_artifacts_and_sampling(tmp_path):
    import lightning as L

    from diffode.artifacts import load_sampler
    from diffode.cli.train import prepare
    from diffode.core.sample import sample
    from diffode.methods.gits import warmup_noise

    spec, options, ctx = prepare(_cfg(tmp_path, "method.nfe=[3,4]", "method.solver=[ipndm,unipc_bh1]",
                                      "method.metric=l2"))
    m = spec.build(options, ctx)
    L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False).fit(m)
    # the mean cost over 12 warm-up samples, whatever the batches (5 + 5 + 2): one direct computation
    x_T = warmup_noise(range(options.seed, options.seed + 12), (2,), 80.0)
    xs, ds = teacher_trajectory(ctx.teacher.denoiser, x_T, m.fine, "ipndm", max_order=4)
    C = cost_matrix(xs, ds, m.fine, "l2")
    fin = torch.isfinite(C)
    assert torch.equal(fin, torch.isfinite(m.cost))
    torch.testing.assert_close(m.cost[fin], C[fin], rtol=1e-12, atol=1e-12)
    paths = spec.export(m, ctx)
    assert sorted(paths) == ["ipndm_nfe3", "ipndm_nfe4", "unipc_bh1_nfe3", "unipc_bh1_nfe4"]
    for name, path in paths.items():
        ls = load_sampler(path)
        nfe = int(name[-1])
        assert ls.label == f"{name.split('_nfe')[0]}/gits" and ls.nfe == nfe
        idx = ls.manifest["gits"]["indices"]
        assert idx == gits_dp(C, nfe, options.coeff)
        torch.testing.assert_close(ls.sigmas, m.fine[idx], rtol=0, atol=0)
        ls.check(ctx.teacher)
        x = ls.sample(ctx.teacher.denoiser, x_T)
        x_grid = sample(ctx.teacher.denoiser, x_T, ls.registry_solver, nfe=nfe, grid="from_file",
                        grid_options={"path": path}, schedule=ctx.teacher.schedule)
        torch.testing.assert_close(x, x_grid, rtol=0, atol=0)


def test_method_bad_settings_fail_before_compute(tmp_path):
    from diffode.cli.errors import ConfigError
    from diffode.cli.train import prepare

    from hydra.errors import ConfigCompositionException

    for ov, msg in ((["method.nfe=11"], "more than the teacher grid"),
                    (["method.solver=heun", "method.nfe=5"], "nfe=5"), (["method.coeff=0"], "coeff"),
                    (["method.teacher.grid=from_file"], "teacher.grid"), (["method.teacher.solver=rk45"], "fixed-step")):
        with pytest.raises(ConfigError, match=msg):
            prepare(_cfg(tmp_path, *ov))
    with pytest.raises(ConfigCompositionException, match="method.metric=cosine"):  # a choice: refused by Hydra
        _cfg(tmp_path, "method.metric=cosine")


def test_grid_config_reads_gits_artifacts():
    from diffode.config import grid_config

    assert grid_config("gits") == ("from_file", {"path": "???"})
