"""iPNDM / iPNDM_v, DEIS, RK45, DDPM(eta) and Euler-Maruyama, and the diffusers adapter.

Oracles: a float64 torchdiffeq dopri5 solve at rtol = atol = 1e-10 (written here, in log sigma),
the closed-form PF-ODE flow of a single Gaussian, the textbook Adams-Bashforth weights,
diff-sampler's hand-derived variable-step AB3/AB4 weights, diffusers' DDPMScheduler.step, the
exact Gaussian-mixture moments, and a hand computation of x0 from a diffusers UNet's eps.
"""
from __future__ import annotations

import math

import pytest
import torch

from diffode.core.denoisers import GaussianMixture, make_gmm
from diffode.core.solvers import SOLVERS, get_solver
from diffode.core.solvers.deis import ab_coefficients, vp_fit, vp_t
from diffode.core.solvers.ipndm import AB_COEFFICIENTS

F64 = torch.float64
SIGMA_MAX, SIGMA_MIN = 80.0, 0.002


def logsnr_grid(n, hi=SIGMA_MAX, lo=SIGMA_MIN):
    return torch.exp(torch.linspace(math.log(hi), math.log(lo), n + 1, dtype=F64))


def reference_solve(denoiser, x, hi, lo):
    """PF-ODE endpoint from sigma = hi to lo: dopri5 in u = log sigma, float64, rtol = atol = 1e-10."""
    from torchdiffeq import odeint

    u = torch.tensor([math.log(hi), math.log(lo)], dtype=F64)
    return odeint(lambda t, y: y - denoiser(y, torch.exp(t)), x, u, method="dopri5", rtol=1e-10, atol=1e-10)[-1]


class Counter:
    def __init__(self, denoiser):
        self.denoiser, self.calls = denoiser, 0

    def __call__(self, x, sigma):
        self.calls += 1
        return self.denoiser(x, sigma)


def rmse(a, b):
    return float(((a - b) ** 2).mean().sqrt())


def measured_order(name, opts, denoiser, x, ref, grid_fn, ns):
    """Observed order from the two finest grids (the coarser ones are often pre-asymptotic)."""
    errs = [rmse(SOLVERS[name].fn(denoiser, x, grid_fn(n), **opts), ref) for n in ns]
    return math.log(errs[-2] / errs[-1]) / math.log(ns[-1] / ns[-2]), errs


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny float64 ops: one thread avoids spin contention with other processes on a 2-core machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def problems():
    """(denoiser, x_T, reference endpoint) for a 2-D ring mixture (data std 0.5) and a 16-D mixture."""
    out = {}
    for key, gmm, n in (("2d", make_gmm(2, 8, layout="ring", spread=0.7, std=0.1), 32),
                        ("16d", make_gmm(16, 8, seed=1, std=0.3), 8)):
        g = torch.Generator().manual_seed(0)
        x = SIGMA_MAX * torch.randn(n, gmm.dim, dtype=F64, generator=g)
        out[key] = (gmm, x, reference_solve(gmm, x, SIGMA_MAX, SIGMA_MIN))
    return out


# -- coefficients ---------------------------------------------------------------------------

def test_lagrange_weights_equal_textbook_adams_bashforth_on_equal_steps():
    h = 0.37
    for k in range(1, 5):
        pts = 2.0 + h * torch.arange(k, dtype=F64)  # sigma_i, sigma_{i-1}, ...: most recent (smallest) first
        C = ab_coefficients(pts, pts[0] - h)
        torch.testing.assert_close(C / -h, torch.tensor(AB_COEFFICIENTS[k - 1], dtype=F64), rtol=1e-13, atol=1e-13)


