"""Files that survive kills, full disks and each other: the one hashing helper, atomic writes, and derived
caches that heal themselves.

Hashing: `digest(*parts)` is the one function behind every cache key, settings hash and identity
(`key_digest(spec)` for a JSON-able spec: canonical JSON, sorted keys).

Atomic writes: `atomic_path(path)` yields a temp path next to `path` (`.<name>.<host>.<pid>.tmp`) and
moves it onto `path` only once the block finished; on any error the temp is removed, so a full disk
leaves the previous file as it was. A SIGKILL cannot run cleanup code: the temp files of dead processes
of this host are removed the next time the same file is written (`sweep_stale` does a whole folder).

Derived caches (FID reference statistics, reference solves, LD3 teacher pairs, ...):
`load_or_compute(path, key, compute, version=...)` returns the entry stored at `path` (made by
`entry_file`), or computes, stores and returns it; `cached(kind, key, compute, version=...)` does so at the
usual place, `$DIFFODE_CACHE/<kind>/<kind>_<key digest>.cache2-v<version>.pt`. A new cache needs only those
lines and a version to bump when its computation changes. An entry's file name carries the entry format
and the cache's version: a diffode of another format or version looks for another name, so it never meets
this one's files (an older diffode died with a KeyError on a new FID statistics entry under its name), and
versions sharing a cache folder do not set each other's entries aside in turn. The file holds the
format, the cache's version and the key it was computed from (as a JSON string), next to the data
(tensors and plain values; read with weights_only=True, never a pickle). An entry that cannot be read,
was written by another version, or holds another key, is logged as ONE warning line naming the file,
moved aside (`<file>.bad`) and recomputed. Two processes computing the same entry take turns on a lock
file (`<file>.lock`): the second reads what the first wrote.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import Tensor

log = logging.getLogger(__name__)

ENTRY_FORMAT = 2  # of the file layout below; the files of format 1 were bare dicts under untagged names
FORMAT = f"diffode.cache/{ENTRY_FORMAT}"
HOST = socket.gethostname().replace(".", "_")
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


# -- hashing -------------------------------------------------------------------------------------

def canonical_json(obj) -> str:
    """The one text form of a spec that keys are computed from (sorted keys; non-JSON values as str)."""
    return json.dumps(obj, sort_keys=True, default=str)


def _feed(h, part) -> None:
    if isinstance(part, str):
        h.update(part.encode())
    elif isinstance(part, (bytes, bytearray, memoryview)):
        h.update(part)
    elif isinstance(part, Tensor):
        h.update(part.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(part, os.PathLike):
        with open(part, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    else:
        raise TypeError(f"digest() takes str, bytes, Tensor or a path, not {type(part).__name__}")


def digest(*parts, algo: str = "sha1", length: int | None = None) -> str:
    """Hex digest of `parts` fed in order: str (UTF-8), bytes, a Tensor (its raw bytes) or a Path (the
    file's bytes); `length` keeps that many leading hex digits."""
    h = hashlib.new(algo)
    for p in parts:
        _feed(h, p)
    return h.hexdigest()[:length] if length else h.hexdigest()


def key_digest(spec, length: int = 16) -> str:
    """The digest of a JSON-able spec (cache keys, settings hashes)."""
    return digest(canonical_json(spec), length=length)


# -- atomic writes -------------------------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _temp_owner(tmp: Path) -> tuple[str, int] | None:
    """(host, pid) of a temp file named by atomic_path, else None."""
    parts = tmp.name.rsplit(".", 3)
    if len(parts) != 4 or parts[3] != "tmp" or not parts[2].isdigit():
        return None
    return parts[1], int(parts[2])


def _stale(tmp: Path) -> bool:
    owner = _temp_owner(tmp)
    return owner is not None and owner[0] == HOST and owner[1] != os.getpid() and not _alive(owner[1])


def sweep_stale(folder, recursive: bool = True) -> list[Path]:
    """Remove the temp files that killed processes of this host left under `folder`; returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")
    removed = []
    for tmp in found:
        if _stale(tmp):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


@contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Write to the yielded temp path; on success it replaces `path` (after an fsync), on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in path.parent.glob(f".{path.name}.*.tmp"):
        if _stale(old):
            old.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.{HOST}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename == str(tmp):
            e.filename = str(path)  # the file the user knows
        raise


def save(obj, path) -> Path:
    """torch.save through a temp file (see atomic_path). The bytes are written by Python, so a full disk
    is an OSError(ENOSPC) (torch's own file writer reports it as a RuntimeError)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())
    return Path(path)


def write_text(path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in DISK_FULL


# -- derived caches ------------------------------------------------------------------------------

def entry_tag(version: int) -> str:
    return f".cache{ENTRY_FORMAT}-v{int(version)}"


def entry_file(path, version: int) -> Path:
    """Where the entry of a cache at `version` lives: `path` with the entry format and the version in its
    name (`a/b.pt` -> `a/b.cache2-v1.pt`)."""
    path = Path(path)
    return path.with_name(f"{path.stem}{entry_tag(version)}{path.suffix}")


def _named(path, version: int) -> Path:
    path = Path(path)
    if entry_tag(version) not in path.name:  # a programming error: every cache names its files with entry_file
        raise ValueError(f"cache entry {path}: its name must carry its format and version; make it with "
                         f"diffode.cache.entry_file(path, {version})")
    return path


def _problem(blob, key_text: str, version: int, fields) -> str | None:
    """None when `blob` is a valid entry for this key and version, else what is wrong with it."""
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or not isinstance(blob.get("data"), dict):
        return "is not a diffode cache entry (an older format or another file)"
    if blob.get("version") != version:
        return f"was written by cache version {blob.get('version')!r}, this is version {version}"
    if blob.get("key") != key_text:
        return "holds the entry of another key (a copied or renamed file)"
    missing = [f for f in fields if f not in blob["data"]]
    if missing:
        return f"lacks {', '.join(missing)}"
    return None


def set_aside(path, reason: str) -> Path:
    """Move a bad file out of the way (<file>.bad) with ONE warning line naming it."""
    path = Path(path)
    aside = path.with_name(path.name + ".bad")
    try:
        os.replace(path, aside)
    except FileNotFoundError:  # another process moved it first
        pass
    log.warning("cache file %s %s; moved aside to %s, recomputing it", path, reason, aside.name)
    return aside


def read_entry(path, key, version: int, fields=(), heal: bool = True) -> dict | None:
    """The data of a valid entry at `path` (an entry_file), else None (a bad entry is set aside when `heal`)."""
    path = _named(path, version)
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, empty, not a torch file, a pickle of arbitrary objects
        problem = f"cannot be read ({type(e).__name__}: {' '.join(str(e).split())[:120]})"
    else:
        problem = _problem(blob, canonical_json(key), version, fields)
        if problem is None:
            return blob["data"]
    if heal:
        set_aside(path, problem)
    return None


def write_entry(path, key, data: dict, version: int) -> Path:
    _named(path, version)
    return save({"format": FORMAT, "version": int(version), "key": canonical_json(key), "data": data}, path)


@contextmanager
def locked(path, wait_note: str = "") -> Iterator[None]:
    """An exclusive lock on `<path>.lock` (released by the kernel when its process dies)."""
    from filelock import FileLock, Timeout

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path) + ".lock")
    try:
        lock.acquire(timeout=1)
    except Timeout:
        log.info("waiting for %s: another job is computing it%s", path, wait_note)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def load_or_compute(path, key, compute: Callable[[], dict], *, version: int, fields=(),
                    write: bool = True) -> tuple[dict, bool]:
    """(data, cached): the entry at `path` (an entry_file) for `key` (any JSON-able spec of what it is computed from),
    else `compute()` (a dict of tensors / plain values) stored there. `write=False` (e.g. DDP ranks > 0)
    computes without storing, locking or setting anything aside."""
    data = read_entry(path, key, version, fields, heal=False)
    if data is not None:
        return data, True
    if not write:
        return compute(), False  # (no lock: the writing rank holds it)
    with locked(path):  # a bad entry is set aside only under the lock: never a file another job just wrote
        data = read_entry(path, key, version, fields)
        if data is not None:
            return data, True
        t0 = time.perf_counter()
        data = compute()
        write_entry(path, key, data, version)
        log.debug("cache %s computed in %.1f s", path, time.perf_counter() - t0)
        return data, False


def entry_path(kind: str, key, version: int, directory=None) -> Path:
    """Where `cached` keeps the entry of `key`: <directory or $DIFFODE_CACHE/<kind>>/<kind>_<key digest>.cache2-v<N>.pt."""
    from diffode.config import cache_dir

    return entry_file(Path(directory or cache_dir(kind)) / f"{kind}_{key_digest(key)}.pt", version)


def cached(kind: str, key, compute: Callable[[], dict], *, version: int, fields=(), directory=None,
           write: bool = True) -> tuple[dict, bool, Path]:
    """load_or_compute at entry_path(kind, key, directory); returns (data, cached, path)."""
    path = entry_path(kind, key, version, directory)
    data, hit = load_or_compute(path, key, compute, version=version, fields=fields, write=write)
    return data, hit, path
