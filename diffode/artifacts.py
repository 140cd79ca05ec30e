"""ONE format for learned samplers (LD3 and GITS grids, AMED predictors, distilled students).

An artifact is a directory:

    manifest.json   format, kind, label, solver (config name) + its complete options, nfe, sigmas,
                    net_sigmas, afs, denoise_to_zero, schedule, sigma range, model identity (the model
                    it was made for), its condition setting, training config, metrics, history
    weights.pt      optional: {"student": state_dict, "hook": state_dict}

Two optional pieces make it more than a grid:
- student: a denoiser nn.Module (build spec + weights) that REPLACES the model's denoiser when sampling
  (progressive / consistency distillation);
- hook: a small nn.Module (build spec + weights) handed to the solver as one of its options, e.g.
  `midpoints=<AMED predictor>`.

`load_sampler(path)` gives a `LearnedSampler` that samples from x_T with exact NFE and refuses a model,
NFE or schedule it was not made for (`check`). `save_artifact` is the one writer.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .config import shipped_path
from .core.schedules import DTYPE
from .models import Model, same_model, schedule_spec
from .spec import build

FORMAT = "diffode.artifact/1"
LEGACY_LD3 = "diffode.learned_grid/1"  # LD3 grid files written before artifacts had a directory
MANIFEST, WEIGHTS = "manifest.json", "weights.pt"


def _plain(x):
    """Plain JSON data, without the absolute paths of the machine that writes it (a cache, a source file):
    those are recorded as null, since a manifest travels (and ships in the wheel); the model it was made for
    is identified by its hash."""
    if isinstance(x, str) and _absolute(x):
        return None
    if isinstance(x, Tensor):
        return x.detach().cpu().tolist()
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _absolute(s: str) -> bool:
    return s.startswith(("/", "~")) or bool(re.match(r"[A-Za-z]:[\\/]", s))


def save_artifact(out_dir, *, kind: str, solver: str, nfe: int, sigmas, model: dict, schedule,
                  solver_options: dict | None = None, net_sigmas=None, afs: bool = False,
                  denoise_to_zero: bool = False, label: str | None = None, training: dict | None = None,
                  metrics: dict | None = None, history: list | None = None, student: nn.Module | None = None,
                  student_spec: dict | None = None, hook: nn.Module | None = None, hook_spec: dict | None = None,
                  hook_option: str = "midpoints", extra: dict | None = None, condition: dict | None = None) -> Path:
    """Write an artifact directory; returns its path. `schedule` is a Schedule or its spec dict; `condition`
    how the model was conditioned when the sampler was learned (Model.condition; None: unconditional).

    student / hook: the modules (their state_dict is saved) with the `_target_` build specs that
    rebuild them (diffode.spec.build), so loading needs no pickles (torch.load weights_only)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sigmas = torch.as_tensor(_plain(sigmas), dtype=DTYPE)
    manifest = {
        "format": FORMAT, "kind": kind, "label": label or f"{solver}/{kind}", "solver": solver,
        "solver_options": _plain(solver_options or {}), "nfe": int(nfe), "steps": int(sigmas.numel() - 1),
        "sigmas": sigmas.tolist(), "net_sigmas": None if net_sigmas is None else _plain(net_sigmas),
        "afs": bool(afs), "denoise_to_zero": bool(denoise_to_zero),
        "schedule": schedule if isinstance(schedule, dict) or schedule is None else schedule_spec(schedule),
        "sigma_min": float(sigmas[-1]), "sigma_max": float(sigmas[0]), "model": _plain(model),
        "training": _plain(training or {}), "metrics": _plain(metrics or {}), "history": _plain(history or []),
        "condition": _plain(condition or {"num_classes": None}),
        "student": None, "hook": None, **(_plain(extra or {})),
    }
    weights = {}
    if student is not None:
        if student_spec is None:
            raise ValueError("save_artifact(student=...) needs student_spec (the _target_ spec that rebuilds it)")
        manifest["student"] = {"spec": _plain(student_spec)}
        weights["student"] = {k: v.detach().cpu() for k, v in student.state_dict().items()}
    if hook is not None:
        if hook_spec is None:
            raise ValueError("save_artifact(hook=...) needs hook_spec (the _target_ spec that rebuilds it)")
        manifest["hook"] = {"spec": _plain(hook_spec), "option": hook_option}
        weights["hook"] = {k: v.detach().cpu() for k, v in hook.state_dict().items()}
    if weights:
        tmp = out / (WEIGHTS + ".tmp")
        torch.save(weights, tmp)
        tmp.replace(out / WEIGHTS)
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(out / MANIFEST)  # last: a directory with a manifest is complete
    return out


