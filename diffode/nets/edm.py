"""NVlabs EDM networks (edm-*.pkl snapshots: VP / VE / EDM preconditioning, optional class labels) as diffode
denoisers, without the EDM repository.

An EDM snapshot is a plain pickle whose network classes carry the FULL PYTHON SOURCE of their module
(torch_utils.persistence): unpickling it executes that source. Two ways in:

- `load_edm_pickle(path, trust_embedded_code=True)`: the ONE function of diffode that unpickles such a file.
  It refuses unless told the file is trusted (load only trusted files: it runs the code inside). It installs
  stand-ins for EDM's `torch_utils` and `dnnlib` modules while it reads, so the EDM repository is not needed.
- `convert_edm_pickle(src, dst, trust_embedded_code=True)`: once, from a trusted pickle, a diffode EDM checkpoint:
  the raw U-Net's weights, its architecture name and constructor arguments, the preconditioning and its
  constants, written with torch.save and read back with torch.load(weights_only=True): no code in the file.
  Reading it rebuilds the U-Net with diffode's own implementation of that architecture, looked up in
  ARCHITECTURES (register one with `register_architecture`); EDM's SongUNet / DhariwalUNet are not
  reimplemented here (their source is under a non-commercial licence), so a converted file of those names
  says so, and the trusted pickle stays the way to run them.

Either way the denoiser is `EDMDenoiser`: diffode's preconditioning (core/preconditioning.py) around the raw
U-Net F(c_in x, c_noise, class_labels), so D(x, sigma) is c_skip x + c_out F exactly as EDM's preconditioners
compute it. Class labels are one-hot; the null label (index label_dim) and no condition are the zero vector,
which is what EDM's label dropout trains.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import pickle
import sys
import types
import uuid
from pathlib import Path

import torch
from torch import Tensor, nn

from ..core.preconditioning import scalings

FORMAT = "diffode.edm/1"
PRECONDS = {"EDMPrecond": "edm", "VPPrecond": "vp", "VEPrecond": "ve"}
ARCHITECTURES: dict = {}  # architecture class name -> builder(**init_kwargs) -> nn.Module with EDM's parameter names
TRUST = ("it executes the Python source embedded in the file (EDM's torch_utils.persistence): load only trusted "
         "files, e.g. NVlabs' released edm-*.pkl")


def register_architecture(name: str, builder) -> None:
    """Make converted checkpoints of architecture `name` loadable: builder(**init_kwargs) -> a U-Net whose
    state_dict keys are EDM's."""
    ARCHITECTURES[name] = builder


class EDMDenoiser(nn.Module):
    """D(x, sigma, cond=labels) = c_skip x + c_out F(c_in x, c_noise, one_hot(labels)) of an EDM U-Net F."""

    def __init__(self, model: nn.Module, kind: str, label_dim: int = 0, sigma_data: float = 0.5, M: int = 1000,
                 beta_d: float = 19.9, beta_min: float = 0.1):
        super().__init__()
        scalings(kind, torch.ones(1, dtype=torch.float64))  # an unknown kind fails here
        self.model, self.kind, self.label_dim = model, kind, int(label_dim or 0)
        self.constants = dict(sigma_data=float(sigma_data), M=int(M), beta_d=float(beta_d), beta_min=float(beta_min))

    @property
    def num_classes(self) -> int | None:
        return self.label_dim or None

    def class_labels(self, cond, n: int, device) -> Tensor | None:
        if self.label_dim == 0:
            if cond is not None:
                raise ValueError("this EDM network is unconditional (label_dim 0) but was given labels")
            return None
        out = torch.zeros(n, self.label_dim, device=device)
        if cond is None:
            return out
        cond = torch.as_tensor(cond, device=device).reshape(-1)
        real = cond < self.label_dim  # the null label label_dim: the zero vector
        out[real.nonzero().reshape(-1), cond[real]] = 1.0
        return out

    def forward(self, x: Tensor, sigma, cond=None) -> Tensor:
        s = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
        s = s.expand(x.shape[0]) if s.ndim == 0 else s.reshape(x.shape[0])
        c_skip, c_out, c_in, c_noise = scalings(self.kind, s, **self.constants)
        b = lambda v: v.reshape(-1, 1, 1, 1)  # noqa: E731  (EDM's networks take 4-D images)
        F = self.model((b(c_in) * x).to(torch.float32), c_noise.to(torch.float32),
                       self.class_labels(cond, x.shape[0], x.device))
        return (b(c_skip) * x.to(torch.float64) + b(c_out) * F.to(torch.float64)).to(x.dtype)


