"""The stage hook (diffode/core/stage.py), the AMED-Solver and the AMED-Plugin in euler, ipndm,
dpm_solver_2, dpmpp_2m and heun: order, exact NFE, exact reproduction of the base solvers, the
uniform meaning of c and a, per-sample stages, and the bottleneck-feature tap.

Independent references: a float64 dopri8 solve (order), each base solver on the grid with the stage
points inserted (plugins with c = a = 1), the one-step definitions of c and a, per-sample runs one
sample at a time, and the UNet's own bottleneck() for the tapped features.
"""
from __future__ import annotations

import pytest
import torch

from _reference import Recorder, empirical_order, gmm_case
from diffode.core.denoisers import ModelDenoiser, make_gmm
from diffode.core.grids import make_grid
from diffode.core.sample import prior_sample, reachable_nfes, sample
from diffode.core.schedules import EDM
from diffode.core.stage import Stage, geometric_point

F64 = torch.float64
GMM = make_gmm(2, components=4, seed=0, std=0.2)
STUDENTS = ["amed", "euler", "ddim", "ipndm", "dpm_solver_2", "dpmpp_2m", "heun"]
INSERTED = ["euler", "ddim", "ipndm", "dpmpp_2m"]  # the stage becomes an extra grid node

pytestmark = pytest.mark.usefixtures("one_thread")


def _x_T(n=3, dim=2, seed=0):
    return prior_sample((n, dim), 80.0, generator=torch.Generator().manual_seed(seed))


def _inserted(sigmas, r=0.5):
    """The grid with s = sigma_next^r sigma_cur^(1-r) inserted in every step."""
    mids = sigmas[1:] ** r * sigmas[:-1] ** (1 - r)
    return torch.cat([torch.stack([sigmas[:-1], mids], 1).reshape(-1), sigmas[-1:]])


# -- order ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dim", [2, 16])
def test_fixed_amed_is_second_order(dim):
    """r = 1/2, c = a = 1 (no predictor): measured order 2 against the dopri8 reference."""
    gmm, x_T, ref = gmm_case(dim)
    steps = [80, 113, 160]
    errs = [float((sample(gmm, x_T, "amed", nfe=2 * n, grid="logsnr") - ref).abs().max()) for n in steps]
    order = empirical_order(steps, errs)
    assert abs(order - 2) < 0.3, (order, errs)


# -- exact NFE --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", STUDENTS)
@pytest.mark.parametrize("afs", [False, True])
def test_exact_nfe_with_a_hook(name, afs):
    """2 calls per step with a hook, AFS makes the first step cost 1: odd NFEs with AFS, even without."""
    hook = geometric_point(0.3)
    ok = reachable_nfes(name, 10, afs, midpoints=hook)
    assert ok == ([1, 3, 5, 7, 9] if afs else [2, 4, 6, 8, 10]), ok
    for k in range(1, 11):
        rec = Recorder(GMM)
        if k in ok:
            sample(rec, _x_T(), name, nfe=k, afs=afs, midpoints=hook)
            assert len(rec.sigmas) == k
        else:
            with pytest.raises(ValueError, match=f"cannot make exactly nfe={k}"):
                sample(rec, _x_T(), name, nfe=k, afs=afs, midpoints=hook)
            assert not rec.sigmas


# -- the default hook reproduces the base solver --------------------------------------------------

@pytest.mark.parametrize("name", ["amed", "heun", "dpm_solver_2"])
def test_default_stage_as_a_hook_is_the_solver_itself(name):
    # the solvers' own defaults: sigma_next (heun), the lambda midpoint sqrt(sigma_cur sigma_next)
    default = (lambda i, s, t, x: Stage(t)) if name == "heun" else (lambda i, s, t, x: Stage(torch.sqrt(s * t)))
    x_T = _x_T()
    torch.testing.assert_close(sample(GMM, x_T, name, nfe=8, midpoints=default), sample(GMM, x_T, name, nfe=8),
                               rtol=0, atol=0)


