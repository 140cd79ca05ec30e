"""The results tables of a sweep: one metric's value per solver/grid (rows) at each NFE (columns), with its
interval as +-, and the best cell per NFE marked only where its interval clears every other cell's (else the
overlapping cells are marked as tied). Shared by the report and the per-scale report of a guided sweep."""
from __future__ import annotations

import math

LOWER_IS_BETTER = {"fid": True, "rmse": True, "sw": True, "confident": False, "accuracy": False, "bpd": True,
                   "nll": True, "bpd_err": True, "recon_rmse": True, "recon_max": True}


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
