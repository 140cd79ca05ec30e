"""Metrics against exact answers: FID of Gaussians' statistics, SW of shifted sets, the exact
single-Gaussian PF-ODE flow for the reference solve, and the offline-weights rules."""
import math

import pytest
import scipy.linalg
import torch
from torch import nn

from diffode.core.denoisers import GaussianMixture, make_gmm
from diffode.metrics import fid as F
from diffode.metrics.gmm import (endpoint_rmse, random_directions, reference_solve, sliced_wasserstein,
                                 sw_noise_floor)
from diffode.metrics.weights import MissingWeightsError

torch.set_num_threads(2)


def _data(n=400, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, dtype=torch.float64, generator=g)
    return torch.randn(n, d, dtype=torch.float64, generator=g) @ A + 0.5


def _frechet_scipy(x, y):
    """Independent Frechet distance of the empirical Gaussians (scipy sqrtm)."""
    m1, m2 = x.mean(0).numpy(), y.mean(0).numpy()
    c1, c2 = torch.cov(x.T).numpy(), torch.cov(y.T).numpy()
    s = scipy.linalg.sqrtm(c1 @ c2).real
    return float(((m1 - m2) ** 2).sum() + (c1 + c2 - 2 * s).trace())


def test_fid_identical_sets_is_zero():
    x = _data()
    f = F.FlattenFeatures(x.shape[1])
    assert abs(F.fid_score(x, f, F.feature_stats(x, f))) < 1e-8


def test_fid_shift_gives_c_squared_d():
    # Same covariance, means differ by c in each of d coordinates: FD = |c|^2 d exactly.
    x, c = _data(), 0.3
    d = x.shape[1]
    f = F.FlattenFeatures(d)
    assert F.fid_score(x + c, f, F.feature_stats(x, f)) == pytest.approx(c * c * d, rel=1e-9)


def test_fid_scaled_set_matches_closed_form_and_scipy():
    # y = a x: mean a mu, covariance a^2 C, so FD = (1-a)^2 |mu|^2 + (1-a)^2 tr C.
    x, a = _data(seed=1), 1.7
    f = F.FlattenFeatures(x.shape[1])
    val = F.fid_score(a * x, f, F.feature_stats(x, f), batch_size=64)  # batching must not matter
    exact = (1 - a) ** 2 * (float((x.mean(0) ** 2).sum()) + float(torch.cov(x.T).trace()))
    assert val == pytest.approx(exact, rel=1e-8)
    y = _data(seed=2) * 0.8 + 0.1
    assert F.fid_score(y, f, F.feature_stats(x, f)) == pytest.approx(_frechet_scipy(x, y), rel=1e-6)


def test_fid_linear_feature_net_keeps_its_dtype():
    lin = nn.Sequential(nn.Flatten(), nn.Linear(6, 4))
    lin.num_features, lin.cache_id = 4, "lin"
    x = _data().float()
    F.make_fid(lin)  # set_dtype(float64) must not cast the shared feature net
    assert lin[1].weight.dtype == torch.float32
    W = lin[1].weight.detach().double()
    # Features = W x + b: a shift c of x shifts the features by W c, covariance unchanged.
    c = torch.full((6,), 0.25)
    expected = float(((W @ c.double()) ** 2).sum())
    assert F.fid_score(x + c, lin, F.feature_stats(x, lin)) == pytest.approx(expected, rel=1e-4)


def test_reference_stats_are_cached_on_disk(tmp_path):
    calls = []

    def real():
        calls.append(1)
        return _data()

    f = F.FlattenFeatures(6)
    first = F.reference_stats("toy", f, real, directory=tmp_path)
    second = F.reference_stats("toy", f, real, directory=tmp_path)
    assert calls == [1] and not first["cached"] and second["cached"]
    for k in F.STAT_KEYS:
        assert torch.equal(first[k], second[k])
    # the same feature net again is the same entry; another feature net is another entry
    assert F.reference_stats("toy", F.FlattenFeatures(6), real, directory=tmp_path)["cached"] and calls == [1]
    other = F.FlattenFeatures(6)
    other.cache_id = "flatten6-other"
    assert not F.reference_stats("toy", other, real, directory=tmp_path)["cached"]


