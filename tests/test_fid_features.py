"""FID's feature side: the uint8 quantisation of the protocol, the feature-net choice, the Inception wrapper's
input handling and settings, and the features the bootstrap reads (exact answers, no weights needed)."""
import pytest
import torch

import diffode.metrics.fid as F


def test_quantize_uint8_rounds_like_edm_image_saving():
    # NVlabs/edm: (x * 127.5 + 128).clip(0, 255).to(uint8), the cast truncating (so +128 rounds -1..1 to 0..255)
    x = torch.tensor([-1.5, -1.0, -0.999, 0.0, 0.004, 0.5, 0.999, 1.0, 2.0])
    expected = [0, 0, 0, 128, 128, 191, 255, 255, 255]
    q = F.quantize_uint8(x)
    assert q.dtype == torch.uint8 and q.tolist() == expected


def test_feature_net_by_name():
    net = F.get_feature_net("flatten", dim=6)
    assert isinstance(net, F.FlattenFeatures) and net.num_features == 6 and net.cache_id == "flatten6"
    out = net(torch.arange(12.0).reshape(2, 1, 2, 3))
    assert out.dtype == torch.float64 and out.tolist() == [list(map(float, range(6))), list(map(float, range(6, 12)))]
    from diffode.metrics.digits_classifier import DigitsFeatures

    assert isinstance(F.get_feature_net("digits"), DigitsFeatures)
    with pytest.raises(ValueError, match="needs the data dimension"):
        F.get_feature_net("flatten")
    with pytest.raises(ValueError, match="unknown FID feature net 'nosuch'"):
        F.get_feature_net("nosuch")


class _Recorder(torch.nn.Module):
    """Stands in for torchmetrics' Inception: records its input and returns [N, 2048] float32 features."""

    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs, self.seen = kwargs, []

    def forward(self, x):
        self.seen.append(x)
        return x.float().mean((1, 2, 3))[:, None].expand(-1, 2048)


def test_inception_wrapper_settings_and_input(monkeypatch, tmp_path):
    """The protocol's settings (the TF1-compatible net, pool3 features, the weights file, no antialias) and
    what the net receives: uint8 pixels, grey images repeated to 3 channels; float64 [N, 2048] back."""
    import torchmetrics.image.fid as tm

    weights = tmp_path / "w.pth"
    monkeypatch.setattr(F, "require_weights", lambda key: weights if key == "inception" else None)
    monkeypatch.setattr(tm, "NoTrainInceptionV3", _Recorder)
    net = F.InceptionFeatures()
    assert net.net.kwargs == {"name": "inception-v3-compat", "features_list": ["2048"],
                              "feature_extractor_weights_path": str(weights), "antialias": False}
    assert F.InceptionFeatures(antialias=True).net.kwargs["antialias"] is True
    assert net.num_features == 2048 and net.cache_id == "inception2015"
    grey = torch.tensor([-1.0, 0.0, 1.0, 0.5]).reshape(1, 1, 2, 2).expand(3, 1, 2, 2)
    out = net(grey)
    (seen,) = net.net.seen
    assert seen.dtype == torch.uint8 and seen.shape == (3, 3, 2, 2)
    assert seen[:, 0].tolist() == seen[:, 2].tolist() == [[[0, 128], [255, 191]]] * 3
    assert out.dtype == torch.float64 and out.shape == (3, 2048)
    torch.testing.assert_close(out[:, 0], torch.full((3,), (0 + 128 + 255 + 191) / 4, dtype=torch.float64))
    rgb = torch.zeros(2, 3, 2, 2)
    assert net(rgb).shape == (2, 2048) and net.net.seen[-1].shape == (2, 3, 2, 2)


def test_features_are_float64_and_batched():
    net = torch.nn.Flatten()  # a float32 feature net: features() hands back float64
    x = torch.arange(20.0).reshape(5, 2, 2)
    out = F.features(x, net, batch_size=2)
    assert out.dtype == torch.float64 and torch.equal(out, x.reshape(5, 4).double())