@pytest.mark.parametrize("name", INSERTED)
@pytest.mark.parametrize("r", [0.5, 0.3])
def test_plugin_is_the_base_solver_on_the_grid_with_stages_inserted(name, r):
    x_T = _x_T()
    sigmas = make_grid("logsnr", 4, None)
    opts = dict(lower_order_final=False) if name == "dpmpp_2m" else {}
    ours = sample(GMM, x_T, name, nfe=None, grid=sigmas, midpoints=geometric_point(r), **opts)
    base = sample(GMM, x_T, name, nfe=None, grid=_inserted(sigmas, r), **opts)
    torch.testing.assert_close(ours, base, rtol=1e-13, atol=1e-13)


def test_dpmpp_2m_plugin_takes_its_orders_from_the_doubled_grid():
    """lower_order_final decides on the grid with the lambda midpoints inserted (as the official
    plugin computes it on its 2N - 1 point grid): equal to the base solver there under every rule."""
    x_T = _x_T()
    sigmas = make_grid("logsnr", 3, None)
    for rule in (True, "official", "auto"):
        ours = sample(GMM, x_T, "dpmpp_2m", nfe=None, grid=sigmas, midpoints=geometric_point(0.5),
                      lower_order_final=rule)
        base = sample(GMM, x_T, "dpmpp_2m", nfe=None, grid=_inserted(sigmas), lower_order_final=rule)
        torch.testing.assert_close(ours, base, rtol=1e-13, atol=1e-13)


# -- c and a mean the same in every solver -----------------------------------------------------------

@pytest.mark.parametrize("name", STUDENTS)
def test_direction_scale_stretches_the_stage_update(name):
    """One step: x(c) = L + c (x(1) - L), L the update's part without model terms: x_from = x_T for
    single-step solvers and the state at s (the base solver's own first step to s) where the stage is
    an inserted node; (sigma_next / s) x_from for dpmpp_2m's data-prediction sub-step (the official
    plugin's convention, tests/test_amed_official.py)."""
    x_T = _x_T()
    t0, t1 = torch.tensor(2.0, dtype=F64), torch.tensor(1.0, dtype=F64)
    s = torch.sqrt(t0 * t1)
    grid = torch.stack([t0, t1])
    x1 = sample(GMM, x_T, name, nfe=None, grid=grid, midpoints=lambda i, a, b, x: Stage(s))
    c = torch.tensor(1.07, dtype=F64)
    xc = sample(GMM, x_T, name, nfe=None, grid=grid, midpoints=lambda i, a, b, x: Stage(s, c=c))
    x_from = sample(GMM, x_T, name, nfe=None, grid=torch.stack([t0, s])) if name in INSERTED else x_T
    base = (t1 / s) * x_from if name == "dpmpp_2m" else x_from
    torch.testing.assert_close(xc, base + 1.07 * (x1 - base), rtol=1e-12, atol=1e-12)
    assert float((xc - x1).abs().max()) > 1e-4  # c did something


@pytest.mark.parametrize("name", STUDENTS)
def test_conditioning_scale_moves_only_the_network_time(name):
    """Stage(s, a) equals Stage(s) on a denoiser that is called at a*s whenever asked at s: the
    coefficients keep s, only the network's conditioning moves."""
    x_T = _x_T()
    grid = make_grid("logsnr", 3, None)
    a = torch.tensor(1.2, dtype=F64)
    stage_of = lambda i, cur, nxt, x: cur ** 0.6 * nxt ** 0.4  # noqa: E731
    stages = [stage_of(i, grid[i], grid[i + 1], None) for i in range(3)]

    def shifted(x, sigma):
        sigma = torch.as_tensor(sigma, dtype=F64)
        hit = any(bool(torch.isclose(sigma, s_, rtol=1e-14, atol=0)) for s_ in stages)
        return GMM(x, a * sigma if hit else sigma)

    rec = Recorder(GMM)
    ours = sample(rec, x_T, name, nfe=None, grid=grid, midpoints=lambda i, cur, nxt, x: Stage(stage_of(i, cur, nxt, x), a=a))
    ref = sample(shifted, x_T, name, nfe=None, grid=grid, midpoints=lambda i, cur, nxt, x: stage_of(i, cur, nxt, x))
    torch.testing.assert_close(ours, ref, rtol=1e-13, atol=1e-13)
    for s_ in stages:  # the network really saw a * s
        assert any(bool(torch.isclose(sig, a * s_, rtol=1e-14, atol=0)) for sig in rec.sigmas)


