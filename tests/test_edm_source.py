"""NVlabs EDM network pickles without the EDM repository (nets/edm.py): a tiny pickle written here in EDM's
persistence format (its own classes, their source embedded, a nested persistent child), read only with explicit
trust, giving the D of the preconditioning formulas applied by hand (EDM, VP, VE; class labels one-hot, the null
label the zero vector), converted once into a checkpoint without code that torch.load(weights_only=True) reads."""
from __future__ import annotations

import copy
import json
import pickle
import pickletools
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from diffode.core.guidance import Guidance
from diffode.core.schedules import DTYPE
from diffode.models import load_model
from diffode.nets import edm

pytestmark = pytest.mark.usefixtures("one_thread")

SRC = '''
import math
import torch
from torch_utils import persistence
{extra}

@persistence.persistent_class
class TinyLayer(torch.nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        return self.conv(x)


@persistence.persistent_class
class TinyUNet(torch.nn.Module):
    def __init__(self, img_channels, label_dim=0):
        super().__init__()
        self.layer = TinyLayer(img_channels)
        self.noise = torch.nn.Linear(1, img_channels)
        self.label = torch.nn.Linear(label_dim, img_channels) if label_dim else None

    def forward(self, x, noise_labels, class_labels=None):
        h = self.layer(x) + torch.sin(self.noise(noise_labels.reshape(-1, 1))).reshape(-1, x.shape[1], 1, 1)
        if self.label is not None:
            h = h + self.label(class_labels).reshape(-1, x.shape[1], 1, 1)
        return torch.tanh(h) + 0.1 * x


@persistence.persistent_class
class EDMPrecond(torch.nn.Module):
    def __init__(self, img_resolution, img_channels, label_dim=0, sigma_min=0, sigma_max=float('inf'), sigma_data=0.5):
        super().__init__()
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.sigma_min, self.sigma_max, self.sigma_data = sigma_min, sigma_max, sigma_data
        self.model = TinyUNet(img_channels=img_channels, label_dim=label_dim)

    def forward(self, x, sigma, class_labels=None):
        x = x.to(torch.float32)
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        labels = None if self.label_dim == 0 else torch.zeros([1, self.label_dim]) if class_labels is None else class_labels
        sd = self.sigma_data
        c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
        c_out = sigma * sd / (sigma ** 2 + sd ** 2).sqrt()
        c_in = 1 / (sd ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip * x + c_out * self.model(c_in * x, c_noise.flatten(), labels)


@persistence.persistent_class
class VPPrecond(torch.nn.Module):
    def __init__(self, img_resolution, img_channels, label_dim=0, beta_d=19.9, beta_min=0.1, M=1000, epsilon_t=1e-5):
        super().__init__()
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.beta_d, self.beta_min, self.M, self.epsilon_t = beta_d, beta_min, M, epsilon_t
        self.sigma_min = float(math.sqrt(math.exp(0.5 * beta_d * epsilon_t ** 2 + beta_min * epsilon_t) - 1))
        self.sigma_max = float(math.sqrt(math.exp(0.5 * beta_d + beta_min) - 1))
        self.model = TinyUNet(img_channels=img_channels, label_dim=label_dim)


@persistence.persistent_class
class VEPrecond(torch.nn.Module):
    def __init__(self, img_resolution, img_channels, label_dim=0, sigma_min=0.02, sigma_max=100):
        super().__init__()
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.model = TinyUNet(img_channels=img_channels, label_dim=label_dim)
'''


def _writer_modules(version=6):
    """This test's own stand-in of EDM's torch_utils.persistence, used only to WRITE pickles in its format."""
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # only referenced by name in the pickle
        raise AssertionError("the writer never reads")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj

    def persistent_class(cls):
        class Decorator(cls):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self._init_args, self._init_kwargs = copy.deepcopy(args), copy.deepcopy(kwargs)

            def __reduce__(self):
                fields = list(super().__reduce__()) + [None, None, None]
                meta = dict(type="class", version=version, module_src=sys.modules[cls.__module__].__src__,
                            class_name=cls.__name__, state=fields[2])
                return (_reconstruct_persistent_obj, (meta,))

        Decorator.__name__, Decorator.__qualname__, Decorator.__module__ = cls.__name__, cls.__name__, cls.__module__
        return Decorator

    persistence.persistent_class = persistent_class
    torch_utils = types.ModuleType("torch_utils")
    torch_utils.persistence = persistence
    torch_utils.misc = types.ModuleType("torch_utils.misc")
    return {"torch_utils": torch_utils, "torch_utils.persistence": persistence, "torch_utils.misc": torch_utils.misc}


