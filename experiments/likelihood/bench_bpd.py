"""Bits/dim of the shipped digits UNet and its cost: 1000 digits, one Hutchinson probe (experiments/likelihood/README.md).

    python experiments/likelihood/bench_bpd.py --solver dpmpp_3m --nfe 20 --threads 2
    python experiments/likelihood/bench_bpd.py --solver rk45 --threads 2          # score_sde's adaptive RK45

Times `diffode.likelihood` alone (the model is loaded and warmed up first) on the first 1000 digits of the
training split (x = k/8 - 1, uniformly dequantized with bins of 1/8: + 3 bits), one batch, and prints the load
average before and after: the target (60 s on 2 cores) needs a quiet machine.
"""
from __future__ import annotations

import argparse
import os
import time

import torch

import diffode
from diffode.data.digits import load_digits_tensors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--solver", default="dpmpp_3m")
    ap.add_argument("--nfe", type=int, default=None)
    ap.add_argument("--grid", default="logsnr")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--split", default="train")
    ap.add_argument("--probes", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--checkpoint", default=None, help="a denoiser_ema.ckpt (default: the shipped digits UNet)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = diffode.load_model({"kind": "checkpoint", "path": a.checkpoint})
    x = load_digits_tensors(a.split)[0][: a.n]
    diffode.likelihood(model, x[:8], solver="ddim", nfe=2)  # warm-up (allocator, first-call costs)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    r = diffode.likelihood(model, x, solver=a.solver, nfe=a.nfe, grid=a.grid, probes=a.probes, batch_size=a.batch_size)
    wall = time.perf_counter() - t0
    s = r.summary()
    print(f"{a.n} digits ({a.split}), {a.solver} nfe={s['nfe']:.0f} grid={a.grid}, {a.probes} probe(s), threads={a.threads}: "
          f"bpd {s['bpd']:.4f} [{s['bpd_lo']:.4f}, {s['bpd_hi']:.4f}], nll {s['nll']:.4f} nats/dim; "
          f"{wall:.1f} s wall ({s['forwards']:.0f} forwards + {s['vjps']:.0f} VJPs per point); "
          f"load average {load0:.2f} before, {os.getloadavg()[0]:.2f} after")


if __name__ == "__main__":
    main()
