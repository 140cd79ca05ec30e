"""FID intervals: the bootstrap interval covers the closed-form Frechet distance, and its point value
is torchmetrics' FID (an independent implementation of the same formula)."""
import math

import torch

from diffode.metrics.fid import FlattenFeatures, bootstrap_fid, feature_stats, fid_score


def _gaussians(d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    S1 = A @ A.T + 0.5 * torch.eye(d, dtype=torch.float64)
    S2 = torch.diag(torch.linspace(0.5, 1.5, d, dtype=torch.float64))
    mu1, mu2 = torch.zeros(d, dtype=torch.float64), 0.3 * torch.ones(d, dtype=torch.float64)
    return g, mu1, S1, mu2, S2


def _closed_form(mu1, S1, mu2, S2):
    # tr sqrt(S1 S2) from the eigenvalues of S1 S2 (real, >= 0 for PSD S1, S2): no code shared with diffode
    ev = torch.linalg.eigvals(S1 @ S2).real.clamp_min(0)
    return float(((mu1 - mu2) ** 2).sum() + torch.trace(S1) + torch.trace(S2) - 2 * ev.sqrt().sum())


def test_bootstrap_interval_covers_the_closed_form_frechet_distance(one_thread):
    g, mu1, S1, mu2, S2 = _gaussians()
    true = _closed_form(mu1, S1, mu2, S2)
    N = 10**9  # the reference statistics are those of N(mu2, S2) itself
    ref = {"real_features_num_samples": torch.tensor(N, dtype=torch.float64), "real_features_sum": N * mu2,
           "real_features_cov_sum": (N - 1) * S2 + N * torch.outer(mu2, mu2)}
    L = torch.linalg.cholesky(S1)
    hits = 0
    for r in range(50):
        x = mu1 + torch.randn(2000, 8, generator=g, dtype=torch.float64) @ L.T
        out = bootstrap_fid(x, ref, B=200, seed=r)
        assert out["fid_lo"] <= out["fid"] <= out["fid_hi"]
        hits += out["fid_lo"] <= true <= out["fid_hi"]
    assert hits >= 40, f"95% interval covered the true distance {true:.4f} in only {hits} of 50 repeats"


def test_point_value_is_torchmetrics_fid(one_thread):
    g, mu1, S1, mu2, S2 = _gaussians(seed=1)
    real = mu2 + torch.randn(3000, 8, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(S2).T
    fake = mu1 + torch.randn(1500, 8, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(S1).T
    net = FlattenFeatures(8)
    ref = feature_stats(real.float(), net)
    expected = fid_score(fake.float(), net, ref)
    out = bootstrap_fid(net(fake.float()), ref, B=2)
    assert abs(out["fid"] - expected) < 1e-6 * max(1.0, expected)


def _exact_reference(mu, S, N=10**9):
    """torchmetrics' real-side states of N(mu, S) itself (N so large that the reference is exact)."""
    return {"real_features_num_samples": torch.tensor(N, dtype=torch.float64), "real_features_sum": N * mu,
            "real_features_cov_sum": (N - 1) * S + N * torch.outer(mu, mu)}


def test_interval_is_calibrated_where_the_plug_in_bias_dominates(one_thread):
    """16-D features from 400 samples: the plug-in FID sits about 3 standard deviations above the true
    distance (the bias of the estimated mean and covariance), so only an interval that corrects for it
    covers. The basic interval covers 47 of these 50 repeats, the percentile interval none; and its width
    must match the spread of the point value over independent repeats (a 99.5% interval is 1.4x too wide)."""
    d, n = 16, 400
    g = torch.Generator().manual_seed(0)
    S2, mu2 = torch.diag(torch.linspace(0.5, 1.5, d, dtype=torch.float64)), torch.zeros(d, dtype=torch.float64)
    A = torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    S1, mu1 = 0.8 * S2 + 0.1 * A @ A.T, 0.5 * torch.ones(d, dtype=torch.float64) / math.sqrt(d)
    true = _closed_form(mu1, S1, mu2, S2)
    ref, L = _exact_reference(mu2, S2), torch.linalg.cholesky(S1)
    outs = [bootstrap_fid(mu1 + torch.randn(n, d, generator=g, dtype=torch.float64) @ L.T, ref, B=200, seed=r)
            for r in range(50)]
    points = torch.tensor([o["fid"] for o in outs], dtype=torch.float64)
    spread = float(points.std())
    assert float(points.mean()) - true > 2.5 * spread  # the setting: the bias dominates the spread
    hits = sum(o["fid_lo"] <= true <= o["fid_hi"] for o in outs)
    assert hits >= 43, f"95% interval covered the true distance {true:.4f} in only {hits} of 50 repeats"
    # The percentile interval [q_lo, q_hi] is the basic one reflected about the point value.
    pct = sum(2 * o["fid"] - o["fid_hi"] <= true <= 2 * o["fid"] - o["fid_lo"] for o in outs)
    assert pct <= 5, f"the percentile interval covered {pct} of 50: this setting no longer shows the bias"
    # Width: a 95% interval is about 2 x 1.96 standard deviations of the point value over repeats.
    width = sum(o["fid_hi"] - o["fid_lo"] for o in outs) / len(outs)
    assert 0.75 < width / (2 * 1.96 * spread) < 1.3, (width, spread)
    std = sum(o["fid_std"] for o in outs) / len(outs)
    assert 0.75 < std / spread < 1.3, (std, spread)
