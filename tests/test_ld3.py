"""LD3: the learnable grid, its ball, gradients through the solvers, training, the artifact."""
import json
import math

import pytest
import torch

from diffode.core.learned_grid import (
    LearnedGrid, ball_radius, ld3_sigmas, logits_for_grid, project_ball, shift_window, to_space,
)
from diffode.core.schedules import EDM, VPLinear

D64 = torch.float64
SETTINGS = [("lambda", None, 0.002, 80.0), ("t", VPLinear(), None, None), ("t", EDM(), None, None)]


def _bounds(schedule, smin, smax):
    return (schedule.sigma_min, schedule.sigma_max) if schedule is not None else (smin, smax)


def _logit_draws(n, g):
    yield torch.zeros(n + 1, dtype=D64)
    for scale in (1.0, 10.0, 1e3, 1e6):
        yield torch.randn(n + 1, dtype=D64, generator=g) * scale
    one_hot = torch.full((n + 1,), -1e4, dtype=D64)
    one_hot[n // 2 + 1] = 1e4  # all mass on one gap: the others underflow to exact 0 in a plain softmax
    yield one_hot


@pytest.mark.parametrize("space,schedule,smin,smax", SETTINGS)
@pytest.mark.parametrize("n", [1, 2, 4, 10, 25])
def test_grid_strictly_decreasing_with_fixed_endpoints_for_any_logits(space, schedule, smin, smax, n):
    smin, smax = _bounds(schedule, smin, smax)
    g = torch.Generator().manual_seed(n)
    for xi in _logit_draws(n, g):
        xi_c = torch.randn(n + 1, dtype=D64, generator=g) * 100.0  # far outside the window: clamped
        sigmas, net_sigmas = ld3_sigmas(xi, smin, smax, space, schedule, xi_c=xi_c, win_rate=0.45)
        for s in (sigmas, net_sigmas):
            assert s.dtype == D64 and s.shape == (n + 1,)
            assert s[0].item() == smax and s[-1].item() == smin
            assert bool((s[1:] < s[:-1]).all()), s
        # At the largest window (0.5) two neighbours may meet but never cross.
        _, net_half = ld3_sigmas(xi, smin, smax, space, schedule, xi_c=xi_c, win_rate=0.5)
        assert bool((net_half[1:] <= net_half[:-1]).all())
        # The shifts stay inside +-win_rate * the smaller neighbouring gap in the grid's space.
        u, u_c = to_space(sigmas, space, schedule), to_space(net_sigmas, space, schedule)
        gaps = (u[1:] - u[:-1]).abs()
        for i in range(1, n):
            assert abs(u_c[i] - u[i]) <= 0.45 * min(gaps[i - 1], gaps[i]) * (1 + 1e-9) + 1e-12


def test_uniform_init_is_uniform_in_its_space():
    s, _ = ld3_sigmas(torch.zeros(7, dtype=D64), 0.002, 80.0, "lambda")
    expected = torch.exp(torch.linspace(math.log(80.0), math.log(0.002), 7, dtype=D64))
    assert torch.allclose(s, expected, rtol=1e-12)
    sch = VPLinear()
    s, _ = ld3_sigmas(torch.zeros(7, dtype=D64), sch.sigma_min, sch.sigma_max, "t", sch)
    t = torch.linspace(sch.t_max, sch.t_min, 7, dtype=D64)
    assert torch.allclose(s, sch.ve_sigma(t), rtol=1e-10)


@pytest.mark.parametrize("space,schedule,smin,smax", SETTINGS)
def test_fit_to_edm_rho7_grid_is_exact(space, schedule, smin, smax):
    smin, smax = _bounds(schedule, smin, smax)
    n, rho = 6, 7.0
    i = torch.arange(n + 1, dtype=D64) / n
    edm = (smax ** (1 / rho) + i * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho  # Karras et al. eq. 5
    grid = LearnedGrid(n, smin, smax, space, schedule, init=edm, decoupled=True)
    sigmas, net_sigmas = grid()
    assert torch.allclose(sigmas, edm, rtol=1e-10, atol=0)
    assert torch.equal(sigmas, net_sigmas)  # zero shifts at init


def test_shift_window_uses_the_real_gaps_not_the_logits():
    # The reference code's lambda-mode window is win_rate * min|diff(logits)|, i.e. 0 at the uniform init,
    # which switches the decoupling off. Here the window at the uniform init is half a lambda step.
    n = 5
    xi = torch.zeros(n + 1, dtype=D64)
    xi_c = torch.full((n + 1,), 1e3, dtype=D64)
    sigmas, net_sigmas = ld3_sigmas(xi, 0.002, 80.0, "lambda", xi_c=xi_c, win_rate=0.5)
    step = math.log(80.0 / 0.002) / n
    shift = torch.log(sigmas / net_sigmas)  # = lambda_c - lambda
    assert shift[0] == 0 and shift[-1] == 0
    assert torch.allclose(shift[1:-1], torch.full((n - 1,), 0.5 * step, dtype=D64), rtol=1e-12)
    w = shift_window(to_space(sigmas, "lambda"), 0.5)
    assert w[0] == 0 and w[-1] == 0 and bool((w[1:-1] > 0).all())


def test_logits_round_trip_through_fit():
    g = torch.Generator().manual_seed(3)
    xi = torch.randn(9, dtype=D64, generator=g)
    s, _ = ld3_sigmas(xi, 0.01, 50.0, "lambda")
    s2, _ = ld3_sigmas(logits_for_grid(s, "lambda"), 0.01, 50.0, "lambda")
    assert torch.allclose(s, s2, rtol=1e-12)


def test_ball_projection_never_leaves_the_ball():
    g = torch.Generator().manual_seed(0)
    for shape in [(64, 2), (32, 1, 8, 8), (16, 3, 4, 4)]:
        for r in (0.0, 1e-3, 0.192, 5.0):
            c = torch.randn(shape, dtype=D64, generator=g)
            x = c + torch.randn(shape, dtype=D64, generator=g) * torch.logspace(-4, 1, shape[0], dtype=D64).reshape(
                -1, *([1] * (len(shape) - 1)))
            p = project_ball(x, c, r)
            d_in, d_out = (x - c).flatten(1).norm(dim=1), (p - c).flatten(1).norm(dim=1)
            assert bool((d_out <= r * (1 + 1e-12) + 1e-300).all())
            inside = d_in <= r
            assert torch.equal(p[inside], x[inside])  # points already inside do not move
            out = ~inside
            if out.any() and r > 0:  # outside: onto the sphere, along the same direction
                assert torch.allclose(d_out[out], torch.full_like(d_out[out], r), rtol=1e-12)
                cos = ((p - c).flatten(1)[out] * (x - c).flatten(1)[out]).sum(1) / (d_in[out] * d_out[out])
                assert torch.allclose(cos, torch.ones_like(cos), atol=1e-12)


def test_ball_radius_matches_ld3():
    # LD3's prior_bound = 0.001 H W C / N^2: 0.192 for CIFAR-10 at N=4 (the paper's "r=0.19").
    assert ball_radius(0.001, 3 * 32 * 32, 4) == pytest.approx(0.192)
    assert ball_radius(0.001, 3 * 32 * 32, 10) == pytest.approx(0.03072)


# -- gradients through the solvers, training, artifact ------------------------------------------

import lightning as L  # noqa: E402

from diffode.core.denoisers import make_gmm  # noqa: E402
from diffode.core.sample import sample  # noqa: E402
from diffode.methods.ld3 import Checkpointed, LD3Module  # noqa: E402
from diffode.methods.registry import method_options  # noqa: E402
from diffode.methods.ld3.teacher import cached_pairs, make_pairs, start_noise  # noqa: E402

EDM_S = EDM()


def _gmm(dim=2, layout="ring"):
    return make_gmm(dim=dim, components=4 if layout == "ring" else 3, seed=0, layout=layout, std=0.2)


@pytest.mark.parametrize("solver", ["dpmpp_3m", "unipc_bh1", "ipndm"])
def test_loss_gradient_in_logits_and_shifts_matches_finite_differences(solver):
    D = _gmm()
    g = torch.Generator().manual_seed(1)
    z = torch.randn(4, 2, dtype=D64, generator=g)
    target = torch.randn(4, 2, dtype=D64, generator=g)
    n = 4

    def loss(xi, xi_c, denoiser=D):
        sigmas, net = ld3_sigmas(xi, 0.002, 80.0, "lambda", xi_c=xi_c, win_rate=0.5)
        x = sample(denoiser, 80.0 * z, solver=solver, nfe=n, grid=sigmas, net_sigmas=net)
        return (x - target).pow(2).mean()

    xi = (0.3 * torch.randn(n + 1, dtype=D64, generator=g)).requires_grad_()
    xi_c = (0.05 * torch.randn(n + 1, dtype=D64, generator=g)).requires_grad_()  # inside the window
    assert torch.autograd.gradcheck(loss, (xi, xi_c), eps=1e-6, atol=1e-7, rtol=1e-5)
    # Checkpointing each network call recomputes, it does not change the gradient.
    g1 = torch.autograd.grad(loss(xi, xi_c), (xi, xi_c))
    g2 = torch.autograd.grad(loss(xi, xi_c, Checkpointed(D)), (xi, xi_c))
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-15)


CHEAP_TEACHER = {"solver": "dpmpp_3m", "nfe": 24, "grid": "logsnr", "grid_options": {}, "options": {}}


def _module(tmp_path, **kw):
    base = dict(solver="dpmpp_3m", nfe=3, distance="l2", n_pairs=24, teacher=CHEAP_TEACHER,
                rounds_logits=2, rounds_joint=2, batch_size=4, cache_dir=str(tmp_path / "cache"),
                init_grid="uniform", val_every=1, checkpointing=False)  # a 12-update run: validate after every update
    base.update(kw)
    D = base.pop("denoiser", None) or _gmm()
    shape = base.pop("shape", (D.dim,))
    return LD3Module(D, shape, EDM_S, EDM_S.sigma_min, EDM_S.sigma_max, {"kind": "gmm-test"},
                     method_options("ld3", **base))


def _fit(module, **kw):
    trainer = L.Trainer(max_epochs=module.cfg.rounds_logits + module.cfg.rounds_joint, accelerator="cpu",
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, **kw)
    trainer.fit(module)
    return trainer


def test_short_run_on_the_gmm_lowers_validation_loss_and_round_trips_the_artifact(tmp_path):
    m = _module(tmp_path)
    _fit(m)
    vals = [h["val"] for h in m.history if "val" in h]
    assert m.best["val"] < 0.5 * vals[0], vals  # at least halves the held-out error of the uniform grid
    assert m.best["val"] == pytest.approx(m.val_loss(), rel=1e-9)  # the best grid is the one kept
    # Held-out noise that is not in the pairs: the learned grid beats the logsnr grid it started from.
    z = start_noise(range(1000, 1200), (2,), 0)
    sigmas, net = m.grid()
    ref = sample(m.denoiser, 80.0 * z, solver="dpmpp_3m", nfe=24, grid="logsnr", schedule=EDM_S)
    err = lambda x: (x - ref).pow(2).sum(1).mean().sqrt()  # noqa: E731
    learned = sample(m.denoiser, 80.0 * z, solver="dpmpp_3m", nfe=3, grid=sigmas.detach(), net_sigmas=net.detach())
    uniform = sample(m.denoiser, 80.0 * z, solver="dpmpp_3m", nfe=3, grid="logsnr", schedule=EDM_S)
    assert err(learned) < err(uniform)

    # Artifact: the export, loads through grid=from_file (with its net_sigmas) and load_sampler ...
    path = m.save(tmp_path / "art") / "manifest.json"
    art = json.loads(path.read_text())
    for key in ("sigmas", "net_sigmas", "solver", "nfe", "schedule", "model", "training", "history", "metrics"):
        assert key in art
    assert art["training"]["teacher"] == CHEAP_TEACHER and art["metrics"]["val_best"] == m.best["val"]
    from diffode.artifacts import load_sampler
    from diffode.models import Model

    ls = load_sampler(tmp_path / "art")
    assert ls.label == "dpmpp_3m/ld3" and ls.nfe == 3
    assert torch.allclose(ls.sample(m.denoiser, 80.0 * z), learned, rtol=1e-12, atol=1e-12)
    same = Model(m.denoiser, (2,), EDM_S, 0.002, 80.0, {"kind": "gmm-test"}, "gmm")
    ls.check(same)
    with pytest.raises(ValueError, match="another model"):
        ls.check(Model(m.denoiser, (2,), EDM_S, 0.002, 80.0, {"kind": "checkpoint", "sha256": "0"}, "digits"))
    with pytest.raises(ValueError, match="nfe=3, not nfe=4"):
        ls.check(same, nfe=4)
    with pytest.raises(ValueError, match="schedule"):
        ls.check(Model(m.denoiser, (2,), VPLinear(), 0.002, 80.0, {"kind": "gmm-test"}, "gmm"))
    x_file = sample(m.denoiser, 80.0 * z, solver="dpmpp_3m", nfe=3, grid="from_file",
                    grid_options={"path": str(path)}, schedule=EDM_S)
    assert torch.allclose(x_file, learned, rtol=1e-12, atol=1e-12)
    # ... and is refused for another solver, NFE or schedule, naming which.
    with pytest.raises(ValueError, match="solver"):
        sample(m.denoiser, 80.0 * z, solver="unipc_bh1", nfe=3, grid="from_file", grid_options={"path": str(path)},
               schedule=EDM_S)
    with pytest.raises(ValueError, match="nfe|steps"):
        sample(m.denoiser, 80.0 * z, solver="dpmpp_3m", nfe=4, grid="from_file", grid_options={"path": str(path)},
               schedule=EDM_S)
    with pytest.raises(ValueError, match="schedule"):
        sample(m.denoiser, 80.0 * z, solver="dpmpp_3m", nfe=3, grid="from_file", grid_options={"path": str(path)},
               schedule=VPLinear())


def test_soft_loss_latents_stay_in_the_ball_and_only_move_when_better(tmp_path):
    m = _module(tmp_path, gamma=0.5, rounds_logits=1, rounds_joint=1)  # a large ball so the latents move
    _fit(m)
    d = (m.z_soft - m.z).flatten(1).norm(dim=1)
    assert bool((d <= m.radius * (1 + 1e-12)).all())
    assert bool((d > 0).any())
    hard = _module(tmp_path, gamma=0.0, rounds_logits=1, rounds_joint=1)
    _fit(hard)
    assert torch.equal(hard.z_soft, hard.z)  # r = 0: the hard loss, latents never move


def test_soft_ball_radius_is_gamma_dim_over_n_squared_in_units_of_sigma_T(tmp_path):
    """LD3's ball: |x'_T - x_T| <= r sigma_T with r = gamma * dim / N^2, computed here from the definition.
    A learning rate far beyond the ball puts every accepted latent on its sphere, so the distance the
    latents moved (in units of sigma_T = sigma_max) must be exactly r: not r * sigma_max, not r / N."""
    gamma, dim, nfe = 0.5, 2, 3
    N = nfe  # dpmpp_3m makes one call per step
    r = gamma * dim / N**2
    m = _module(tmp_path, gamma=gamma, nfe=nfe, rounds_logits=1, rounds_joint=1, lr_latent=1e6)
    _fit(m)
    d = (m.z_soft - m.z).flatten(1).norm(dim=1)  # the latents are x_T / sigma_T
    moved = d > 0
    assert int(moved.sum()) >= 3, d
    torch.testing.assert_close(d[moved], torch.full_like(d[moved], r), rtol=1e-9, atol=0)


def test_teacher_pairs_do_not_depend_on_the_number_of_devices_and_are_cached(tmp_path):
    D = _gmm()
    args = (D, (2,), 7, 3, CHEAP_TEACHER, EDM_S, EDM_S.sigma_min, EDM_S.sigma_max)
    z1, x1 = make_pairs(*args)
    # Simulated 2-rank all_gather: rank 1 runs first and its shards are handed to rank 0's gather.
    shards = []
    make_pairs(*args, rank=1, world=2, all_gather=lambda t: shards.append(t) or t[None])
    calls = iter(shards)
    z2, x2 = make_pairs(*args, rank=0, world=2, all_gather=lambda t: torch.stack([t, next(calls)]))
    assert torch.equal(z1, z2) and torch.allclose(x1, x2, rtol=1e-12, atol=1e-12)
    spec = {"k": 1}
    za, xa, path = cached_pairs(tmp_path, spec, lambda: (z1, x1))
    zb, xb, path_b = cached_pairs(tmp_path, spec, lambda: pytest.fail("should load from the cache"))
    assert path == path_b and torch.equal(za, zb) and torch.equal(xa, xb)


def test_lpips_distance_path_with_a_random_backbone(tmp_path):
    # RANDOM-BACKBONE LPIPS (lpips pnet_rand): exercises the code path only, its values mean nothing.
    D = make_gmm(dim=64, components=3, seed=0, std=0.2)  # 64-D mixture seen as 1x8x8 images
    m = _module(tmp_path, denoiser=D, shape=(1, 8, 8), distance="lpips", lpips_net="alex",
                lpips_random_backbone=True, n_pairs=4, batch_size=2, rounds_logits=1, rounds_joint=1, nfe=3)
    _fit(m, limit_train_batches=1)
    assert all(math.isfinite(h["val"]) for h in m.history if "val" in h)
    # The distance is differentiable all the way back to the logits and to x'_T.
    z = m.z[:2].clone().requires_grad_()
    m.grid.xi.grad = None
    m.loss(z, m.x0[:2]).sum().backward()
    for g in (m.grid.xi.grad[1:], z.grad):
        assert bool(torch.isfinite(g).all()) and float(g.abs().max()) > 0
    assert m.lpips is not None and m.lpips.random_backbone


def test_lpips_without_weights_fails_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    with pytest.raises(FileNotFoundError, match="fetch-weights"):
        _module(tmp_path, distance="lpips", lpips_net="vgg")


def test_runner_composes_ld3_and_bad_settings_fail_before_compute(tmp_path):
    from hydra import compose, initialize_config_module

    from diffode.cli.errors import ConfigError
    from diffode.cli.train import prepare

    def cfg(*ov):
        with initialize_config_module("diffode.conf", version_base="1.3"):
            return compose("train", overrides=["method=ld3", "source=gmm16d", f"output_dir={tmp_path}",
                                               "method.distance=l2", *ov])

    spec, options, ctx = prepare(cfg("method.solver=ipndm", "method.nfe=5", "method.init_grid=edm"))
    m = spec.build(options, ctx)
    assert m.steps == 5 and m.shape == (16,) and m.cfg.decoupled
    s, _ = m.grid()
    i = torch.arange(6, dtype=D64) / 5
    edm = (80 ** (1 / 7) + i * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert torch.allclose(s, edm, rtol=1e-10)
    assert not hasattr(m, "z")  # no teacher compute until the trainer sets the module up
    with pytest.raises(ConfigError, match="nfe=5"):
        prepare(cfg("method.solver=heun", "method.nfe=5"))  # heun makes 2 calls a step
    with pytest.raises(ConfigError, match="distance"):
        prepare(cfg("method.distance=cosine"))
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="method.space=sigma"):  # a choice: refused by Hydra
        prepare(cfg("method.space=sigma"))
    with pytest.raises(ConfigError, match="gamma=-1.0"):
        prepare(cfg("method.gamma=-1"))


def test_init_best_starts_from_the_lowest_validation_loss(tmp_path):
    m = _module(tmp_path, init_grid="best", rounds_logits=1, rounds_joint=0)
    _fit(m, limit_train_batches=1)
    scores = m.init_choice["val"]
    assert set(scores) == {"uniform", "time_uniform", "logsnr", "edm"}
    assert m.history[0]["val"] == pytest.approx(min(scores.values()), rel=1e-12)
    assert m.best["val"] <= min(scores.values())
    art = json.loads((m.save(tmp_path / "art") / "manifest.json").read_text())
    assert art["training"]["init"]["chosen"] == min(scores, key=scores.get)
