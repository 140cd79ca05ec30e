"""One guided call against one unguided forward at twice the batch, timed side by side.

A guided call D_u + w (D_c - D_u) evaluates both halves in one forward of the stacked batch [x; x] (2B rows)
and combines them; its cost over that bare 2B forward is the stacking, the null labels and the combination.
This times both, alternating, and prints the ratio of medians (target: <= 1.05).

    python experiments/guidance/benchmark.py [--ckpt diffode/assets/digits_cond_unet.ckpt] [--batch 500] [--reps 30]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from diffode.core.guidance import Guidance, Guided
from diffode.models import initial_labels, load_model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default=None, help="a class-conditional checkpoint (default: the shipped digits_cond UNet)")
    ap.add_argument("--batch", type=int, default=500, help="B: the guided call's batch (the bare forward gets 2B)")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--scale", type=float, default=2.0)
    ap.add_argument("--out", default=None, help="also write the figures as JSON here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from diffode.config import asset

    path = a.ckpt or str(asset("digits_cond_unet.ckpt"))
    m = load_model({"kind": "checkpoint", "path": path})
    D = m.denoiser
    G = Guided(D, Guidance(a.scale))
    B = a.batch
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, *m.shape, generator=g, dtype=torch.float64)
    y = initial_labels(m.num_classes, range(B))
    x2, y2 = torch.cat([x, x]), torch.cat([y, torch.full_like(y, m.num_classes)])
    sigma = torch.tensor(1.0, dtype=torch.float64)
    guided, bare = [], []
    with torch.no_grad():
        for _ in range(3):  # warm-up
            G(x, sigma, cond=y), D(x2, sigma, cond=y2)
        for _ in range(a.reps):  # alternate, so load changes hit both alike
            t0 = time.perf_counter()
            G(x, sigma, cond=y)
            t1 = time.perf_counter()
            D(x2, sigma, cond=y2)
            t2 = time.perf_counter()
            guided.append(t1 - t0)
            bare.append(t2 - t1)
    res = {"checkpoint": os.path.basename(path), "B": B, "reps": a.reps, "threads": a.threads,
           "guided_call_median_s": statistics.median(guided), "forward_2B_median_s": statistics.median(bare),
           "ratio": statistics.median(guided) / statistics.median(bare),
           "ratio_of_means": sum(guided) / sum(bare), "load_average": os.getloadavg()[0]}
    print(json.dumps(res, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
