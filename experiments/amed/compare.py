"""Each AMED row against its base cell, from results/digits_fid.json (digits_fid.py):
ipndm/amed vs ipndm/edm, dpm_solver_2/amed vs dpm_solver_2/logsnr (AFS at odd NFEs, as the plugin),
amed/amed vs dpm_solver_2/logsnr and heun/edm. Prints FID and RMSE pairs with the winner per cell
(and whether the FIDs' 95% bootstrap intervals are disjoint, where digits_fid.py measured them).

    python experiments/amed/compare.py --n 2000 [--results experiments/amed/results/digits_fid.json]
"""
import argparse
import json
from pathlib import Path

PAIRS = [("ipndm/amed", "ipndm/edm"), ("dpm_solver_2/amed", "dpm_solver_2/logsnr"),
         ("amed/amed", "dpm_solver_2/logsnr"), ("amed/amed", "heun/edm")]

ap = argparse.ArgumentParser()
ap.add_argument("--n", type=int, default=2000)
ap.add_argument("--seed0", type=int, default=0, help="the noise seeds digits_fid.py --seed0 used")
ap.add_argument("--results", default=str(Path(__file__).resolve().parent / "results" / "digits_fid.json"))
args = ap.parse_args()
t = json.loads(Path(args.results).read_text())[f"n{args.n}" + (f"_seed{args.seed0}" if args.seed0 else "")]
nfes = sorted({int(k) for row in t.values() for k in row})
print(f"{args.n} samples per cell; each cell: AMED vs base, FID and RMSE; W = AMED lower, L = AMED higher, "
      "= = the same up to round-off (1e-6), "
      "! = the FIDs' 95% intervals do not overlap")
print()
print("| AMED row vs base | " + " | ".join(f"NFE {k}" for k in nfes) + " | wins FID (disjoint intervals) / RMSE |")
print("|---|" + "---|" * (len(nfes) + 1))
for a, b in PAIRS:
    cells, wf, wr, m, sig = [], 0, 0, 0, 0
    for k in nfes:
        x, y = t.get(a, {}).get(str(k)), t.get(b, {}).get(str(k))
        if not x or not y:
            cells.append("")
            continue
        # "=": the same samples up to round-off (an exported untrained plugin is its base solver)
        tie = lambda u, v: abs(u - v) <= 1e-6 * abs(v)  # noqa: E731
        mark = lambda u, v: "=" if tie(u, v) else ("W" if u < v else "L")  # noqa: E731
        f = not tie(x["fid"], y["fid"]) and x["fid"] < y["fid"]
        r = not tie(x["rmse"], y["rmse"]) and x["rmse"] < y["rmse"]
        # "!": the two 95% bootstrap intervals do not overlap (where measured: digits_fid.py --bootstrap)
        apart = "fid_lo" in x and "fid_lo" in y and (x["fid_hi"] < y["fid_lo"] or y["fid_hi"] < x["fid_lo"])
        wf, wr, m, sig = wf + f, wr + r, m + 1, sig + (f and apart)
        cells.append(f"{x['fid']:.1f} vs {y['fid']:.1f} {mark(x['fid'], y['fid'])}{'!' if apart else ''}; "
                     f"{x['rmse']:.3f} vs {y['rmse']:.3f} {mark(x['rmse'], y['rmse'])}")
    if m:
        print(f"| {a} vs {b} | " + " | ".join(cells) + f" | {wf}/{m} ({sig} apart) / {wr}/{m} |")
