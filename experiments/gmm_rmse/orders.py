"""Measured convergence orders from a GMM sweep's results.csv: the log-slope of endpoint RMSE
between NFE 20 -> 40 and 40 -> 200, next to each solver's theoretical order (solver registry),
and the sliced W2 at NFE 200 against the exact-vs-exact noise floor (summary.json).

    python experiments/gmm_rmse/orders.py experiments/gmm_rmse/results
"""
import argparse
import json
import math
from pathlib import Path

from diffode.config import solver_config
from diffode.core.solvers import SOLVERS
from diffode.evaluation.results import read_rows


def order(name: str) -> int:
    """The registry order of a solver config name (conf/solver/<name>.yaml)."""
    return SOLVERS[solver_config(name)[0]].order


def main(run_dir: str) -> None:
    rows = [r for r in read_rows(Path(run_dir) / "results.csv") if r["status"] == "ok"]
    floor = json.loads((Path(run_dir) / "summary.json").read_text())
    r = {(x["solver"], x["nfe"]): x for x in rows}
    print("| solver | order (registry) | RMSE @40 | RMSE @200 | slope 20->40 | slope 40->200 | SW2 @200 |")
    print("|---|---|---|---|---|---|---|")
    for s in sorted({x["solver"] for x in rows}, key=lambda s: (order(s), s)):
        a, b, c = r.get((s, 20)), r.get((s, 40)), r.get((s, 200))
        if not (a and b and c):
            continue
        print(f"| {s} | {order(s)} | {b['rmse']:.3g} | {c['rmse']:.3g} | "
              f"{math.log(a['rmse'] / b['rmse']) / math.log(2):.2f} | {math.log(b['rmse'] / c['rmse']) / math.log(5):.2f} "
              f"| {c['sw']:.4f} |")
    print(f"\nSW2 exact vs exact (n = {floor['n_samples']}): {floor['sw_exact_vs_exact_mean']:.4f} "
          f"+- {floor['sw_exact_vs_exact_std']:.4f}; reference solve vs exact: {floor['sw_reference_solve']:.4f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", nargs="?", default="experiments/gmm_rmse/results", help="a diffode eval run dir")
    main(ap.parse_args().run_dir)
