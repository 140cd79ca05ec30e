"""The AMED-Plugin update of every solver that applies a Stage's c (and a), against float64
re-derivations of the official plugin samplers (zju-pi/diff-sampler, amed-solver-main/solvers_amed.py:
amed_sampler, euler_sampler, ipndm_sampler, dpm_2_sampler, dpm_pp_sampler), written here from their
update rules in EDM coordinates (t = sigma, x_T = 80 z) with a fixed per-sample predictor output
(r, c, a) per interval in place of the network: t_mid = t_next^r t_cur^(1 - r), the second evaluation
at a * t_mid, c the `scale_dir` of each sampler.

The question each test settles is what c multiplies. In the slope form of euler, ipndm, dpm_2 and amed
it is the whole step (the slopes are the model terms); in dpm_pp's data-prediction form it is only
the model terms, the linear part (t / s) x_s is not scaled. Not re-derived: the official dpm_pp's
dynamic thresholding of D (Imagen's, p = 0.995, only meaningful for data in [-1, 1]), which diffode
does not apply; on this mixture it would change D, so the reference leaves it out.
"""
from __future__ import annotations

import math

import pytest
import torch

from diffode.core.denoisers import make_gmm
from diffode.core.grids import make_grid
from diffode.core.sample import sample
from diffode.core.stage import Stage

F64 = torch.float64
GMM = make_gmm(2, components=4, seed=0, std=0.2)
K = 4  # intervals
B = 4  # samples, each with its own (r, c, a)

pytestmark = pytest.mark.usefixtures("one_thread")


def _setup():
    g = torch.Generator().manual_seed(7)
    x_T = 80.0 * torch.randn(B, 2, dtype=F64, generator=g)
    r = 0.2 + 0.6 * torch.rand(K, B, dtype=F64, generator=g)
    c = 0.9 + 0.2 * torch.rand(K, B, dtype=F64, generator=g)  # wider than AMED's 1 +- 0.01, to see c clearly
    a = 0.9 + 0.2 * torch.rand(K, B, dtype=F64, generator=g)
    return x_T, make_grid("edm", K, None), r, c, a


def _col(v):
    return v.reshape(-1, 1)


def _slope(x, t_eval, t_div):
    """(x - D(x, t_eval)) / t_div: the official d, the network called at t_eval (a t_mid at the stage)."""
    return (x - _D(x, t_eval)) / t_div


def _D(x, t):
    """The mixture's denoiser at one sigma or one per sample ([B] or [B, 1])."""
    return GMM(x, t.reshape(-1) if t.ndim else t)


# -- the official samplers, re-derived -------------------------------------------------------------

def _stage_steps(x, ts, r, a, finish):
    """Each interval: the Euler step to t_mid = t_next^r t_cur^(1 - r), the slope there at a t_mid, then
    finish(i, x, x_mid, (t_cur, t_mid, t_next), (d_cur, d_mid)) gives the next state."""
    for i in range(K):
        t_cur, t_next = ts[i], ts[i + 1]
        d_cur = _slope(x, t_cur, t_cur)
        t_mid = _col(t_next ** r[i] * t_cur ** (1 - r[i]))
        x_mid = x + (t_mid - t_cur) * d_cur
        d_mid = _slope(x_mid, _col(a[i]) * t_mid, t_mid)
        x = finish(i, x, x_mid, (t_cur, t_mid, t_next), (d_cur, d_mid))
    return x


def official_amed(x, ts, r, c, a):
    return _stage_steps(x, ts, r, a, lambda i, x, x_mid, t, d: x + _col(c[i]) * (t[2] - t[0]) * d[1])


def official_euler(x, ts, r, c, a):
    return _stage_steps(x, ts, r, a, lambda i, x, x_mid, t, d: x_mid + _col(c[i]) * (t[2] - t[1]) * d[1])


def official_dpm_2(x, ts, r, c, a):
    def finish(i, x, x_mid, t, d):
        w = 1 / (2 * _col(r[i]))  # diff-sampler's 1/(2r), r the exponent of t_mid
        return x + _col(c[i]) * (t[2] - t[0]) * (w * d[1] + (1 - w) * d[0])

    return _stage_steps(x, ts, r, a, finish)


AB = {1: [1.0], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}


def official_ipndm(x, ts, r, c, a, max_order=4):
    past = []  # slopes, oldest first, at most max_order - 1 kept

    def ab(d_new):
        order = min(max_order, len(past) + 1)
        slopes = [d_new] + past[::-1][:order - 1]
        return sum(w * d for w, d in zip(AB[order], slopes))

    def keep(d):
        past.append(d)
        del past[:-(max_order - 1)]

    for i in range(K):
        t_cur, t_next = ts[i], ts[i + 1]
        d_cur = _slope(x, t_cur, t_cur)
        t_mid = _col(t_next ** r[i] * t_cur ** (1 - r[i]))
        x_mid = x + (t_mid - t_cur) * ab(d_cur)
        keep(d_cur)
        d_mid = _slope(x_mid, _col(a[i]) * t_mid, t_mid)
        x = x_mid + _col(c[i]) * (t_next - t_mid) * ab(d_mid)
        keep(d_mid)
    return x


