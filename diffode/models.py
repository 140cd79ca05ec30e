"""ONE model source for every method, for evaluation and for the experiments.

`load_model(source)` turns a `conf/source/<name>.yaml` node (or the same plain dict) into a `Model`:
the denoiser D(x, sigma) in VE coordinates, the shape of one sample, the schedule, the sigma range it
samples on, and its identity (what artifacts record and check: a checkpoint's sha256, a mixture's
parameters and hash). Kinds:

- gmm:        the exact denoiser of a Gaussian mixture preset (core.denoisers.GMM_PRESETS), EDM schedule; with
              `schedule` (a conf/schedule/ node) and `prediction`, the mixture's exact network of that
              parameterization under that schedule (core/mixture_nets.py) wrapped like a trained one, e.g. the
              exact flow-matching model (conf/source/gmm2d_flow.yaml).
- checkpoint: a diffode denoiser checkpoint (`load_denoiser`); path null is the shipped digits UNet.
- diffusers:  a UNet2DModel / UNet2DConditionModel + DDPM scheduler directory saved with save_pretrained, with an
              optional AutoencoderKL in vae/ (latent diffusion: the model samples latents, `decode` makes images);
              or a flow-matching SD3Transformer2DModel + FlowMatchEuler scheduler (transformer/ + scheduler/):
              flow schedule, velocity parameterization (nets/diffusers_flow.py).
- edm:        an NVlabs EDM network: a converted checkpoint (diffode convert-edm; weights only), or the original
              .pkl with trust_pickle: true (it executes the code inside: trusted files only). nets/edm.py.

The sigma range is the source's sigma_min / sigma_max when set, else the model's own (its schedule's).

Conditions belong to the model (core/conditioning.py): `Model.denoiser_for(cond)` is the plain D(x, sigma)
the solvers take for a batch whose samples have conditions `cond` (class labels [B] of a class-conditional
model); `Model.sample(x_T, ..., cond=labels)` binds each batch's rows. An unconditional model's
denoiser_for(None) is its denoiser itself, so nothing of the unconditional path changes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from .cache import digest, save
from .core.conditioning import Conditioned, batch_size as cond_batch, take
from .core.guidance import Guidance, Guided
from .core.denoisers import GMM_PRESETS, ModelDenoiser, make_gmm
from .core.schedules import DTYPE, EDM, Schedule
from .spec import build

log = logging.getLogger(__name__)

SOURCE_KINDS = ("gmm", "checkpoint", "diffusers", "edm")
DIGITS_UNET = "digits_unet.ckpt"  # in diffode/assets


@dataclass
class Model:
    denoiser: nn.Module
    shape: tuple  # one sample
    schedule: Schedule
    sigma_min: float
    sigma_max: float
    identity: dict  # what artifacts record; compare with same_model()
    dataset: str  # the data it models (FID reference): digits, cifar10, gmm2d, ...
    gmm: object | None = None  # the GaussianMixture it models (its exact denoiser, or a net trained on it): exact metrics
    info: dict = field(default_factory=dict)  # checkpoint hyper-parameters, path, ...
    guidance: Guidance = field(default_factory=Guidance)  # classifier-free guidance (core/guidance.py): none
    decoder: nn.Module | None = None  # latent diffusion: latents -> images (decode / encode), e.g. a VAE
    conditions: dict | None = None  # a table of text-like conditions {key: [N, ...]} sampled one row per seed

    @property
    def label(self) -> str:
        return self.identity.get("name") or self.dataset

    @property
    def num_classes(self) -> int | None:
        """Class labels of a class-conditional model (None: unconditional)."""
        return getattr(self.denoiser, "num_classes", None)

    @property
    def takes_condition(self) -> bool:
        """True for a conditional model: class labels, or another condition whose null it knows."""
        from .core.guidance import knows_null

        return self.num_classes is not None or knows_null(self.denoiser)

    @property
    def image_shape(self) -> tuple:
        """The shape of one image: the sample's own, or what the decoder makes of a latent."""
        return tuple(self.decoder.image_shape) if self.decoder is not None else tuple(self.shape)

    def decode(self, z: Tensor, batch_size: int = 500) -> Tensor:
        """Images of samples: the samples themselves, or the decoder's images of latents (batch by batch, no grad)."""
        if self.decoder is None:
            return z
        p = next(self.decoder.parameters())
        with torch.no_grad():
            return torch.cat([self.decoder.decode(b.to(p.device)).to(torch.float32).cpu() for b in z.split(batch_size)])

    def encode(self, x: Tensor, batch_size: int = 500) -> Tensor:
        """Latents of images (a latent model), float64."""
        if self.decoder is None:
            return x
        p = next(self.decoder.parameters())
        with torch.no_grad():
            return torch.cat([self.decoder.encode(b.to(p.device)).to(torch.float64).cpu() for b in x.split(batch_size)])

    @property
    def condition(self) -> dict:
        """What artifacts and results record of how this model is conditioned (and guided, when it is)."""
        record = self.guidance.record()
        return {"num_classes": self.num_classes} if record is None else {"num_classes": self.num_classes,
                                                                          "guidance": record}

    @property
    def conditional(self) -> nn.Module:
        """The denoiser called with its samples' conditions, D(x, sigma, cond=c): the network's, or guided."""
        return Guided(self.denoiser, self.guidance) if self.guidance.active else self.denoiser

    def guidance_errors(self, guidance: Guidance) -> list[str]:
        """Why `guidance` cannot apply to this model (empty when it can), each naming the fix."""
        errors = guidance.errors()
        if guidance.guides and not self.takes_condition:
            errors.append(f"guidance.scale={guidance.scale:g} but model {self.label} is unconditional (classifier-free "
                          "guidance needs a conditional model trained with label dropout); set guidance.scale=null or "
                          "load a class-conditional checkpoint (e.g. diffode train experiment=digits_cond).")
        if guidance.threshold is not None and self.decoder is not None:
            errors.append(f"guidance.threshold={guidance.threshold:g}: dynamic thresholding clips a pixel-space data "
                          f"prediction to [-1, 1]; model {self.label} samples latents, where it is unsuitable. Set "
                          "guidance.threshold=null.")
        return errors

    def with_guidance(self, guidance: Guidance | None) -> "Model":
        """This model guided by `guidance` (None: unguided); ValueError naming the fix when it cannot be."""
        import dataclasses

        guidance = Guidance() if guidance is None else guidance
        errors = self.guidance_errors(guidance)
        if errors:
            raise ValueError(" ".join(errors))
        return dataclasses.replace(self, guidance=guidance.normalized())

    def labels(self, seeds):
        """One condition per seed: a class label (initial_labels) of a class-conditional model, a row of the
        conditions table (drawn the same way) of a model with one, None for an unconditional model."""
        if self.num_classes is not None:
            return initial_labels(self.num_classes, seeds)
        if self.conditions:
            rows = initial_labels(cond_batch(self.conditions), seeds)
            return take(self.conditions, rows)
        return None

    def describe_condition(self) -> str:
        """How the evaluation conditions its samples (what results rows record)."""
        if self.num_classes is not None:
            return f"labels uniform over {self.num_classes} classes, one per seed"
        if self.conditions:
            return f"conditions: one of the table's {cond_batch(self.conditions)} rows per seed, uniform"
        return "none"

    def check_condition(self, cond) -> None:
        """ValueError naming the fix when `cond` does not fit this model (before any compute)."""
        if cond is None:
            return
        if not self.takes_condition:
            raise ValueError(f"model {self.label} is unconditional (its network takes no labels) but a condition was "
                             "given; drop the labels or load a class-conditional checkpoint.")
        if isinstance(cond, Tensor) and not cond.is_floating_point() and self.num_classes is not None:
            bad = cond[(cond < 0) | (cond > self.num_classes)]
            if bad.numel():
                raise ValueError(f"labels {sorted(set(bad.tolist()))[:5]} are out of range for model {self.label}: "
                                 f"use 0..{self.num_classes - 1}, or {self.num_classes} (the null label) for none.")

    def denoiser_for(self, cond=None):
        """The plain D(x, sigma) for a batch whose samples have conditions `cond` (None: unconditional), guided
        when the model is (with_guidance)."""
        if cond is None:
            if self.guidance.active:
                raise ValueError(f"model {self.label} is guided ({self.guidance.describe()}): give each sample its "
                                 "condition (cond=labels), e.g. Model.labels(seeds).")
            return self.denoiser
        self.check_condition(cond)
        return Conditioned(self.conditional, cond)

    def plan(self, **options):
        """The Plan (diffode.core.sample) of sample()'s options (solver, nfe, grid, ...) on this model's schedule
        and sigma range: every check of the sampling setup, before any compute."""
        from .core.sample import check_sampling_config

        return check_sampling_config(schedule=self.schedule, sigma_min=self.sigma_min, sigma_max=self.sigma_max,
                                     **options)

    def sample(self, x_T: Tensor, batch_size: int, progress: str | None = None, cond=None, return_info: bool = False,
               plan=None, seed: int | None = None, **options):
        """`diffode.sample` of x_T on this model's schedule and sigma range, batch by batch, without
        gradients (memory only: a deterministic sample does not depend on its batch). `cond`: one condition
        per row of x_T (bound per batch). `progress` names a bar over the batches (None: no bar); options are
        sample()'s (solver, nfe, grid, direction, ...), planned once for every batch, or `plan` is the one
        made beforehand (self.plan). return_info: also dict(nfe, forwards) per sample. A stochastic solver
        draws its noise from one generator per batch seeded by (seed, batch index) when `seed` is given.
        Inputs the solver declares as coming from the model (SolverSpec.model_inputs, e.g. Analytic-DPM's
        moments) are computed, and cached, for this model and grid when the plan lacks them
        (diffode/solver_inputs.py)."""
        from tqdm import tqdm

        from .core.sample import run_plan
        from .solver_inputs import with_model_inputs

        if plan is not None and options:
            raise ValueError(f"Model.sample takes a plan or the sampling options that make one, not both (got "
                             f"{sorted(options)} with the plan); make the plan with them: model.plan(...).")
        plan = with_model_inputs(self, self.plan(**options) if plan is None else plan)
        seeded = seed is not None and plan.spec.stochastic
        if cond is not None and cond_batch(cond) != x_T.shape[0]:
            raise ValueError(f"{cond_batch(cond)} conditions for {x_T.shape[0]} samples; give one per sample")
        n, bs = x_T.shape[0], int(batch_size)
        out, counts = [], {}
        with torch.no_grad():
            for k, lo in enumerate(tqdm(range(0, n, bs), desc=progress, unit="batch", disable=progress is None)):
                part = slice(lo, min(lo + bs, n))
                # the artifacts' rule (evaluation/sweep.py): one generator per batch, by position
                g = torch.Generator(device=x_T.device).manual_seed(int(seed) * 1_000_003 + k) if seeded else None
                x, info = run_plan(self.denoiser_for(take(cond, part)), x_T[part], plan, return_info=True, generator=g)
                out.append(x)
                counts = {k: max(counts.get(k, 0), info[k]) for k in ("nfe", "forwards")}
        x = torch.cat(out)
        return (x, counts) if return_info else x


