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
    """The path of weights file `key`, checked against the sha256 prefix its name carries (the check is
    cached per file size and time); a missing or damaged file raises MissingWeightsError naming it."""
    path = weights_path(key)
    fetch_hint = (f"On a machine with internet run `diffode fetch-weights {key}` (it downloads {WEIGHTS[key][1]} "
                  f"into {path.parent}), then copy {path.name} into $TORCH_HOME/hub/checkpoints here "
                  f"(TORCH_HOME={os.environ.get('TORCH_HOME', '~/.cache/torch (default)')}).")
    if not path.is_file():
        raise MissingWeightsError(f"{key} weights not found: {path} is missing. {fetch_hint}")
    want, have = _hash_prefix(path.name), file_check(path)
    if want and not have.startswith(want):
        from diffode.cache import set_aside

        aside = set_aside(path, f"is damaged (sha256 {have[:len(want)]}, its name says {want})")
        raise MissingWeightsError(f"{key} weights {path} were damaged (a partial download or a bad copy: sha256 "
                                  f"starts {have[:len(want)]}, its name says {want}); moved aside to {aside.name}. "
                                  f"{fetch_hint}")
    return path


CHECK_VERSION = 1


def file_check(path: Path) -> str:
    """The sha256 of a weights file, computed once per (name, size, modification time) and cached."""
    from diffode.cache import digest, entry_file, key_digest, load_or_compute
    from diffode.config import cache_dir

    st = path.stat()
    key = {"file": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    entry = entry_file(cache_dir("weights_checks") / f"{path.name}.{key_digest(key, 10)}.pt", CHECK_VERSION)
    data, _ = load_or_compute(entry, key, lambda: {"sha256": digest(path, algo="sha256")}, version=CHECK_VERSION,
                              fields=("sha256",))
    return str(data["sha256"])


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
