"""Pretrained weights that metrics need but machines here cannot download.

The files live where torch and torch-fidelity look for them, $TORCH_HOME/hub/checkpoints
(TORCH_HOME defaults to ~/.cache/torch). `require_weights` finds a file there or raises an
error that names the file and the command fetching it on a machine with internet
(`diffode fetch-weights <key>`); nothing here ever falls back to random weights.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

# key -> (file name in the hub cache, URL it comes from)
WEIGHTS = {
    "inception": (
        "weights-inception-2015-12-05-6726825d.pth",
        "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
    ),
    "lpips-alex": ("alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
    "lpips-vgg": ("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth"),
}


class MissingWeightsError(FileNotFoundError):
    pass


def checkpoint_dir() -> Path:
    """$TORCH_HOME/hub/checkpoints, the cache torchvision, torch.hub and torch-fidelity share."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def weights_path(key: str) -> Path:
    if key not in WEIGHTS:
        raise ValueError(f"unknown weights {key!r}; choose one of {sorted(WEIGHTS)}")
    return checkpoint_dir() / WEIGHTS[key][0]


def require_weights(key: str) -> Path:
    path = weights_path(key)
    if not path.is_file():
        raise MissingWeightsError(
            f"{key} weights not found: {path} is missing. On a machine with internet run "
            f"`diffode fetch-weights {key}` (it downloads {WEIGHTS[key][1]} into {path.parent}), "
            f"then copy {path.name} into $TORCH_HOME/hub/checkpoints here "
            f"(TORCH_HOME={os.environ.get('TORCH_HOME', '~/.cache/torch (default)')})."
        )
    return path


def fetch_weights(key: str, force: bool = False) -> Path:
    """Download one weights file into the cache (needs internet); returns its path."""
    path = weights_path(key)
    if path.is_file() and not force:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # The file names carry a hash prefix; check_hash verifies the download against it.
    torch.hub.download_url_to_file(WEIGHTS[key][1], str(path), hash_prefix=_hash_prefix(path.name), progress=True)
    return path


def _hash_prefix(filename: str) -> str | None:
    stem = filename.rsplit(".", 1)[0]
    tail = stem.rsplit("-", 1)[-1]
    return tail if all(c in "0123456789abcdef" for c in tail) and len(tail) >= 8 else None


def fetch(key: str) -> list[Path]:
    """`diffode fetch-weights KEY`: one key of WEIGHTS, or 'all'."""
    keys = sorted(WEIGHTS) if key == "all" else [key]
    paths = []
    for k in keys:
        p = fetch_weights(k)
        print(f"{k}: {p}")
        paths.append(p)
    return paths