# -- identity ------------------------------------------------------------------------------

def file_sha256(path: str | Path) -> str:
    return digest(Path(path), algo="sha256")


def tensor_sha1(*tensors: Tensor) -> str:
    return digest(*(t.detach().to(DTYPE) for t in tensors), length=16)


def schedule_spec(schedule: Schedule | None) -> dict | None:
    """name + scalar constructor parameters: what artifacts and cache keys record of a schedule."""
    if schedule is None:
        return None
    params = {k: v for k, v in vars(schedule).items()
              if not k.startswith("_") and isinstance(v, (int, float, str, bool))}
    if hasattr(schedule, "log_alphas"):  # DiscreteVP: its table, by hash
        params["table_sha1"] = digest(schedule.log_alphas, length=16)
    return {"name": schedule.name, "params": params}


def same_model(a: dict, b: dict) -> str | None:
    """None when two identities name the same model, else what differs (for error messages)."""
    if a.get("kind") != b.get("kind"):
        return f"kind {a.get('kind')!r} vs {b.get('kind')!r}"
    for key in ("sha256", "hash", "ema"):
        if key in a and key in b and a[key] != b[key]:
            return f"{key} {a[key]!r} vs {b[key]!r}"
    return None


# -- diffode checkpoints ------------------------------------------------------------------------