# -- the trusted pickle ---------------------------------------------------------------------------

class _EasyDict(dict):
    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value


def _shim_modules() -> dict:
    """Stand-ins for the EDM modules a snapshot imports: torch_utils.persistence (reconstructs the pickled
    classes from their embedded source), torch_utils.misc, dnnlib.util.EasyDict."""
    sources: dict = {}

    def persistent_class(cls):
        return cls

    def _reconstruct_persistent_obj(meta):
        meta = _EasyDict(meta)
        if meta.get("type") != "class" or meta.get("version") != 6:
            raise ValueError(f"unsupported EDM persistence record (type {meta.get('type')!r}, version "
                             f"{meta.get('version')!r}; expected class / 6)")
        src = meta["module_src"]
        module = sources.get(src)
        if module is None:
            module = types.ModuleType(f"_edm_module_{uuid.uuid4().hex}")
            sys.modules[module.__name__] = module
            exec(compile(src, f"<EDM source of {meta['class_name']}>", "exec"), module.__dict__)  # noqa: S102 (trusted)
            sources[src] = module
        cls = module.__dict__[meta["class_name"]]
        obj = cls.__new__(cls)
        state = dict(meta["state"])
        if callable(getattr(obj, "__setstate__", None)):
            obj.__setstate__(state)
        else:
            obj.__dict__.update(state)
        return obj

    persistence = types.ModuleType("torch_utils.persistence")
    persistence.persistent_class = persistent_class
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    persistence.import_hook = lambda hook: hook
    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    misc = types.ModuleType("torch_utils.misc")
    torch_utils = types.ModuleType("torch_utils")
    torch_utils.persistence, torch_utils.misc = persistence, misc
    util = types.ModuleType("dnnlib.util")
    util.EasyDict = _EasyDict
    dnnlib = types.ModuleType("dnnlib")
    dnnlib.util, dnnlib.EasyDict = util, _EasyDict
    return {"torch_utils": torch_utils, "torch_utils.persistence": persistence, "torch_utils.misc": misc,
            "dnnlib": dnnlib, "dnnlib.util": util}


@contextlib.contextmanager
def _edm_modules():
    shims = _shim_modules()
    saved = {k: sys.modules.get(k) for k in shims}
    sys.modules.update(shims)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def load_edm_pickle(path, *, trust_embedded_code: bool = False) -> nn.Module:
    """The preconditioned network (`data['ema']`) of an NVlabs EDM snapshot pickle, in eval mode on the CPU.

    Reading such a file EXECUTES CODE: refused unless trust_embedded_code=True (load only trusted files)."""
    path = Path(path)
    if not trust_embedded_code:
        raise PermissionError(f"{path} is an EDM network pickle: reading it {TRUST}. Pass trust_embedded_code=True "
                              "(source.trust_pickle=true) only for a file you trust, or better convert it once "
                              "(diffode convert-edm <file.pkl> <out.pt> --trust) and load the converted file.")
    if not path.is_file():
        raise FileNotFoundError(f"no EDM pickle at {str(path)!r}")
    with _edm_modules(), open(path, "rb") as f:
        data = pickle.load(f)  # the one unpickling of diffode: trusted by the caller's explicit consent
    net = data["ema"] if isinstance(data, dict) else data
    return net.eval().requires_grad_(False).cpu()


