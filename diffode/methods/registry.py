"""The method protocol: every trainable thing of diffode (a denoiser, LD3, AMED, the distillations)
is a LightningModule plus a small declared builder, registered here by its folder's __init__.py.

    @register_method("ld3", options=LD3Config, needs_teacher=True, check=check, export=export)
    def build(options: LD3Config, ctx: Context) -> L.LightningModule: ...

- `options`: the method's options schema, a dataclass (its folder's options.py) that declares every key of
  conf/method/<name>.yaml with its type and no default (the YAML is the one place of the defaults; its
  `defaults:` list names the schema). Registering stores it in Hydra's ConfigStore (SCHEMA_NAME), so Hydra
  refuses an unknown key, a value of the wrong type and, for Choice-typed keys, a value outside the choices
  when it composes the config. The builder, `check` and `trainer` get the typed instance (`typed_options`;
  Choice values as the plain strings the YAML holds).
- `needs_data`: the runner instantiates conf/dataset/ and passes it as ctx.datamodule (and to fit).
- `needs_teacher`: the runner loads conf/source/ (diffode.models.load_model) as ctx.teacher.
- `check(options, ctx) -> list[str]`: every impossible option, as messages that name the fix; it runs
  before any compute (the runner joins them into one paragraph).
- `resolve(options, ctx) -> config`: what the builder takes instead of the options, made once after the
  checks (AMED: its solvers and grids); ValueError naming the fix when the options cannot be resolved.
  The runner's `prepare` returns it (or the options of a method without one).
- `export(module, ctx) -> dict[str, str]`: runs on rank 0 after fit, writes what the method produces
  under ctx.out_dir (a denoiser checkpoint, artifacts of diffode.artifacts) and returns {name: path}.
- `trainer(config) -> dict`: Trainer settings the method fixes itself (LD3: epochs = its rounds), over
  conf/trainer/; `config` is what the builder takes.
- `checkpoint`: False for methods whose state is not worth a Lightning checkpoint (LD3's few numbers
  are re-made faster than saved); True adds last.ckpt in the run dir, which `ckpt_path=last` resumes.

The one runner (diffode/cli/train.py) knows nothing of any method's name. A method package imports no
Lightning at import time (its LightningModule inside build / export): the configs' package imports every
method to register the schemas, and `diffode eval`, which composes no method, must not pay for Lightning.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, ValidationError

# The name a method's schema is stored under in Hydra's ConfigStore: conf/method/<name>.yaml starts
# `defaults: [/<name>_options@_here_, _self_]`. A root-level name, not a group, so that --help and shell
# completion do not offer it as a choice.
SCHEMA_NAME = "{}_options"


class Choice(str, Enum):
    """The base of an option's choices (`choices(name, values)`): Hydra refuses any other value at compose
    time. A member is a str that prints as its value, and the typed options hold the plain value."""
    __str__ = str.__str__
    __format__ = str.__format__


def choices(name: str, values) -> type[Choice]:
    """An Enum of string choices whose member names are the values (OmegaConf reads a value by its name)."""
    return Choice(name, {v: v for v in values})


# a choice several methods share: the backbone of method.distance=lpips (diffode.metrics.lpips)
LPIPSNet = choices("LPIPSNet", ("vgg", "alex"))


@dataclass
class MethodOptions:
    """What every method's options schema has: `name`, the registry name (the runner finds the method by it)."""
    name: str = MISSING


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
    build: Callable[[Any, Context], Any]
    options: type  # the options schema (a MethodOptions dataclass)
    needs_data: bool = False
    needs_teacher: bool = False
    check: Callable[[Any, Context], list[str]] | None = None
    export: Callable[[Any, Context], dict] | None = None
    checkpoint: bool = True
    trainer: Callable[[Any], dict] | None = None
    resolve: Callable[[Any, Context], Any] | None = None
    description: str = ""