def _net_state(state: dict) -> dict:
    return {k[len("denoiser."):]: v for k, v in state.items() if k.startswith("denoiser.")}


def load_denoiser(ckpt_path, ema: bool = True, map_location="cpu"):
    """(ModelDenoiser in eval mode, info) from a training checkpoint or an exported one.

    info: schedule (Schedule), shape (one sample), dataset (name), sigma_min, sigma_max,
    prediction, hparams (the plain dict), global_step. ema=True loads the EMA weights (Lightning's
    WeightAveraging keeps them in `state_dict` and the raw weights in `current_model_state`).
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}; pass the path of a .ckpt written by "
                                "`diffode train` (<run dir>/checkpoints/last.ckpt or denoiser_ema.ckpt)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
        hp = ckpt["hyper_parameters"]
    except Exception as e:  # noqa: BLE001  (torch raises many kinds for a damaged or foreign file)
        # torch's own text for a foreign pickle suggests weights_only=False, which diffode never does
        why = "not a torch zip file, or a damaged one" if not isinstance(e, KeyError) else f"no {e} in it"
        raise ValueError(f"{str(path)!r} is not a readable diffode checkpoint ({type(e).__name__}: {why}); pass a "
                         "checkpoint written by `diffode train` (denoiser_ema.ckpt or checkpoints/last.ckpt), or "
                         "copy it again if it was damaged.") from None
    if ema or "current_model_state" not in ckpt:
        if ema and not ckpt.get("ema", "current_model_state" in ckpt):
            log.warning("%s holds no EMA weights; loading the raw weights", path)
        state = ckpt["state_dict"]
    else:
        state = ckpt["current_model_state"]
    schedule = build(hp["schedule"])
    D = ModelDenoiser(build(hp["net"]), schedule, hp["prediction"], hp.get("sigma_data", 0.5))
    D.load_state_dict(_net_state(state))
    D.eval().requires_grad_(False)
    info = dict(schedule=schedule, shape=tuple(hp["data"]["shape"]), dataset=hp["data"]["name"],
                sigma_min=schedule.sigma_min, sigma_max=schedule.sigma_max, prediction=hp["prediction"],
                hparams=hp, global_step=ckpt.get("global_step"))
    return D, info


def export_denoiser(ckpt_path, out_path, ema: bool = True) -> Path:
    """A small checkpoint with only the (EMA) weights and the plain hyper-parameters, loadable by load_denoiser."""
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    has_ema = "current_model_state" in ckpt
    state = ckpt["state_dict"] if (ema or not has_ema) else ckpt["current_model_state"]
    return save({"hyper_parameters": ckpt["hyper_parameters"], "state_dict": dict(state),
                 "ema": bool(ema and has_ema), "global_step": ckpt.get("global_step")}, out_path)


# -- sources -------------------------------------------------------------------------------------

def _get(src, key, default=None):
    v = src.get(key, default) if hasattr(src, "get") else default
    return default if v is None else v


def checkpoint_path(src) -> Path:
    """The checkpoint a `checkpoint` source names (path null: the shipped digits UNet; asset:<name>: a file shipped
    in diffode/assets, e.g. asset:digits_cond_unet.ckpt)."""
    from .config import asset

    p = _get(src, "path")
    if p in (None, ""):
        return asset(DIGITS_UNET)
    if str(p).startswith("asset:"):
        return asset(str(p)[len("asset:"):])
    return Path(str(p)).expanduser()


def _range(src, lo: float, hi: float) -> tuple[float, float]:
    lo = float(_get(src, "sigma_min", lo))
    hi = float(_get(src, "sigma_max", hi))
    if not 0 < lo < hi:
        raise ValueError(f"source sigma range [{lo}, {hi}] is empty; set source.sigma_min < source.sigma_max, both > 0.")
    return lo, hi


def _exact_network(gmm, src) -> tuple[ModelDenoiser, Schedule]:
    """The mixture's exact network of source.prediction under source.schedule, wrapped as a trained one is."""
    from .core.mixture_nets import MixtureNet

    spec = _get(src, "schedule")
    spec = OmegaConf.to_container(spec, resolve=True) if OmegaConf.is_config(spec) else dict(spec)
    schedule = build(spec)
    prediction = str(_get(src, "prediction", "eps"))
    return ModelDenoiser(MixtureNet(gmm, schedule, prediction), schedule, prediction).eval(), schedule


