"""The human-readable side of a sweep: a Markdown table per metric (value per solver/grid at each
NFE, FID with its bootstrap interval as +-, the best per NFE), a metric-vs-NFE figure per metric as
small multiples (one panel per family of cells, each with the best-per-NFE envelope of all cells;
FID with error bars) and a contact sheet of samples, one family per row (diffode.evaluation.figures
draws them). "Best" is marked only where the best cell's interval does not overlap the runner-up's;
otherwise every cell whose interval overlaps the best one's is marked as tied. Failed and
unreachable cells are shown as such, never as numbers."""
from __future__ import annotations

from pathlib import Path

from diffode.evaluation.tables import (  # noqa: F401  (re-exported: the report's table helpers)
    LOWER_IS_BETTER, _cell, _label, _ok, best_per_nfe, interval, markdown_table, winners,
)


def samples_note(rows: list[dict]) -> str:
    counts = sorted({int(r["n_samples"]) for r in rows if r.get("status") in ("ok", "failed")})
    seeds = sorted({str(r.get("seeds")) for r in rows if r.get("status") in ("ok", "failed")})
    if len(counts) == 1:
        return f"Every evaluated cell used {counts[0]} samples (seeds {', '.join(seeds)}, the same initial noise in every cell)."
    return "Samples per cell: " + ", ".join(f"{_label(r)}@{r['nfe']}: {r['n_samples']}" for r in rows)


def counts_note(rows: list[dict]) -> str:
    """What the counts mean, and every cell whose network passes differ from its denoiser calls."""
    note = ("NFE counts the denoiser calls a sampler makes per sample (the table's columns); forwards counts the "
            "network forward passes per sample (a guided call costs two).")
    done = [r for r in rows if r.get("status") == "ok" and isinstance(r.get("forwards"), (int, float))]
    differ = [r for r in done if int(r["forwards"]) != int(r["nfe"])]
    if done and not differ:
        return note + " They are equal in every cell here."
    at = lambda r: "" if r.get("guidance") is None else f" (w = {float(r['guidance']):g})"  # noqa: E731
    return note + "".join(f" {_label(r)}{at(r)} at NFE {r['nfe']}: {int(r['forwards'])} forwards." for r in differ)


OTHER = "other cells"  # the panel of rows that no family of the sweep claims (e.g. kept from an earlier sweep)


def panels(rows: list[dict], families: dict | None) -> list[tuple[str, list[dict]]]:
    """(title, rows) per family that has rows, in the families' order ({title: [labels]} or {title:
    {label: line}}, as diffode.evaluation.families makes it); rows of no family go to a last panel.
    A family whose labels all lie in a larger panel (or an equal, earlier one) is dropped: it would
    add nothing. No families: one panel of every row."""
    if not families:
        return [("all cells", list(rows))] if rows else []
    present = list(dict.fromkeys(_label(r) for r in rows))
    sets = {t: [lab for lab in labs if lab in present] for t, labs in families.items()}
    claimed = {lab for labs in sets.values() for lab in labs}
    sets[OTHER] = [lab for lab in present if lab not in claimed]
    sets = {t: labs for t, labs in sets.items() if labs}
    rank = {t: (len(labs), -i) for i, (t, labs) in enumerate(sets.items())}
    keep = [t for t in sets if not any(set(sets[t]) <= set(sets[u]) and rank[u] > rank[t] for u in sets)]
    return [(t, [r for lab in sets[t] for r in rows if _label(r) == lab]) for t in keep]


def envelope(rows: list[dict], metric: str) -> list[tuple[int, float]]:
    """(NFE, best value over every cell at that NFE), by NFE: the minimum, or the maximum for metrics
    where higher is better."""
    return sorted((int(n), float(r[metric])) for n, r in best_per_nfe(rows, metric).items())


def _lines(rows: list[dict], metric: str, line_of: dict) -> dict:
    """{line name: [(nfe, value, interval)]}; a line joins the labels that families gave one name."""
    out = {}
    for r in rows:
        if _ok(r, metric):
            point = (int(r["nfe"]), float(r[metric]), interval(r, metric))
            out.setdefault(line_of.get(_label(r), _label(r)), []).append(point)
    return {k: sorted(v) for k, v in out.items()}


