"""Per-step noise of Analytic-DPM against DDPM / DDIM on a model's grid (experiments/analytic_dpm/README.md).

    python experiments/analytic_dpm/variances.py --nfe 10 --grid edm

Prints, for each step sigma -> sigma', the model's moment m = E||eps_hat||^2/d (Monte Carlo over training digits,
the same cached estimate the sampler uses), the posterior variance v = sigma^2 (1 - m) clipped to Theorem 2's
bounds, and the standard deviation of the noise each sampler adds: DDPM's lambda, Analytic-DDPM's, and
Analytic-DDIM's (DDIM adds none).
"""
from __future__ import annotations

import argparse

import torch

import diffode
from diffode.core.sample import check_sampling_config
from diffode.core.solvers.analytic_dpm import optimal_variance, posterior_variance
from diffode.solver_inputs import eps_moments


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nfe", type=int, default=10)
    ap.add_argument("--grid", default="edm")
    ap.add_argument("--mc-samples", type=int, default=1000)
    a = ap.parse_args()
    torch.set_num_threads(1)
    model = diffode.load_model({"kind": "checkpoint"})
    sig = check_sampling_config("analytic_ddpm", a.nfe, a.grid, schedule=model.schedule, sigma_min=model.sigma_min,
                                sigma_max=model.sigma_max).sigmas
    m = eps_moments(model, sig, {"mc_samples": a.mc_samples, "mc_seed": 0})
    print("| sigma | sigma' | m | sqrt(v) | DDPM std | Analytic-DDPM std | Analytic-DDIM std |")
    print("|---|---|---|---|---|---|---|")
    for i in range(len(sig) - 1):
        S, S1 = sig[i], sig[i + 1]
        v = posterior_variance(m[i], S)
        last = i == len(sig) - 2  # the last step returns its mean
        ddpm = 0.0 if last else float(optimal_variance(m[i], S, S1, 1.0)[1].sqrt())
        an = 0.0 if last else float(optimal_variance(m[i], S, S1, 1.0)[0].sqrt())
        ai = 0.0 if last else float(optimal_variance(m[i], S, S1, 0.0)[0].sqrt())
        print(f"| {float(S):.4g} | {float(S1):.4g} | {float(m[i]):.4f} | {float(v.sqrt()):.4f} | {ddpm:.4f} | {an:.4f} | "
              f"{ai:.4f} |")


if __name__ == "__main__":
    main()
