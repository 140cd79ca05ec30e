"""The guidance tables of experiments/guidance/README.md, from the sweeps' results.csv (no sampling).

For one sweep: FID and class accuracy (with their 95% intervals) per solver and NFE against the guidance scale, the
converged column (each scale's 100-NFE reference solve), and per NFE the ranking of the solvers at each scale. With
--compare, the same cells of other sweeps (thresholding, a guidance interval) side by side.

    python experiments/guidance/table.py experiments/guidance/eval_guided
    python experiments/guidance/table.py experiments/guidance/eval_guided --compare experiments/guidance/eval_threshold experiments/guidance/eval_interval
    python experiments/guidance/table.py experiments/guidance/eval_guided --learned experiments/guidance/eval_guided_learned

With --learned, the learned samplers' cells of that sweep (LD3, AMED) against the best hand-crafted cell at the same
scale and NFE, from both sweeps (the same seeds, labels and settings give the same numbers in either).
"""
from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

NAMES = {"ddim": "DDIM", "dpm_solver_2": "DPM-Solver-2", "dpmpp_2m": "DPM-Solver++(2M)", "unipc_bh2": "UniPC-bh2",
         "ipndm": "iPNDM", "dpmpp_3m": "DPM-Solver++(3M)"}


def rows_of(folder) -> list[dict]:
    with open(Path(folder) / "results.csv", newline="") as f:
        out = []
        for r in csv.DictReader(f):
            if r["status"] != "ok":
                continue
            for k in ("fid", "fid_lo", "fid_hi", "accuracy", "accuracy_lo", "accuracy_hi", "rmse", "guidance"):
                r[k] = float(r[k]) if r.get(k) not in (None, "") else math.nan
            r["nfe"] = int(r["nfe"])
            out.append(r)
        return out


def cell(r, m, digits=3) -> str:
    if r is None:
        return ""
    if m == "rmse":  # no interval: the distance to the same scale's converged solve from the same noise
        return f"{r[m]:.3g}"
    v, lo, hi = r[m], r[f"{m}_lo"], r[f"{m}_hi"]
    if m == "accuracy":
        return f"{100 * v:.1f} ({100 * lo:.1f}-{100 * hi:.1f})"
    return f"{v:.{digits}g} ± {(hi - lo) / 2:.2g}"


def by_key(rows):
    return {(r["solver"], r["nfe"], r["guidance"]): r for r in rows}


def scales_of(rows):
    return sorted({r["guidance"] for r in rows})


def main_table(rows, metric: str) -> str:
    ws = scales_of(rows)
    k = by_key(rows)
    solvers = [s for s in NAMES if any(r["solver"] == s for r in rows) and s != "dpmpp_3m"]
    nfes = sorted({r["nfe"] for r in rows if r["solver"] in solvers})
    head = "| solver | NFE | " + " | ".join(f"w = {w:g}" for w in ws) + " |"
    lines = [head, "|---|---|" + "---|" * len(ws)]
    for n in nfes:
        for s in solvers:
            lines.append(f"| {NAMES[s]} | {n} | " + " | ".join(cell(k.get((s, n, w)), metric) for w in ws) + " |")
    ref = [r for r in rows if r["solver"] == "dpmpp_3m"]
    if ref:
        n = ref[0]["nfe"]
        lines.append(f"| **converged**: DPM-Solver++(3M) | {n} | " +
                     " | ".join(cell(k.get(("dpmpp_3m", n, w)), metric) for w in ws) + " |")
    return "\n".join(lines)


def ranking(rows, metric="fid") -> str:
    """Per NFE and scale: the solvers from best to worst; '<' where the intervals are disjoint, '~' where they overlap."""
    ws = scales_of(rows)
    lines = ["| NFE | " + " | ".join(f"w = {w:g}" for w in ws) + " |", "|---|" + "---|" * len(ws)]
    for n in sorted({r["nfe"] for r in rows if r["solver"] != "dpmpp_3m"}):
        out = []
        for w in ws:
            cs = sorted((r for r in rows if r["nfe"] == n and r["guidance"] == w and r["solver"] != "dpmpp_3m"),
                        key=lambda r: r[metric])
            txt = NAMES[cs[0]["solver"]] if cs else ""
            for a, b in zip(cs, cs[1:]):
                txt += (" < " if a[f"{metric}_hi"] < b[f"{metric}_lo"] else " ~ ") + NAMES[b["solver"]]
            out.append(txt)
        lines.append(f"| {n} | " + " | ".join(out) + " |")
    return "\n".join(lines)