def test_missing_inception_weights_error_names_file_and_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MissingWeightsError) as e:
        F.InceptionFeatures()
    msg = str(e.value)
    assert "weights-inception-2015-12-05-6726825d.pth" in msg and "diffode fetch-weights inception" in msg


@pytest.mark.parametrize("net,file", [("alex", "alexnet-owt-7be5be79.pth"), ("vgg", "vgg16-397923af.pth")])
def test_lpips_missing_weights_error(tmp_path, monkeypatch, net, file):
    from diffode.metrics.lpips import LPIPS

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MissingWeightsError) as e:
        LPIPS(net)
    assert file in str(e.value) and f"diffode fetch-weights lpips-{net}" in str(e.value)


def test_lpips_code_path_with_random_backbone():
    # RANDOM backbone (lpips pnet_rand): exercises shapes, upsampling and gradients only.
    from diffode.metrics.lpips import lpips_random_backbone_for_tests, prepare

    m = lpips_random_backbone_for_tests("alex")
    assert m.random_backbone
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 8, 8, generator=g) * 2 - 1
    y = (torch.rand(3, 1, 8, 8, generator=g) * 2 - 1).requires_grad_(True)
    assert prepare(x).shape == (3, 3, 32, 32)
    assert torch.allclose(m(x, x), torch.zeros(3), atol=1e-7)
    d = m(x, y)
    assert d.shape == (3,) and bool((d > 0).all())
    d.sum().backward()
    assert y.grad is not None and bool(torch.isfinite(y.grad).all())


# -- GMM metrics ---------------------------------------------------------------------------

def test_reference_solve_matches_exact_single_gaussian_flow():
    # K = 1, isotropic std tau: the VE PF-ODE flow is x(s) = mu + sqrt((tau^2+s^2)/(tau^2+S^2)) (x_T - mu).
    mu, tau, S, s = torch.tensor([[0.7, -1.2]], dtype=torch.float64), 0.3, 80.0, 0.002
    gm = GaussianMixture([1.0], mu, stds=tau)
    x_T = S * torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = mu + math.sqrt((tau**2 + s**2) / (tau**2 + S**2)) * (x_T - mu)
    # rtol 1e-10 is relative to the state, which starts at |x_T| ~ S = 80
    assert endpoint_rmse(reference_solve(gm, x_T, S, s), exact) < 1e-9 * S
    assert endpoint_rmse(exact, exact) == 0.0


def test_sliced_wasserstein_exact_answers():
    gm = make_gmm(2, 8, layout="ring", std=0.1)
    x = gm.sample(500, torch.Generator().manual_seed(0))
    assert sliced_wasserstein(x, x) == 0.0
    # A translation by c moves every projection by theta.c: SW2^2 = mean_theta (theta.c)^2.
    c = torch.tensor([0.3, -0.4], dtype=torch.float64)
    theta = random_directions(2, 256, torch.Generator().manual_seed(0))
    assert sliced_wasserstein(x + c, x) == pytest.approx(float(((theta @ c) ** 2).mean().sqrt()), rel=1e-12)
    # ... which for many directions tends to |c| / sqrt(d)
    assert sliced_wasserstein(x + c, x, n_projections=20000) == pytest.approx(0.5 / math.sqrt(2), rel=0.02)


def test_sliced_wasserstein_of_exact_samples_is_at_noise_level():
    gm = make_gmm(2, 8, layout="ring", std=0.1)
    mean, std = sw_noise_floor(gm, 1000, repeats=6)
    g = torch.Generator().manual_seed(123)
    other = sliced_wasserstein(gm.sample(1000, g), gm.sample(1000, g))
    assert abs(other - mean) < 4 * std
    # a wrong distribution (means shrunk by 25%) is far outside that noise
    wrong = GaussianMixture(torch.ones(8), gm.mu * 0.75, stds=0.1)
    assert sliced_wasserstein(wrong.sample(1000, g), gm.sample(1000, g)) > mean + 5 * std


# -- the digits classifier and its FID features -------------------------------------------

