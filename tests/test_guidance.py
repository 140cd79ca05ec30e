"""Classifier-free guidance (core/guidance.py) against an exact class-conditional Gaussian mixture: the guided
samples through diffode.sample equal an independent guided Euler written here, w = 0 and w = 1 are the
unconditional and conditional samples bit for bit, the network passes are what `forwards` says (with and
without a guidance interval), dynamic thresholding, and the settings refused before any compute."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import diffode
from diffode.core.class_gmm import ClassConditionalGMM
from diffode.core.conditioning import bind
from diffode.core.denoisers import GaussianMixture
from diffode.core.guidance import Guidance, Guided, dynamic_threshold, from_record
from diffode.core.grids import make_grid
from diffode.core.schedules import DTYPE, EDM
from diffode.models import Model

pytestmark = pytest.mark.usefixtures("one_thread")

# six components on a ring, three classes (two components each), unequal weights
ANG = torch.arange(6, dtype=DTYPE) * math.pi / 3
MEANS = torch.stack([ANG.cos(), ANG.sin()], -1)
WEIGHTS = torch.tensor([1.0, 2.0, 1.5, 0.5, 1.0, 3.0], dtype=DTYPE)
CLASSES = torch.tensor([0, 0, 1, 1, 2, 2])
STD = 0.15


def _cgmm():
    return ClassConditionalGMM(GaussianMixture(WEIGHTS, MEANS, stds=STD), CLASSES)


def _model(guidance=None):
    m = Model(_cgmm(), (2,), EDM(), 0.002, 80.0, {"kind": "test", "name": "cgmm"}, "gmm")
    return m if guidance is None else m.with_guidance(guidance)


def _start(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 80.0 * torch.randn(n, 2, dtype=DTYPE, generator=g), torch.randint(3, (n,), generator=g)


def _exact_D(x, sigma, labels, w):
    """D_u + w (D_c - D_u), D_c from a mixture of class c's components alone (a GaussianMixture of its own)."""
    D_u = GaussianMixture(WEIGHTS, MEANS, stds=STD)(x, sigma)
    D_c = torch.empty_like(x)
    for c in range(3):
        keep = CLASSES == c
        rows = labels == c
        if rows.any():
            D_c[rows] = GaussianMixture(WEIGHTS[keep], MEANS[keep], stds=STD)(x[rows], sigma)
    return D_u + w * (D_c - D_u)


def _euler(x, sigmas, labels, w):
    for s, t in zip(sigmas[:-1], sigmas[1:]):
        x = x + (t - s) * (x - _exact_D(x, s, labels, w)) / s
    return x


@pytest.mark.parametrize("w", [0.0, 1.0, 3.0])
def test_guided_sampling_equals_an_independent_guided_euler(w):
    x_T, y = _start()
    sigmas = make_grid("edm", 12, EDM(), sigma_min=0.002, sigma_max=80.0)
    ours = diffode.sample(bind(Guided(_cgmm(), Guidance(w)), y), x_T, solver="euler", nfe=12, grid=sigmas)
    torch.testing.assert_close(ours, _euler(x_T, sigmas, y, w), rtol=0, atol=1e-10)
    via_model = _model(Guidance(w)).sample(x_T, 20, cond=y, solver="euler", nfe=12, grid=sigmas)
    torch.testing.assert_close(via_model, ours, rtol=0, atol=1e-10)


def test_guidance_moves_samples_toward_their_class():
    """At w = 3 more samples land on a component of their own class than at w = 1 (and far more than at w = 0)."""
    x_T, y = _start(400, seed=1)

    def own(w):
        x = _model(Guidance(w)).sample(x_T, 400, cond=y, solver="dpmpp_2m", nfe=20, grid="logsnr")
        nearest = torch.cdist(x, MEANS).argmin(-1)
        return float((CLASSES[nearest] == y).double().mean())

    assert own(0.0) < 0.6 < own(1.0) <= own(3.0)


def test_w0_and_w1_reduce_to_the_unconditional_and_conditional_samples_exactly():
    x_T, y = _start()
    kw = dict(solver="dpmpp_2m", nfe=8, grid="logsnr", schedule=EDM(), sigma_min=0.002, sigma_max=80.0)
    D = _cgmm()
    cond = diffode.sample(bind(D, y), x_T, **kw)
    uncond = diffode.sample(bind(D, torch.full_like(y, 3)), x_T, **kw)
    assert torch.equal(diffode.sample(bind(Guided(D, Guidance(1.0)), y), x_T, **kw), cond)
    assert torch.equal(diffode.sample(bind(Guided(D, Guidance(0.0)), y), x_T, **kw), uncond)
    assert torch.equal(_model(Guidance(1.0)).sample(x_T, 64, cond=y, solver="dpmpp_2m", nfe=8), _model().sample(
        x_T, 64, cond=y, solver="dpmpp_2m", nfe=8))
    assert not torch.equal(cond, uncond)


