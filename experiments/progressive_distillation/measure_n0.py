"""How many DDIM steps does the shipped digits UNet need before its sample is its converged ODE solution?

For N in a doubling ladder, DDIM on the logsnr and edm (rho 7) grids from the same noise, against a
tight rk45 reference solve (rtol = atol = 1e-6). Prints the RMS distance per pixel (data in [-1, 1])
and writes n0.json. Usage: python experiments/progressive_distillation/measure_n0.py [n_samples]
"""
import json
import sys
import time
from pathlib import Path

import torch

import diffode
from diffode.models import load_denoiser

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "results"


def main(n: int = 500):
    torch.set_num_threads(1)
    D, info = load_denoiser(ROOT / "diffode/assets/digits_unet.ckpt")
    sched = info["schedule"]
    g = torch.Generator().manual_seed(0)
    x_T = sched.sigma_max * torch.randn(n, *info["shape"], generator=g, dtype=torch.float64)
    t0 = time.time()
    with torch.no_grad():
        ref, ri = diffode.sample(D, x_T, solver="rk45", nfe=None, schedule=sched, rtol=1e-6, atol=1e-6,
                                 return_info=True)
    rows = {"n_samples": n, "reference": {"solver": "rk45", "rtol": 1e-6, "nfe": ri["nfe"],
                                          "seconds": round(time.time() - t0, 1)}, "ddim": []}
    print("reference rk45 nfe", ri["nfe"], flush=True)
    for grid in ("logsnr", "edm"):
        for N in (8, 16, 32, 64, 128, 256, 512):
            t0 = time.time()
            with torch.no_grad():
                x = diffode.sample(D, x_T, solver="ddim", nfe=N, grid=grid, schedule=sched)
            rmse = float((x - ref).square().mean().sqrt())
            rows["ddim"].append({"grid": grid, "N": N, "rmse": rmse, "seconds": round(time.time() - t0, 1)})
            print(grid, N, f"{rmse:.4f}", flush=True)
    OUT.mkdir(exist_ok=True)
    (OUT / "n0.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 500)