def test_digits_classifier_heldout_accuracy_and_confident_share():
    from diffode.data.digits import load_digits_tensors
    from diffode.metrics.digits_classifier import accuracy, confident_share, load_classifier

    model, info = load_classifier()
    x, y = load_digits_tensors("heldout")
    acc = accuracy(model, x, y)
    assert acc >= 0.97 and acc == pytest.approx(info["heldout_accuracy"], abs=1e-6)
    noise = torch.rand(200, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert confident_share(x) > 0.95 and confident_share(noise) < confident_share(x) - 0.3


def test_digits_fid_separates_real_from_noise(tmp_path):
    from diffode.data.digits import load_digits_tensors
    from diffode.metrics.digits_classifier import DigitsFeatures

    f = DigitsFeatures()
    ref = F.reference_stats("digits", f, lambda: load_digits_tensors("train")[0], directory=tmp_path)
    held = load_digits_tensors("heldout")[0]
    g = torch.Generator().manual_seed(0)
    # held-out real digits, then more and more corrupted ones, then uniform noise: FID increases
    sets = [held] + [(held + s * torch.randn(held.shape, generator=g)).clamp(-1, 1) for s in (0.1, 0.3, 0.6)]
    sets.append(torch.rand(360, 1, 8, 8, generator=g) * 2 - 1)
    fids = [F.fid_score(x, f, ref) for x in sets]
    assert fids == sorted(fids) and fids[0] < 0.02 * fids[-1]


# -- the digits perceptual distance ---------------------------------------------------------

def test_digits_perceptual_distance_is_the_lpips_sum_over_the_perceptual_classifiers_relus():
    """d(x, y) = sum over the ReLU outputs of mean over positions of |unit(h_x) - unit(h_y)|^2 (channel-unit
    vectors), taken here by forward hooks on the classifier itself; its backbone is not the FID classifier."""
    from diffode.data.digits import load_digits_tensors
    from diffode.metrics.digits_classifier import accuracy, load_classifier
    from diffode.metrics.digits_perceptual import DigitsPerceptual

    model, info = load_classifier("perceptual")
    fid_model, _ = load_classifier("fid")
    x, y = load_digits_tensors("heldout")
    assert accuracy(model, x, y) >= 0.97 and info["train_config"]["seed"] != 0
    assert sum(p.numel() for p in model.parameters()) != sum(p.numel() for p in fid_model.parameters())
    acts = []
    hooks = [m.register_forward_hook(lambda m, i, o: acts.append(o)) for m in model.body if isinstance(m, torch.nn.ReLU)]
    try:
        a, b = x[:16].double(), x[16:32].double()
        model(a.float()), model(b.float())
    finally:
        for h in hooks:
            h.remove()
    assert len(acts) == 8  # three conv maps and the penultimate layer, for a and for b
    want = torch.zeros(16, dtype=torch.float64)
    for ha, hb in zip(acts[:4], acts[4:]):
        ua = ha.double() / ha.double().norm(dim=1, keepdim=True).clamp_min(1e-10)
        ub = hb.double() / hb.double().norm(dim=1, keepdim=True).clamp_min(1e-10)
        diff = (ua - ub).pow(2).sum(1)
        want += diff.reshape(16, -1).mean(1)  # the 128-d layer: one position
    d = DigitsPerceptual()
    torch.testing.assert_close(d(a, b), want, rtol=1e-5, atol=1e-6)
    assert d(a, b).dtype == torch.float64 and float(d(a, a).abs().max()) < 1e-12
    torch.testing.assert_close(d(a, b), d(b, a))


def test_digits_perceptual_distance_grows_with_corruption_and_refuses_other_shapes():
    from diffode.data.digits import load_digits_tensors
    from diffode.metrics.digits_perceptual import DigitsPerceptual

    d = DigitsPerceptual()
    x = load_digits_tensors("heldout")[0]
    g = torch.Generator().manual_seed(0)
    means = [float(d(x, (x + s * torch.randn(x.shape, generator=g)).clamp(-1, 1)).mean()) for s in (0.05, 0.2, 0.5, 1.0)]
    assert means == sorted(means) and means[0] < 0.2 * means[-1], means
    xg = x[:4].clone().requires_grad_(True)
    d(xg, x[4:8]).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="compares \\[B, 1, 8, 8\\] images"):
        d(torch.zeros(2, 2), torch.zeros(2, 2))
