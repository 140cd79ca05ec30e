"""Digits FID study on the SHIPPED checkpoint (diffode/assets/digits_unet.ckpt, 16 channels).

Scores, on the same noise seeds 0..n-1 for every grid, the hand-crafted grids (time_uniform, logsnr,
edm) and the LD3 grid (if <grid_dir>/<solver>_nfe<N> holds one: artifacts/ld3 from `diffode ld3 ...
hydra.run.dir=<grid_dir>/<solver>_nfe<N>`, or the recorded ld3_grid.json) of each solver x NFE, plus
the scale of the metric: FID of the real held-out digits (360 images) against the training-split
reference statistics (the floor), and the FID of the UniPC-20 logsnr teacher. Results are merged into
<out>/fid.json (keyed by what was scored), so it can be rerun as more LD3 grids finish.

    python experiments/ld3/digits_fid_shipped.py --scale --n 5000
    python experiments/ld3/digits_fid_shipped.py --cells dpmpp_3m:4,unipc_bh1:4 --n 5000
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HAND_GRIDS, DigitsFID, find_grid, grid_record, solve_grid, source_model  # noqa: E402

CKPT = "diffode/assets/digits_unet.ckpt"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default=CKPT)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--seed0", type=int, default=0, help="noise seeds seed0..seed0+n-1 (a second draw: FID noise)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--scale", action="store_true", help="floor (real held-out) and teacher FID")
    ap.add_argument("--cells", default="", help="solver:nfe,...")
    ap.add_argument("--grid_dir", default="experiments/ld3/results/digits_shipped")
    ap.add_argument("--out", default="experiments/ld3/results/digits_shipped")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from diffode.data.digits import load_digits_tensors
    from diffode.models import file_sha256, initial_noise

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "fid.json"
    res = json.loads(res_path.read_text()) if res_path.exists() else {}
    sha = file_sha256(args.ckpt)
    res["meta"] = {"ckpt": args.ckpt, "sha256": sha, "features": "digits classifier (diffode/assets/digits_classifier.pt)",
                   "reference": "digits training split (1437 images)"}

    def save():
        res_path.write_text(json.dumps(res, indent=1, sort_keys=True))

    fid = DigitsFID()
    model = source_model(args.ckpt)
    D, sched, lo, hi = model.denoiser, model.schedule, model.sigma_min, model.sigma_max
    x_T = initial_noise(model.shape, range(args.seed0, args.seed0 + args.n), hi)
    key_n = f"n{args.n}" + (f"_seeds{args.seed0}" if args.seed0 else "")

    if args.scale:
        held = load_digits_tensors("heldout")[0].double()
        train = load_digits_tensors("train")[0].double()
        t0 = time.perf_counter()
        teacher = solve_grid(D, x_T, "unipc_bh1", 20, "logsnr", sched, lo, hi, order=3)
        res["scale"] = {
            "real_heldout_360_vs_train_ref": fid(held),
            "real_train_1437_vs_train_ref": fid(train),
            f"teacher_unipc20_logsnr_{key_n}": fid(teacher),
            "teacher_unipc20_logsnr_first360": fid(teacher[:360]),
            "teacher_seconds": round(time.perf_counter() - t0, 1),
        }
        print(json.dumps(res["scale"]), flush=True)
        save()

    for cell in filter(None, args.cells.split(",")):
        solver, nfe = cell.split(":")
        nfe = int(nfe)
        key = f"{solver}_nfe{nfe}_{key_n}"
        row = res.get(key, {"solver": solver, "nfe": nfe, "n": args.n})
        t0 = time.perf_counter()
        for g in HAND_GRIDS:
            if g not in row:
                row[g] = fid(solve_grid(D, x_T, solver, nfe, g, sched, lo, hi))
        gf = find_grid(Path(args.grid_dir) / f"{solver}_nfe{nfe}")
        if gf is not None:
            art = grid_record(gf)
            assert art["solver"] == solver and art["nfe"] == nfe, gf
            if art["model"].get("sha256") != sha:
                raise ValueError(f"{gf} was learned for another checkpoint")
            row["ld3"] = fid(solve_grid(D, x_T, solver, nfe, art, sched))
            row["ld3_sigmas"] = art["sigmas"]
            row["ld3_init"] = art["init"].get("chosen", art["init"]) if isinstance(art["init"], dict) else art["init"]
            row["ld3_val_l2_best"] = art["val_best"]
            best = min(HAND_GRIDS, key=lambda g: row[g])
            row["best_hand"], row["best_hand_minus_ld3"] = best, row[best] - row["ld3"]
        row["eval_seconds"] = round(time.perf_counter() - t0, 1)
        res[key] = row
        print(json.dumps({k: v for k, v in row.items() if k != "ld3_sigmas"}), flush=True)
        save()


if __name__ == "__main__":
    main()