def test_variable_step_weights_equal_exact_polynomial_integrals():
    """Against numpy's polynomial integration of the Lagrange basis on uneven steps (and Simpson for the other taus).

    (diff-sampler's hand-written iPNDM_v weights are not this: they differ on uneven steps, and
    at order 4 they do not even reduce to (55, -59, 37, -9)/24 on equal steps, but (57, -65, 43, -11)/24.)
    """
    import numpy as np
    s = [5.0, 3.1, 2.2, 1.3, 0.7]  # uneven, decreasing; integrate from 1.3 to 0.7 with history up to 5.0

    def exact(tau_pts, integrate):
        out = []
        for j in range(len(tau_pts)):
            others = [tau_pts[m] for m in range(len(tau_pts)) if m != j]
            out.append(integrate(np.poly1d(np.poly(others)) / np.prod([tau_pts[j] - o for o in others])))
        return torch.tensor(out, dtype=F64)

    for k in (2, 3, 4):
        pts = torch.tensor(s[3 - k + 1:4][::-1], dtype=F64)  # most recent first
        a, b = 1.3, 0.7
        P = lambda p: np.polyint(p)(b) - np.polyint(p)(a)  # noqa: E731
        torch.testing.assert_close(ab_coefficients(pts, torch.tensor(b, dtype=F64)), exact(pts.tolist(), P),
                                   rtol=1e-12, atol=1e-12)
        # tau = log sigma: int_a^b L(log sigma) dsigma = int_{log a}^{log b} L(u) e^u du, by fine Simpson in u
        u = np.linspace(math.log(a), math.log(b), 20001)
        simpson = lambda p: float((u[1] - u[0]) / 3 * (p(u) * np.exp(u) * np.r_[1, np.tile([4, 2], 9999), 4, 1]).sum())  # noqa: E731
        torch.testing.assert_close(ab_coefficients(pts, torch.tensor(b, dtype=F64), tau="log_sigma"),
                                   exact(torch.log(pts).tolist(), simpson), rtol=1e-10, atol=1e-10)
        # tau = vp_t: int L(tau) dsigma/dtau dtau over VP time tau, sigma(tau) = sqrt(exp(bd tau^2/2 + bm tau) - 1)
        rng = (torch.tensor(80.0, dtype=F64), torch.tensor(0.002, dtype=F64))
        bd, bm = (float(v) for v in vp_fit(*rng))
        sig = lambda t: np.sqrt(np.exp(0.5 * bd * t**2 + bm * t) - 1)  # noqa: E731
        assert abs(sig(1.0) - 80.0) < 1e-9 and abs(sig(1e-3) - 0.002) < 1e-12
        tt = np.linspace(float(vp_t(torch.tensor(a, dtype=F64), *vp_fit(*rng))),
                         float(vp_t(torch.tensor(b, dtype=F64), *vp_fit(*rng))), 20001)
        dsig = (bd * tt + bm) * np.exp(0.5 * bd * tt**2 + bm * tt) / (2 * sig(tt))
        simpson_t = lambda p: float((tt[1] - tt[0]) / 3 * (p(tt) * dsig * np.r_[1, np.tile([4, 2], 9999), 4, 1]).sum())  # noqa: E731
        torch.testing.assert_close(ab_coefficients(pts, torch.tensor(b, dtype=F64), tau="vp_t", sigma_range=rng),
                                   exact(vp_t(pts, *vp_fit(*rng)).tolist(), simpson_t), rtol=1e-9, atol=1e-9)


def test_deis_log_sigma_matches_diffusers_deis_multistep():
    """tau = log_sigma is diffusers' DEISMultistepScheduler (algorithm 'deis', solver_type 'logrho')."""
    from diffusers import DEISMultistepScheduler

    gmm = make_gmm(2, 4, seed=0, std=0.2)
    for order in (2, 3):
        sch = DEISMultistepScheduler(beta_schedule="linear", solver_order=order, prediction_type="sample",
                                     lower_order_final=False)
        sch.set_timesteps(20)
        sig = sch.sigmas.to(F64)  # VE sigmas of its grid, ending at the training sigma_min
        xT = sig[0] * torch.randn(16, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
        x = (xT / torch.sqrt(1 + sig[0] ** 2)).float()  # diffusers' VP state
        for i, t in enumerate(sch.timesteps):
            alpha = 1 / torch.sqrt(1 + sig[i] ** 2)
            x = sch.step(gmm(x.double() / alpha, sig[i]).float(), t, x).prev_sample
        ref = x.double() * torch.sqrt(1 + sig[-1] ** 2)
        out = SOLVERS["deis"].fn(gmm, xT, sig, order=order, tau="log_sigma", lower_order_final=False)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)  # diffusers steps in float32


