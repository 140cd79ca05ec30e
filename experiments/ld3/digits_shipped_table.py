"""Markdown table of results/digits_shipped/fid.json (+ train times / load from timing.json)."""
import json
from pathlib import Path

d = Path(__file__).resolve().parent / "results" / "digits_shipped"
res = json.loads((d / "fid.json").read_text())
tim = json.loads((d / "timing.json").read_text()) if (d / "timing.json").exists() else {}
names = {"dpmpp_3m": "DPM-Solver++(3M)", "unipc_bh1": "UniPC (bh1, order 3)", "ipndm": "iPNDM"}
lines = ["| solver | NFE | n | time_uniform | logsnr | edm | LD3 | best hand-crafted - LD3 | LD3 val l2 (init -> best) | LD3 train wall (load avg 1-min during) |",
         "|---|---|---|---|---|---|---|---|---|---|"]
for s in ["dpmpp_3m", "unipc_bh1", "ipndm"]:
    for nfe in (4, 5, 6):
        r = res.get(f"{s}_nfe{nfe}_n10000") or res.get(f"{s}_nfe{nfe}_n5000")
        if not r or "ld3" not in r:
            continue
        art = json.loads((d / f"{s}_nfe{nfe}" / "ld3_grid.json").read_text())
        v0 = next(h["val"] for h in art["history"] if "val" in h)
        t = tim.get(f"{s}_nfe{nfe}", {})
        best = r["best_hand"]
        gain = r["best_hand_minus_ld3"]
        rel = gain / r[best] * 100
        cells = {g: f"{r[g]:.2f}" for g in ("time_uniform", "logsnr", "edm")}
        cells[best] = f"**{cells[best]}**" if gain < 0 else cells[best]
        ld3 = f"**{r['ld3']:.2f}**" if gain > 0 else f"{r['ld3']:.2f}"
        lines.append(f"| {names[s]} | {nfe} | {r['n']} | {cells['time_uniform']} | {cells['logsnr']} | {cells['edm']} | {ld3} | "
                     f"{gain:+.2f} vs {best} ({'LD3 better' if gain > 0 else 'LD3 worse'}, {abs(rel):.0f}% {'lower' if gain > 0 else 'higher'}) | "
                     f"{v0:.4f} ({art['init']['chosen']}) -> {art['val_metric']['value']:.4f} | "
                     f"{t.get('wall_s', float('nan')):.0f} s ({t.get('load', '?')}) |")
out = "\n".join(lines) + "\n"
(d / "fid.md").write_text(out)
print(out)
