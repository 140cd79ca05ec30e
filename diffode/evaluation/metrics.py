"""What a sweep measures of each cell's samples, against what.

- images: FID of the feature net (Inception, or the digits classifier for digits) with a bootstrap
  interval over the generated samples' features, the digits classifier's confident share, and the
  solver error: RMSE against a reference solve of the same model from the same noise (cached on
  disk per model, seeds and reference spec; for a distilled student it is the distance to the
  original teacher's reference solve, since the teacher is the evaluated model).
- exact mixtures: endpoint RMSE against a float64 dopri8 solve, sliced W2 to exact samples.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import Tensor

from diffode.config import cache_dir
from diffode.cache import entry_file, key_digest, load_or_compute
from diffode.models import Model

log = logging.getLogger(__name__)


# -- metrics ---------------------------------------------------------------------------------

def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))


def real_images(name: str, data_root: str | None = None) -> Tensor:
    """Real data in [-1, 1] for FID reference statistics: 'digits' (training split), 'cifar10' / 'mnist'
    (torchvision's training sets under data_root; no download here), or a folder of images."""
    if name == "digits":
        from diffode.data.digits import load_digits_tensors

        return load_digits_tensors("train")[0]
    if name == "cifar10":
        import numpy as np
        from torchvision.datasets import CIFAR10

        ds = CIFAR10(data_root or "data", train=True, download=False)
        return torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2).float() / 127.5 - 1
    if name == "mnist":
        from torchvision.datasets import MNIST

        return MNIST(data_root or "data", train=True, download=False).data[:, None].float() / 127.5 - 1
    path = Path(name)
    if path.is_dir():
        import numpy as np
        from PIL import Image

        files = image_files(path)
        arr = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
        return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1
    raise ValueError(f"no real data for FID reference {name!r}: use digits, cifar10 (with fid.data_root) or a folder")