# -- convergence orders ---------------------------------------------------------------------

ORDER_CASES = [  # (problem, solver, options, theory order on a smoothly graded grid)
    ("2d", "ipndm_v", {}, 4), ("2d", "ipndm_v", dict(max_order=3), 3),
    ("2d", "deis", {}, 3), ("16d", "deis", {}, 3), ("2d", "deis", dict(order=2), 2), ("2d", "deis", dict(order=4), 4),
    ("2d", "deis", dict(tau="log_sigma"), 3), ("16d", "deis", dict(tau="log_sigma"), 3),
    ("2d", "deis", dict(tau="vp_t"), 3),
    # constant-step AB weights on unequal steps leave an O(h^3) local error: order 2 on graded grids
    ("2d", "ipndm", {}, 2), ("16d", "ipndm", {}, 2),
]


@pytest.mark.parametrize("key,name,opts,order", ORDER_CASES)
def test_order_on_logsnr_grid(problems, key, name, opts, order):
    gmm, x, ref = problems[key]
    # the 16-D mixture is pre-asymptotic longer (sharper posterior switches)
    ns = [100, 200, 400] if order >= 4 else [80, 160, 320] if key == "16d" else [40, 80, 160]
    p, errs = measured_order(name, opts, gmm, x, ref, logsnr_grid, ns)
    assert abs(p - order) < 0.3, (name, opts, key, p, errs)


def test_ipndm_is_adams_bashforth_on_equal_steps():
    """On equal sigma steps iPNDM is the textbook AB-k, i.e. the variable-step method (whose order is measured
    above); orders on an equal-step grid are not measured directly because the lower-order warm-up steps
    cap the global order at 2 wherever the first steps are not in a near-linear region (as sigma_max is)."""
    gmm = make_gmm(2, 8, layout="ring", spread=0.7, std=0.1)
    g = torch.Generator().manual_seed(3)
    x = gmm.sample(16, g) + 2.0 * torch.randn(16, 2, dtype=F64, generator=g)
    s = torch.linspace(2.0, 1.0, 9, dtype=F64)
    for k in (1, 2, 3, 4):
        a = SOLVERS["ipndm"].fn(gmm, x, s, max_order=k)
        torch.testing.assert_close(a, SOLVERS["ipndm_v"].fn(gmm, x, s, max_order=k), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(a, SOLVERS["deis"].fn(gmm, x, s, order=k, tau="sigma"), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,opts", [("ipndm_v", {}), ("deis", {}), ("deis", dict(tau="log_sigma")),
                                       ("deis", dict(tau="vp_t")), ("ipndm", {})])