def test_inception_is_the_net_named_inception(tmp_path, monkeypatch):
    from diffode.metrics.weights import MissingWeightsError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no weights there: building it must ask for them
    with pytest.raises(MissingWeightsError, match="weights-inception-2015-12-05"):
        F.get_feature_net("inception")


def test_stats_cache_path_and_key_checks(tmp_path, monkeypatch):
    import hashlib

    name = hashlib.sha1(b"my data/x|flatten3").hexdigest()[:10]
    assert F.stats_path("my data/x", "flatten3", tmp_path) == tmp_path / f"my_data_x__flatten3__{name}.pt"
    monkeypatch.setenv("DIFFODE_CACHE", str(tmp_path / "c"))
    assert F.stats_path("k", "id") == tmp_path / "c" / "fid_ref" / f"k__id__{hashlib.sha1(b'k|id').hexdigest()[:10]}.pt"
    net = torch.nn.Flatten()
    with pytest.raises(ValueError, match="cache_id"):
        F.reference_stats("k", net, torch.zeros(2, 3), directory=tmp_path)
    out = F.reference_stats("k", F.FlattenFeatures(3), torch.arange(6.0).reshape(2, 3), directory=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [F.stats_path("k", "flatten3", tmp_path).name]
    assert out["path"] == str(F.stats_path("k", "flatten3", tmp_path))


def test_stats_moments_are_the_mean_and_unbiased_covariance():
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5], [2.0, 4.0]], dtype=torch.float64)
    mu, S = F.stats_moments(F.feature_stats(x, F.FlattenFeatures(2)))
    torch.testing.assert_close(mu, x.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(S, torch.cov(x.T), rtol=1e-12, atol=1e-12)


def test_psd_square_root_and_frechet_distance_on_diagonal_covariances():
    # a tiny negative eigenvalue (round-off of a PSD matrix) is clamped to 0, not turned into NaN
    S = torch.diag(torch.tensor([4.0, 9.0, -1e-18], dtype=torch.float64))
    torch.testing.assert_close(F._sqrt_psd(S), torch.diag(torch.tensor([2.0, 3.0, 0.0], dtype=torch.float64)))
    # diagonal: FD = |mu1 - mu2|^2 + sum (s1 - s2)^2 over the standard deviations
    s1, s2 = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64), torch.tensor([3.0, 1.0, 0.5], dtype=torch.float64)
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64), torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    S2 = torch.diag(s2**2)
    fd = F.frechet_distance(mu1, torch.diag(s1**2), mu2, F._sqrt_psd(S2), torch.trace(S2))
    assert float(fd) == pytest.approx(1.0 + 4.0 + 4.0 + 1.0, rel=1e-12)


def test_bootstrap_without_replicates_returns_the_point_value():
    x = torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = F.feature_stats(torch.randn(80, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)),
                          F.FlattenFeatures(2))
    out = F.bootstrap_fid(x, ref, B=1)
    assert out["fid_lo"] == out["fid"] == out["fid_hi"] and out["fid_std"] == 0.0
    assert out["fid"] == pytest.approx(F.fid_score(x, F.FlattenFeatures(2), ref), rel=1e-9)


def test_reference_stats_create_nested_cache_folders_and_any_dtype_of_states_scores_alike(tmp_path):
    x = torch.randn(40, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.randn(30, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 0.5
    net = F.FlattenFeatures(3)
    ref = F.reference_stats("k", net, x, directory=tmp_path / "a" / "b")  # folders that do not exist yet
    assert not ref["cached"] and F.reference_stats("k", net, x, directory=tmp_path / "a" / "b")["cached"]
    # states stored in float32 (another tool's cache) are read in float64: the same FID to round-off of the states
    ref32 = {k: ref[k].float() for k in F.STAT_KEYS}
    exact = F.fid_score(y, net, {k: ref32[k].double() for k in F.STAT_KEYS})
    assert F.fid_score(y, net, ref32) == pytest.approx(exact, rel=1e-13)
