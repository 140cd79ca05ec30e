"""The human-readable side of a sweep: a Markdown table per metric (value per solver/grid at each
NFE, FID with its bootstrap interval as +-, the best per NFE) and a metric-vs-NFE plot (log-scale y,
one line per solver/grid, FID with error bars). "Best" is marked only where the best cell's interval
does not overlap the runner-up's; otherwise every cell whose interval overlaps the best one's is
marked as tied. Failed and unreachable cells are shown as such, never as numbers."""
from __future__ import annotations

import math
from pathlib import Path

LOWER_IS_BETTER = {"fid": True, "rmse": True, "sw": True, "confident": False, "bpd": True, "nll": True,
                   "bpd_err": True, "recon_rmse": True, "recon_max": True}


def _label(r):
    return f"{r['solver']}/{r['grid']}"


def _ok(r, metric):
    v = r.get(metric)
    return r.get("status") == "ok" and isinstance(v, (int, float)) and math.isfinite(v)


def best_per_nfe(rows: list[dict], metric: str) -> dict[int, dict]:
    sign = 1 if LOWER_IS_BETTER.get(metric, True) else -1
    best = {}
    for r in rows:
        if _ok(r, metric) and (r["nfe"] not in best or sign * r[metric] < sign * best[r["nfe"]][metric]):
            best[r["nfe"]] = r
    return best


def interval(r: dict, metric: str) -> tuple[float, float] | None:
    lo, hi = r.get(f"{metric}_lo"), r.get(f"{metric}_hi")
    ok = all(isinstance(v, (int, float)) and math.isfinite(v) for v in (lo, hi))
    return (float(lo), float(hi)) if ok else None


def winners(rows: list[dict], metric: str) -> dict[int, list[dict]]:
    """Per NFE: [best] when its interval is clear of every other cell's, else the best and every cell
    whose interval overlaps the best one's (a tie). Metrics without intervals: the best alone."""
    best = best_per_nfe(rows, metric)
    out = {}
    for n, b in best.items():
        ib = interval(b, metric)
        tied = [b]
        if ib is not None:
            for r in rows:
                ir = interval(r, metric)
                if r is not b and int(r["nfe"]) == n and _ok(r, metric) and ir and ir[0] <= ib[1] and ib[0] <= ir[1]:
                    tied.append(r)
        out[n] = tied
    return out


def _cell(r: dict, metric: str) -> str:
    iv = interval(r, metric)
    if iv is None:
        return f"{r[metric]:.4g}"
    return f"{r[metric]:.4g} ± {(iv[1] - iv[0]) / 2:.2g}"


def markdown_table(rows: list[dict], metric: str) -> str:
    labels = list(dict.fromkeys(_label(r) for r in sorted(rows, key=lambda r: (r["solver"], r["grid"]))))
    nfes = sorted({int(r["nfe"]) for r in rows})
    by = {(_label(r), int(r["nfe"])): r for r in rows}
    wins = winners(rows, metric)
    lines = ["| solver/grid | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
             "|---|" + "---|" * len(nfes)]
    for lab in labels:
        cells = []
        for n in nfes:
            r = by.get((lab, n))
            if r is None:
                cells.append("")
            elif r.get("status") == "unreachable":
                cells.append("n/a")
            elif not _ok(r, metric):
                cells.append("failed")
            else:
                s = _cell(r, metric)
                w = wins.get(n, [])
                cells.append((f"**{s}**" if len(w) == 1 else f"*{s}* (tie)") if any(x is r for x in w) else s)
        lines.append(f"| {lab} | " + " | ".join(cells) + " |")

    def best_label(n):
        w = wins.get(n)
        return "-" if not w else _label(w[0]) if len(w) == 1 else "tie: " + ", ".join(_label(x) for x in w)

    lines.append("| **best** | " + " | ".join(best_label(n) for n in nfes) + " |")
    return "\n".join(lines)


def samples_note(rows: list[dict]) -> str:
    counts = sorted({int(r["n_samples"]) for r in rows if r.get("status") in ("ok", "failed")})
    seeds = sorted({str(r.get("seeds")) for r in rows if r.get("status") in ("ok", "failed")})
    if len(counts) == 1:
        return f"Every evaluated cell used {counts[0]} samples (seeds {', '.join(seeds)}, the same initial noise in every cell)."
    return "Samples per cell: " + ", ".join(f"{_label(r)}@{r['nfe']}: {r['n_samples']}" for r in rows)


def plot(rows: list[dict], metric: str, path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.get_cmap("tab20").colors
    for i, lab in enumerate(sorted({_label(r) for r in rows})):
        pts = sorted((int(r["nfe"]), r[metric], interval(r, metric)) for r in rows if _label(r) == lab and _ok(r, metric))
        if pts:
            x, y = [p[0] for p in pts], [p[1] for p in pts]
            style = dict(marker="osd^v<>"[i % 7], ms=3.5, label=lab, color=colors[(2 * i) % 20 + (2 * i // 20) % 2])
            if all(p[2] is not None for p in pts):
                err = [[max(p[1] - p[2][0], 0) for p in pts], [max(p[2][1] - p[1], 0) for p in pts]]
                ax.errorbar(x, y, yerr=err, capsize=2, lw=1, elinewidth=0.8, **style)
            else:
                ax.plot(x, y, **style)
    ax.set_yscale("log")
    nfes = [int(r["nfe"]) for r in rows]
    if nfes and max(nfes) > 8 * min(nfes):
        ax.set_xscale("log")
    ax.set_xlabel("NFE")
    ax.set_ylabel(metric.upper())
    ax.set_title(title or f"{metric.upper()} vs NFE")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def write_report(rows: list[dict], metrics: list[str], out_dir: Path, title: str, summary: dict,
                 command: str = "") -> Path:
    """report.md + <metric>_vs_nfe.png for each metric; returns the Markdown path."""
    out_dir = Path(out_dir)
    parts = [f"# {title}", ""]
    if command:
        parts += ["Command:", "", f"    {command}", ""]
    parts += [summary.get("cells_note") or samples_note(rows), ""]
    if "reference" in summary:
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
    if any(interval(r, "fid") for r in rows):
        parts += [f"FID +- is half the width of a {100 * summary.get('fid_level', 0.95):.0f}% bootstrap interval over "
                  f"the generated samples' features (B = {summary.get('fid_bootstrap')}); best per NFE in bold only "
                  "where its interval clears every other cell's, else the overlapping cells are marked as tied.", ""]
    for m in metrics:
        if not any(_ok(r, m) for r in rows):
            continue
        png = plot(rows, m, out_dir / f"{m}_vs_nfe.png", title if m == metrics[0] else f"{m.upper()} vs NFE")
        direction = "lower" if LOWER_IS_BETTER.get(m, True) else "higher"
        parts += [f"## {m.upper()} ({direction} is better; best per NFE in bold)", "", markdown_table(rows, m), "",
                  f"![{m} vs NFE]({png.name})", ""]
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
    path = out_dir / "report.md"
    path.write_text("\n".join(parts))
    return path