def load_model(src) -> Model:
    """A Model from a source config (conf/source/<name>.yaml node or a plain dict with `kind`)."""
    kind = _get(src, "kind")
    if kind == "gmm":
        preset = _get(src, "preset")
        if preset not in GMM_PRESETS:
            raise ValueError(f"unknown mixture preset {preset!r}; choose one of {', '.join(GMM_PRESETS)}.")
        params = {**GMM_PRESETS[preset], **dict(_get(src, "params", {}))}  # source.params: a variant of the preset
        if set(params) - set(GMM_PRESETS[preset]):
            raise ValueError(f"source.params {sorted(set(params) - set(GMM_PRESETS[preset]))}: a mixture takes "
                             f"{', '.join(GMM_PRESETS[preset])}, e.g. +source.params.spread=0.7.")
        gmm = make_gmm(**params)
        identity = {"kind": "gmm", "name": preset, "params": params, "hash": tensor_sha1(gmm.mu, gmm.lam, gmm.log_pi)}
        denoiser, schedule = gmm, EDM()
        if _get(src, "schedule") is not None:
            denoiser, schedule = _exact_network(gmm, src)
            identity.update(name=f"{preset}_{schedule.name}", prediction=denoiser.prediction)
        lo, hi = _range(src, schedule.sigma_min, schedule.sigma_max)
        return Model(denoiser, (gmm.dim,), schedule, lo, hi, identity, preset, gmm=gmm)
    if kind == "checkpoint":
        path = checkpoint_path(src)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {str(path)!r} not found; train one (`diffode train experiment=digits`) "
                                    "and set source.path=<run dir>/denoiser_ema.ckpt, or leave source.path=null for "
                                    "the shipped digits UNet.")
        ema = bool(_get(src, "ema", True))
        den, info = load_denoiser(path, ema=ema)
        lo, hi = _range(src, info["sigma_min"], info["sigma_max"])
        identity = {"kind": "checkpoint", "name": path.stem, "sha256": file_sha256(path), "ema": ema,
                    "dataset": info["dataset"]}
        # a network trained on a mixture preset: the mixture is its data, known exactly (exact metrics, likelihoods)
        gmm = make_gmm(**GMM_PRESETS[info["dataset"]]) if info["dataset"] in GMM_PRESETS else None
        return Model(den, tuple(info["shape"]), info["schedule"], lo, hi, identity, str(info["dataset"]), gmm=gmm,
                     info={**info, "path": str(path.resolve())})
    if kind == "diffusers":
        from .nets.diffusers_adapter import load_diffusers_unet, load_vae
        from .nets.diffusers_flow import is_flow_folder, load_diffusers_flow

        path = Path(str(_get(src, "path", ""))).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"source.path={str(path)!r} is not a directory; point it at a folder written by "
                                    "diffusers' save_pretrained (unet/ + scheduler/, or transformer/ + scheduler/ "
                                    "of a flow model).")
        conditions = _tensors(_get(src, "conditions"), "source.conditions")
        extra = {}
        if is_flow_folder(path):  # a flow-matching transformer (SD3): flow schedule, velocity
            den, extra = load_diffusers_flow(path)
            shape = tuple(extra["shape"])
        else:
            null = _tensors(_get(src, "null_condition"), "source.null_condition")
            null = None if null is None else null["encoder_hidden_states"].reshape(
                null["encoder_hidden_states"].shape[-2:])
            classes = _get(src, "num_classes")
            den = load_diffusers_unet(path, num_classes=None if classes is None else int(classes),
                                      null_embedding=null)
            cfg = den.net.unet.config
            size = cfg.sample_size
            shape = (cfg.in_channels, *((size, size) if isinstance(size, int) else tuple(size)))
        decoder = load_vae(path)
        lo, hi = _range(src, den.schedule.sigma_min, den.schedule.sigma_max)
        weights = sorted(p for p in path.rglob("*") if p.suffix in (".safetensors", ".bin"))
        sha = digest("".join(file_sha256(p) for p in weights), algo="sha256")
        identity = {"kind": "diffusers", "name": path.name, "sha256": sha}
        return Model(den, shape, den.schedule, lo, hi, identity, str(_get(src, "dataset", "cifar10")),
                     info={"path": str(path.resolve()), "latent": decoder is not None, **extra}, decoder=decoder,
                     conditions=conditions)
    if kind == "edm":
        return _edm_model(src)
    raise ValueError(f"unknown source kind {kind!r}; choose one of {', '.join(SOURCE_KINDS)} "
                     "(source=gmm2d | gmm16d | checkpoint | diffusers | edm).")


