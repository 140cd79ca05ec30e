"""FID (digits-classifier features) of the students a progressive-distillation run writes as it goes
(<run dir>/students/<N>.ckpt: DDIM on the grid each records), and of the teacher's converged solve (rk45).

Every row uses the same noise (seeds seed0 .. seed0 + n - 1, diffode.models.initial_noise) and the protocol of
`diffode eval` (diffode.evaluation.metrics.FIDMetrics: samples quantised to 8 bits, reference = the digits
training split). Results merge into --out.

    python experiments/progressive_distillation/digits_fid.py --students <run dir>/students --n 2000 --out <file>.json

A script because what it scores are not samplers `diffode eval` takes: the student checkpoints of a run still in
progress (a finished run's artifacts are `diffode eval sweep.learned=[<run dir>/artifacts]`) and an adaptive
solve. The teacher's DDIM and the training-free cells at the students' NFEs are `diffode eval` commands
(experiments/progressive_distillation/README.md).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--students", required=True, help="a run's students/ folder (<N>.ckpt each)")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed0", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rescore", action="store_true", help="score students already in --out again")
    ap.add_argument("--rk45_tol", type=float, default=1e-4, help="the teacher's converged solve (0: skip it)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import diffode
    from diffode.evaluation.metrics import FIDMetrics
    from diffode.models import initial_noise, load_denoiser

    model = diffode.load_model({"kind": "checkpoint", "path": None, "ema": True})
    fid = FIDMetrics(model, OmegaConf.create({"reference": "auto", "features": "auto", "batch_size": 2000,
                                              "bootstrap": 0}))
    x_T = initial_noise(model.shape, range(args.seed0, args.seed0 + args.n), model.sigma_max)
    out_path = Path(args.out)
    res = json.loads(out_path.read_text()) if out_path.exists() else {}
    res["meta"] = {"n": args.n, "seeds": f"{args.seed0}-{args.seed0 + args.n - 1}", "model": model.identity,
                   "features": fid.features_name}

    def score(key, samples, **extra):
        r = fid(samples.float(), x_T)  # float32 first, as the recorded screens were scored
        res[key] = {"fid": r["fid"], "confident": r.get("confident"), **extra}
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(res, indent=1))
        print(key, json.dumps(res[key]), flush=True)

    if args.rk45_tol and "teacher_rk45" not in res:
        t0 = time.perf_counter()
        x, info = model.sample(x_T, args.n, solver="rk45", nfe=None, rtol=args.rk45_tol, atol=args.rk45_tol,
                               return_info=True)  # one batch: the error control is over all of it
        score("teacher_rk45", x, seconds=round(time.perf_counter() - t0, 1), nfe_used=info["nfe"], tol=args.rk45_tol)
    for f in sorted(Path(args.students).glob("*.ckpt"), key=lambda p: int(p.stem)):
        if f"pd_{f.stem}" in res and not args.rescore:
            continue
        D, info = load_denoiser(f, ema=False)
        sig = torch.tensor(info["hparams"]["distilled"]["sigmas"], dtype=torch.float64)
        t0 = time.perf_counter()
        with torch.no_grad():
            x = torch.cat([diffode.sample(D, xb, solver="ddim", nfe=None, grid=sig) for xb in x_T.split(500)])
        score(f"pd_{f.stem}", x, nfe=int(f.stem), seconds=round(time.perf_counter() - t0, 1), **{"from": str(f)})


if __name__ == "__main__":
    main()
