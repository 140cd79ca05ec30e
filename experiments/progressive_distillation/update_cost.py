"""Seconds per progressive-distillation update of the shipped digits UNet, by batch size and thread count.

One update is the loss of ProgressiveDistillationModule.training_step (diffode.core.distillation.pd_loss:
the teacher's two DDIM evaluations, no grad, and the student's forward) with its backward and one Adam step,
on uniform noise images in [-1, 1] instead of dataset draws; the gradient clip is left out. The configurations are
timed in turn, `--reps` rounds of `--updates` updates each, so a change of machine load hits all of them
alike; the table gives the median round. Lightning's own per-step overhead is not included.

    python experiments/progressive_distillation/update_cost.py --batches 128,256,512 --threads 1,2
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="128,256,512", type=lambda s: [int(v) for v in s.split(",")])
    ap.add_argument("--threads", default="1,2", type=lambda s: [int(v) for v in s.split(",")])
    ap.add_argument("--updates", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8, help="the teacher grid's student steps (edm, rho 7)")
    args = ap.parse_args()

    from diffode.core import distillation as pd
    from diffode.core.grids import make_grid
    from diffode.methods.student import make_student
    from diffode.models import load_model

    model = load_model({"kind": "checkpoint", "path": None, "ema": True})
    teacher = model.denoiser.eval().requires_grad_(False)
    student = make_student(teacher)
    opt = torch.optim.Adam(student.parameters(), lr=1e-6)
    grid = make_grid("edm", 2 * args.steps, model.schedule, sigma_min=model.sigma_min, sigma_max=model.sigma_max)
    g = torch.Generator().manual_seed(0)
    times: dict[tuple[int, int], list[float]] = {}
    for _ in range(args.reps):
        for th in args.threads:
            torch.set_num_threads(th)
            for b in args.batches:
                x0 = torch.rand((b, *model.shape), generator=g, dtype=torch.float64) * 2 - 1
                t0 = time.perf_counter()
                for _ in range(args.updates):
                    st, sm, ss = pd.draw_points(grid, b, g)
                    eps = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
                    loss = pd.pd_loss(student, teacher, x0, eps, st, sm, ss)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                times.setdefault((th, b), []).append((time.perf_counter() - t0) / args.updates)
    base = statistics.median(times[(args.threads[0], args.batches[0])])
    print("| threads | batch | s / update | relative | s per 1000 samples |")
    print("|---|---|---|---|---|")
    for (th, b), v in times.items():
        m = statistics.median(v)
        print(f"| {th} | {b} | {m:.3f} | {m / base:.2f} | {1000 * m / b:.2f} |")


if __name__ == "__main__":
    main()