def _edm_model(src) -> Model:
    """An NVlabs EDM network (nets/edm.py) on EDM's sampling range [max(0.002, its sigma_min), min(80, its sigma_max)]."""
    from .nets.edm import denoiser_of, load_edm_converted, load_edm_pickle

    path = Path(str(_get(src, "path", ""))).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"source.path={str(path)!r} is not a file; give an EDM .pkl (with source.trust_pickle="
                                "true, trusted files only) or a checkpoint written by `diffode convert-edm`.")
    try:
        if path.suffix == ".pkl":
            den, rec = denoiser_of(load_edm_pickle(path, trust_embedded_code=bool(_get(src, "trust_pickle", False))))
        else:
            den, rec = load_edm_converted(path)
    except PermissionError as e:
        raise ValueError(str(e)) from None
    lo, hi = _range(src, max(0.002, rec["sigma_min"]), min(80.0, rec["sigma_max"]))
    schedule = EDM(lo, hi, rec["sigma_data"])
    shape = (rec["img_channels"], rec["img_resolution"], rec["img_resolution"])
    identity = {"kind": "edm", "name": path.stem, "sha256": file_sha256(path)}
    return Model(den, shape, schedule, lo, hi, identity, str(_get(src, "dataset", "cifar10")),
                 info={"path": str(path.resolve()), "precond": rec})


