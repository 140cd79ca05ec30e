"""What a sweep evaluates and against what: the model (denoiser + its sampling range) and the
metrics of its samples (FID against real data, or exact GMM metrics).

Model sources (cfg.model.source):
- checkpoint: a project checkpoint, via diffode.methods.denoiser.load_denoiser.
- diffusers:  a UNet2DModel + DDPM scheduler directory, via diffode.nets.diffusers_adapter.
- gmm:        the exact denoiser of a Gaussian mixture (diffode.core.denoisers.make_gmm).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)


@dataclass
class Model:
    denoiser: object
    shape: tuple  # one sample
    schedule: object | None
    sigma_min: float
    sigma_max: float
    dataset: str
    gmm: object | None = None
    info: dict = field(default_factory=dict)


def load_model(mcfg) -> Model:
    source = mcfg.source
    if source == "gmm":
        from diffode.core.denoisers import make_gmm

        g = mcfg.gmm
        gmm = make_gmm(dim=g.dim, components=g.components, seed=g.seed, spread=g.spread, std=g.std, layout=g.layout)
        lo = 0.002 if mcfg.get("sigma_min") is None else float(mcfg.sigma_min)
        hi = 80.0 if mcfg.get("sigma_max") is None else float(mcfg.sigma_max)
        return Model(gmm, (gmm.dim,), None, lo, hi, f"gmm{gmm.dim}d", gmm=gmm)
    if source == "checkpoint":
        path = Path(mcfg.path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} not found; train one (`diffode train experiment=digits`) "
                                    f"or set model.path=... to an existing .ckpt")
        from diffode.methods.denoiser import load_denoiser

        den, info = load_denoiser(str(path), ema=mcfg.get("ema", True), map_location="cpu")
        sched = info["schedule"]
        lo = float(info.get("sigma_min") or sched.sigma_min) if mcfg.get("sigma_min") is None else float(mcfg.sigma_min)
        hi = float(info.get("sigma_max") or sched.sigma_max) if mcfg.get("sigma_max") is None else float(mcfg.sigma_max)
        return Model(den, tuple(info["shape"]), sched, lo, hi, str(info.get("dataset", "unknown")), info=dict(info))
    if source == "diffusers":
        from diffode.nets.diffusers_adapter import load_diffusers_unet

        den = load_diffusers_unet(mcfg.path)
        cfg = den.net.unet.config
        size = cfg.sample_size if isinstance(cfg.sample_size, int) else tuple(cfg.sample_size)
        shape = (cfg.in_channels, *((size, size) if isinstance(size, int) else size))
        sched = den.schedule
        lo = sched.sigma_min if mcfg.get("sigma_min") is None else float(mcfg.sigma_min)
        hi = sched.sigma_max if mcfg.get("sigma_max") is None else float(mcfg.sigma_max)
        return Model(den, shape, sched, lo, hi, str(mcfg.get("dataset") or "cifar10"))
    raise ValueError(f"unknown model.source {source!r}; choose checkpoint, diffusers or gmm")


def initial_noise(shape: tuple, seeds: range | list, sigma_max: float, dtype=torch.float64) -> Tensor:
    """x_T = sigma_max z_i with z_i drawn from its own generator seeded by seed i, so a sample's
    noise depends on its seed alone (not on the batch size or on which cells ran before)."""
    z = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s)), dtype=dtype) for s in seeds])
    return float(sigma_max) * z


# -- metrics ---------------------------------------------------------------------------------

def real_images(name: str, data_root: str | None = None) -> Tensor:
    """Real data in [-1, 1] for FID reference statistics: 'digits' (training split), 'cifar10'
    (torchvision's training set under data_root; no download here), or a folder of images."""
    if name == "digits":
        from diffode.data.digits import load_digits_tensors

        return load_digits_tensors("train")[0]
    if name == "cifar10":
        import numpy as np
        from torchvision.datasets import CIFAR10

        ds = CIFAR10(data_root or "data", train=True, download=False)
        return torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2).float() / 127.5 - 1
    path = Path(name)
    if path.is_dir():
        import numpy as np
        from PIL import Image

        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        arr = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
        return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1
    raise ValueError(f"no real data for FID reference {name!r}: use digits, cifar10 (with fid.data_root) or a folder")


