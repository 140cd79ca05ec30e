"""What a job produced, read back, and compared with what an uninterrupted run produced.

Results are the files a job exists to write (diffode.faults.jobs: weights, artifacts, results.csv). They
are compared bitwise (tensors with torch.equal, numbers with ==), leaving out only what measures the run
rather than its result: wall times, throughput, absolute paths, whether a cache was hit, and the
bookkeeping of Lightning's loops and callbacks inside checkpoints.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import torch

from .inject import TEMP

VOLATILE = re.compile(r"(seconds|_time|^time|wall|samples_per_s|path|cached|output_dir|_cache|fid_stats|fit_started)",
                      re.IGNORECASE)
CKPT_KEYS = ("state_dict", "current_model_state", "optimizer_states", "lr_schedulers", "global_step", "epoch",
             "hyper_parameters", "ema", "spec")
CELL = ("solver", "grid", "nfe")


def _plain(x, root: str = ""):
    """x without its volatile keys (recursively), the sandbox's own path in strings replaced by <box>."""
    if isinstance(x, dict):
        return {k: _plain(v, root) for k, v in x.items() if not (isinstance(k, str) and VOLATILE.search(k))}
    if isinstance(x, (list, tuple)):
        return [_plain(v, root) for v in x]
    if isinstance(x, str) and root:
        return x.replace(root, "<box>")
    return x


def _csv_rows(path: Path, root: str = "") -> dict:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for r in rows:
        key = tuple(r.get(c) for c in CELL)
        out[key] = out.get(key, []) + [_plain(r, root)]
    return out


def read(path: Path, root: str = ""):
    """The comparable content of one result file (`root`: the sandbox, left out of paths)."""
    if path.suffix in (".pt", ".ckpt"):
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(blob, dict) and ("state_dict" in blob or "spec" in blob):
            blob = {k: v for k, v in blob.items() if k in CKPT_KEYS}
        return _plain(blob, root)
    if path.suffix == ".json":
        return _plain(json.loads(path.read_text()), root)
    if path.suffix == ".csv":
        return _csv_rows(path, root)
    return path.read_bytes()


def results(run: Path, patterns) -> dict:
    """{relative path: content} of the result files under the run dir (<sandbox>/run)."""
    files = {p for pat in patterns for p in run.glob(pat) if p.is_file() and not TEMP.search(p.name)}
    root = str(run.parent.resolve())
    return {str(p.relative_to(run)): read(p, root) for p in sorted(files)}


def differences(a, b, where: str = "") -> list[str]:
    """Where a and b differ (empty: identical)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype \
            and a.shape == b.shape and torch.equal(a, b)
        return [] if same else [f"{where}: tensors differ"]
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}/{k}: only in one run" for k in sorted(set(a) ^ set(b), key=str)]
        for k in sorted(set(a) & set(b), key=str):
            out += differences(a[k], b[k], f"{where}/{k}")
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: {len(a)} vs {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b or (a != a and b != b) else [f"{where}: {str(a)[:60]!r} vs {str(b)[:60]!r}"]


def repeated_cells(run: Path) -> list:
    """Eval cells with more than one row in results.csv (each cell must be there exactly once)."""
    path = run / "results.csv"
    return [k for k, rows in _csv_rows(path).items() if len(rows) > 1] if path.is_file() else []


def temp_files(sandbox: Path) -> list[str]:
    """Temp files left anywhere in the sandbox: diffode's, and anything in its $TMPDIR."""
    left = [p for p in sandbox.rglob("*") if p.is_file() and (TEMP.search(p.name) or ".tmp" in p.suffixes)]
    left += [p for p in (sandbox / "tmp").rglob("*") if p.is_file()]
    return sorted({str(p.relative_to(sandbox)) for p in left})