def _tensors(path, what: str) -> dict | None:
    """A safetensors file of condition tensors (e.g. encoder_hidden_states [N, L, D]), or None without a path."""
    if path in (None, ""):
        return None
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{what}={str(p)!r} does not exist; give a .safetensors file with an "
                                "'encoder_hidden_states' tensor ([N, L, D] for conditions, [L, D] for the null one).")
    from safetensors.torch import load_file

    t = load_file(str(p))
    if "encoder_hidden_states" not in t:
        raise ValueError(f"{what}={str(p)!r} has no 'encoder_hidden_states' tensor (it has {sorted(t)}).")
    return t


def initial_noise(shape: tuple, seeds, sigma_max: float, dtype=torch.float64) -> Tensor:
    """x_T = sigma_max z_i with z_i drawn from its own generator seeded by seed i, so a sample's
    noise depends on its seed alone (not on the batch size or on which cells ran before)."""
    z = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s)), dtype=dtype) for s in seeds])
    return float(sigma_max) * z


LABEL_SEED = 1 << 40  # label generators: seeded apart from the noise generators (seeds 0..)


def initial_labels(num_classes: int, seeds) -> Tensor:
    """One class label per seed, uniform over 0..num_classes-1, drawn from its own generator (seed + 2^40), so a
    sample's label, like its noise, depends on its seed alone: the same labels in every cell of a sweep."""
    return torch.tensor([int(torch.randint(num_classes, (1,), generator=torch.Generator().manual_seed(LABEL_SEED + int(s))))
                         for s in seeds], dtype=torch.long)
