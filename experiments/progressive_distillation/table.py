"""Markdown table of results/digits_fid*.json: each student beside DDIM, the best training-free cell and LD3.

    python experiments/progressive_distillation/table.py
"""
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent / "results"


def main():
    res = {}
    for f in sorted(HERE.glob("digits_fid*.json")):
        res.update({k: v for k, v in json.loads(f.read_text()).items() if k != "meta"})
    conv = res["teacher_rk45"]["fid"]
    print(f"teacher converged (rk45, {res['teacher_rk45']['nfe_used']} NFE): FID {conv:.1f}\n")
    print("| N = NFE | PD student | teacher DDIM (same grid) | best training-free (cell) | LD3 (best) | student / converged |")
    print("|---|---|---|---|---|---|")
    for n in (1, 2, 4, 8, 16, 32, 64):
        if f"pd_{n}" not in res:
            continue
        pd = res[f"pd_{n}"]["fid"]
        ddim = res.get(f"ddim_edm_{n}", {}).get("fid")
        free = [(v["fid"], k.rsplit("_", 1)[0]) for k, v in res.items()
                if k.endswith(f"_{n}") and "fid" in v and not k.startswith(("pd_", "ld3_", "teacher"))]
        best = min(free) if free else None
        ld3 = [(v["fid"], k) for k, v in res.items() if k.startswith("ld3_") and k.endswith(f"_{n}")]
        ld3 = min(ld3) if ld3 else None
        cell = f"{best[0]:.1f} ({best[1]})" if best else "-"
        print(f"| {n} | **{pd:.1f}** | {ddim:.1f} | {cell} | {f'{ld3[0]:.1f} ({ld3[1][4:-2]})' if ld3 else '-'} "
              f"| {pd / conv:.2f}x |")


if __name__ == "__main__":
    main()
