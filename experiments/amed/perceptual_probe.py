"""Which distance sides with the FID? The L2-trained DPM-Solver-2 plugin against DPM-Solver-2 itself.

At NFE 3, 4, 7 the L2-trained plugin (the second pass's artifacts, in git at commit 836362b^; the
fourth pass replaced them) has a lower solver error and a higher FID than DPM-Solver-2. For both
samplers this prints, against the reference solve (DPM-Solver++(3M), logSNR, NFE 100) of the same noise:
the RMSE, the RMSE of the clipped images, and the digits perceptual distance (diffode/metrics/
digits_perceptual.py) of the raw and of the clipped images. A training distance can only help the FID
where it ranks the two as the FID does (the fifth pass of experiments/amed/README.md).

    python experiments/amed/perceptual_probe.py --n 500 --seed0 20000
"""
from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
L2_COMMIT = "836362b^"  # the last commit whose experiments/amed/artifacts hold the L2-trained DPM-Solver-2 plugins


def l2_plugin(nfe: int, into: Path) -> Path:
    """The second pass's DPM-Solver-2 plugin at this NFE, taken out of git."""
    d = into / f"dpm_solver_2_nfe{nfe}"
    d.mkdir(parents=True, exist_ok=True)
    for name in ("manifest.json", "weights.pt"):
        blob = subprocess.run(["git", "show", f"{L2_COMMIT}:experiments/amed/artifacts/dpm_solver_2_nfe{nfe}/{name}"],
                              cwd=ROOT, check=True, capture_output=True).stdout
        (d / name).write_bytes(blob)
    return d


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed0", type=int, default=20000)
    ap.add_argument("--nfes", nargs="+", type=int, default=[3, 4, 7])
    args = ap.parse_args()
    torch.set_num_threads(1)
    from diffode.artifacts import load_sampler
    from diffode.config import solver_config
    from diffode.core.sample import sample
    from diffode.metrics.digits_perceptual import DigitsPerceptual
    from diffode.models import initial_noise, load_model

    model = load_model({"kind": "checkpoint", "path": None})
    D, kw = model.denoiser, dict(schedule=model.schedule, sigma_min=model.sigma_min, sigma_max=model.sigma_max)
    x_T = initial_noise(model.shape, range(args.seed0, args.seed0 + args.n), model.sigma_max)
    d = DigitsPerceptual()
    print("| NFE | sampler | RMSE | clipped RMSE | perceptual (raw) | perceptual (clipped) |\n|---|---|---|---|---|---|")
    with torch.no_grad(), tempfile.TemporaryDirectory() as tmp:
        reg, opts = solver_config("dpmpp_3m")
        ref = sample(D, x_T, reg, nfe=100, grid="logsnr", **kw, **opts)
        for nfe in args.nfes:
            reg, opts = solver_config("dpm_solver_2")
            rows = {"dpm_solver_2/logsnr": sample(D, x_T, reg, nfe=nfe, grid="logsnr", afs=bool(nfe % 2), **kw, **opts),
                    "L2-trained plugin": load_sampler(l2_plugin(nfe, Path(tmp))).sample(D, x_T)}
            for name, x in rows.items():
                xc, rc = x.clamp(-1, 1), ref.clamp(-1, 1)
                print(f"| {nfe} | {name} | {float((x - ref).pow(2).mean().sqrt()):.3f} | "
                      f"{float((xc - rc).pow(2).mean().sqrt()):.3f} | {float(d(x, ref).mean()):.3f} | "
                      f"{float(d(xc, rc).mean()):.3f} |", flush=True)


if __name__ == "__main__":
    main()
