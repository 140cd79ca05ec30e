"""gmm2d: samples of the trained MLP denoiser over the exact density, and their mean log-density
under the true mixture next to that of true samples (equal when the model is perfect).

    python experiments/train_gmm2d/report.py --ckpt <run dir>/denoiser_ema.ckpt
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from diffode.core.denoisers import make_gmm
from diffode.core.sample import sample
from diffode.models import load_denoiser
from diffode.methods.visual import scatter_over_density

HERE = Path(__file__).resolve().parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--nfe", type=int, default=36)
    a = ap.parse_args()
    torch.set_num_threads(1)
    D, info = load_denoiser(a.ckpt)
    g = info["hparams"]["data"]["gmm"]
    gmm = make_gmm(**g)
    gen = torch.Generator().manual_seed(0)
    x_T = info["sigma_max"] * torch.randn(a.n, 2, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        x = sample(D, x_T, solver="heun", nfe=a.nfe, grid="edm", schedule=info["schedule"])
    real = gmm.sample(a.n, generator=gen)
    near = lambda y: float(((y[:, None, :] - gmm.mu[None]).norm(dim=-1).min(1).values <= 0.3).double().mean())  # noqa: E731
    res = {"checkpoint": a.ckpt, "training_steps": info["global_step"], "solver": "heun", "nfe": a.nfe,
           "mean_log_p_samples": float(gmm.log_prob(x).mean()), "mean_log_p_true_samples": float(gmm.log_prob(real).mean()),
           "median_log_p_samples": float(gmm.log_prob(x).median()),
           "median_log_p_true_samples": float(gmm.log_prob(real).median()),
           "share_within_0.3_samples": near(x), "share_within_0.3_true_samples": near(real)}  # 3 std of a mode
    scatter_over_density(x.float(), gmm, HERE / "scatter.png",
                         f"MLP denoiser, {info['global_step']} steps, Heun {a.nfe} NFE")
    (HERE / "results.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
