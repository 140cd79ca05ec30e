"""The tidy results table of a sweep: one CSV row per (solver, grid, nfe) cell.

Integrity rules: the file is rewritten whole through a temp file + os.replace after every
cell, so a killed job leaves either the previous complete table or the new one, never a
half-written row. A re-run reads it back and skips the cells whose row is final (status ok or
failed); rows carry a hash of the sweep-wide settings, and a table made with other settings
is refused rather than silently mixed in.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path

BASE_COLUMNS = ["solver", "grid", "nfe", "status", "n_samples", "seeds", "wall_time", "samples_per_s",
                "settings_hash", "message"]
DONE = ("ok", "failed", "unreachable")


def cell_key(row: dict) -> tuple[str, str, int]:
    return (str(row["solver"]), str(row["grid"]), int(row["nfe"]))


def samples_png(out_dir: str | Path, row: dict) -> Path:
    """Where a sweep saves a cell's sample grid (row: a results row, or solver / grid / nfe)."""
    return Path(out_dir) / "samples" / f"{row['solver']}__{row['grid']}__nfe{int(row['nfe']):02d}.png"


def _parse(v: str):
    if v == "":
        return None
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


class ResultsTable:
    def __init__(self, path: str | Path, settings_hash: str):
        self.path = Path(path)
        self.settings_hash = settings_hash
        self.rows: list[dict] = []
        if self.path.is_file():
            with open(self.path, newline="") as f:
                self.rows = [{k: _parse(v) for k, v in r.items()} for r in csv.DictReader(f)]
            other = {str(r.get("settings_hash")) for r in self.rows} - {settings_hash}
            if other:
                raise ValueError(f"{self.path} holds results of a sweep with other settings (hash {sorted(other)} != "
                                 f"{settings_hash}: model, n_samples, seed, metric or sampling flags differ); "
                                 f"write to a new output_dir or delete that file")

    def done(self) -> set[tuple[str, str, int]]:
        return {cell_key(r) for r in self.rows if r.get("status") in DONE}

    def add(self, row: dict) -> None:
        row = {**row, "settings_hash": self.settings_hash}
        self.rows = [r for r in self.rows if cell_key(r) != cell_key(row)] + [row]
        self.write()

    def columns(self) -> list[str]:
        extra = []
        for r in self.rows:
            extra += [k for k in r if k not in BASE_COLUMNS and k not in extra]
        return BASE_COLUMNS[:3] + sorted(extra) + BASE_COLUMNS[3:]

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        cols = self.columns()
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            for r in sorted(self.rows, key=cell_key):
                w.writerow({k: _fmt(r.get(k)) for k in cols})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def _fmt(v):
    if v is None:
        return ""
    if isinstance(v, float) and math.isfinite(v):
        return repr(v)
    return v


def read_rows(path: str | Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: _parse(v) for k, v in r.items()} for r in csv.DictReader(f)]