def compare(base, others: dict, metric="fid") -> str:
    """The cells the sweeps share, one column per sweep."""
    kb = by_key(base)
    ko = {name: by_key(rs) for name, rs in others.items()}
    keys = sorted({k for d in ko.values() for k in d} & set(kb))
    lines = ["| solver | NFE | w | plain | " + " | ".join(others) + " |", "|---|---|---|---|" + "---|" * len(others)]
    for s, n, w in sorted(keys, key=lambda k: (k[2], k[1], list(NAMES).index(k[0]) if k[0] in NAMES else 99)):
        lines.append(f"| {NAMES.get(s, s)} | {n} | {w:g} | {cell(kb[(s, n, w)], metric)} | " +
                     " | ".join(cell(ko[name].get((s, n, w)), metric) for name in others) + " |")
    return "\n".join(lines)


LEARNED = ("ld3", "amed", "gits")


def learned_table(base, learned) -> str:
    """Per learned cell: the best hand-crafted FID at its scale and NFE, its own, and whether the intervals are
    disjoint (a win or a loss) or overlap (a tie)."""
    hand = [r for r in base + learned if r["grid"] not in LEARNED and r["solver"] != "dpmpp_3m"]
    lines = ["| learned sampler | NFE | w | FID | best hand-crafted | its FID | difference | intervals |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted((r for r in learned if r["grid"] in LEARNED), key=lambda r: (r["guidance"], r["nfe"], r["grid"])):
        same = [h for h in hand if h["nfe"] == r["nfe"] and h["guidance"] == r["guidance"]]
        if not same:
            continue
        b = min(same, key=lambda h: h["fid"])
        verdict = ("disjoint, better" if r["fid_hi"] < b["fid_lo"] else "disjoint, worse" if r["fid_lo"] > b["fid_hi"]
                   else "overlap")
        lines.append(f"| {NAMES.get(r['solver'], r['solver'])}/{r['grid']} | {r['nfe']} | {r['guidance']:g} | "
                     f"{cell(r, 'fid')} | {NAMES.get(b['solver'], b['solver'])}/{b['grid']} | {cell(b, 'fid')} | "
                     f"{r['fid'] - b['fid']:+.3g} | {verdict} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sweep")
    ap.add_argument("--compare", nargs="*", default=[])
    ap.add_argument("--learned", default=None, help="a sweep with learned samplers' cells (sweep.learned)")
    a = ap.parse_args()
    rows = rows_of(a.sweep)
    if a.learned:
        print("## FID of the learned samplers vs the best hand-crafted cell (95% bootstrap intervals as +-)\n")
        print(learned_table(rows, rows_of(a.learned)))
        return
    print("## FID (95% bootstrap interval as +-)\n")
    print(main_table(rows, "fid"))
    print("\n## Class accuracy, % (95% Wilson interval)\n")
    print(main_table(rows, "accuracy"))
    if any(not math.isnan(r["rmse"]) for r in rows):
        print("\n## Solver error: RMSE to the converged solve of the same scale from the same noise and labels\n")
        print(main_table([r for r in rows if r["solver"] != "dpmpp_3m"], "rmse"))
    print("\n## FID ranking per NFE and scale ('<': disjoint intervals, '~': overlapping)\n")
    print(ranking(rows))
    if a.compare:
        others = {Path(p).name: rows_of(p) for p in a.compare}
        print("\n## FID, plain vs " + ", ".join(others) + "\n")
        print(compare(rows, others))
        print("\n## Class accuracy, plain vs " + ", ".join(others) + "\n")
        print(compare(rows, others, "accuracy"))


if __name__ == "__main__":
    main()
