"""Convergence orders of every solver on the exact flow-matching mixture and on the exact VP mixture, as a table.

The measurement of tests/test_flow_convergence.py (which asserts the two agree within 0.1): each model on its own
full range, logsnr grids of the same lambda step, endpoint max-error against a dopri8 solve, least-squares slope.

    python experiments/flow/orders.py            # writes experiments/flow/results/orders.md
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from test_flow_convergence import EXPECTED_ORDERS, order  # noqa: E402


def main():
    torch.set_num_threads(1)
    t0 = time.time()
    lines = ["| solver (options) | theory | 2-D flow | 2-D VP | 16-D flow | 16-D VP | largest gap |", "|---|---|---|---|---|---|---|"]
    for (name, options), theory in EXPECTED_ORDERS.items():
        o = {(m, d): order(m, d, name, options) for d in (2, 16) for m in ("flow", "vp")}
        gap = max(abs(o[("flow", d)] - o[("vp", d)]) for d in (2, 16))
        opts = ", ".join(f"{k}={v}" for k, v in options)
        lines.append(f"| {name} ({opts}) | {theory} | {o[('flow', 2)]:.2f} | {o[('vp', 2)]:.2f} | {o[('flow', 16)]:.2f} | "
                     f"{o[('vp', 16)]:.2f} | {gap:.2f} |")
        print(lines[-1], flush=True)
    out = Path(__file__).resolve().parent / "results" / "orders.md"
    out.write_text("\n".join(lines) + f"\n\n({time.time() - t0:.0f} s wall)\n")


if __name__ == "__main__":
    main()
