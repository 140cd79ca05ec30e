"""Side-by-side tables of two `diffode eval` runs on the same seeds: the flow-matching digits UNet and the diffusion
one (results.csv of each run), written as Markdown.

    python experiments/flow/compare.py --flow <eval_flow run>/results.csv [<reflow eval>/results.csv] \
        --diffusion <eval_main run>/results.csv --out experiments/flow/results/compare.md

Tables: (1) FID [95% interval] and solver error (RMSE against the model's own NFE-200 solve) per training-free
cell, flow | diffusion, NFE 3-10; (2) the best cell per NFE of each model; (3) for FID thresholds, the smallest
NFE at which each solver reaches it on each model (fewer steps: which model needs fewer); (4) the flow model's
learned rows (LD3, GITS, AMED beside its best training-free cell at that NFE); (5) the 1- and 2-step students: the
flow model's (reflow, the undistilled 2-rectified flow, PD and CD where run) beside the diffusion model's PD and CD.
Several --flow files are read as one run (the sweep and a separate eval of the reflow artifacts, same seeds).
A difference is called only where the two 95% intervals do not overlap.
"""
from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

LEARNED_KINDS = {"ld3", "gits", "amed", "amed_times", "pd", "cd", "reflow", "2rf"}


def read(*paths) -> dict:
    rows = {}
    for r in (r for path in paths for r in csv.DictReader(open(path))):
        if r.get("status") != "ok" or not r.get("fid"):
            continue
        rows[(r["solver"], r["grid"], int(r["nfe"]))] = {k: float(r[k]) for k in ("fid", "fid_lo", "fid_hi", "rmse")
                                                          if r.get(k) not in (None, "")}
    return rows


def learned(key) -> bool:
    solver, grid, _ = key
    return grid in LEARNED_KINDS or solver in LEARNED_KINDS or grid.isdigit()


def cell(r) -> str:
    if r is None:
        return "n/a"
    return f"{r['fid']:.1f} [{r['fid_lo']:.1f}, {r['fid_hi']:.1f}] / {r.get('rmse', float('nan')):.3f}"


def fid(r) -> str:
    return "n/a" if r is None else f"{r['fid']:.1f} [{r['fid_lo']:.1f}, {r['fid_hi']:.1f}]"


def verdict(a, b) -> str:
    """'flow' / 'diffusion' when the intervals are apart, 'tie' when they overlap."""
    if a is None or b is None:
        return ""
    if a["fid_hi"] < b["fid_lo"]:
        return "flow"
    if b["fid_hi"] < a["fid_lo"]:
        return "diffusion"
    return "tie"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flow", required=True, nargs="+")
    ap.add_argument("--diffusion", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--thresholds", nargs="*", type=float, default=[30.0, 15.0, 8.0])
    a = ap.parse_args()
    F, E = read(*a.flow), read(a.diffusion)
    nfes = list(range(3, 11))
    pairs = sorted({(s, g) for s, g, _ in list(F) + list(E) if not learned((s, g, 0))})
    lines = ["# Flow-matching vs diffusion digits UNet (same net, data, budget; same seeds)", ""]
    lines += ["## 1. FID [95% interval] / solver error, flow | diffusion", "",
              "| solver/grid | NFE | flow | diffusion | lower FID |", "|---|---|---|---|---|"]
    for s, g in pairs:
        for n in nfes:
            f, e = F.get((s, g, n)), E.get((s, g, n))
            if f is None and e is None:
                continue
            lines.append(f"| {s}/{g} | {n} | {cell(f)} | {cell(e)} | {verdict(f, e)} |")
    lines += ["", "## 2. Best training-free cell per NFE", "",
              "| NFE | flow: best | diffusion: best | lower FID |", "|---|---|---|---|"]
    for n in nfes:
        bf = min(((k, r) for k, r in F.items() if k[2] == n and not learned(k)), key=lambda kr: kr[1]["fid"],
                 default=(None, None))
        be = min(((k, r) for k, r in E.items() if k[2] == n and not learned(k)), key=lambda kr: kr[1]["fid"],
                 default=(None, None))
        name = lambda k: "" if k is None else f"{k[0]}/{k[1]} "  # noqa: E731
        lines.append(f"| {n} | {name(bf[0])}{fid(bf[1])} | {name(be[0])}{fid(be[1])} | {verdict(bf[1], be[1])} |")
    lines += ["", "## 3. Smallest NFE (3-10) reaching an FID, per solver/grid", "",
              "| solver/grid | " + " | ".join(f"FID < {t:g}: flow / diffusion" for t in a.thresholds) + " |",
              "|---|" + "---|" * len(a.thresholds)]
    for s, g in pairs:
        cells = []
        for t in a.thresholds:
            first = []
            for rows in (F, E):
                ok = [n for n in nfes if (s, g, n) in rows and rows[(s, g, n)]["fid"] < t]
                first.append(str(min(ok)) if ok else ">10")
            cells.append(" / ".join(first))
        lines.append(f"| {s}/{g} | " + " | ".join(cells) + " |")
    lines += ["", "## 4. Learned samplers on the flow model", "",
              "| row | NFE | FID [95%] / solver error | best training-free at that NFE | lower FID |", "|---|---|---|---|---|"]
    by_nfe = defaultdict(list)
    for k, r in F.items():
        if learned(k):
            by_nfe[k[2]].append((k, r))
    for n in sorted(by_nfe):
        tf = min(((k, r) for k, r in F.items() if k[2] == n and not learned(k)), key=lambda kr: kr[1]["fid"],
                 default=(None, None))
        for k, r in sorted(by_nfe[n], key=lambda kr: kr[1]["fid"]):
            ref = "" if tf[0] is None else f"{tf[0][0]}/{tf[0][1]} {fid(tf[1])}"
            v = verdict(r, tf[1]).replace("flow", "learned").replace("diffusion", "training-free")
            lines.append(f"| {k[0]}/{k[1]} | {n} | {cell(r)} | {ref} | {v} |")
    lines += ["", "## 5. 1- and 2-step students", "", "| model | row | NFE | FID [95%] / solver error |", "|---|---|---|---|"]
    for n in (1, 2):
        for model, rows in (("flow", F), ("diffusion", E)):
            for k, r in sorted(((k, r) for k, r in rows.items() if k[2] == n and learned(k)), key=lambda kr: kr[1]["fid"]):
                lines.append(f"| {model} | {k[0]}/{k[1]} | {n} | {cell(r)} |")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