def _plain(v):
    """Constructor arguments as plain data (torch.load weights_only reads them back)."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    raise ValueError(f"cannot store constructor argument {v!r} of type {type(v).__name__}")


def precond_record(net: nn.Module) -> dict:
    """What EDMDenoiser needs of a loaded EDM preconditioner: its kind, constants, label_dim and sigma range."""
    name = type(net).__name__
    if name not in PRECONDS:
        raise ValueError(f"EDM network of class {name}: supported preconditioners are {', '.join(PRECONDS)} "
                         "(iDDPMPrecond rounds sigma to its own table, which diffode's solvers do not).")
    g = lambda k, d: getattr(net, k, d)  # noqa: E731
    return {"kind": PRECONDS[name], "label_dim": int(g("label_dim", 0) or 0), "sigma_data": float(g("sigma_data", 0.5)),
            "M": int(g("M", 1000)), "beta_d": float(g("beta_d", 19.9)), "beta_min": float(g("beta_min", 0.1)),
            "sigma_min": float(g("sigma_min", 0.0)), "sigma_max": float(g("sigma_max", float("inf"))),
            "img_resolution": int(g("img_resolution", 0)), "img_channels": int(g("img_channels", 0))}


def denoiser_of(net: nn.Module) -> tuple[EDMDenoiser, dict]:
    """(EDMDenoiser around a loaded EDM preconditioner's raw U-Net, its precond record)."""
    rec = precond_record(net)
    keys = ("label_dim", "sigma_data", "M", "beta_d", "beta_min")
    return EDMDenoiser(net.model, rec["kind"], **{k: rec[k] for k in keys}).eval(), rec


def convert_edm_pickle(src, dst, *, trust_embedded_code: bool = False) -> Path:
    """A diffode EDM checkpoint (no code; torch.load weights_only=True reads it) from a trusted EDM pickle."""
    net = load_edm_pickle(src, trust_embedded_code=trust_embedded_code)
    rec = precond_record(net)
    model = net.model
    kwargs = getattr(model, "_init_kwargs", None)
    args = getattr(model, "_init_args", None) or ()
    if kwargs is None:
        raise ValueError(f"{src}: the U-Net records no constructor arguments (_init_kwargs); it cannot be rebuilt")
    blob = {"format": FORMAT, "precond": rec, "arch": {"class_name": type(model).__name__, "init_args": _plain(list(args)),
                                                      "init_kwargs": _plain(dict(kwargs))},
            "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "source_sha256": hashlib.sha256(Path(src).read_bytes()).hexdigest()}
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(dst)
    return dst


def load_edm_converted(path) -> tuple[EDMDenoiser, dict]:
    """(EDMDenoiser, precond record) of a checkpoint written by convert_edm_pickle (weights only: no code)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if blob.get("format") != FORMAT:
        raise ValueError(f"{path} is not a converted EDM checkpoint (format {blob.get('format')!r}, expected {FORMAT!r})")
    arch = blob["arch"]
    builder = ARCHITECTURES.get(arch["class_name"])
    if builder is None:
        raise ValueError(f"{path} holds an EDM {arch['class_name']}, and diffode has no implementation of that "
                         f"architecture registered (diffode.nets.edm.register_architecture; known: "
                         f"{', '.join(ARCHITECTURES) or 'none'}). Load the original pickle instead "
                         "(source.trust_pickle=true, only for a trusted file).")
    model = builder(*arch.get("init_args", []), **copy.deepcopy(arch["init_kwargs"]))
    model.load_state_dict(blob["state_dict"])
    rec = blob["precond"]
    keys = ("label_dim", "sigma_data", "M", "beta_d", "beta_min")
    return EDMDenoiser(model.eval().requires_grad_(False), rec["kind"], **{k: rec[k] for k in keys}).eval(), rec
