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