def manifest_path(path) -> Path:
    p = Path(path)
    return p / MANIFEST if p.is_dir() else p


def read_manifest(path) -> dict:
    """The manifest of an artifact directory (or of a manifest / legacy LD3 .json file, or a shipped
    artifact's `asset:` name)."""
    p = manifest_path(shipped_path(path) or path)
    if not p.is_file():
        raise ValueError(f"no artifact at {str(path)!r}: expected a directory with {MANIFEST} (written by "
                         "`diffode train method=...`, see <run dir>/artifacts/) or such a file.")
    try:
        m = json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{str(p)!r} is not valid JSON ({e}); it is not a complete diffode artifact manifest: "
                         "re-export the artifact (`diffode train method=...`) or remove it from sweep.learned.") from None
    if m.get("format") == LEGACY_LD3:  # same keys, kind under `method`, checkpoints called "ckpt"
        m = {**m, "format": FORMAT, "kind": m.get("method", "ld3"), "afs": False, "denoise_to_zero": False,
             "student": None, "hook": None}
        m["label"] = f"{m['solver']}/{m['kind']}"
        if m.get("model", {}).get("kind") == "ckpt":
            m["model"] = {**m["model"], "kind": "checkpoint"}
    if m.get("format") != FORMAT:
        raise ValueError(f"{str(p)!r} is not a diffode artifact (format {m.get('format')!r}, expected {FORMAT!r}).")
    return m