def test_single_gaussian_closed_form(name, opts):
    """K = 1: x(sigma) = mu + sqrt(sigma^2 + tau^2) / sqrt(sigma_T^2 + tau^2) (x_T - mu) exactly (data std 0.5)."""
    mu = torch.tensor([[0.3, -0.2, 0.1]], dtype=F64)
    G = lambda x, s: mu + 0.25 / (0.25 + s**2) * (x - mu)  # noqa: E731  the exact denoiser of N(mu, 0.5^2 I)
    xT = SIGMA_MAX * torch.randn(64, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    exact = mu + math.sqrt(SIGMA_MIN**2 + 0.25) / math.sqrt(SIGMA_MAX**2 + 0.25) * (xT - mu)
    out = SOLVERS[name].fn(G, xT, logsnr_grid(1000), **opts)
    assert float((out - exact).abs().max()) < 1e-5


# -- differentiability, dtypes, shapes, NFE --------------------------------------------------

@pytest.mark.parametrize("name,opts", [("ipndm", {}), ("ipndm_v", {}), ("deis", {}), ("deis", dict(tau="log_sigma")),
                                       ("deis", dict(tau="vp_t"))])
def test_gradcheck_in_x_and_sigmas(name, opts):
    gmm = make_gmm(2, 4, layout="ring", spread=0.7, std=0.2)
    x = (3.0 * torch.randn(2, 2, dtype=F64, generator=torch.Generator().manual_seed(1))).requires_grad_()
    s = logsnr_grid(5, hi=3.0, lo=0.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, s: SOLVERS[name].fn(gmm, x, s, **opts), (x, s), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", ["ipndm", "ipndm_v", "deis", "ddpm", "euler_maruyama"])
def test_exact_nfe_float32_and_image_shapes(name):
    spec = get_solver(name)
    D = Counter(lambda x, s: 0.5 * x / (1 + s**2).to(x.dtype))  # exact denoiser of N(0, I): keeps things finite
    x = SIGMA_MAX * torch.randn(3, 1, 4, 4)
    for steps in (1, 2, 3, 7):
        D.calls = 0
        out = spec.fn(D, x, logsnr_grid(steps))
        assert D.calls == spec.n_calls(steps) == steps
        assert out.dtype == torch.float32 and out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["ipndm", "ipndm_v", "deis", "ddpm", "euler_maruyama"])
def test_net_sigmas_condition_the_denoiser_only(name):
    """LD3's decoupled variant: the network sees net_sigmas[i], the update coefficients use sigmas."""
    seen = []
    D = lambda x, s: (seen.append(s), 0.5 * x / (1 + s**2))[1]  # noqa: E731
    x = SIGMA_MAX * torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    s, net = logsnr_grid(6), logsnr_grid(6) * 1.1
    SOLVERS[name].fn(D, x, s, net_sigmas=net)
    torch.testing.assert_close(torch.stack(seen), net[:-1], rtol=0, atol=0)


def test_sample_counts_nfe_for_my_solvers():
    from diffode.core.sample import sample
    gmm = make_gmm(2, 8, layout="ring", spread=0.7, std=0.1)
    x = SIGMA_MAX * torch.randn(8, 2, dtype=F64)
    for name in ("ipndm", "ipndm_v", "deis", "ddpm", "euler_maruyama"):
        for nfe in (3, 5, 10):
            D = Counter(gmm)
            sample(D, x, solver=name, nfe=nfe, grid="logsnr")
            assert D.calls == nfe, (name, nfe, D.calls)


# -- RK45 ------------------------------------------------------------------------------------

def test_rk45_reaches_tolerance_and_counts_calls(problems):
    gmm, x, ref = problems["2d"]
    errs, nfes = [], []
    for tol in (1e-3, 1e-5, 1e-7):
        D, info = Counter(gmm), {}
        out = SOLVERS["rk45"].fn(D, x, logsnr_grid(1), rtol=tol, atol=tol, info=info)
        assert info["nfe"] == D.calls > 0
        errs.append(rmse(out, ref))
        nfes.append(D.calls)
        assert errs[-1] < 20 * tol, (tol, errs[-1])
    assert nfes[0] < nfes[1] < nfes[2] and errs[2] < errs[0]
    assert get_solver("rk45").adaptive and not get_solver("rk45").differentiable
    with pytest.raises(ValueError, match="adaptive"):
        get_solver("rk45").n_calls(10)


# -- stochastic samplers ---------------------------------------------------------------------

def test_ddpm_eta0_is_ddim():
    gmm = make_gmm(16, 8, seed=1)
    x = SIGMA_MAX * torch.randn(16, 16, dtype=F64, generator=torch.Generator().manual_seed(2))
    s = logsnr_grid(12)
    a = SOLVERS["ddpm"].fn(gmm, x, s, eta=0.0)
    torch.testing.assert_close(a, SOLVERS["ddim"].fn(gmm, x, s), rtol=1e-12, atol=1e-12)


def test_ddpm_step_matches_diffusers_ddpm_scheduler():
    """An eta = 1 step in VE coordinates equals DDPMScheduler.step (posterior mean + sqrt(beta~) z) in VP."""
    from diffusers import DDPMScheduler

    sch = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False, prediction_type="sample")
    sch.set_timesteps(10)  # 'leading' spacing: 900, 800, ...; each step goes t -> t - 100
    ab = sch.alphas_cumprod.to(F64)
    gmm = make_gmm(4, 3, seed=2)
    x0 = torch.randn(64, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    for t in (900, 500, 100):
        a_t, a_s = ab[t].sqrt(), ab[t - 100].sqrt()
        s_t, s_s = ((1 - ab[t]) / ab[t]).sqrt(), ((1 - ab[t - 100]) / ab[t - 100]).sqrt()
        x_vp = (a_t * x0 + (1 - ab[t]).sqrt() * torch.randn_like(x0)).float()
        D = gmm(x_vp.double() / a_t, s_t).float()
        ref = sch.step(D, t, x_vp, generator=torch.Generator().manual_seed(7)).prev_sample.double()
        seen = []  # state after the first step (a second, noise-free step follows: the last step adds no noise)
        SOLVERS["ddpm"].fn(lambda x, s: D, (x_vp.double() / a_t).float(), torch.stack([s_t, s_s, s_s / 2]),
                           generator=torch.Generator().manual_seed(7), callback=lambda d: seen.append(d["x"]))
        torch.testing.assert_close(a_s * seen[0].double(), ref, rtol=1e-4, atol=1e-4)


def _mixture_moments(g: GaussianMixture):
    pi = g.log_pi.exp()
    mean = (pi[:, None] * g.mu).sum(0)
    second = (pi[:, None, None] * (g.covariances + g.mu[:, :, None] * g.mu[:, None, :])).sum(0)
    return mean, second - mean[:, None] * mean[None]


@pytest.mark.parametrize("name", ["ddpm", "euler_maruyama"])
def test_stochastic_samplers_match_mixture_moments(name):
    gmm = make_gmm(2, 4, seed=3, spread=1.0, std=0.15)  # random weights, anisotropic: non-trivial moments
    mean, cov = _mixture_moments(gmm)
    n = 3000
    gen = torch.Generator().manual_seed(11)
    xT = SIGMA_MAX * torch.randn(n, 2, dtype=F64, generator=gen)
    D = Counter(gmm)
    out = SOLVERS[name].fn(D, xT, logsnr_grid(100), generator=gen)
    assert D.calls == 100
    # 5 standard errors of the sample mean / covariance of n draws
    var = torch.diagonal(cov)
    se_mean = (var / n).sqrt().max()
    se_cov = ((var[:, None] * var[None] + cov**2) / n).sqrt().max()
    assert float((out.mean(0) - mean).abs().max()) < 5 * se_mean
    assert float((torch.cov(out.T) - cov).abs().max()) < 5 * se_cov + 0.01
    # noise really is drawn from `generator`: same seed, same samples
    gen2 = torch.Generator().manual_seed(11)
    xT2 = SIGMA_MAX * torch.randn(n, 2, dtype=F64, generator=gen2)
    assert torch.equal(SOLVERS[name].fn(gmm, xT2, logsnr_grid(100), generator=gen2), out)


# -- diffusers adapter -----------------------------------------------------------------------

def test_diffusers_adapter_matches_hand_computation(tmp_path):
    import diffusers  # a required dev dependency: a missing peer fails the test
    from diffode.nets.diffusers_adapter import load_diffusers_unet

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    sch = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    unet.save_pretrained(tmp_path / "unet")
    sch.save_pretrained(tmp_path / "scheduler")
    D = load_diffusers_unet(tmp_path)
    assert D.prediction == "eps"
    ab = sch.alphas_cumprod.to(F64)
    g = torch.Generator().manual_seed(0)
    for k in (0, 37, 500, 990):
        a, s = ab[k].sqrt(), (1 - ab[k]).sqrt()
        x_t = a * torch.randn(2, 1, 8, 8, dtype=F64, generator=g) + s * torch.randn(2, 1, 8, 8, dtype=F64, generator=g)
        with torch.no_grad():
            eps = unet(x_t.float(), torch.full((2,), k)).sample.double()
            got = D(x_t / a, s / a)  # VE coordinates: x = x_t / alpha, sigma = sigma_t / alpha
        torch.testing.assert_close(got, (x_t - s * eps) / a, rtol=1e-5, atol=1e-5 * float(s / a))
    # flat layout (scheduler_config.json next to config.json) and the prediction override
    sch.save_pretrained(tmp_path / "unet")
    assert load_diffusers_unet(tmp_path / "unet", prediction="v_prediction").prediction == "v"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_diffusers_unet(tmp_path / "missing")
    unet.save_pretrained(tmp_path / "no_scheduler")
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        load_diffusers_unet(tmp_path / "no_scheduler")