def real_source(name: str) -> dict | None:
    """What a folder reference's statistics depend on beyond its name: its images (names, sizes, times),
    so that a changed folder is recomputed rather than answered from the cache."""
    path = Path(name)
    if name in ("digits", "cifar10", "mnist") or not path.is_dir():
        return None
    files = image_files(path)
    listing = [f"{p.relative_to(path)}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]
    return {"files": len(files), "listing": key_digest(listing)}


class SampleMetrics:
    """Metrics of a cell's samples: `measure` samples the cell from x_T (the same noise in every cell) and
    scores the samples with __call__. Metrics of data instead (likelihood, reconstruction:
    diffode/evaluation/data_metrics.py) measure a cell their own way through the same `measure`."""

    names: tuple = ()

    def measure(self, cell, model: Model, x_T: Tensor, cfg, cond=None) -> tuple[dict, Tensor]:
        from diffode.evaluation.sweep import measure_samples

        return measure_samples(self, cell, model, x_T, cfg, cond)


class FIDMetrics(SampleMetrics):
    """FID against cached real-data statistics (+ the digits classifier's confident share, and for samples drawn
    with class labels the share it labels as asked, with a Wilson interval).

    reference: the ReferenceSolve of the solver error, or {guidance scale: ReferenceSolve} for a sweep over
    guidance scales (each scale's cells against the same model's solve at that scale)."""

    primary = "fid"
    names = ("fid", "accuracy", "rmse", "confident")

    def __init__(self, model: Model, fcfg, device=torch.device("cpu"), reference=None):
        from diffode.metrics.fid import get_feature_net, reference_stats

        solve_ref = reference if isinstance(reference, dict) or reference is None else {None: reference}
        reference, features = fid_choices(model, fcfg)
        self.features_name = features
        self.device = device
        self.net = get_feature_net(features, dim=math.prod(model.image_shape)).to(device)
        self.batch_size = int(fcfg.batch_size)
        self.ref = reference_stats(f"{reference}", self.net,
                                   lambda: real_images(reference, fcfg.get("data_root")).to(device),
                                   self.batch_size, fcfg.get("cache_dir"), source=real_source(reference))
        self.reference = reference
        self.solve_ref = solve_ref
        self.bootstrap, self.level = int(fcfg.get("bootstrap", 200)), float(fcfg.get("level", 0.95))
        log.info("FID reference %s / %s: %d images (%s)", reference, features,
                 int(self.ref["real_features_num_samples"]), "cached" if self.ref["cached"] else "computed")

    def __call__(self, samples: Tensor, x_T: Tensor, labels: Tensor | None = None, guidance=None,
                 state: Tensor | None = None) -> dict:
        """Metrics of the images `samples`; state: the solver's samples when they are not the images (latents),
        what the solver error is measured on."""
        from diffode.metrics.fid import bootstrap_fid, features, quantize_uint8

        ref = None if self.solve_ref is None else self.solve_ref.get(guidance)
        if callable(ref):  # a scale's reference, made when its first cell is scored
            ref = self.solve_ref[guidance] = ref()
        out = {} if ref is None else {"rmse": ref.rmse(samples if state is None else state)}
        # As papers (and NVlabs/edm) do: FID of the images as they would be saved, clipped to
        # [-1, 1] and rounded to 8 bits, so out-of-range pixels cost what they cost in a PNG.
        samples = quantize_uint8(samples).float() / 127.5 - 1
        f = features(samples.to(self.device), self.net, self.batch_size)
        out.update(bootstrap_fid(f, self.ref, B=self.bootstrap, level=self.level))
        if self.features_name == "digits":
            from diffode.metrics.digits_classifier import confident_share

            out["confident"] = confident_share(samples.cpu())
            if labels is not None and isinstance(labels, Tensor) and not labels.is_floating_point():
                from diffode.metrics.digits_classifier import class_accuracy

                out.update(class_accuracy(samples.cpu(), labels.cpu(), self.level))
        return out

    def summary(self) -> dict:
        made = {w: r for w, r in (self.solve_ref or {}).items() if not callable(r)}
        refs = list(made.values())
        extra = {} if not refs else refs[0].summary()
        if len(refs) > 1:
            extra["reference_self_rmse_by_guidance"] = {str(w): r.self_rmse for w, r in made.items()}
        return {**extra, "fid_bootstrap": self.bootstrap, "fid_level": self.level, "fid_features": self.features_name, "fid_reference": self.reference,
                "fid_reference_n": int(self.ref["real_features_num_samples"]), "fid_stats": self.ref["path"]}


class GMMMetrics(SampleMetrics):
    """Endpoint RMSE against the reference ODE solve from the same x_T, and sliced W2 to fresh
    exact samples (with its noise floor: exact samples against exact samples)."""

    primary = "rmse"
    names = ("rmse", "sw")

    def __init__(self, model: Model, gcfg, x_T: Tensor):
        from diffode.metrics.gmm import reference_solve, sw_noise_floor

        self.gmm, self.n_proj, self.seed = model.gmm, int(gcfg.n_projections), int(gcfg.seed)
        self.x_ref = reference_solve(model.denoiser, x_T, model.sigma_max, model.sigma_min, rtol=float(gcfg.rtol)).cpu()
        self.exact = self.gmm.sample(x_T.shape[0], torch.Generator().manual_seed(1_000_003 + self.seed))
        self.floor = sw_noise_floor(self.gmm, x_T.shape[0], repeats=int(gcfg.floor_repeats),
                                    n_projections=self.n_proj, seed=self.seed)

    def __call__(self, samples: Tensor, x_T: Tensor, labels=None, guidance=None, state=None) -> dict:
        from diffode.metrics.gmm import endpoint_rmse, sliced_wasserstein

        samples = samples.cpu()
        return {"rmse": endpoint_rmse(samples, self.x_ref.cpu()),
                "sw": sliced_wasserstein(samples, self.exact, self.n_proj, self.seed)}

    def summary(self) -> dict:
        from diffode.metrics.gmm import sliced_wasserstein

        return {"sw_exact_vs_exact_mean": self.floor[0], "sw_exact_vs_exact_std": self.floor[1],
                "sw_reference_solve": sliced_wasserstein(self.x_ref, self.exact, self.n_proj, self.seed)}


def fid_choices(model: Model, fcfg) -> tuple[str, str]:
    """(reference data, feature net) of FID: auto picks the model's dataset, and the digits
    classifier for digits, Inception otherwise."""
    reference = model.dataset if fcfg.reference in (None, "auto") else str(fcfg.reference)
    features = fcfg.features
    if features in (None, "auto"):
        features = "digits" if reference == "digits" else "inception"
    return reference, str(features)


def metric_kind(model: Model, cfg) -> str:
    kind = cfg.metric
    return ("gmm" if model.gmm is not None else "fid") if kind in (None, "auto") else str(kind)


def check_metrics(model: Model, cfg, cells=()) -> None:
    """Everything make_metrics will need, checked before any sampling: ValueError / FileNotFoundError
    (missing weights or data) naming the fix. `cells`: the sweep's, for metrics that cannot measure every
    kind of cell (the data metrics need deterministic solvers)."""
    from diffode.config import solver_config
    from diffode.core.sample import check_sampling_config
    from diffode.evaluation.data_metrics import DATA_METRICS, check_data_metric
    from diffode.metrics.fid import InceptionFeatures, has_stats
    from diffode.metrics.weights import require_weights

    kind = metric_kind(model, cfg)
    if kind not in ("fid", "gmm", *DATA_METRICS):
        raise ValueError(f"unknown metric={kind!r}; choose metric=auto, fid, gmm, nll (PF-ODE likelihood) or "
                         "reconstruction (encode-decode error).")
    if kind in DATA_METRICS:
        check_data_metric(kind, model, cfg, cells)
        return
    if kind == "gmm":
        if model.gmm is None:
            raise ValueError("metric=gmm needs an exact mixture (source=gmm2d or source=gmm16d); use metric=fid for images.")
        return
    if len(model.image_shape) != 3:
        raise ValueError(f"metric=fid needs images but the model makes samples of shape {tuple(model.shape)}; evaluate "
                         "an exact mixture (source=gmm2d | gmm16d, metric=gmm) or an image model.")
    reference, features = fid_choices(model, cfg.fid)
    if features not in ("inception", "digits", "flatten"):
        raise ValueError(f"unknown fid.features={features!r}; choose auto, inception, digits or flatten (the pixels "
                         "themselves: no weights needed).")
    if features == "digits" and tuple(model.image_shape) != (1, 8, 8):
        raise ValueError(f"fid.features=digits is the 8x8 digits classifier but the model makes {tuple(model.image_shape)} "
                         "images; use fid.features=inception.")
    if features == "inception":
        require_weights("inception")
    cached = features == "inception" and has_stats(reference, InceptionFeatures.cache_id, cfg.fid.get("cache_dir"),
                                                   real_source(reference))
    folders = {"cifar10": "cifar-10-batches-py", "mnist": "MNIST/raw"}  # torchvision's layouts under data_root
    if reference in folders and not cached:
        need = Path(cfg.fid.get("data_root") or "data") / folders[reference]
        if not need.is_dir():
            raise FileNotFoundError(f"fid.reference={reference} needs torchvision's {reference} files: {need} is "
                                    f"missing; set fid.data_root=<folder holding {folders[reference]}> or "
                                    "fid.reference=<a folder of images>.")
    elif reference not in ("digits", *folders) and not cached and not Path(reference).is_dir():
        raise ValueError(f"fid.reference={reference!r} is neither digits, cifar10, mnist nor a folder of images; set "
                         "fid.reference to one of those.")
    rcfg = cfg.get("reference")
    if rcfg is not None and rcfg.get("enabled", True):
        try:
            name, opts = solver_config(str(rcfg.solver))
        except ValueError as e:
            raise ValueError(f"reference.solver: {e}") from None
        for key in ("nfe", "check_nfe"):
            if key == "check_nfe" and rcfg.get(key) is None:
                continue
            try:
                check_sampling_config(name, int(rcfg[key]), str(rcfg.grid), schedule=model.schedule,
                                      sigma_min=model.sigma_min, sigma_max=model.sigma_max, **opts)
            except ValueError as e:
                raise ValueError(f"reference.{key}={rcfg[key]} (reference.solver={rcfg.solver}, the solve every "
                                 f"cell's RMSE is measured against): {e}") from None


def make_metrics(model: Model, cfg, x_T: Tensor, labels: Tensor | None = None, guided: dict | None = None):
    """The sweep's metrics. labels: the samples' class labels (conditional models); guided: {guidance scale: the
    model guided at it} of a sweep over scales (default: {None: model})."""
    from diffode.evaluation.data_metrics import DATA_METRICS, make_data_metrics

    kind = metric_kind(model, cfg)
    if kind in DATA_METRICS:
        return make_data_metrics(kind, model, cfg)
    if kind == "gmm":
        if model.gmm is None:
            raise ValueError("metric=gmm needs model.source=gmm (an exact mixture); use metric=fid for images")
        return GMMMetrics(model, cfg.gmm_metrics, x_T)
    if kind == "fid":
        refs = None
        rcfg = cfg.get("reference")
        if rcfg is not None and rcfg.get("enabled", True):
            make = lambda m: ReferenceSolve(m, x_T, cfg.seed, rcfg, int(cfg.batch_size),  # noqa: E731
                                            progress=bool(cfg.get("progress", False)), cond=labels)
            models = guided or {None: model}
            # one scale: made now; a sweep over scales: each when its first cell is scored (scale by scale)
            refs = {w: make(m) if len(models) == 1 else (lambda m=m: make(m)) for w, m in models.items()}
        return FIDMetrics(model, cfg.fid, x_T.device, reference=refs)
    raise ValueError(f"unknown metric {kind!r}; choose auto, fid or gmm")


REFERENCE_VERSION = 1  # bump when the same key would give another solve


class ReferenceSolve:
    """A high-NFE solve of the model from the same x_T, and its self-consistency (RMSE against the
    same solver at a lower NFE): the yardstick of every cell's solver error. Cached on disk per
    (model identity, seeds, sigma range, reference spec)."""

    def __init__(self, model: Model, x_T: Tensor, seed: int, rcfg, batch_size: int, progress: bool = False,
                 cond=None):
        from diffode.config import solver_config

        check = rcfg.get("check_nfe")
        self.spec = {"solver": str(rcfg.solver), "grid": str(rcfg.grid), "nfe": int(rcfg.nfe),
                     "check_nfe": None if check is None else int(check)}  # None: no self-consistency solve
        key = {"model": model.identity, "seed": int(seed), "n": int(x_T.shape[0]), "shape": list(model.shape),
               "sigma": [model.sigma_min, model.sigma_max], **self.spec}
        if cond is not None:  # a conditional solve: its labels and guidance are part of what it is
            from diffode.models import tensor_sha1

            parts = [cond[k] for k in sorted(cond)] if isinstance(cond, dict) else [cond]
            key.update(condition=model.condition, labels=tensor_sha1(*(t.cpu() for t in parts)))
        path = entry_file(Path(rcfg.get("cache_dir") or cache_dir("reference_solves")) / f"ref_{key_digest(key)}.pt",
                          REFERENCE_VERSION)

        def compute() -> dict:
            import time

            name, opts = solver_config(self.spec["solver"])
            solve = lambda nfe: model.sample(x_T, batch_size, f"reference NFE {nfe}" if progress else None,  # noqa: E731
                                             cond=cond, return_info=True, solver=name, nfe=nfe, grid=self.spec["grid"],
                                             **opts)
            log.info("reference solve: %s/%s at NFE %d (and %s for its self-consistency), %d samples",
                     self.spec["solver"], self.spec["grid"], self.spec["nfe"], self.spec["check_nfe"], x_T.shape[0])
            t0 = time.perf_counter()
            x_ref, counts = solve(self.spec["nfe"])
            x_ref, seconds = x_ref.cpu(), time.perf_counter() - t0
            check = self.spec["check_nfe"]
            self_rmse = None if check is None else _rmse(solve(check)[0].cpu(), x_ref)
            return {"x_ref": x_ref, "self_rmse": self_rmse, "counts": counts, "seconds": seconds}

        blob, self.cached = load_or_compute(path, key, compute, version=REFERENCE_VERSION, fields=("x_ref", "self_rmse"))
        self.path, self.x_ref = path, blob["x_ref"]
        self.self_rmse = None if blob["self_rmse"] is None else float(blob["self_rmse"])
        self.counts, self.seconds = blob.get("counts") or {"nfe": self.spec["nfe"]}, blob.get("seconds")

    def rmse(self, samples: Tensor) -> float:
        return _rmse(samples.cpu(), self.x_ref)

    def summary(self) -> dict:
        return {"reference": f"{self.spec['solver']}/{self.spec['grid']} NFE {self.spec['nfe']}",
                "reference_self_rmse": self.self_rmse, "reference_check_nfe": self.spec["check_nfe"],
                "reference_cache": str(self.path), "reference_cached": self.cached}


def _rmse(a: Tensor, b: Tensor) -> float:
    return float(torch.sqrt(((a.double() - b.double()) ** 2).mean()))

