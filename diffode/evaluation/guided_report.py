"""The report of a sweep over guidance scales (guidance.scale=[...]): every metric per scale against NFE, and
against the scale per NFE.

- per metric, one table per scale (the usual solver/grid x NFE table, best per NFE in bold or tied) and one
  table per NFE (solver/grid x scale, best per scale marked the same way);
- figures: <metric>_vs_nfe.png, one panel per scale, and <metric>_vs_scale.png, one panel per NFE (lines:
  solver/grid, error bars: the intervals, grey: the best cell at each x over all panels);
- a contact sheet: at the smallest NFE, the best cell by the primary metric at each scale, one band each.
"""
from __future__ import annotations

import math
from pathlib import Path

from diffode.evaluation.tables import LOWER_IS_BETTER, _cell, _label, _ok, best_per_nfe, interval, markdown_table


def _w(r) -> float | None:
    w = r.get("guidance")
    return None if w is None or (isinstance(w, float) and math.isnan(w)) else float(w)


def scales(rows: list[dict]) -> list:
    """The guidance scales of the rows, in increasing order (None, unguided, first)."""
    found = {_w(r) for r in rows}
    return sorted(found, key=lambda w: -1.0 if w is None else w)


def scale_name(w) -> str:
    return "unguided" if w is None else f"w = {w:g}"


def _by_scale_table(rows: list[dict], metric: str, nfe: int) -> str:
    """solver/grid x scale at one NFE; per scale the best in bold (tied cells in italics, as markdown_table)."""
    ws = scales(rows)
    sub = [r for r in rows if int(r["nfe"]) == nfe]
    # reuse the per-NFE winner logic of markdown_table by treating each scale as a column
    as_cols = [{**r, "nfe": ws.index(_w(r))} for r in sub]
    table = markdown_table(as_cols, metric).splitlines()
    head = "| solver/grid | " + " | ".join(scale_name(ws[int(c.split()[-1])]) for c in table[0].strip("| ").split(" | ")[1:]) + " |"
    return "\n".join([head] + table[1:])


def _points(rows, metric, x_of) -> dict:
    out = {}
    for r in rows:
        if _ok(r, metric):
            out.setdefault(_label(r), []).append((x_of(r), float(r[metric]), interval(r, metric)))
    return {k: sorted(v) for k, v in out.items()}


def _envelope(rows, metric, x_of) -> list:
    sign = 1 if LOWER_IS_BETTER.get(metric, True) else -1
    best = {}
    for r in rows:
        if _ok(r, metric):
            x = x_of(r)
            best[x] = min(best.get(x, sign * math.inf), sign * float(r[metric]))
    return sorted((x, sign * v) for x, v in best.items())


def figures(rows: list[dict], metric: str, out_dir: Path, title: str = "") -> tuple[Path, Path]:
    """<metric>_vs_nfe.png (one panel per scale) and <metric>_vs_scale.png (one panel per NFE)."""
    from diffode.evaluation.figures import metric_figure

    lower = LOWER_IS_BETTER.get(metric, True)
    ws = [w for w in scales(rows) if w is not None]
    guided = [r for r in rows if _w(r) is not None]
    per_scale = [(scale_name(w), _points([r for r in guided if _w(r) == w], metric, lambda r: int(r["nfe"])))
                 for w in ws]
    a = metric_figure([p for p in per_scale if p[1]], _envelope(guided, metric, lambda r: int(r["nfe"])),
                      out_dir / f"{metric}_vs_nfe.png", metric, title and f"{title}: per guidance scale", lower)
    nfes = sorted({int(r["nfe"]) for r in guided})
    per_nfe = [(f"NFE {n}", _points([r for r in guided if int(r["nfe"]) == n], metric, _w)) for n in nfes]
    b = metric_figure([p for p in per_nfe if p[1]], _envelope(guided, metric, _w), out_dir / f"{metric}_vs_scale.png",
                      metric, f"{metric.upper()} vs guidance scale, per NFE", lower, xlabel="guidance scale w")
    return a, b


def guided_parts(rows: list[dict], metrics: list[str], out_dir: Path, title: str, summary: dict) -> list[str]:
    out_dir = Path(out_dir)
    ws = scales(rows)
    parts = ["Guidance: D = D_u + w (D_c - D_u); w = 1 is the conditional model, w = 0 the unconditional one "
             "(Ho & Salimans' w is w - 1). A guided call evaluates both in one forward of the stacked batch: NFE "
             "counts calls, forwards counts network passes (2 per guided call; 1 at w = 0 or 1 and outside "
             "the guidance interval)." + _setting(summary), ""]
    for m in metrics:
        if not any(_ok(r, m) for r in rows):
            continue
        direction = "lower" if LOWER_IS_BETTER.get(m, True) else "higher"
        a, b = figures(rows, m, out_dir, title if m == metrics[0] else "")
        parts += [f"## {m.upper()} against NFE, per guidance scale ({direction} is better)", ""]
        for w in ws:
            parts += [f"### {scale_name(w)}", "", markdown_table([r for r in rows if _w(r) == w], m), ""]
        parts += [f"![{m} vs NFE per scale]({a.name})", "",
                  f"## {m.upper()} against the guidance scale, per NFE ({direction} is better)", ""]
        for n in sorted({int(r["nfe"]) for r in rows}):
            parts += [f"### NFE {n}", "", _by_scale_table(rows, m, n), ""]
        parts += [f"![{m} vs scale per NFE]({b.name})", ""]
    if metrics:
        parts += _sheet(rows, metrics[0], out_dir)
    return parts


def _setting(summary: dict) -> str:
    bits = []
    if summary.get("guidance_interval") is not None:
        lo, hi = summary["guidance_interval"]
        bits.append(f" Guidance interval: guided only for {lo:g} < sigma <= {hi:g} (w = 1 elsewhere).")
    if summary.get("guidance_threshold") is not None:
        bits.append(f" Dynamic thresholding of the guided x0 prediction at quantile {summary['guidance_threshold']:g}.")
    return "".join(bits)


def _sheet(rows: list[dict], metric: str, out_dir: Path) -> list[str]:
    from diffode.evaluation.results import samples_png
    from diffode.pictures import contact_sheet

    ok = [r for r in rows if _ok(r, metric)]
    if not ok:
        return []
    n = min(int(r["nfe"]) for r in ok)
    shown = []
    for w in scales(ok):
        best = best_per_nfe([r for r in ok if _w(r) == w and int(r["nfe"]) == n], metric).get(n)
        if best is not None and samples_png(out_dir, best).is_file():
            shown.append((f"{scale_name(w)}: {_label(best)}, NFE {n}: {metric.upper()} {_cell(best, metric)}",
                          samples_png(out_dir, best)))
    if not shown:
        return []
    png = contact_sheet(shown, out_dir / "contact_sheet.png")
    return ["## Samples, one row per guidance scale", "",
            f"At NFE {n}, the best cell by {metric.upper()} at each scale: its first samples from the same seeds and "
            "labels in every band (a column is one seed).", "", f"![samples per scale]({png.name})", ""]
