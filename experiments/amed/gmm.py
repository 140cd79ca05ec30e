"""AMED on the exact 2-D and 16-D mixtures (times-only predictor, exact denoiser): endpoint RMSE on
held-out noise against the base solvers at NFE 3-9.

For each mixture (conf/source/gmm2d, gmm16d) and NFE, trains AMED-Solver (amed) and AMED-Plugin
(ipndm, dpm_solver_2) with the options of conf/method/amed.yaml (AFS at odd NFEs), then scores every
row on the same held-out noise (seeds 0..n-1, never a training seed) against a float64 dopri5 solve
(rtol = atol = 1e-9, in log-sigma time). Baselines on their usual grids (conf/eval.yaml usual_grid):
DPM-Solver-2 and Heun (AFS at odd NFEs, as the paper's single-step baselines), iPNDM, DPM-Solver++(3M),
UniPC; plus the fixed amed (r = 1/2, no predictor) on the AMED grid.

    python experiments/amed/gmm.py --n 2000        # writes experiments/amed/results/gmm_rmse.{json,md}
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
BASELINES = [("dpm_solver_2", "logsnr", True), ("heun", "edm", True), ("ipndm", "edm", False),
             ("dpmpp_3m", "logsnr", False), ("unipc_bh1", "logsnr", False)]
STUDENTS = ["amed", "ipndm", "dpm_solver_2"]


def reference(gmm, x_T, sigma_max, sigma_min):
    from torchdiffeq import odeint

    u = torch.tensor([math.log(sigma_max), math.log(sigma_min)], dtype=torch.float64)
    with torch.no_grad():
        return odeint(lambda u_, x: x - gmm(x, torch.exp(u_)), x_T, u, rtol=1e-9, atol=1e-9, method="dopri5")[-1]


def train(model, student, nfe, student_options=None, **overrides):
    """AMED with conf/method/amed.yaml's options (AFS at odd NFEs) and `overrides`; student_options are
    added to the student solver's."""
    import lightning as L

    from diffode.methods.amed import build, check, resolve, trainer_overrides
    from diffode.methods.registry import Context, method_options

    o = method_options("amed", student=student, nfe=nfe, afs=bool(nfe % 2), **overrides)
    ctx = Context(out_dir=Path("."), teacher=model, trainer={"devices": 1})
    errors = check(o, ctx)
    if errors:
        raise ValueError(errors)
    m = build(resolve(o, ctx), ctx)
    m.cfg.student_options = {**m.cfg.student_options, **(student_options or {})}
    t0 = time.time()
    L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, **trainer_overrides(o)).fit(m)
    return m, time.time() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--nfes", nargs="+", type=int, default=[3, 4, 5, 6, 7, 8, 9])
    ap.add_argument("--sources", nargs="+", default=["gmm2d", "gmm16d"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    from diffode.config import solver_config
    from diffode.core.sample import sample
    from diffode.models import initial_noise, load_model

    rows, meta = {}, {}
    for src in args.sources:
        model = load_model({"kind": "gmm", "preset": src})
        x_T = initial_noise(model.shape, range(args.n), model.sigma_max)
        ref = reference(model.denoiser, x_T, model.sigma_max, model.sigma_min)

        def rmse(x):
            return float((x - ref).pow(2).mean().sqrt())

        for nfe in args.nfes:
            cell = rows.setdefault(src, {}).setdefault(str(nfe), {})
            for name, grid, afs_odd in BASELINES:
                reg, opts = solver_config(name)
                afs = afs_odd and bool(nfe % 2)
                try:
                    x = sample(model.denoiser, x_T, reg, nfe=nfe, grid=grid, afs=afs, schedule=model.schedule, **opts)
                    cell[f"{name}/{grid}"] = rmse(x)
                except ValueError:
                    cell[f"{name}/{grid}"] = None
            for student in STUDENTS:
                m, seconds = train(model, student, nfe)
                with torch.no_grad():
                    cell[f"{student}/amed_times"] = rmse(m.sample(x_T, m.exported()))  # what export ships
                    if student == "amed":  # the same solver without a predictor: r = 1/2, c = a = 1
                        cell["amed/fixed"] = rmse(sample(model.denoiser, x_T, "amed", nfe=nfe, grid=m.sigmas,
                                                         afs=m.cfg.afs))
                meta[f"{src}/{student}/{nfe}"] = {"train_s": round(seconds, 2), "updates": m.n_batches * m.cfg.steps}
            print(src, nfe, json.dumps({k: None if v is None else round(v, 5) for k, v in cell.items()}), flush=True)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "gmm_rmse.json").write_text(json.dumps({"rmse": rows, "training": meta, "n": args.n}, indent=1))
    lines = []
    for src, by_nfe in rows.items():
        names = list(next(iter(by_nfe.values())))
        lines += [f"### {src}: endpoint RMSE vs a dopri5 solve, {args.n} held-out samples", "",
                  "| row | " + " | ".join(f"NFE {k}" for k in by_nfe) + " |", "|---|" + "---|" * len(by_nfe)]
        for name in names:
            vals = [by_nfe[k][name] for k in by_nfe]
            lines.append(f"| {name} | " + " | ".join("n/a" if v is None else f"{v:.4f}" for v in vals) + " |")
        lines.append("")
    (out / "gmm_rmse.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
