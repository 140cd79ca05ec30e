"""Each AMED row against its base cell: ipndm/amed vs ipndm/edm, dpm_solver_2/amed vs dpm_solver_2/logsnr (AFS at
odd NFEs, as the plugin), amed/amed vs dpm_solver_2/logsnr and heun/edm. Prints FID and RMSE pairs with the winner
per cell and whether the FIDs' 95% bootstrap intervals are disjoint (where they were measured).

    python experiments/amed/compare.py --results <diffode eval experiment=eval_amed_digits output_dir>
    python experiments/amed/compare.py --n 10000 --results experiments/amed/results/digits_fid_10k.json

--results is a `diffode eval` run dir (its results.csv), or a results file of the former digits_fid.py (the
recorded tables; --n / --seed0 pick its table). A script because it reads a table across cells: a sweep
reports every cell on its own.
"""
import argparse
import json
from pathlib import Path

PAIRS = [("ipndm/amed", "ipndm/edm"), ("dpm_solver_2/amed", "dpm_solver_2/logsnr"),
         ("amed/amed", "dpm_solver_2/logsnr"), ("amed/amed", "heun/edm")]


def table(results: str, n: int, seed0: int) -> tuple[dict, str]:
    """{row label: {nfe: {fid, rmse[, fid_lo, fid_hi]}}} and the sample count, from either format."""
    path = Path(results)
    if path.is_dir():
        from diffode.evaluation.results import read_rows

        t, counts = {}, set()
        for r in read_rows(path / "results.csv"):
            if r["status"] == "ok":
                t.setdefault(f"{r['solver']}/{r['grid']}", {})[str(r["nfe"])] = r
                counts.add(f"{r['n_samples']} samples, seeds {r['seeds']}")
        return t, "; ".join(sorted(counts))
    return json.loads(path.read_text())[f"n{n}" + (f"_seed{seed0}" if seed0 else "")], f"{n} samples"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", default=str(Path(__file__).resolve().parent / "results" / "digits_fid.json"),
                    help="a diffode eval run dir, or a digits_fid*.json of the record")
    ap.add_argument("--n", type=int, default=2000, help="a digits_fid*.json: its table of n samples")
    ap.add_argument("--seed0", type=int, default=0, help="a digits_fid*.json: the table's first noise seed")
    args = ap.parse_args()
    t, what = table(args.results, args.n, args.seed0)
    nfes = [k for k in sorted({int(k) for row in t.values() for k in row})  # the NFEs with a pair to compare
            if any(t.get(a, {}).get(str(k)) and t.get(b, {}).get(str(k)) for a, b in PAIRS)]
    print(f"{what} per cell; each cell: AMED vs base, FID and RMSE; W = AMED lower, L = AMED higher, "
          "= = the same up to round-off (1e-6), ! = the FIDs' 95% intervals do not overlap")
    print()
    print("| AMED row vs base | " + " | ".join(f"NFE {k}" for k in nfes) + " | wins FID (disjoint intervals) / RMSE |")
    print("|---|" + "---|" * (len(nfes) + 1))
    tie = lambda u, v: abs(u - v) <= 1e-6 * abs(v)  # noqa: E731  (an exported untrained plugin is its base)
    mark = lambda u, v: "=" if tie(u, v) else ("W" if u < v else "L")  # noqa: E731
    for a, b in PAIRS:
        cells, wf, wr, m, sig = [], 0, 0, 0, 0
        for k in nfes:
            x, y = t.get(a, {}).get(str(k)), t.get(b, {}).get(str(k))
            if not x or not y:
                cells.append("")
                continue
            f = not tie(x["fid"], y["fid"]) and x["fid"] < y["fid"]
            r = not tie(x["rmse"], y["rmse"]) and x["rmse"] < y["rmse"]
            measured = all(v.get("fid_lo") is not None and v["fid_hi"] > v["fid_lo"] for v in (x, y))  # B = 0: none
            apart = measured and (x["fid_hi"] < y["fid_lo"] or y["fid_hi"] < x["fid_lo"])
            wf, wr, m, sig = wf + f, wr + r, m + 1, sig + (f and apart)
            cells.append(f"{x['fid']:.1f} vs {y['fid']:.1f} {mark(x['fid'], y['fid'])}{'!' if apart else ''}; "
                         f"{x['rmse']:.3f} vs {y['rmse']:.3f} {mark(x['rmse'], y['rmse'])}")
        if m:
            print(f"| {a} vs {b} | " + " | ".join(cells) + f" | {wf}/{m} ({sig} apart) / {wr}/{m} |")


if __name__ == "__main__":
    main()