METHODS: dict[str, MethodSpec] = {}


def register_method(name: str, *, options: type, needs_data: bool = False, needs_teacher: bool = False, check=None,
                    export=None, checkpoint: bool = True, trainer=None, resolve=None, description: str = ""):
    def wrap(build):
        from hydra.core.config_store import ConfigStore

        if name in METHODS:
            raise ValueError(f"method {name!r} registered twice")
        METHODS[name] = MethodSpec(name, build, options, needs_data, needs_teacher, check, export, checkpoint, trainer,
                                   resolve, description)
        ConfigStore.instance().store(name=SCHEMA_NAME.format(name), node=options)
        return build

    return wrap


def load_all() -> None:
    """Import every method package (diffode/methods/<name>/), which registers it and its options schema."""
    import diffode.methods as pkg

    for m in pkgutil.iter_modules(pkg.__path__):
        if m.ispkg:
            importlib.import_module(f"diffode.methods.{m.name}")


def get_method(name: str) -> MethodSpec:
    load_all()
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(sorted(METHODS))} (conf/method/).")
    return METHODS[name]


def lazy_exports(package: str, names: dict[str, str]):
    """A method package's module `__getattr__`: `names` (attribute -> the module holding it, relative to `package`)
    are imported when first asked for, so `from diffode.methods.<m> import <Module>` works while importing the
    package, which registers the method, imports no Lightning."""
    def __getattr__(name: str):
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(names[name], package), name)

    return __getattr__


# -- typed options --------------------------------------------------------------------------------

def _plain_choices(obj):
    """The dataclass with every Choice member replaced by its plain value (nested dataclasses too): what the
    methods compare, record in manifests and save in checkpoints (torch.load(weights_only=True) reads str)."""
    changes = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, Enum):
            changes[f.name] = v.value
        elif dataclasses.is_dataclass(v) and not isinstance(v, type):
            changes[f.name] = _plain_choices(v)
    return dataclasses.replace(obj, **changes) if changes else obj


def typed_options(spec: MethodSpec, node):
    """The method's options as its typed schema instance, from the composed `cfg.method` (or a plain dict of
    every key). A key Hydra let through (`+method.<key>=...` appends past the schema) or a value that does
    not fit is refused with a ValueError naming it and the fix."""
    where = f"conf/method/{spec.name}.yaml"
    if OmegaConf.is_config(node):  # as plain data: merging a typed node would keep what `+` appended past its schema
        node = OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(spec.options), node)
        return _plain_choices(OmegaConf.to_object(merged))
    except ConfigKeyError as e:
        why = f"method.{e.full_key or e.key} is not an option of method={spec.name}; remove it (the options are the " \
              f"keys of {where})."
    except MissingMandatoryValue as e:
        why = f"method.{e.full_key} has no value; set it (its default belongs in {where})."
    except ValidationError as e:
        why = f"method.{e.full_key}: {str(e.msg).splitlines()[0]}; give a value of the type " \
              f"{spec.options.__name__} declares ({spec.options.__module__}; the defaults are in {where})."
    raise ValueError(why)


def schema_method(cls) -> str | None:
    """The method whose options schema is `cls` or holds it as a nested option group (LD3's teacher), if any."""
    import typing

    def holds(schema) -> bool:  # through Optional[...] too (the denoiser's ema)
        hints = typing.get_type_hints(schema).values()
        return schema is cls or any(dataclasses.is_dataclass(a) and holds(a) for t in hints for a in (t, *typing.get_args(t)))

    load_all()
    return next((name for name, spec in METHODS.items() if holds(spec.options)), None)


def method_options(name: str, **overrides):
    """conf/method/<name>.yaml with `overrides` in place of its keys, as the method's typed options (what the runner
    builds from a composed config): for code and tests that build a method without Hydra."""
    from diffode.config import group_config

    return typed_options(get_method(name), {**group_config("method", name), **overrides})