def write_pickle(path: Path, precond="EDMPrecond", label_dim=0, version=6, extra="", seed=0, **kw) -> Path:
    mods = _writer_modules(version)
    saved = {k: sys.modules.get(k) for k in mods}
    sys.modules.update(mods)
    try:
        src = SRC.format(extra=extra)
        module = types.ModuleType(f"tiny_edm_{precond}_{label_dim}_{version}_{seed}")
        module.__src__ = src
        sys.modules[module.__name__] = module
        exec(src, module.__dict__)
        torch.manual_seed(seed)
        net = getattr(module, precond)(img_resolution=4, img_channels=2, label_dim=label_dim, **kw)
        data = dict(ema=net.eval().requires_grad_(False), loss_fn=None, augment_pipe=None, dataset_kwargs={})
        path.write_bytes(pickle.dumps(data))
    finally:
        for k, v in saved.items():
            sys.modules.pop(k, None) if v is None else sys.modules.__setitem__(k, v)
        sys.modules.pop(module.__name__, None)
    return path


def _by_hand(F, kind, x, sigma, labels, sd=0.5, beta_d=19.9, beta_min=0.1, M=1000):
    """c_skip x + c_out F(c_in x, c_noise, labels), the scalings written out (float64)."""
    s = torch.tensor(sigma, dtype=DTYPE)
    if kind == "edm":
        c_skip, c_out, c_in, c_noise = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt(), 1 / (s**2 + sd**2).sqrt(), s.log() / 4
    elif kind == "vp":
        t = ((beta_min**2 + 2 * beta_d * torch.log(1 + s**2)).sqrt() - beta_min) / beta_d
        c_skip, c_out, c_in, c_noise = 1.0, -s, 1 / (s**2 + 1).sqrt(), (M - 1) * t
    else:
        c_skip, c_out, c_in, c_noise = 1.0, s, 1.0, torch.log(s / 2)
    n = x.shape[0]
    out = F((c_in * x).float(), torch.full((n,), float(c_noise)), labels)
    return c_skip * x + c_out * out.double()


def test_the_pickle_has_edms_format_and_is_refused_without_trust(tmp_path):
    p = write_pickle(tmp_path / "edm.pkl")
    strings = [arg for op, arg, _ in pickletools.genops(p.read_bytes()) if isinstance(arg, str)]
    assert "torch_utils.persistence" in strings and "_reconstruct_persistent_obj" in strings
    assert sum("class TinyUNet" in s for s in strings) == 1  # the module source, stored once (memoised)
    with pytest.raises(PermissionError, match="load only trusted files"):
        edm.load_edm_pickle(p)
    with pytest.raises(ValueError, match="trust"):
        load_model({"kind": "edm", "path": str(p)})


@pytest.mark.parametrize("precond, kind", [("EDMPrecond", "edm"), ("VPPrecond", "vp"), ("VEPrecond", "ve")])
def test_edm_pickle_gives_the_preconditioning_formulas(tmp_path, precond, kind):
    p = write_pickle(tmp_path / "edm.pkl", precond, label_dim=3)
    net = edm.load_edm_pickle(p, trust_embedded_code=True)
    assert "torch_utils" not in sys.modules and type(net).__name__ == precond  # the stand-ins are gone again
    assert type(net.model.layer).__name__ == "TinyLayer" and net.model._init_kwargs == {"img_channels": 2, "label_dim": 3}
    D, rec = edm.denoiser_of(net)
    assert rec["kind"] == kind and D.num_classes == 3
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 2, 4, 4, dtype=DTYPE, generator=g)
    y = torch.tensor([0, 2, 1, 3])  # 3 = the null label: the zero vector
    onehot = torch.zeros(4, 3)
    onehot[[0, 1, 2], [0, 2, 1]] = 1
    with torch.no_grad():
        for sigma in (0.002, 1.0, 80.0):
            torch.testing.assert_close(D(x, sigma, cond=y), _by_hand(net.model, kind, x, sigma, onehot), rtol=0, atol=1e-5)
            torch.testing.assert_close(D(x, sigma), _by_hand(net.model, kind, x, sigma, torch.zeros(4, 3)), rtol=0,
                                       atol=1e-5)
            if kind == "edm":  # and what the pickle's own preconditioner computes
                own = net(x, torch.full((4,), sigma), onehot).double()
                torch.testing.assert_close(D(x, sigma, cond=y), own, rtol=0, atol=1e-5)


