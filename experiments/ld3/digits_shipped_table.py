"""Markdown table of results/digits_shipped/fid.json (+ train times / load from timing.json).

    python experiments/ld3/digits_shipped_table.py      # -> experiments/ld3/results/digits_shipped/fid.md
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import find_grid, grid_record  # noqa: E402

NAMES = {"dpmpp_3m": "DPM-Solver++(3M)", "unipc_bh1": "UniPC (bh1, order 3)", "ipndm": "iPNDM"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent / "results" / "digits_shipped")
    d = ap.parse_args().dir
    res = json.loads((d / "fid.json").read_text())
    tim = json.loads((d / "timing.json").read_text()) if (d / "timing.json").exists() else {}
    lines = ["| solver | NFE | n | time_uniform | logsnr | edm | LD3 | best hand-crafted - LD3 | LD3 val l2 (init -> best) | LD3 train wall (load avg 1-min during) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in ["dpmpp_3m", "unipc_bh1", "ipndm"]:
        for nfe in (4, 5, 6):
            r = res.get(f"{s}_nfe{nfe}_n10000") or res.get(f"{s}_nfe{nfe}_n5000")
            gf = find_grid(d / f"{s}_nfe{nfe}")
            if not r or "ld3" not in r or gf is None:
                continue
            art = grid_record(gf)
            t = tim.get(f"{s}_nfe{nfe}", {})
            best = r["best_hand"]
            gain = r["best_hand_minus_ld3"]
            rel = gain / r[best] * 100
            cells = {g: f"{r[g]:.2f}" for g in ("time_uniform", "logsnr", "edm")}
            cells[best] = f"**{cells[best]}**" if gain < 0 else cells[best]
            ld3 = f"**{r['ld3']:.2f}**" if gain > 0 else f"{r['ld3']:.2f}"
            lines.append(f"| {NAMES[s]} | {nfe} | {r['n']} | {cells['time_uniform']} | {cells['logsnr']} | {cells['edm']} | {ld3} | "
                         f"{gain:+.2f} vs {best} ({'LD3 better' if gain > 0 else 'LD3 worse'}, {abs(rel):.0f}% {'lower' if gain > 0 else 'higher'}) | "
                         f"{art['val_first']:.4f} ({art['init']['chosen']}) -> {art['val_best']:.4f} | "
                         f"{t.get('wall_s', float('nan')):.0f} s ({t.get('load', '?')}) |")
    out = "\n".join(lines) + "\n"
    (d / "fid.md").write_text(out)
    print(out)


if __name__ == "__main__":
    main()