class _Counting(torch.nn.Module):
    """Counts the network passes of the denoiser it wraps, and the sigmas they ran at."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.passes, self.rows = inner, 0, []
        self.num_classes = inner.num_classes

    def forward(self, x, sigma, cond=None):
        self.passes += 1
        self.rows.append(x.shape[0])
        return self.inner(x, sigma, cond=cond)


@pytest.mark.parametrize("w, interval", [(3.0, None), (3.0, (0.5, 5.0)), (1.0, (0.5, 5.0)), (0.0, None)])
def test_forwards_count_the_network_passes(w, interval):
    x_T, y = _start(8)
    net = _Counting(_cgmm())
    sigmas = make_grid("edm", 10, EDM(), sigma_min=0.002, sigma_max=80.0)
    _, info = diffode.sample(bind(Guided(net, Guidance(w, interval)), y), x_T, solver="heun", nfe=19, grid=sigmas, euler_last=True,
                             return_info=True)
    # heun (euler_last) evaluates at every grid point but the last, and at the next point of each of the first 9 steps
    at = list(sigmas[:10]) + list(sigmas[1:10])
    inside = sum(1 for s in at if interval is not None and interval[0] < float(s) <= interval[1])
    guided_calls = 0 if w in (0.0, 1.0) else (len(at) if interval is None else inside)
    assert info["nfe"] == 19 and info["forwards"] == 19 + guided_calls
    assert net.passes == 19  # one batched forward per call: 2B rows where guided, B elsewhere
    assert sum(net.rows) == 8 * info["forwards"]
    assert net.rows.count(16) == guided_calls


def test_interval_is_lo_exclusive_hi_inclusive_and_per_sample_sigmas_mix():
    G = Guided(_cgmm(), Guidance(4.0, (1.0, 2.0)))
    assert G.weight(torch.tensor(1.0, dtype=DTYPE)) == 1.0 and G.weight(torch.tensor(2.0, dtype=DTYPE)) == 4.0
    assert G.forwards(torch.tensor(0.5)) == 1 and G.forwards(torch.tensor(1.5)) == 2
    x, y = torch.randn(3, 2, dtype=DTYPE), torch.tensor([0, 1, 2])
    s = torch.tensor([0.5, 1.5, 3.0], dtype=DTYPE)
    out = G(x, s, cond=y)
    for i, w in enumerate([1.0, 4.0, 1.0]):
        torch.testing.assert_close(out[i:i + 1], _exact_D(x[i:i + 1], s[i], y[i:i + 1], w), rtol=0, atol=1e-12)
    assert G.forwards(s) == 2


def test_dynamic_threshold_matches_imagen():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 1, 8, 8, dtype=DTYPE, generator=g) * torch.tensor([0.3, 1.0, 2.0, 4.0, 0.9],
                                                                        dtype=DTYPE).reshape(-1, 1, 1, 1)
    out = dynamic_threshold(x, 0.995)
    for i in range(5):
        a = x[i].numpy().ravel()
        s = max(1.0, float(np.quantile(np.abs(a), 0.995)))
        np.testing.assert_allclose(out[i].numpy().ravel(), np.clip(a, -s, s) / s, rtol=0, atol=1e-14)
    assert float(out.abs().max()) <= 1.0
    small = 0.5 * torch.tanh(x)
    assert torch.equal(dynamic_threshold(small), small)  # already inside [-1, 1]: untouched


def test_threshold_applies_to_the_guided_prediction():
    x, y = torch.randn(4, 2, dtype=DTYPE) * 3, torch.tensor([0, 1, 2, 0])
    G = Guided(_cgmm(), Guidance(6.0, threshold=0.9))
    torch.testing.assert_close(G(x, 0.3, cond=y), dynamic_threshold(_exact_D(x, 0.3, y, 6.0), 0.9), rtol=0, atol=1e-12)


def test_records_normalise_and_round_trip():
    assert Guidance(1.0, (0.1, 2.0)).record() is None and Guidance().record() is None
    g = Guidance(2, [0.2, 3], 0.995)
    assert g.record() == {"scale": 2.0, "interval": [0.2, 3.0], "threshold": 0.995}
    assert from_record(g.record()) == g
    assert _model(g).condition == {"num_classes": 3, "guidance": g.record()}
    assert _model().condition == {"num_classes": 3}


@pytest.mark.parametrize("g, words", [(Guidance(-1.0), "negative"), (Guidance(2.0, (3.0, 1.0)), "lo < hi"),
                                      (Guidance(2.0, threshold=1.5), "(0, 1)")])
def test_bad_settings_are_refused(g, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        _model(g)


def test_guidance_on_an_unconditional_model_and_a_guided_model_without_labels_are_refused():
    m = Model(GaussianMixture(WEIGHTS, MEANS, stds=STD), (2,), EDM(), 0.002, 80.0, {"kind": "test"}, "gmm")
    with pytest.raises(ValueError, match="unconditional"):
        m.with_guidance(Guidance(2.0))
    with pytest.raises(ValueError, match="cond=labels"):
        _model(Guidance(2.0)).denoiser_for(None)
    with pytest.raises(ValueError, match="out of range"):
        _model(Guidance(2.0)).denoiser_for(torch.tensor([0, 7]))
