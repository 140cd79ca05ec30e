"""FID through torchmetrics' FrechetInceptionDistance, with cached reference statistics.

Every feature net here takes images as the project stores them (float, [-1, 1], [N, C, H, W])
and returns float64 features [N, d]; torchmetrics gets it as a custom `feature=` module with
normalize=False, so images reach the net untouched. Feature nets:

- `InceptionFeatures`: the standard Inception-v3 FID weights (pool3, 2048-d) from the torch
  hub cache; a clear error names the file and `diffode fetch-weights inception` when missing.
- the digits classifier's penultimate layer (diffode.metrics.digits_classifier), for `digits`.
- `FlattenFeatures`: the identity on flattened data (vectors, tests with exact answers).

The real side of FID is the same for every cell of a sweep, so its sufficient statistics
(feature sum, sum of outer products, count: torchmetrics' own states) are computed once per
(dataset, feature net) and cached on disk under `cache_dir()`.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from .weights import require_weights

STAT_KEYS = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")


def cache_dir() -> Path:
    """The project's one cache root (diffode.config.cache_dir): $DIFFODE_CACHE, else ~/.cache/diffode."""
    from diffode.config import cache_dir as root

    return root()


def quantize_uint8(x: Tensor) -> Tensor:
    """[-1, 1] floats to uint8 pixels with rounding, as NVlabs/edm saves images."""
    return (x * 127.5 + 128).clamp(0, 255).to(torch.uint8)


class FlattenFeatures(nn.Module):
    """Features = the flattened input itself: with it FID is the Frechet distance of the data."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim
        self.cache_id = f"flatten{dim}"

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1).double()


class InceptionFeatures(nn.Module):
    """Inception-v3 pool3 features of the FID protocol, from weights in the torch hub cache."""

    num_features = 2048
    cache_id = "inception2015"

    def __init__(self, antialias: bool = False):
        super().__init__()
        # torchmetrics' extractor is torch-fidelity's network (a dependency through torchmetrics[image]): imported
        # first, so that a broken install says so before the weights are looked up.
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3  # noqa: F401
        from torchmetrics.image.fid import NoTrainInceptionV3

        path = require_weights("inception")

        # antialias=False keeps torch-fidelity's TF1-compatible resize (comparable numbers).
        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                      feature_extractor_weights_path=str(path), antialias=antialias)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.net(quantize_uint8(x)).reshape(x.shape[0], -1).double()


def get_feature_net(name: str, dim: int | None = None) -> nn.Module:
    """'inception', 'digits' (classifier penultimate layer) or 'flatten' (needs dim)."""
    if name == "inception":
        return InceptionFeatures()
    if name == "digits":
        from .digits_classifier import DigitsFeatures

        return DigitsFeatures()
    if name == "flatten":
        if dim is None:
            raise ValueError("feature net 'flatten' needs the data dimension (dim=...)")
        return FlattenFeatures(dim)
    raise ValueError(f"unknown FID feature net {name!r}; choose inception, digits or flatten")


class _Unregistered(nn.Module):
    """Calls `net` without registering it: Metric.set_dtype(float64) would otherwise cast the
    (shared) feature net's parameters to float64 too. Only the statistics need float64."""

    def __init__(self, net: nn.Module):
        super().__init__()
        object.__setattr__(self, "net", net)
        self.num_features = int(net.num_features)

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.net(x)


def make_fid(feature_net: nn.Module):
    from torchmetrics.image.fid import FrechetInceptionDistance

    fid = FrechetInceptionDistance(feature=_Unregistered(feature_net), normalize=False, reset_real_features=False)
    return fid.set_dtype(torch.float64)


def _batches(images: Tensor, batch_size: int):
    for i in range(0, images.shape[0], batch_size):
        yield images[i:i + batch_size]


def feature_stats(images: Tensor, feature_net: nn.Module, batch_size: int = 1000) -> dict:
    """torchmetrics' real-side states (sum, sum of outer products, count) of `images`."""
    fid = make_fid(feature_net).to(images.device)
    for b in _batches(images, batch_size):
        fid.update(b, real=True)
    return {k: getattr(fid, k).detach().cpu().clone() for k in STAT_KEYS}


