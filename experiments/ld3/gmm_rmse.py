"""LD3 on exact Gaussian mixtures: endpoint RMSE of the learned grid vs hand-crafted grids.

For each solver x NFE: one LD3 training through the runner (`diffode ld3 source=<dataset>`, distance
l2, every other setting the default of conf/method/ld3.yaml: 100 UniPC-20 teacher pairs split 50/50,
soft loss gamma 0.001, decoupled, 2 + 5 rounds, batch 2). Then, on held-out noise (indices 1_000_000.. of the same seed
stream, never used as pairs), the RMSE of x(sigma_min) against a dopri8 rtol 1e-10 solve of the
exact PF-ODE, for the LD3 grid and the time_uniform, logsnr and edm grids at the same solver/NFE.

    python experiments/ld3/gmm_rmse.py --dataset gmm2d  --out experiments/ld3/results
    python experiments/ld3/gmm_rmse.py --dataset gmm16d --out experiments/ld3/results
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from common import HAND_GRIDS as GRIDS, solve_grid, source_model, train_grid  # noqa: I001

DATASETS = ("gmm2d", "gmm16d")  # conf/source/<name>.yaml


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", choices=DATASETS, default="gmm2d")
    ap.add_argument("--solvers", default="dpmpp_3m,unipc_bh1,ipndm")
    ap.add_argument("--nfes", default="3,4,5,6")
    ap.add_argument("--n_eval", type=int, default=2000)
    ap.add_argument("--out", default="experiments/ld3/results")
    ap.add_argument("--extra", nargs="*", default=[], help="more Hydra overrides for every LD3 run")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from diffode.methods.ld3.teacher import start_noise
    from diffode.metrics.gmm import endpoint_rmse, reference_solve

    out = Path(args.out) / args.dataset
    out.mkdir(parents=True, exist_ok=True)
    model = source_model(args.dataset)
    D, schedule = model.denoiser, model.schedule
    rows = []
    ref = None
    for solver in args.solvers.split(","):
        for nfe in map(int, args.nfes.split(",")):
            overrides = [f"method.solver={solver}", f"method.nfe={nfe}", "method.distance=l2"] + args.extra
            art, train_s, _ = train_grid(args.dataset, out / f"{solver}_nfe{nfe}", overrides, args.threads)
            if ref is None:
                z = start_noise(range(1_000_000, 1_000_000 + args.n_eval), model.shape, 0)
                x_T = model.sigma_max * z
                ref = reference_solve(D, x_T, model.sigma_max, model.sigma_min)
                teacher = art["teacher"]
                x_teacher = solve_grid(D, x_T, teacher["solver"], teacher["nfe"], teacher["grid"], schedule,
                                       model.sigma_min, model.sigma_max, **(teacher.get("options") or {}))
                teacher_rmse = endpoint_rmse(x_teacher, ref)
            row = {"dataset": args.dataset, "solver": solver, "nfe": nfe, "train_s": round(train_s, 1),
                   "teacher_rmse": teacher_rmse}
            for g in GRIDS:
                row[g] = endpoint_rmse(solve_grid(D, x_T, solver, nfe, g, schedule, model.sigma_min, model.sigma_max), ref)
            row["ld3"] = endpoint_rmse(solve_grid(D, x_T, solver, nfe, art, schedule), ref)
            row["ld3_no_shift"] = endpoint_rmse(solve_grid(D, x_T, solver, nfe, {**art, "net_sigmas": None}, schedule), ref)
            best = min(row[g] for g in GRIDS)
            row["gain_vs_best"] = best / row["ld3"]
            print(json.dumps(row), flush=True)
            rows.append(row)
    (out / "rmse.json").write_text(json.dumps(rows, indent=1))
    lines = [f"| solver | NFE | time_uniform | logsnr | edm | LD3 | best hand-crafted / LD3 | train s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['solver']} | {r['nfe']} | {r['time_uniform']:.4g} | {r['logsnr']:.4g} | {r['edm']:.4g} | "
                     f"**{r['ld3']:.4g}** | {r['gain_vs_best']:.2f}x | {r['train_s']} |")
    lines.append(f"\nTeacher ({rows[0]['solver'] and art['teacher']['solver']}, {art['teacher']['nfe']} NFE) RMSE: "
                 f"{rows[0]['teacher_rmse']:.3g}")
    (out / "rmse.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
