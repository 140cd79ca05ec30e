"""Progressive distillation of a 2-D ring MLP (eps-prediction, VP linear schedule): endpoint RMSE of each
student against the EXACT ODE solution of the mixture from the same noise, beside the teacher with
DDIM at the same NFE (same grid) and the best training-free solver x grid at that NFE (on the teacher).

    python experiments/progressive_distillation/gmm2d.py --teacher <run dir>/denoiser_ema.ckpt \
        --artifacts <pd run dir>/artifacts --n 4000

The exact solution integrates the mixture's own denoiser (dopri8, rtol 1e-10) over the teacher's sigma
range, so each RMSE includes the teacher's model error; the teacher's DDIM at 128 steps and its rk45
solve give that floor. Results: results/gmm2d_rmse.json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
CANDIDATES = [("dpmpp_3m", "logsnr"), ("dpmpp_3m", "edm"), ("unipc_bh1", "logsnr"), ("unipc_bh2", "logsnr"),
              ("ipndm", "edm"), ("ipndm", "logsnr"), ("dpmpp_2m", "logsnr"), ("deis", "logsnr"), ("heun", "edm")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--artifacts", required=True)
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--out", default=str(HERE / "results" / "gmm2d_rmse.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)

    from diffode.artifacts import load_sampler
    from diffode.config import solver_config
    from diffode.core.denoisers import GMM_PRESETS, make_gmm
    from diffode.core.sample import sample
    from diffode.metrics.gmm import endpoint_rmse, reference_solve
    from diffode.models import initial_noise, load_model

    model = load_model({"kind": "checkpoint", "path": args.teacher, "ema": True})
    gmm = make_gmm(**GMM_PRESETS["gmm2d"])
    x_T = initial_noise(model.shape, range(args.n), model.sigma_max)
    exact = reference_solve(gmm, x_T, model.sigma_max, model.sigma_min)
    common = dict(schedule=model.schedule, sigma_min=model.sigma_min, sigma_max=model.sigma_max)
    res = {"meta": {"n": args.n, "teacher": model.identity, "sigma_max": model.sigma_max,
                    "sigma_min": model.sigma_min, "exact": "mixture denoiser, dopri8 rtol 1e-10"}}

    def put(key, x, **extra):
        res[key] = {"rmse_vs_exact": endpoint_rmse(x, exact), **extra}
        print(key, json.dumps(res[key]), flush=True)

    s = None
    with torch.no_grad():
        put("teacher_rk45", sample(model.denoiser, x_T, solver="rk45", nfe=None, rtol=1e-6, atol=1e-6, **common))
        for art in sorted(Path(args.artifacts).glob("pd_*"), key=lambda p: int(p.name.split("_")[1])):
            s = load_sampler(art)
            s.check(model)
            n = s.nfe
            put(f"pd_{n}", s.sample(model.denoiser, x_T), nfe=n,
                rmse_vs_teacher=s.manifest["metrics"].get("rmse_vs_teacher"))
            put(f"ddim_{s.manifest['training']['grid']}_{n}", sample(model.denoiser, x_T, solver="ddim", nfe=None,
                                                                     grid=s.sigmas), nfe=n)
            best = None
            for solver, g in CANDIDATES if n > 1 else []:
                reg, opts = solver_config(solver)
                try:
                    x = sample(model.denoiser, x_T, solver=reg, nfe=n, grid=g, **common, **opts)
                except ValueError:
                    continue
                r = endpoint_rmse(x, exact)
                if best is None or r < best[0]:
                    best = (r, f"{solver}/{g}")
            if best:
                res[f"best_training_free_{n}"] = {"rmse_vs_exact": best[0], "cell": best[1], "nfe": n}
                print(f"best_training_free_{n}", best, flush=True)
        if s is not None:
            put(f"ddim_{s.manifest['training']['grid']}_{s.manifest['training']['n0']}",
                sample(model.denoiser, x_T, solver="ddim", nfe=int(s.manifest["training"]["n0"]),
                       grid=s.manifest["training"]["grid"], grid_options=s.manifest["training"]["grid_options"],
                       **common))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