def plot(rows: list[dict], metric: str, path: Path, title: str = "", families: dict | None = None) -> Path:
    """<metric>_vs_nfe.png: one panel per family, each with the best-per-NFE envelope of all rows."""
    from diffode.evaluation.figures import metric_figure

    line_of = {lab: line for labs in (families or {}).values() if isinstance(labs, dict)
               for lab, line in labs.items()}
    ps = [(t, lines) for t, rs in panels(rows, families) if (lines := _lines(rs, metric, line_of))]
    return metric_figure(ps, envelope(rows, metric), path, metric, title, LOWER_IS_BETTER.get(metric, True))


def representatives(rows: list[dict], families: dict | None, metric: str) -> list[tuple[str, dict]]:
    """(family, row) per panel for the contact sheet: the family's best cell at the NFE that most
    families have (the smallest such NFE, where samplers differ most), or at its nearest NFE."""
    ps = [(t, [r for r in rs if _ok(r, metric)]) for t, rs in panels(rows, families)]
    ps = [(t, rs) for t, rs in ps if rs]
    count: dict[int, int] = {}
    for _, rs in ps:
        for n in {int(r["nfe"]) for r in rs}:
            count[n] = count.get(n, 0) + 1
    if not count:
        return []
    target = min(count, key=lambda n: (-count[n], n))
    out = []
    for t, rs in ps:
        near = min({int(r["nfe"]) for r in rs}, key=lambda n: (abs(n - target), n))
        out.append((t, best_per_nfe([r for r in rs if int(r["nfe"]) == near], metric)[near]))
    return out


def _sheet(rows: list[dict], families: dict | None, metric: str, out_dir: Path) -> list[str]:
    """The contact sheet (samples/ PNGs of one cell per family) and its paragraph; [] without pictures."""
    from diffode.evaluation.results import samples_png
    from diffode.pictures import contact_sheet

    reps = [(t, r, samples_png(out_dir, r)) for t, r in representatives(rows, families, metric)]
    shown = [(f"{t}\n{_label(r)}, NFE {r['nfe']}: {metric.upper()} {_cell(r, metric)}", p) for t, r, p in reps
             if p.is_file()]
    if not shown:
        return []
    png = contact_sheet(shown, out_dir / "contact_sheet.png")
    missing = [f"{_label(r)} NFE {r['nfe']}" for _, r, p in reps if not p.is_file()]
    note = f" No saved samples for {', '.join(missing)}." if missing else ""
    return ["## Samples, one row per family", "",
            f"Each family's best cell by {metric.upper()} at the NFE most families share (or the family's nearest "
            f"NFE), its first samples, from the same seeds (the same initial noise) in every band; in an image band "
            f"a column is one seed. Each cell's own picture is in samples/.{note}", "",
            f"![samples per family]({png.name})", ""]


def previous_command(report: Path) -> str:
    """The command an earlier write_report put in the header of `report` ('' when none)."""
    lines = Path(report).read_text().splitlines() if Path(report).is_file() else []
    for i, line in enumerate(lines[:-2]):
        if line == "Command:" and lines[i + 2].startswith("    "):
            return lines[i + 2].strip()
    return ""