@pytest.mark.parametrize("name", STUDENTS)
def test_per_sample_stages_match_one_sample_at_a_time(name):
    """A hook may return one stage point (and c, a) per sample: the batch run equals the runs of
    each sample alone with its own scalar stage."""
    x_T = _x_T(n=4)
    grid = make_grid("logsnr", 3, None)
    r = torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=F64)
    c = torch.tensor([0.99, 1.0, 1.01, 1.02], dtype=F64)
    a = torch.tensor([0.9, 1.0, 1.1, 1.2], dtype=F64)
    batch = sample(GMM, x_T, name, nfe=None, grid=grid,
                   midpoints=lambda i, s, t, x: Stage(t ** r * s ** (1 - r), c=c, a=a))
    for b in range(4):
        one = sample(GMM, x_T[b:b + 1], name, nfe=None, grid=grid,
                     midpoints=lambda i, s, t, x: Stage(t ** r[b] * s ** (1 - r[b]), c=c[b], a=a[b]))
        torch.testing.assert_close(batch[b:b + 1], one, rtol=1e-12, atol=1e-12)


# -- the features tap -------------------------------------------------------------------------------

def _tiny_unet_denoiser():
    from diffode.nets.unet import UNet

    torch.manual_seed(0)
    net = UNet(resolution=8, in_channels=1, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
               attn_resolutions=())
    for p in net.parameters():  # a non-zero output, so D depends on the net
        torch.nn.init.normal_(p, std=0.05)
    return ModelDenoiser(net.double(), EDM(), prediction="edm").eval()


def test_model_denoiser_gives_the_bottleneck_of_the_same_call():
    D = _tiny_unet_denoiser()
    assert D.feature_shape == (4, 4)
    x = torch.randn(3, 1, 8, 8, dtype=F64)
    sigma = torch.tensor(1.5, dtype=F64)
    out, feats = D.forward_with_features(x, sigma)
    torch.testing.assert_close(out, D(x, sigma), rtol=0, atol=0)
    from diffode.core.denoisers import edm_scalings

    _, _, c_in, c_noise = edm_scalings(sigma.expand(3))
    torch.testing.assert_close(feats, D.net.bottleneck(c_in.reshape(-1, 1, 1, 1) * x, c_noise))
    assert feats.shape == (3, 16, 4, 4)


@pytest.mark.parametrize("afs", [False, True])
def test_hook_receives_the_features_of_the_steps_first_evaluation(afs):
    D = _tiny_unet_denoiser()
    x_T = prior_sample((2, 1, 8, 8), 80.0, generator=torch.Generator().manual_seed(1))
    grid = make_grid("logsnr", 3, None)
    seen = []

    class Hook:
        needs_features = True

        def __call__(self, i, s, t, x, features=None):
            seen.append((x.clone(), s, None if features is None else features.clone()))
            return torch.sqrt(s * t)

    sample(D, x_T, "amed", nfe=None, grid=grid, afs=afs, midpoints=Hook())
    assert len(seen) == 3
    for i, (x, s, f) in enumerate(seen):
        if afs and i == 0:
            assert f is None
            continue
        torch.testing.assert_close(f, D.forward_with_features(x, s)[1], rtol=0, atol=0)
    # a hook that does not ask for features is called with the plain four arguments
    plain = sample(D, x_T, "amed", nfe=None, grid=grid, afs=afs, midpoints=lambda i, s, t, x: torch.sqrt(s * t))
    torch.testing.assert_close(plain, sample(D, x_T, "amed", nfe=None, grid=grid, afs=afs), rtol=0, atol=0)


def test_features_are_none_without_a_bottleneck():
    seen = []

    class Hook:
        needs_features = True

        def __call__(self, i, s, t, x, features=None):
            seen.append(features)
            return torch.sqrt(s * t)

    sample(GMM, _x_T(), "ipndm", nfe=6, midpoints=Hook())
    assert seen == [None, None, None]
