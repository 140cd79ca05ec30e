"""The method protocol: every trainable thing of diffode (a denoiser, LD3, AMED, the distillations)
is a LightningModule plus a small declared builder, registered here by its folder's __init__.py.

    @register_method("ld3", needs_teacher=True, check=check, export=export)
    def build(options: dict, ctx: Context) -> L.LightningModule: ...

- `options`: the method's config (conf/method/<name>.yaml, the only place its defaults live), as a
  plain dict without `name`.
- `needs_data`: the runner instantiates conf/dataset/ and passes it as ctx.datamodule (and to fit).
- `needs_teacher`: the runner loads conf/source/ (diffode.models.load_model) as ctx.teacher.
- `check(options, ctx) -> list[str]`: every impossible option, as messages that name the fix; it runs
  before any compute (the runner joins them into one paragraph).
- `export(module, ctx) -> dict[str, str]`: runs on rank 0 after fit, writes what the method produces
  under ctx.out_dir (a denoiser checkpoint, artifacts of diffode.artifacts) and returns {name: path}.
- `trainer(options) -> dict`: Trainer settings the method fixes itself (LD3: epochs = its rounds), over
  conf/trainer/.
- `checkpoint`: False for methods whose state is not worth a Lightning checkpoint (LD3's few numbers
  are re-made faster than saved); True adds last.ckpt in the run dir, which `ckpt_path=last` resumes.

The one runner (diffode/cli/train.py) knows nothing of any method's name.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


@dataclass
class Context:
    """What a method's builder is handed by the runner."""
    out_dir: Path
    seed: int = 0
    teacher: Any = None  # diffode.models.Model when needs_teacher
    datamodule: Any = None  # a LightningDataModule when needs_data
    net: dict | None = None  # conf/net/ (plain dict), for methods that build a network
    schedule: dict | None = None  # conf/schedule/ (plain dict)
    trainer: dict = field(default_factory=dict)  # conf/trainer/ (plain dict)
    source: dict | None = None  # conf/source/ (plain dict): what the teacher was loaded from


@dataclass(frozen=True)
class MethodSpec:
    name: str
    build: Callable[[dict, Context], Any]
    needs_data: bool = False
    needs_teacher: bool = False
    check: Callable[[dict, Context], list[str]] | None = None
    export: Callable[[Any, Context], dict] | None = None
    checkpoint: bool = True
    trainer: Callable[[dict], dict] | None = None
    description: str = ""


METHODS: dict[str, MethodSpec] = {}


def register_method(name: str, *, needs_data: bool = False, needs_teacher: bool = False, check=None, export=None,
                    checkpoint: bool = True, trainer=None, description: str = ""):
    def wrap(build):
        if name in METHODS:
            raise ValueError(f"method {name!r} registered twice")
        METHODS[name] = MethodSpec(name, build, needs_data, needs_teacher, check, export, checkpoint, trainer,
                                   description)
        return build

    return wrap


def _load_all() -> None:
    import diffode.methods as pkg

    for m in pkgutil.iter_modules(pkg.__path__):
        if m.ispkg:
            importlib.import_module(f"diffode.methods.{m.name}")


def get_method(name: str) -> MethodSpec:
    _load_all()
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(sorted(METHODS))} (conf/method/).")
    return METHODS[name]
