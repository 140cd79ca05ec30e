"""LD3 ablation on one setting: hard vs soft loss, decoupled on vs off, l2 vs LPIPS.

    python experiments/ld3/ablation.py --model gmm16d --solver dpmpp_3m --nfe 4          # endpoint RMSE
    python experiments/ld3/ablation.py --model diffode/assets/digits_unet.ckpt --n 10000  # digits FID

Every variant differs from `full` (soft loss gamma 0.001, decoupled, distance l2) in one setting.
LPIPS needs the VGG16 ImageNet weights; when they are missing the row records the error instead.

Why a script and not `diffode eval`: a sweep keys its rows by the sampler's label (<solver>/ld3 at its NFE), so
six grids of one (solver, NFE) cannot share one sweep; this trains the variants through the one runner and
puts their scores, on the same held-out noise, in one table.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from common import GMM, source_model, train_grid, val_losses  # noqa: I001

VARIANTS = {
    "full (soft gamma=1e-3, decoupled, l2)": [],
    "hard loss (gamma=0)": ["method.gamma=0"],
    "soft gamma=1e-2": ["method.gamma=0.01"],
    "soft gamma=1e-1": ["method.gamma=0.1"],
    "no decoupling": ["method.decoupled=false"],
    "LPIPS (vgg) instead of l2": ["method.distance=lpips"],
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gmm16d")
    ap.add_argument("--solver", default="dpmpp_3m")
    ap.add_argument("--nfe", type=int, default=4)
    ap.add_argument("--n", type=int, default=10000, help="evaluation samples (held-out noise)")
    ap.add_argument("--seeds", default="100000000", help="LD3 pair seeds (one training per seed and variant)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="experiments/ld3/results/ablation")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from diffode.config import solver_config
    from diffode.models import initial_noise

    out = Path(args.out) / Path(args.model).stem
    out.mkdir(parents=True, exist_ok=True)
    rows, ev = [], None
    for name, ov in VARIANTS.items():
        for seed in map(int, args.seeds.split(",")):
            tag = (name.split(" ")[0] + "_" + "_".join(o.split(".")[-1] for o in ov) + f"_s{seed}").replace("=", "-")
            base = [f"method.solver={args.solver}", f"method.nfe={args.nfe}", "method.distance=l2", f"method.seed={seed}",
                    "method.val_every=1"]  # the recorded ablation ran with the then-default val_every=1
            base = [b for b in base if b.split("=")[0] not in {o.split("=")[0] for o in ov}]
            try:
                art, train_s = train_grid(args.model, out / tag, base + ov, args.threads)
            except Exception as e:  # LPIPS without weights: say so, never fake the row
                rows.append({"variant": name, "seed": seed, "error": f"{type(e).__name__}: {e}"})
                print(json.dumps(rows[-1]), flush=True)
                continue
            if ev is None:
                model = source_model(args.model)
                x_T = initial_noise(model.shape, range(args.n), model.sigma_max)
                ev = metric(model, x_T, args.model in GMM)
                name_, opts = solver_config(args.solver)
                base_metric = {g: ev[1](model.sample(x_T, 2000, solver=name_, nfe=args.nfe, grid=g, **opts))
                               for g in ("logsnr", "edm", "time_uniform")}
            with torch.no_grad():
                x = torch.cat([art.sample(model, xb) for xb in x_T.split(2000)])
            row = {"variant": name, "seed": seed, "train_s": round(train_s, 1), "metric": ev[1](x),
                   "val_best": val_losses(art)[1]}
            print(json.dumps(row), flush=True)
            rows.append(row)
    summary = {"model": args.model, "solver": args.solver, "nfe": args.nfe, "metric": ev[0], "n_eval": args.n,
               "hand_crafted": base_metric, "rows": rows}
    (out / "ablation.json").write_text(json.dumps(summary, indent=1))
    lines = [f"{ev[0]} ({args.model}, {args.solver}, NFE {args.nfe}, {args.n} held-out samples; "
             f"hand-crafted: " + ", ".join(f"{g} {v:.4g}" for g, v in base_metric.items()) + ")\n",
             f"| variant | seed | {ev[0]} | val l2 (best) | train s |", "|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | {r['seed']} | not run: {r['error'][:160]} | | |")
        else:
            lines.append(f"| {r['variant']} | {r['seed']} | {r['metric']:.4g} | {r['val_best']:.4g} | {r['train_s']} |")
    (out / "ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def metric(model, x_T, exact: bool):
    """(name, fn(samples)): endpoint RMSE against the exact PF-ODE's dopri8 solve for a mixture, else the
    digits FID of `diffode eval` (diffode.evaluation.metrics.FIDMetrics, without its bootstrap)."""
    if exact:
        from diffode.metrics.gmm import endpoint_rmse, reference_solve

        ref = reference_solve(model.denoiser, x_T, model.sigma_max, model.sigma_min)
        return "endpoint RMSE", lambda x: endpoint_rmse(x, ref)
    from omegaconf import OmegaConf

    from diffode.evaluation.metrics import FIDMetrics

    fid = FIDMetrics(model, OmegaConf.create({"reference": "digits", "features": "digits", "batch_size": 2000,
                                             "bootstrap": 0}))
    return "FID", lambda x: fid(x.float(), None)["fid"]


if __name__ == "__main__":
    main()
