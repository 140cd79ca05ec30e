"""FID (digits-classifier features) of the progressive-distillation students of the shipped digits UNet,
beside the teacher with DDIM at the same NFE on the same grid, the best training-free solver x grid
we know at that NFE, LD3 (where a grid for that NFE exists) and the teacher's converged solve (rk45).

Every row uses the same noise (seeds seed0 .. seed0 + n - 1, diffode.models.initial_noise) and the
protocol of `diffode eval` (diffode.evaluation.metrics.FIDMetrics: samples clipped and rounded to
8 bits, reference = the digits training split). Results go to results/digits_fid.json.

    python experiments/progressive_distillation/digits_fid.py --artifacts experiments/progressive_distillation/artifacts/digits --n 2000
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

HERE = Path(__file__).resolve().parent
# training-free candidates per NFE: the best cells of experiments/main_job at NFE 3-10 and their families
CANDIDATES = [("dpmpp_3m", "edm"), ("dpmpp_3m", "logsnr"), ("unipc_bh1", "logsnr"), ("unipc_bh2", "logsnr"),
              ("ipndm", "edm"), ("dpmpp_2m", "logsnr"), ("deis", "logsnr")]
LD3_DIR = HERE.parent / "ld3" / "results" / "digits_shipped"


def solve(D, x_T, batch=500, **kw):
    from diffode.core.sample import sample

    with torch.no_grad():
        return torch.cat([sample(D, xb, **kw) for xb in x_T.split(batch)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifacts", default=str(HERE / "artifacts" / "digits"))
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed0", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "results" / "digits_fid.json"))
    ap.add_argument("--students", default=None, help="a run's students/ folder (scored before its export)")
    ap.add_argument("--rescore", action="store_true", help="score students again (a finished run's artifacts)")
    ap.add_argument("--grid", default="edm", help="the students' grid family (teacher DDIM baselines)")
    ap.add_argument("--baselines", default="1,2,4,8,16,32,64", type=lambda s: [int(v) for v in s.split(",") if v])
    ap.add_argument("--candidate_nfes", default="2,4,8", type=lambda s: [int(v) for v in s.split(",") if v])
    ap.add_argument("--rk45_tol", type=float, default=1e-4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import diffode
    from diffode.artifacts import load_sampler
    from diffode.core.grids import make_grid
    from diffode.config import solver_config
    from diffode.evaluation.metrics import FIDMetrics
    from diffode.models import initial_noise, load_denoiser, load_model

    model = load_model({"kind": "checkpoint", "path": None, "ema": True})
    fid = FIDMetrics(model, OmegaConf.create({"reference": "auto", "features": "auto", "batch_size": 2000,
                                              "bootstrap": 0}))
    x_T = initial_noise(model.shape, range(args.seed0, args.seed0 + args.n), model.sigma_max)
    out_path = Path(args.out)
    res = json.loads(out_path.read_text()) if out_path.exists() else {}
    res["meta"] = {"n": args.n, "seeds": f"{args.seed0}-{args.seed0 + args.n - 1}", "model": model.identity,
                   "features": fid.features_name}

    def score(key, samples, **extra):
        r = fid(samples.float(), x_T)
        res[key] = {"fid": r["fid"], "confident": r.get("confident"), **extra}
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(res, indent=1))
        print(key, json.dumps(res[key]), flush=True)

    common = dict(schedule=model.schedule, sigma_min=model.sigma_min, sigma_max=model.sigma_max)
    if "teacher_rk45" not in res:
        t0 = time.perf_counter()
        x, info = diffode.sample(model.denoiser, x_T, solver="rk45", nfe=None, rtol=args.rk45_tol,
                                 atol=args.rk45_tol, return_info=True, **common)
        score("teacher_rk45", x, seconds=round(time.perf_counter() - t0, 1), nfe_used=info["nfe"],
              tol=args.rk45_tol)
    for n in args.baselines:  # the teacher's DDIM on the students' grid, needs no student
        key = f"ddim_{args.grid}_{n}"
        if key not in res:
            sig = make_grid(args.grid, n, model.schedule, sigma_min=model.sigma_min, sigma_max=model.sigma_max)
            score(key, solve(model.denoiser, x_T, solver="ddim", nfe=None, grid=sig), nfe=n)
    students = []  # (n, sampler-like callable, extra)
    for art in sorted(Path(args.artifacts).glob("pd_*"), key=lambda p: int(p.name.split("_")[1])):
        s = load_sampler(art)
        s.check(model)
        students.append((s.nfe, lambda xb, s=s: s.sample(model.denoiser, xb),
                         {"rmse_vs_teacher": s.manifest["metrics"].get("rmse_vs_teacher"), "from": str(art)}))
    if args.students:  # students/<N>.ckpt of a run still in progress: DDIM on the grid each records
        for f in sorted(Path(args.students).glob("*.ckpt"), key=lambda p: int(p.stem)):
            D, info = load_denoiser(f, ema=False)
            sig = torch.tensor(info["hparams"]["distilled"]["sigmas"], dtype=torch.float64)
            students.append((int(f.stem), lambda xb, D=D, sig=sig: diffode.sample(D, xb, solver="ddim", nfe=None,
                                                                                  grid=sig), {"from": str(f)}))
    for n, fn, extra in students:
        if f"pd_{n}" in res and not args.rescore:
            continue
        t0 = time.perf_counter()
        with torch.no_grad():
            x = torch.cat([fn(xb) for xb in x_T.split(500)])
        score(f"pd_{n}", x, nfe=n, seconds=round(time.perf_counter() - t0, 1), **extra)
    for n in args.candidate_nfes:
        for solver, g in CANDIDATES if n > 1 else []:
            key = f"{solver}_{g}_{n}"
            if key in res:
                continue
            reg, opts = solver_config(solver)
            try:
                x = solve(model.denoiser, x_T, solver=reg, nfe=n, grid=g, **common, **opts)
            except ValueError as e:  # an NFE this solver cannot reach
                res[key] = {"skipped": str(e)[:200]}
                continue
            score(key, x, nfe=n)
        for solver in ("dpmpp_3m", "unipc_bh1", "ipndm"):
            f = LD3_DIR / f"{solver}_nfe{n}" / "ld3_grid.json"
            if f.is_file() and f"ld3_{solver}_{n}" not in res:
                ld3 = load_sampler(f)
                ld3.check(model)
                with torch.no_grad():
                    x = torch.cat([ld3.sample(model.denoiser, xb) for xb in x_T.split(500)])
                score(f"ld3_{solver}_{n}", x, nfe=n)


if __name__ == "__main__":
    main()
