"""Where the configs live and how code reads them: the package `diffode.conf` (the repository's conf/,
shipped inside the wheel). Hydra entry points search `pkg://diffode.conf`; plain code (tests, sweeps,
methods) reads one group file with `group_config`. A method's option defaults live in its
conf/method/<name>.yaml only (their types in its options schema, diffode/methods/<name>/options.py); a
solver's in its function signature (conf/solver/ may only restate them). Also the checks every runner shares:
`ConfigError` (what a refused config raises) and `type_errors` (values whose type is not their default's).
"""
from __future__ import annotations

import hashlib
import json
import os
from importlib import resources
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONF_PACKAGE = "diffode.conf"
CONFIG_PATH = f"pkg://{CONF_PACKAGE}"


def conf_root():
    """The conf/ directory as an importlib Traversable (a real directory for normal and editable installs)."""
    return resources.files(CONF_PACKAGE)


def group_options(group: str) -> list[str]:
    """The option names of a config group (conf/<group>/*.yaml)."""
    d = conf_root().joinpath(group)
    if not d.is_dir():
        return []
    return sorted(p.name[:-5] for p in d.iterdir() if p.name.endswith(".yaml"))


def group_config(group: str, name: str) -> dict:
    """conf/<group>/<name>.yaml as a plain dict (interpolations left as they are), without its Hydra `defaults`
    list (a method's names its options schema: that is composition, not an option)."""
    f = conf_root().joinpath(group, f"{name}.yaml")
    if not f.is_file():
        opts = group_options(group)
        raise ValueError(f"unknown {group} {name!r}; choose one of {', '.join(opts)} (conf/{group}/).")
    c = OmegaConf.to_container(OmegaConf.create(f.read_text())) or {}
    c.pop("defaults", None)
    return c


def usual_grid(solver: str, default: str = "edm") -> str:
    """The grid a solver is usually run on: conf/eval.yaml's sweep.usual_grid (diff-sampler's settings),
    `default` for a solver it does not list."""
    sweep = OmegaConf.create(conf_root().joinpath("eval.yaml").read_text()).sweep
    return str(sweep.usual_grid.get(solver, default))


def eval_fid_config():
    """conf/eval.yaml's `fid` section (FID features, reference data, batch size, bootstrap), as a DictConfig."""
    return OmegaConf.create(conf_root().joinpath("eval.yaml").read_text()).fid


def method_defaults(name: str) -> dict:
    """The options of conf/method/<name>.yaml (its only defaults), without the `name` key."""
    c = group_config("method", name)
    c.pop("name", None)
    return c


def solver_config(name: str) -> tuple[str, dict]:
    """(registry solver name, options) for a solver config name (conf/solver/<name>.yaml).

    One name space in every command: `dpmpp_3m_official` is registry solver dpmpp_3m with
    coefficients=official. A registry name without a config file maps to itself with no options."""
    f = conf_root().joinpath("solver", f"{name}.yaml")
    if not f.is_file():
        from diffode.core.solvers import SOLVERS

        if name in SOLVERS:
            return name, {}
        raise ValueError(f"unknown solver {name!r}; choose one of {', '.join(group_options('solver'))} "
                         "(conf/solver/).")
    c = group_config("solver", name)
    return str(c.get("name", name)), dict(c.get("options") or {})


def grid_config(name: str) -> tuple[str, dict]:
    """(grid kind, options) for a grid config name (conf/grid/<name>.yaml)."""
    c = group_config("grid", name)
    return str(c.get("name", name)), dict(c.get("options") or {})


def cache_dir(*parts: str) -> Path:
    """The one cache root: $DIFFODE_CACHE, else ~/.cache/diffode (FID statistics, teacher pairs,
    reference solves)."""
    root = Path(os.environ.get("DIFFODE_CACHE") or Path.home() / ".cache" / "diffode")
    return root.joinpath(*parts)


def cache_key(spec) -> str:
    """The file-name key of a cached item: a hash of the plain data that determines it."""
    return hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def asset(name: str) -> Path:
    """A file shipped in diffode/assets (the digits UNet and classifier)."""
    return Path(str(resources.files("diffode").joinpath("assets", name)))


def shipped_path(p) -> Path | None:
    """The file an `asset:<rel>` name stands for (shipped in diffode/assets, e.g. asset:artifacts/ld3/ipndm_nfe4,
    the same in any directory and any install); None for any other name."""
    s = str(p)
    return asset(s[len("asset:"):]) if s.startswith("asset:") else None


class ConfigError(ValueError):
    """A combination of options that cannot work; the message names the fix (entry points print it as one
    paragraph, without a traceback: diffode.cli.errors)."""


# -- value types ------------------------------------------------------------------------------------------

def _kind(v) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return "a boolean (true / false)"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    return None  # lists and mappings: their entries are compared one by one


def _fits(default, value) -> bool:
    want, have = _kind(default), _kind(value)
    if want is None or have == want or isinstance(value, (list, tuple)):  # a list where one value was (a sweep)
        return True
    return want == "a number" and have == "an integer"


def _leaves(default, value, prefix: str = ""):
    if isinstance(default, dict) and isinstance(value, dict):
        for k in default:
            if k in value:
                yield from _leaves(default[k], value[k], f"{prefix}{k}.")
    else:
        yield prefix[:-1], default, value


def runtime_choices() -> dict | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return dict(HydraConfig.get().runtime.choices)
    except ValueError:
        return None


def type_errors(cfg: DictConfig, config_name: str, choices: dict | None = None) -> list[str]:
    """Every value whose type is not its default's, naming its key: the config composed with the same group
    choices (Hydra's runtime choices) and no value override is the reference. Without choices (a config composed
    in code) there is nothing to compare with, and no error."""
    choices = runtime_choices() if choices is None else choices
    if not choices:
        return []
    from hydra import compose

    try:
        base = compose(config_name, overrides=[f"{g}={o}" for g, o in choices.items()
                                               if o is not None and not g.startswith("hydra")])
    except Exception:  # noqa: BLE001  (no reference to compare with: leave the checks to the code)
        return []
    ref = OmegaConf.to_container(base, resolve=False)
    mine = OmegaConf.to_container(cfg, resolve=False)
    return [f"{key}={value!r} must be {_kind(default)} (its default is {default!r})."
            for key, default, value in _leaves(ref, mine) if not _fits(default, value)]
