"""Re-render a finished sweep's report and figures from its results.csv, sampling no cell again.

`diffode eval` with the same output_dir resumes a sweep, but it also remakes the metrics' yardsticks
(the reference solve, minutes when its cache is gone); when only the pictures changed (new plot
code, rows deleted from results.csv by hand) `diffode report <the run's overrides> output_dir=<dir>`
rewrites report.md, <metric>_vs_nfe.png and contact_sheet.png from the table and summary.json.
The sweep's config is still needed: it says which family each cell belongs to. The one thing drawn
is the contact sheet's cells whose sample grid is missing from samples/ (the first `save_images`
seeds, the noise the sweep itself started them from).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from diffode.evaluation.families import families
from diffode.evaluation.report import previous_command, representatives, write_report
from diffode.evaluation.results import ResultsTable, cell_key, samples_png
from diffode.evaluation.sweep import build_cells, sample_cell, save_samples_png, validate_cells

log = logging.getLogger(__name__)
METRICS = ("fid", "rmse", "confident", "sw")  # the order evaluate() reports them in, primary first


def metric_names(rows: list[dict]) -> list[str]:
    """The metrics the rows hold, in report order (FID first for images, RMSE for the mixtures)."""
    return [m for m in METRICS if any(isinstance(r.get(m), (int, float)) for r in rows)]


def draw_missing_samples(rows, fams, cells, cfg, out_dir: Path, metric: str) -> list[Path]:
    """Sample grids of the contact sheet's cells that samples/ lacks; returns the files written."""
    import torch

    from diffode.models import initial_noise, load_model

    k = int(cfg.save_images)
    by_key = {c.key: c for c in cells}
    todo = {cell_key(r): r for _, r in representatives(rows, fams, metric)  # a cell may stand for two families
            if k > 0 and not samples_png(out_dir, r).is_file() and cell_key(r) in by_key}.values()
    if not todo:
        return []
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    model = load_model(cfg.source)
    planned, _ = validate_cells([by_key[cell_key(r)] for r in todo], model, cfg)
    x_T = initial_noise(model.shape, range(int(cfg.seed), int(cfg.seed) + k), model.sigma_max)
    written = []
    for r, c in zip(todo, planned):
        log.info("drawing %d samples of %s NFE %d for the contact sheet", k, c.label, c.nfe)
        samples, _ = sample_cell(c, model, x_T, cfg)
        written.append(save_samples_png(samples, samples_png(out_dir, r), k, f"{c.label}, NFE {c.nfe}"))
    return written


def render(cfg, out_dir: Path, settings_hash: str, rendered_by: str = "") -> Path:
    """report.md and its figures for the finished sweep in out_dir (results.csv made with the
    settings whose hash is `settings_hash`); returns the report's path. ValueError: no such sweep."""
    csv = out_dir / "results.csv"
    if not csv.is_file():
        raise ValueError(f"no results.csv in {out_dir}: name the run directory of a finished sweep with "
                         "output_dir=<dir> (the directory `diffode eval` wrote).")
    try:
        rows = ResultsTable(csv, settings_hash).rows
    except ValueError as e:
        raise ValueError(f"{e.args[0].split(';')[0]}; pass the overrides of the command that made it (its report.md "
                         "says them under 'Command'), e.g. experiment=eval_main.") from None
    summary_path = out_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    cells = build_cells(cfg, {})
    fams = families(cells, cfg.sweep.get("usual_grid"))
    names = metric_names(rows)
    if names:
        draw_missing_samples(rows, fams, cells, cfg, out_dir, names[0])
    return write_report(rows, names, out_dir, cfg.title, summary, previous_command(out_dir / "report.md"), fams,
                        rendered_by)
