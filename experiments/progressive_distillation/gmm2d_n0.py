"""N0 for the gmm2d eps-MLP teacher: DDIM at N steps against the teacher's own rk45 solve (rtol 1e-7) and against the
exact ODE of the mixture it was trained on (dopri8, rtol 1e-10), from the same noises (seeds 0..n-1).

    python experiments/progressive_distillation/gmm2d_n0.py --ckpt <gmm2d teacher run dir>/checkpoints/last.ckpt

Prints the columns grid, N, RMSE vs its own solve, RMSE vs exact (recorded in results/gmm2d_n0.txt). A script:
`diffode eval` measures against a fixed-NFE reference solve of the model, not an adaptive one, and knows no
exact ODE for a trained network.
"""
import argparse

import torch

import diffode
from diffode.core.denoisers import GMM_PRESETS, make_gmm
from diffode.metrics.gmm import endpoint_rmse, reference_solve
from diffode.models import initial_noise


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True, help="the teacher's checkpoint (last.ckpt or denoiser_ema.ckpt)")
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    m = diffode.load_model({"kind": "checkpoint", "path": args.ckpt, "ema": True})
    print(m.schedule, m.sigma_min, m.sigma_max)
    x_T = initial_noise(m.shape, range(args.n), m.sigma_max)
    with torch.no_grad():
        ref = m.sample(x_T, args.n, solver="rk45", nfe=None, rtol=1e-7, atol=1e-7)
        exact = reference_solve(make_gmm(**GMM_PRESETS["gmm2d"]), x_T, m.sigma_max, m.sigma_min)
        print("teacher rk45 vs exact", endpoint_rmse(ref, exact))
        for g in ("logsnr", "edm", "time_uniform"):
            for N in (8, 16, 32, 64, 128, 256):
                x = m.sample(x_T, args.n, solver="ddim", nfe=N, grid=g)
                print(g, N, round(endpoint_rmse(x, ref), 4), round(endpoint_rmse(x, exact), 4), flush=True)


if __name__ == "__main__":
    main()
