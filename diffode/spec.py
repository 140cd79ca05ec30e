"""Build objects from plain `_target_` dicts without Hydra (checkpoints store these specs)."""
from __future__ import annotations

import importlib
from typing import Any


def locate(path: str):
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ImportError(f"cannot import {path!r} named by a `_target_` ({e})") from e


def build(spec: dict, **overrides) -> Any:
    """locate(spec['_target_'])(**rest, **overrides); nested dicts with a `_target_` are built too."""
    spec = dict(spec)
    target = spec.pop("_target_")
    kwargs = {k: build(v) if isinstance(v, dict) and "_target_" in v else v for k, v in spec.items()}
    return locate(target)(**{**kwargs, **overrides})
