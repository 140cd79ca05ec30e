"""LD3 on the digits UNet: FID of the learned grid vs time_uniform, logsnr and edm grids.

For each solver x NFE one LD3 training (`diffode ld3`, conf/method/ld3.yaml defaults: 100 UniPC-20 teacher pairs 50/50,
soft loss gamma 0.001, decoupled, 2 + 5 rounds, batch 2; distance l2 because LPIPS needs VGG
ImageNet weights that this machine does not have). Then FID (the digits classifier's features,
against the digits training split: the `diffode eval` protocol) of n samples from the SAME noise
seeds 0..n-1 for every row (LD3's teacher pairs use seeds 100000000.., so none is a training pair).

    python experiments/ld3/digits_fid.py --ckpt diffode/assets/digits_unet.ckpt --n 10000
    # score grids trained earlier (diffode ld3 ... hydra.run.dir=DIR) instead of training here:
    python experiments/ld3/digits_fid.py --ckpt ... --grid_files DIR1/artifacts/ld3 DIR2/artifacts/ld3 --n 5000
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from common import HAND_GRIDS, DigitsFID, grid_record, solve_grid, source_model, train_grid  # noqa: I001

SOLVER_NAMES = {"dpmpp_3m": "DPM-Solver++(3M)", "unipc_bh1": "UniPC(bh1, 3)", "ipndm": "iPNDM"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default="diffode/assets/digits_unet.ckpt")
    ap.add_argument("--solvers", default="dpmpp_3m,unipc_bh1,ipndm")
    ap.add_argument("--nfes", default="4,5,6")
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="experiments/ld3/results/digits")
    ap.add_argument("--extra", nargs="*", default=[], help="more Hydra overrides for every LD3 run")
    ap.add_argument("--grid_files", nargs="*", default=None, help="score these LD3 grids (artifact dirs or ld3_grid.json), train nothing")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from diffode.models import file_sha256, initial_noise

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fid = DigitsFID()
    rows, x_T, D = [], None, None
    jobs = ([(None, None, f) for f in args.grid_files] if args.grid_files is not None else
            [(s, int(n), None) for s in args.solvers.split(",") for n in args.nfes.split(",")])
    for solver, nfe, grid_file in jobs:
        if grid_file is None:
            art, train_s, _ = train_grid(args.ckpt, out / f"{solver}_nfe{nfe}",
                                         [f"method.solver={solver}", f"method.nfe={nfe}", "method.distance=l2"]
                                         + args.extra, args.threads)
        else:
            art = grid_record(grid_file)
            solver, nfe, train_s = art["solver"], art["nfe"], art.get("train_seconds") or float("nan")
            if art["model"].get("sha256") and file_sha256(args.ckpt) != art["model"]["sha256"]:
                raise ValueError(f"{grid_file} was learned for another checkpoint than {args.ckpt}")
        if x_T is None:
            model = source_model(args.ckpt)
            D, schedule, lo, hi = model.denoiser, model.schedule, model.sigma_min, model.sigma_max
            x_T = initial_noise(model.shape, range(args.n), hi)
        row = {"solver": solver, "nfe": nfe, "train_s": round(train_s, 1),
               "val_l2_start": art["val_first"], "val_l2_best": art["val_best"]}
        for g in HAND_GRIDS + ["ld3"]:
            grid = art if g == "ld3" else g
            row[g] = fid(solve_grid(D, x_T, solver, nfe, grid, schedule, lo, hi))
        best = min(HAND_GRIDS, key=lambda g: row[g])
        row["best_hand"], row["gain"] = best, row[best] - row["ld3"]
        print(json.dumps(row), flush=True)
        rows.append(row)
        (out / "fid.json").write_text(json.dumps(rows, indent=1))
    lines = [f"FID (digits feature net, {args.n} samples, seeds 0..{args.n - 1} in every row)\n",
             "| solver | NFE | time_uniform | logsnr | edm | LD3 | best hand-crafted - LD3 | LD3 train s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {SOLVER_NAMES.get(r['solver'], r['solver'])} | {r['nfe']} | {r['time_uniform']:.3f} | "
                     f"{r['logsnr']:.3f} | {r['edm']:.3f} | **{r['ld3']:.3f}** | {r['gain']:+.3f} ({r['best_hand']}) | "
                     f"{r['train_s']} |")
    (out / "fid.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
