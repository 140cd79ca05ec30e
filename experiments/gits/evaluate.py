"""Solver error of GITS grids against the hand-crafted grids, on the shipped digits UNet.

    python experiments/gits/evaluate.py experiments/gits/artifacts [more artifact folders...] [--n 200]

For every GITS artifact (<solver>_nfe<k>/manifest.json) under the given folders: RMSE (over samples and
pixels) of the solver's samples on the GITS grid, and on the edm (rho = 7), logsnr and time_uniform grids
at the same NFE, against a reference solve of the same model from the same noise (DPM-Solver++(3M),
500 logSNR steps, lower_order_final=False; its RMSE against 250 steps is printed). Noise: seeds 0..n-1
drawn per sample, as `diffode eval` draws them. Writes evaluate.md next to this file (or --out).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
GRIDS = ("edm", "logsnr", "time_uniform")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "evaluate.md"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from diffode.artifacts import load_sampler
    from diffode.config import solver_config
    from diffode.core.sample import sample
    from diffode.models import load_model

    from diffode.config import group_config

    model = load_model(group_config("source", "checkpoint"))  # the shipped digits UNet
    D, sch = model.denoiser, model.schedule
    x_T = model.sigma_max * torch.stack([torch.randn(model.shape, generator=torch.Generator().manual_seed(i),
                                                     dtype=torch.float64) for i in range(a.n)])
    rmse = lambda x: float((x - ref).pow(2).mean().sqrt())  # noqa: E731
    with torch.inference_mode():
        ref = sample(D, x_T, "dpmpp_3m", nfe=500, grid="logsnr", schedule=sch, lower_order_final=False)
        self_err = rmse(sample(D, x_T, "dpmpp_3m", nfe=250, grid="logsnr", schedule=sch, lower_order_final=False))
        rows = []
        for folder in a.folders:
            for man in sorted(Path(folder).glob("*/manifest.json"), key=lambda p: (p.parent.name.split("_nfe")[0],
                                                                                 int(p.parent.name.split("_nfe")[1]))):
                ls = load_sampler(man.parent)
                ls.check(model)
                reg, opts = solver_config(ls.solver)
                opts = {**opts, **(ls.manifest.get("solver_options") or {})}
                errs = {"gits": rmse(ls.sample(D, x_T))}
                for g in GRIDS:
                    errs[g] = rmse(sample(D, x_T, reg, nfe=ls.nfe, grid=g, schedule=sch, **opts))
                tr = ls.manifest["training"]
                rows.append((folder, ls.solver, ls.nfe, tr["metric"], tr["coeff"], errs))
                print(rows[-1], flush=True)
    best = lambda e: min(GRIDS, key=e.get)  # noqa: E731
    md = [f"# GITS grids vs hand-crafted grids: solver error on the digits UNet ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
          "", f"`python experiments/gits/evaluate.py {' '.join(a.folders)} --n {a.n}`: RMSE against the reference solve "
          f"(DPM-Solver++(3M), 500 logSNR steps; its RMSE against 250 steps: {self_err:.1e}), {a.n} samples, seeds 0..{a.n - 1}.",
          "", "| artifacts | solver | NFE | metric | coeff | GITS | edm | logsnr | time_uniform | GITS / best hand-crafted |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for folder, solver, nfe, metric, coeff, e in rows:
        b = best(e)
        md.append(f"| {folder} | {solver} | {nfe} | {metric} | {coeff} | {e['gits']:.4f} | {e['edm']:.4f} | {e['logsnr']:.4f} | "
                  f"{e['time_uniform']:.4f} | {e['gits'] / e[b]:.2f} ({b}) |")
    Path(a.out).write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