def test_a_fresh_process_without_edm_loads_it_and_other_versions_are_refused(tmp_path):
    p = write_pickle(tmp_path / "edm.pkl", label_dim=2, extra="from torch_utils import misc")
    script = f"""
import json, sys, torch
from diffode.nets import edm
net = edm.load_edm_pickle({str(p)!r}, trust_embedded_code=True)
D, rec = edm.denoiser_of(net)
x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
lab = torch.tensor([[1., 0.], [0., 1.], [0., 0.]])
own = net(x, torch.full((3,), 0.7), lab).double()
print(json.dumps({{"cls": type(net).__name__, "label_dim": rec["label_dim"], "sigma_max": rec["sigma_max"],
                   "diff": float((D(x, 0.7, cond=torch.tensor([0, 1, 2])) - own).abs().max()),
                   "edm_modules": [m for m in sys.modules if m.startswith(("torch_utils", "dnnlib"))]}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["cls"] == "EDMPrecond" and res["label_dim"] == 2 and res["sigma_max"] == float("inf")
    assert res["diff"] < 1e-5 and res["edm_modules"] == []
    bad = write_pickle(tmp_path / "v5.pkl", version=5)
    with pytest.raises(ValueError, match="version 5"):
        edm.load_edm_pickle(bad, trust_embedded_code=True)


class TinyUNet(torch.nn.Module):
    """diffode's own implementation of the test architecture (same parameter names), for converted files."""

    def __init__(self, img_channels, label_dim=0):
        super().__init__()
        self.layer = torch.nn.Module()
        self.layer.conv = torch.nn.Conv2d(img_channels, img_channels, 1)
        self.noise = torch.nn.Linear(1, img_channels)
        self.label = torch.nn.Linear(label_dim, img_channels) if label_dim else None

    def forward(self, x, noise_labels, class_labels=None):
        h = self.layer.conv(x) + torch.sin(self.noise(noise_labels.reshape(-1, 1))).reshape(-1, x.shape[1], 1, 1)
        if self.label is not None:
            h = h + self.label(class_labels).reshape(-1, x.shape[1], 1, 1)
        return torch.tanh(h) + 0.1 * x


def test_conversion_writes_no_code_and_rebuilds_the_same_denoiser(tmp_path, monkeypatch):
    p = write_pickle(tmp_path / "edm.pkl", "VPPrecond", label_dim=4)
    with pytest.raises(PermissionError):
        edm.convert_edm_pickle(p, tmp_path / "x.pt")
    out = edm.convert_edm_pickle(p, tmp_path / "vp.pt", trust_embedded_code=True)
    blob = torch.load(out, weights_only=True)  # plain tensors and data: no pickled classes
    assert blob["arch"] == {"class_name": "TinyUNet", "init_args": [], "init_kwargs": {"img_channels": 2, "label_dim": 4}}
    with pytest.raises(ValueError, match="no implementation of that architecture"):
        edm.load_edm_converted(out)
    monkeypatch.setitem(edm.ARCHITECTURES, "TinyUNet", TinyUNet)
    D, rec = edm.load_edm_converted(out)
    D0, _ = edm.denoiser_of(edm.load_edm_pickle(p, trust_embedded_code=True))
    x, y = torch.randn(3, 2, 4, 4, dtype=DTYPE), torch.tensor([0, 4, 3])
    with torch.no_grad():
        for s in (0.01, 2.0, 150.0):
            torch.testing.assert_close(D(x, s, cond=y), D0(x, s, cond=y), rtol=0, atol=0)
    # as a source: EDM's sampling range, class-conditional, guided by the zero label
    m = load_model({"kind": "edm", "path": str(out), "dataset": "cifar10"})
    assert m.num_classes == 4 and m.shape == (2, 4, 4) and (m.sigma_min, m.sigma_max) == (pytest.approx(0.002),
                                                                                          pytest.approx(80.0))
    x_T = 80.0 * torch.randn(5, 2, 4, 4, dtype=DTYPE)
    labels = torch.tensor([0, 1, 2, 3, 0])
    a, info = m.with_guidance(Guidance(2.0)).sample(x_T, 5, cond=labels, return_info=True, solver="heun", nfe=6, grid="edm")
    assert info == {"nfe": 6, "forwards": 12} and torch.isfinite(a).all()