@dataclass(repr=False)
class LearnedSampler:
    """A learned sampler: solver + grid (+ student / hook) that samples with exactly `nfe` calls."""
    manifest: dict
    path: Path
    student: nn.Module | None = None
    hook: nn.Module | None = None

    def __repr__(self) -> str:  # one line: the manifest (grid, training config, history) is `.manifest`
        return (f"LearnedSampler(kind={self.kind!r}, label={self.label!r}, solver={self.solver!r}, nfe={self.nfe}, "
                f"path={str(self.path)!r})")

    kind = property(lambda self: self.manifest["kind"])
    solver = property(lambda self: self.manifest["solver"])
    nfe = property(lambda self: int(self.manifest["nfe"]))
    label = property(lambda self: self.manifest.get("label") or f"{self.solver}/{self.kind}")

    @property
    def registry_solver(self) -> str:
        from .config import solver_config

        return solver_config(self.solver)[0]

    @property
    def sigmas(self) -> Tensor:
        return torch.tensor(self.manifest["sigmas"], dtype=DTYPE)

    @property
    def net_sigmas(self) -> Tensor | None:
        n = self.manifest.get("net_sigmas")
        return None if n is None else torch.tensor(n, dtype=DTYPE)

    def solver_options(self) -> dict:
        """The manifest's complete solver options, with the hook (if any) under its option name."""
        options = dict(self.manifest.get("solver_options") or {})
        if self.hook is not None:
            options[self.manifest["hook"].get("option", "midpoints")] = self.hook
        return options

    def check(self, model: Model, nfe: int | None = None):
        """ValueError naming what differs when this artifact was made for another model, NFE or schedule; else
        its Plan (self.plan())."""
        m, where = self.manifest, str(self.path)
        why = same_model(m["model"], model.identity)
        if why:
            raise ValueError(f"artifact {where} was made for another model ({why}: made for "
                             f"{m['model'].get('name') or m['model'].get('kind')}, used with {model.label}); "
                             "train it for this model or evaluate it with the source it names.")
        if nfe is not None and int(nfe) != self.nfe:
            raise ValueError(f"artifact {where} samples with nfe={self.nfe}, not nfe={nfe}; use it at nfe={self.nfe} "
                             "or train one for that NFE.")
        want, have = (m.get("schedule") or {}).get("name"), (schedule_spec(model.schedule) or {}).get("name")
        if want and have and want != have:
            raise ValueError(f"artifact {where} was made for schedule {want!r} but the model uses {have!r}.")
        if abs(float(m["sigmas"][0]) - float(model.sigma_max)) > 1e-6 * float(model.sigma_max):
            raise ValueError(f"artifact {where} starts at sigma={m['sigmas'][0]:g} but the model samples from "
                             f"sigma_max={model.sigma_max:g}; set source.sigma_max={m['sigmas'][0]:g}.")
        try:  # the plan sample() will follow: its solver makes exactly nfe calls on these sigmas
            return self.plan()
        except ValueError as e:
            raise ValueError(f"artifact {where} cannot sample as its manifest says ({m['solver']} at nfe={self.nfe} "
                             f"on its {len(m['sigmas'])} sigmas: {e}); re-export it with `diffode train`.") from None

    def plan(self):
        """The Plan (diffode.core.sample) this artifact samples with: its solver and options (the hook included)
        at its NFE on its own sigmas."""
        from .core.sample import check_sampling_config

        m = self.manifest
        return check_sampling_config(self.registry_solver, self.nfe, self.sigmas, net_sigmas=self.net_sigmas,
                                     afs=bool(m.get("afs")), denoise_to_zero=bool(m.get("denoise_to_zero")),
                                     **self.solver_options())

    def to(self, device):
        for mod in (self.student, self.hook):
            if mod is not None:
                mod.to(device)
        return self

    def sample(self, model, x_T: Tensor, cond=None, generator: torch.Generator | None = None, plan=None, **kwargs):
        """Sample from x_T = sigma_max z with exactly `nfe` denoiser calls (the student's when it has one).
        model: the Model it was made for (its denoiser under `cond`, one condition per row of x_T), or a
        plain denoiser D(x, sigma). plan: self.plan(), when the caller made it once for many batches;
        kwargs: run_plan's (start, stop, callback, return_info, ...)."""
        from .core.conditioning import Conditioned
        from .core.sample import run_plan

        if self.student is not None:
            D = self.student if cond is None else Conditioned(self.student, cond)
        else:
            D = model.denoiser_for(cond) if isinstance(model, Model) else model
        return run_plan(D, x_T, self.plan() if plan is None else plan, generator=generator, **kwargs)


def load_sampler(path, map_location="cpu") -> LearnedSampler:
    """The learned sampler stored at `path`: an artifact directory, or `asset:artifacts/<method>/<name>` for
    one shipped in diffode/assets (as `diffode eval sweep.learned=[...]` takes it)."""
    path = shipped_path(path) or path
    m = read_manifest(path)
    p = manifest_path(path)
    weights = None
    if m.get("student") or m.get("hook"):
        wfile = p.parent / WEIGHTS
        if not wfile.is_file():
            raise ValueError(f"artifact {str(p.parent)!r} names a student/hook but has no {WEIGHTS}.")
        weights = torch.load(wfile, map_location=map_location, weights_only=True)
    pieces = {}
    for name in ("student", "hook"):
        if m.get(name):
            mod = build(m[name]["spec"])
            mod.load_state_dict(weights[name])
            pieces[name] = mod.eval().requires_grad_(False)
    return LearnedSampler(m, p.parent if p.name == MANIFEST else p, **pieces)