def official_dpm_pp_2(x, ts, r, c, a):
    """dpm_pp_sampler with max_order 2, predict_x0, lower_order_final, no thresholding: the sub-steps
    run on the grid with every t_mid inserted (2K sub-steps, orders 1, 2, ..., 2, 1); the second
    sub-step of each interval scales its model terms by c."""
    Ds, lams = [], []

    def update(x, t, order, scale):
        s, lam_s = t_prev[-1], lams[-1]
        h = -torch.log(t) - lam_s
        phi_1 = torch.expm1(-h)
        if order == 1:
            model = phi_1 * Ds[-1]
        else:
            r0 = (lams[-1] - lams[-2]) / h
            model = phi_1 * Ds[-1] + 0.5 * phi_1 * (Ds[-1] - Ds[-2]) / r0
        return (t / s) * x - scale * model

    t_prev = []
    n_sub = 2 * K
    for i in range(K):
        t_cur, t_next = ts[i], ts[i + 1]
        Ds.append(_D(x, t_cur))
        t_prev.append(t_cur * torch.ones(B, 1, dtype=F64))
        lams.append(-torch.log(t_prev[-1]))
        t_mid = _col(t_next ** r[i] * t_cur ** (1 - r[i]))
        j = 2 * i + 1  # the sub-step's 1-based index
        x_mid = update(x, t_mid, 1 if j == 1 else min(2, n_sub + 1 - j), 1.0)
        Ds.append(_D(x_mid, _col(a[i]) * t_mid))
        t_prev.append(t_mid)
        lams.append(-torch.log(t_mid))
        x = update(x_mid, t_next * torch.ones(B, 1, dtype=F64), min(2, n_sub - j), _col(c[i]))
    return x


OFFICIAL = dict(amed=official_amed, euler=official_euler, ddim=official_euler, dpm_solver_2=official_dpm_2,
                ipndm=official_ipndm, dpmpp_2m=official_dpm_pp_2)
OPTIONS = dict(dpmpp_2m=dict(lower_order_final=True))


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_plugin_update_is_the_official_one(name):
    x_T, ts, r, c, a = _setup()

    def hook(i, s, t, x):
        return Stage(t ** r[i] * s ** (1 - r[i]), c=c[i], a=a[i])

    ours = sample(GMM, x_T, name, nfe=None, grid=ts, midpoints=hook, **OPTIONS.get(name, {}))
    ref = OFFICIAL[name](x_T.clone(), ts, r, c, a)
    err = float((ours - ref).abs().max())
    assert err < 1e-10 * max(1.0, float(ref.abs().max())), err
    # c matters here (so a wrong convention cannot pass): c = 1 moves the endpoint by far more than 1e-10
    one = sample(GMM, x_T, name, nfe=None, grid=ts, midpoints=lambda i, s, t, x: Stage(t ** r[i] * s ** (1 - r[i]),
                                                                                       a=a[i]),
                 **OPTIONS.get(name, {}))
    assert float((one - ref).abs().max()) > 1e-3


def test_dpmpp_2m_plugin_scales_only_the_model_terms():
    """One interval by hand: x = (t/s) x_s + c (x(c=1) - (t/s) x_s), x_s the state at the stage; the
    linear part keeps its coefficient, so x(c) - x(1) = (c - 1)(x(1) - (t/s) x_s)."""
    x_T, _, _, _, _ = _setup()
    t0, t1 = torch.tensor(2.0, dtype=F64), torch.tensor(1.0, dtype=F64)
    s = torch.sqrt(t0 * t1)
    grid = torch.stack([t0, t1])
    x1 = sample(GMM, x_T, "dpmpp_2m", nfe=None, grid=grid, midpoints=lambda i, a_, b, x: Stage(s))
    xc = sample(GMM, x_T, "dpmpp_2m", nfe=None, grid=grid,
                midpoints=lambda i, a_, b, x: Stage(s, c=torch.tensor(1.07, dtype=F64)))
    x_s = sample(GMM, x_T, "dpmpp_2m", nfe=None, grid=torch.stack([t0, s]))
    base = (t1 / s) * x_s
    torch.testing.assert_close(xc, base + 1.07 * (x1 - base), rtol=1e-12, atol=1e-12)
    assert math.isfinite(float(xc.sum()))