def write_report(rows: list[dict], metrics: list[str], out_dir: Path, title: str, summary: dict,
                 command: str = "", families: dict | None = None, rendered_by: str = "") -> Path:
    """report.md, <metric>_vs_nfe.png for each metric (one panel per family of `families`, see
    `panels`) and contact_sheet.png (from samples/, when the cells' pictures are there); returns the
    Markdown path. `rendered_by`: the command that re-rendered it from results.csv, said in the header."""
    out_dir = Path(out_dir)
    parts = [f"# {title}", ""]
    if command:
        parts += ["Command:", "", f"    {command}", ""]
    if rendered_by:
        parts += [f"Figures and this report re-rendered from results.csv (no metric recomputed): `{rendered_by}`", ""]
    parts += [summary.get("cells_note") or samples_note(rows), "", counts_note(rows), ""]
    decode = [r["decode_time"] for r in rows if isinstance(r.get("decode_time"), (int, float))]
    if decode:
        parts += [f"Latent model: every cell's samples are latents, decoded to images for the metrics and pictures; the "
                  f"decoder is not a denoiser call (not in NFE or forwards). Decoding took {sum(decode) / len(decode):.3g} "
                  f"s per cell on average (column decode_time; wall_time is the sampling alone).", ""]
    if "reference" in summary and summary.get("reference_self_rmse") is None:
        parts += [f"Solver error (RMSE) is measured against a reference solve of the same model from the same noise: "
                  f"{summary['reference']} (its self-consistency was not measured: reference.check_nfe=null).", ""]
    elif "reference" in summary:
        smallest = min((r["rmse"] for r in rows if _ok(r, "rmse")), default=None)
        times = smallest / max(summary['reference_self_rmse'], 1e-300) if smallest else None
        ratio = "" if times is None else f", {times:.3g}x below the smallest solver error in the table"
        if times is not None and times < 100:
            ratio += (" (less than 100x: the smallest errors are not resolved; raise reference.nfe and "
                      "reference.check_nfe)")
        parts += [f"Solver error (RMSE) is measured against a reference solve of the same model from the same noise: "
                  f"{summary['reference']}; its self-consistency (RMSE against NFE {summary['reference_check_nfe']}) is "
                  f"{summary['reference_self_rmse']:.3g}{ratio}. For a distilled student it is the distance to the "
                  f"teacher's reference solve.", ""]
    if any(interval(r, "accuracy") for r in rows):
        parts += [f"Class accuracy: the share of samples the digits classifier labels as the digit they were asked for "
                  f"(labels drawn per seed); +- is half the width of its {100 * summary.get('fid_level', 0.95):.0f}% "
                  "Wilson interval.", ""]
    if any(interval(r, "fid") for r in rows):
        parts += [f"FID +- is half the width of a {100 * summary.get('fid_level', 0.95):.0f}% bootstrap interval over "
                  f"the generated samples' features (B = {summary.get('fid_bootstrap')}); best per NFE in bold only "
                  "where its interval clears every other cell's, else the overlapping cells are marked as tied.", ""]
    from diffode.evaluation.guided_report import guided_parts, scales

    if len(scales(rows)) > 1:  # a sweep over guidance scales: per scale, and against the scale
        parts += guided_parts(rows, metrics, out_dir, title, summary)
    else:
        for m in metrics:
            if not any(_ok(r, m) for r in rows):
                continue
            png = plot(rows, m, out_dir / f"{m}_vs_nfe.png", title if m == metrics[0] else "", families)
            direction = "lower" if LOWER_IS_BETTER.get(m, True) else "higher"
            parts += [f"## {m.upper()} ({direction} is better; best per NFE in bold)", "", markdown_table(rows, m), "",
                      f"![{m} vs NFE]({png.name})", ""]
        parts += _sheet(rows, families, metrics[0], out_dir) if metrics else []
    failed = [r for r in rows if r.get("status") == "failed"]
    if failed:
        parts += ["## Failed cells (NaN/Inf samples; not averaged)", ""]
        parts += [f"- {_label(r)} NFE {r['nfe']}: {r.get('message', '')}" for r in failed] + [""]
    na = [r for r in rows if r.get("status") == "unreachable"]
    if na:
        parts += [f"n/a: the solver cannot make exactly that many calls ({len(na)} cells).", ""]
    walls = [r["wall_time"] for r in rows if isinstance(r.get("wall_time"), (int, float))]
    parts += ["## Run", "", f"- cells: {len(rows)} ({sum(r.get('status') == 'ok' for r in rows)} ok, "
              f"{len(failed)} failed, {len(na)} unreachable); sampling wall time {sum(walls):.1f} s"]
    parts += [f"- {k}: {v}" for k, v in summary.items()] + [""]
    from diffode.cache import write_text

    return write_text(out_dir / "report.md", "\n".join(parts))