class FIDMetrics:
    """FID against cached real-data statistics (+ the digits classifier's confident share)."""

    primary = "fid"

    def __init__(self, model: Model, fcfg, device=torch.device("cpu")):
        from diffode.metrics.fid import get_feature_net, reference_stats

        reference = model.dataset if fcfg.reference in (None, "auto") else fcfg.reference
        features = fcfg.features
        if features in (None, "auto"):
            features = "digits" if reference == "digits" else "inception"
        self.features_name = features
        self.device = device
        self.net = get_feature_net(features).to(device)
        self.batch_size = int(fcfg.batch_size)
        self.ref = reference_stats(f"{reference}", self.net,
                                   lambda: real_images(reference, fcfg.get("data_root")).to(device),
                                   self.batch_size, fcfg.get("cache_dir"))
        self.reference = reference
        log.info("FID reference %s / %s: %d images (%s)", reference, features,
                 int(self.ref["real_features_num_samples"]), "cached" if self.ref["cached"] else "computed")

    def __call__(self, samples: Tensor, x_T: Tensor) -> dict:
        from diffode.metrics.fid import fid_score, quantize_uint8

        # As papers (and NVlabs/edm) do: FID of the images as they would be saved, clipped to
        # [-1, 1] and rounded to 8 bits, so out-of-range pixels cost what they cost in a PNG.
        samples = quantize_uint8(samples).float() / 127.5 - 1
        out = {"fid": fid_score(samples, self.net, self.ref, self.batch_size)}
        if self.features_name == "digits":
            from diffode.metrics.digits_classifier import confident_share

            out["confident"] = confident_share(samples.cpu())
        return out

    def summary(self) -> dict:
        return {"fid_features": self.features_name, "fid_reference": self.reference,
                "fid_reference_n": int(self.ref["real_features_num_samples"]), "fid_stats": self.ref["path"]}


class GMMMetrics:
    """Endpoint RMSE against the reference ODE solve from the same x_T, and sliced W2 to fresh
    exact samples (with its noise floor: exact samples against exact samples)."""

    primary = "rmse"

    def __init__(self, model: Model, gcfg, x_T: Tensor):
        from diffode.metrics.gmm import reference_solve, sw_noise_floor

        self.gmm, self.n_proj, self.seed = model.gmm, int(gcfg.n_projections), int(gcfg.seed)
        self.x_ref = reference_solve(model.denoiser, x_T, model.sigma_max, model.sigma_min, rtol=float(gcfg.rtol)).cpu()
        self.exact = self.gmm.sample(x_T.shape[0], torch.Generator().manual_seed(1_000_003 + self.seed))
        self.floor = sw_noise_floor(self.gmm, x_T.shape[0], repeats=int(gcfg.floor_repeats),
                                    n_projections=self.n_proj, seed=self.seed)

    def __call__(self, samples: Tensor, x_T: Tensor) -> dict:
        from diffode.metrics.gmm import endpoint_rmse, sliced_wasserstein

        samples = samples.cpu()
        return {"rmse": endpoint_rmse(samples, self.x_ref.cpu()),
                "sw": sliced_wasserstein(samples, self.exact, self.n_proj, self.seed)}

    def summary(self) -> dict:
        from diffode.metrics.gmm import sliced_wasserstein

        return {"sw_exact_vs_exact_mean": self.floor[0], "sw_exact_vs_exact_std": self.floor[1],
                "sw_reference_solve": sliced_wasserstein(self.x_ref, self.exact, self.n_proj, self.seed)}


def make_metrics(model: Model, cfg, x_T: Tensor):
    kind = cfg.metric
    if kind in (None, "auto"):
        kind = "gmm" if model.gmm is not None else "fid"
    if kind == "gmm":
        if model.gmm is None:
            raise ValueError("metric=gmm needs model.source=gmm (an exact mixture); use metric=fid for images")
        return GMMMetrics(model, cfg.gmm_metrics, x_T)
    if kind == "fid":
        return FIDMetrics(model, cfg.fid, x_T.device)
    raise ValueError(f"unknown metric {kind!r}; choose auto, fid or gmm")
