"""One W&B run per sweep: a wandb.Table of all cells, metric-vs-NFE line charts with `nfe` as
the x axis, and the sample grids. Online or offline as wandb's own settings say (`wandb_mode`); runs of
one Hydra multirun share a group (the group name is resolved once for the whole multirun)."""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

log = logging.getLogger(__name__)


def wandb_mode(requested: str | None = None) -> str:
    """The mode of a W&B run (online / offline / disabled), decided by wandb's own settings.

    `requested` (a config's mode) when given; else wandb's mode (WANDB_MODE, or `wandb offline` in its
    settings files) when that is not online; else online if wandb finds credentials for its server
    (WANDB_BASE_URL): WANDB_API_KEY, its settings files, or the .netrc entry `wandb login` writes for
    that host; else offline, so that a run without an account still logs (`wandb sync` it later)."""
    if requested:
        return str(requested)
    import wandb

    settings = wandb.setup().settings
    mode = {"dryrun": "offline", "run": "online"}.get(settings.mode, settings.mode)
    if mode != "online":
        return mode
    if wandb.login(prompt=False, verify=False):  # no prompt, no server round trip; False without credentials
        return "online"
    log.info("W&B offline: wandb found no API key for %s (set WANDB_API_KEY or run `wandb login`; "
             "WANDB_MODE=online|offline decides); sync the run later with `wandb sync <its dir>`", settings.base_url)
    return "offline"


def log_sweep(rows: list[dict], metrics: list[str], wcfg, out_dir: Path, config: dict, summary: dict) -> dict:
    """Log a finished sweep; returns {'run_dir': ..., 'run_id': ..., 'mode': ...}."""
    import wandb

    mode = wandb_mode(wcfg.get("mode"))
    run = wandb.init(project=wcfg.get("project") or os.environ.get("WANDB_PROJECT", "diffode"),
                     entity=wcfg.get("entity"), group=wcfg.get("group"), name=wcfg.get("name"),
                     job_type=wcfg.get("job_type", "eval_nfe"), tags=list(wcfg.get("tags") or []),
                     dir=str(out_dir), mode=mode, config=config)
    try:
        cols = sorted({k for r in rows for k in r})
        table = wandb.Table(columns=cols, data=[[_cell(r.get(k)) for k in cols] for r in rows])
        run.log({"cells": table})
        run.define_metric("nfe")
        for m in metrics:
            run.define_metric(f"{m}/*", step_metric="nfe")
        # one history row per NFE, with every solver/grid's value as its own key: W&B draws
        # each key as a line against nfe.
        for n in sorted({int(r["nfe"]) for r in rows}):
            point = {"nfe": n}
            for r in rows:
                if int(r["nfe"]) == n and r.get("status") == "ok":
                    for m in [*metrics, "forwards"]:
                        if _finite(r.get(m)):
                            point[f"{m}/{r['solver']}/{r['grid']}"] = r[m]
            run.log(point)
        for m in metrics:
            series = _series(rows, m)
            if series:
                labels = list(series)
                run.log({f"chart/{m}_vs_nfe": wandb.plot.line_series(
                    xs=[[p[0] for p in series[k]] for k in labels], ys=[[p[1] for p in series[k]] for k in labels],
                    keys=labels, title=f"{m.upper()} vs NFE", xname="nfe")})
        images = sorted((Path(out_dir) / "samples").glob("*.png"))
        if images:
            run.log({"samples": [wandb.Image(str(p), caption=p.stem) for p in images]})
        run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
        run.summary["n_cells"] = len(rows)
        run.summary["n_ok"] = sum(r.get("status") == "ok" for r in rows)
        info = {"run_dir": str(Path(run.dir).parent), "run_id": run.id, "mode": mode}
    finally:
        wandb.finish()
    if mode == "offline":
        info["written"] = wait_until_written(info["run_dir"])
    return info


def _series(rows, metric):
    out = {}
    for r in rows:
        if r.get("status") == "ok" and _finite(r.get(metric)):
            out.setdefault(f"{r['solver']}/{r['grid']}", []).append((int(r["nfe"]), float(r[metric])))
    return {k: sorted(v) for k, v in sorted(out.items())}


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _cell(v):
    return "" if v is None else v


# -- reading an offline run back (no network, no sync) ---------------------------------------
# wandb 0.31 writes offline runs only as run-<id>.wandb: a LevelDB-style log (7-byte header
# ':W&B' + magic + version, then 32 KiB blocks of records with a 7-byte header crc32c, length,
# type FULL/FIRST/MIDDLE/LAST) of protobuf `Record`s. files/wandb-summary.json is not written
# offline (wandb#9646), so tests and users read the summary from the records.

_BLOCK = 32768


def _log_records(data: bytes):
    if data[:4] != b":W&B":
        raise ValueError("not a .wandb file (missing ':W&B' header)")
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            yield buf + chunk
            buf = b""


def read_offline_run(run_dir: str | Path) -> dict:
    """{'summary', 'history' (list of rows), 'config', 'group'} of an offline run directory."""
    import json

    from wandb.proto import wandb_internal_pb2 as pb

    path = next(Path(run_dir).glob("run-*.wandb"))
    summary, history, config, group, complete = {}, [], {}, None, False

    def put(d, item):
        keys = [item.key] if item.key else list(item.nested_key)
        for k in keys[:-1]:
            d = d.setdefault(k, {})
        d[keys[-1]] = json.loads(item.value_json)

    for data in _log_records(path.read_bytes()):
        rec = pb.Record()
        rec.ParseFromString(data)
        kind = rec.WhichOneof("record_type")
        if kind == "summary":
            for item in rec.summary.update:
                put(summary, item)
        elif kind == "history":
            row = {}
            for item in rec.history.item:
                put(row, item)
            history.append(row)
        elif kind in ("config", "run"):
            for item in (rec.config if kind == "config" else rec.run.config).update:
                put(config, item)
            group = rec.run.run_group if kind == "run" else group
        elif kind == "exit":
            complete = True
    return {"summary": summary, "history": history, "config": config, "group": group, "complete": complete}


def wait_until_written(run_dir: str | Path, timeout_s: float = 30.0) -> bool:
    """wandb.finish() can return before wandb-core has flushed the last records (the final
    summary, the exit record) of an offline run to disk; wait for the exit record."""
    import time

    t_end = time.time() + timeout_s
    while time.time() < t_end:
        try:
            if read_offline_run(run_dir)["complete"]:
                return True
        except (StopIteration, ValueError):
            pass
        time.sleep(0.2)
    return False