def reference_stats(key: str, feature_net: nn.Module, real_images: Tensor | Callable[[], Tensor],
                    batch_size: int = 1000, directory: str | Path | None = None) -> dict:
    """Real-data statistics for (key, feature net), loaded from the cache or computed and saved.

    `real_images` may be a callable so the data is not even loaded when the cache hits.
    The returned dict has the states plus 'path' and 'cached' (True when read from disk).
    """
    fid_id = getattr(feature_net, "cache_id", None)
    if fid_id is None:
        raise ValueError("feature net needs a `cache_id` string naming it (and its weights) for the stats cache")
    path = stats_path(key, fid_id, directory)
    if path.is_file():
        stats = torch.load(path, map_location="cpu", weights_only=True)
        return {**stats, "path": str(path), "cached": True}
    images = real_images() if callable(real_images) else real_images
    stats = feature_stats(images, feature_net, batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(stats, tmp)
    os.replace(tmp, path)  # a killed job never leaves a truncated stats file behind
    return {**stats, "path": str(path), "cached": False}


def stats_path(key: str, fid_id: str, directory: str | Path | None = None) -> Path:
    """Where reference_stats caches the statistics of (key, feature net id)."""
    name = hashlib.sha1(f"{key}|{fid_id}".encode()).hexdigest()[:10]
    return Path(directory or cache_dir() / "fid_ref") / f"{_safe(key)}__{_safe(fid_id)}__{name}.pt"


def fid_score(fake_images: Tensor, feature_net: nn.Module, ref: dict, batch_size: int = 1000) -> float:
    """FID of `fake_images` against reference statistics from `reference_stats`/`feature_stats`."""
    fid = make_fid(feature_net).to(fake_images.device)
    for k in STAT_KEYS:
        setattr(fid, k, ref[k].to(device=fake_images.device, dtype=getattr(fid, k).dtype))
    for b in _batches(fake_images, batch_size):
        fid.update(b, real=False)
    return float(fid.compute())


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)


# -- uncertainty -------------------------------------------------------------------------------

def features(images: Tensor, feature_net: nn.Module, batch_size: int = 1000) -> Tensor:
    """The feature net's float64 features of `images`, [N, num_features]."""
    with torch.no_grad():
        return torch.cat([feature_net(b).to(torch.float64) for b in _batches(images, batch_size)])


def stats_moments(ref: dict) -> tuple[Tensor, Tensor]:
    """(mean, covariance) of the real side from torchmetrics' states (sum, outer-product sum, count)."""
    n = ref["real_features_num_samples"].to(torch.float64)
    s = ref["real_features_sum"].to(torch.float64)
    ss = ref["real_features_cov_sum"].to(torch.float64)
    mu = s / n
    return mu, (ss - n * torch.outer(mu, mu)) / (n - 1)


def _sqrt_psd(S: Tensor) -> Tensor:
    w, V = torch.linalg.eigh(S)
    return (V * w.clamp_min(0).sqrt()) @ V.T


def frechet_distance(mu1: Tensor, S1: Tensor, mu2: Tensor, S2_sqrt: Tensor, tr_S2: Tensor) -> Tensor:
    """|mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr (S2^1/2 S1 S2^1/2)^1/2, with S2^1/2 given (it is fixed)."""
    M = S2_sqrt @ S1 @ S2_sqrt
    tr_sqrt = torch.linalg.eigvalsh((M + M.T) / 2).clamp_min(0).sqrt().sum()
    return ((mu1 - mu2) ** 2).sum() + torch.trace(S1) + tr_S2 - 2 * tr_sqrt


def bootstrap_fid(fake_features: Tensor, ref: dict, B: int = 200, level: float = 0.95, seed: int = 0) -> dict:
    """Basic (bias-corrected) bootstrap interval over the generated samples' features; the reference
    statistics are fixed (computed once from the real data).

    Each replicate resamples the N generated feature vectors with replacement (multinomial counts as
    weights, so no N x d copy is made) and recomputes the Frechet distance. The replicates sit above the
    plug-in value (resampling duplicates points), so the interval reflects them about it:
    [2 fid - q_hi, 2 fid - q_lo], clipped at 0 (the percentile interval would be shifted up by that bias).
    Returns fid (the plug-in value on all samples), fid_lo / fid_hi and the replicates' std."""
    F = fake_features.to(torch.float64)
    n = F.shape[0]
    mu_r, S_r = stats_moments({k: v.to(F.device) for k, v in ref.items() if isinstance(v, Tensor)})
    R, tr_r = _sqrt_psd(S_r), torch.trace(S_r)

    def fd(w: Tensor) -> float:
        mu = (w @ F) / n
        Fc = F - mu
        S = (Fc.T * w) @ Fc / (n - 1)
        return float(frechet_distance(mu, S, mu_r, R, tr_r))

    point = fd(torch.ones(n, dtype=F.dtype, device=F.device))
    g = torch.Generator().manual_seed(seed)
    reps = torch.tensor([fd(torch.bincount(torch.randint(n, (n,), generator=g), minlength=n).to(F))
                         for _ in range(int(B))], dtype=torch.float64)
    alpha = (1 - level) / 2
    q_lo, q_hi = torch.quantile(reps, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist() if B > 1 else (point, point)
    lo, hi = max(0.0, 2 * point - q_hi), max(0.0, 2 * point - q_lo)
    return {"fid": point, "fid_lo": lo, "fid_hi": hi, "fid_std": float(reps.std()) if B > 1 else 0.0}
