"""ODE NLL of denoisers trained on a known mixture, beside the mixture's own density (experiments/hdsm/README.md).

    python experiments/hdsm/nll_table.py outputs/hdsm_gmm*_order*/*/denoiser_ema.ckpt --n 4000

For each checkpoint: `diffode.likelihood` (rk45 at rtol = atol = 1e-6, exact trace) of n fresh samples of the
mixture it was trained on (the same points for every checkpoint of a dataset), in nats per dimension with its
95% interval; beside it the mixture's own -log p_{sigma_min} on those points (the best any model can do at the
model's sigma_min) and its differential entropy H(p0) per dimension (Monte Carlo, 10^6 samples).
"""
from __future__ import annotations

import argparse

import torch

import diffode
from diffode.models import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--rtol", type=float, default=1e-6)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print("| dataset | score order | updates | model NLL (nats/dim) | -log p_sigma_min on the points | H(p0) | NFE | s |")
    print("|---|---|---|---|---|---|---|---|")
    for path in a.checkpoints:
        model = load_model({"kind": "checkpoint", "path": path})
        hp = model.info["hparams"]
        x = model.gmm.sample(a.n, torch.Generator().manual_seed(2024))
        r = diffode.likelihood(model, x, rtol=a.rtol, atol=a.rtol, trace="exact")
        s = r.summary()
        d = x.shape[1]
        floor = float(-model.gmm.log_prob(x, 1.0, model.sigma_min).mean()) / d
        big = model.gmm.sample(1_000_000, torch.Generator().manual_seed(7))
        entropy = float(-model.gmm.log_prob(big, 1.0, 0.0).mean()) / d
        half = (s["nll_hi"] - s["nll_lo"]) / 2
        print(f"| {model.dataset} | {hp.get('score_order', 1)} | {model.info['global_step']} | {s['nll']:.4f} +- {half:.4f} "
              f"| {floor:.4f} | {entropy:.4f} | {s['nfe']:.0f} | {s['seconds']:.0f} |", flush=True)



if __name__ == "__main__":
    main()
