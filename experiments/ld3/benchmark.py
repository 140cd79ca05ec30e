"""LD3 cost on the digits UNet: wall time of one training, and peak memory of one training step vs NFE.

    python experiments/ld3/benchmark.py time   --ckpt diffode/assets/digits_unet.ckpt --solver dpmpp_3m --nfe 4
    python experiments/ld3/benchmark.py memory --ckpt diffode/assets/digits_unet.ckpt --nfes 4,6,8,10 --batch 2,32

`time`: one LD3 training (100 pairs, 50/50, 2 + 5 rounds, batch 2, l2, 2 threads) through the runner
(`diffode ld3`) with an empty teacher cache, so the wall time includes making the teacher pairs; the
teacher and training parts are reported separately, plus process CPU time (the machine is shared:
CPU time is the less noisy of the two).

`memory`: each (NFE, batch, checkpointing) point runs in a FRESH subprocess that builds the LD3
module on the model (random unit-variance x'_T and targets: memory depends on shapes only), then
takes one forward + backward through the whole solve, the step every LD3 update makes. Measured:
resident set size (RSS) growth during that step, as (a) the peak of /proc/self/statm sampled every
0.5 ms by a thread (torch releases the GIL inside ops) minus the RSS just before, and (b) the growth
of getrusage's ru_maxrss (a high-water mark: a lower bound when an earlier phase peaked higher).
CPU RSS includes allocator caching, so these are process-level figures, not torch's own
allocation counts (torch has no CPU allocator statistics).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    def __init__(self, every: float = 5e-4):
        self.every, self.peak, self._stop = every, 0, threading.Event()

    def __enter__(self):
        self.start = rss_bytes()
        self.maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.peak = self.start
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.every)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_bytes())
        self.maxrss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.maxrss0


def memory_child(args):
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(HERE))
    from common import compose_ld3

    from diffode.cli.train import prepare

    random_unet = args.ckpt == "random:unet_digits"
    overrides = [f"method.solver={args.solver}", f"method.nfe={args.nfe}", "method.distance=l2",
                 f"method.checkpointing={args.checkpointing}", "output_dir=/tmp/ld3_benchmark_memory"]
    if random_unet:  # memory depends on the architecture only: conf/net/unet_digits.yaml, untrained
        from diffode.config import group_config
        from diffode.core.denoisers import ModelDenoiser
        from diffode.core.schedules import VPLinear
        from diffode.methods.ld3 import LD3Module
        from diffode.methods.registry import method_options
        from diffode.spec import build

        torch.manual_seed(0)
        den, sch = ModelDenoiser(build(group_config("net", "unet_digits")), VPLinear(), "eps"), VPLinear()
        mcfg = method_options("ld3", solver=args.solver, nfe=args.nfe, distance="l2", checkpointing=args.checkpointing)
        m = LD3Module(den, (1, 8, 8), sch, sch.sigma_min, sch.sigma_max, {"kind": "random unet_digits"}, mcfg)
    else:
        spec, options, ctx = prepare(compose_ld3(args.ckpt, overrides))
        m = spec.build(options, ctx)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(args.batch, *m.shape, generator=g, dtype=torch.float64).requires_grad_()
    x0 = torch.randn(args.batch, *m.shape, generator=g, dtype=torch.float64)
    t0 = time.perf_counter()
    with PeakRSS() as p:
        loss = m.loss(z, x0).mean()
        loss.backward()
    wall = time.perf_counter() - t0
    assert torch.isfinite(m.grid.xi.grad).all() and torch.isfinite(z.grad).all()
    print(json.dumps({"nfe": args.nfe, "batch": args.batch, "checkpointing": args.checkpointing,
                      "rss_peak_growth_mib": (p.peak - p.start) / 2**20, "maxrss_growth_mib": p.maxrss_growth / 2**20,
                      "step_s": wall}))


def memory(args):
    rows = []
    for batch in map(int, args.batch.split(",")):
        for ckpt in (True, False):
            for nfe in map(int, args.nfes.split(",")):
                cmd = [sys.executable, __file__, "memory-child", "--ckpt", args.ckpt, "--solver", args.solver,
                       "--nfe", str(nfe), "--batch", str(batch), "--checkpointing", str(ckpt).lower(),
                       "--threads", str(args.threads)]
                res = subprocess.run(cmd, capture_output=True, text=True, check=True)
                rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory.json").write_text(json.dumps(rows, indent=1))
    lines = [f"Peak RSS growth (MiB) of one forward+backward through {args.solver} (fresh process per cell)\n",
             "| batch | checkpointing | " + " | ".join(f"NFE {n}" for n in args.nfes.split(",")) + " |",
             "|---|---|" + "---|" * len(args.nfes.split(","))]
    for batch in map(int, args.batch.split(",")):
        for ckpt in (True, False):
            cells = [r for r in rows if r["batch"] == batch and r["checkpointing"] == ckpt]
            lines.append(f"| {batch} | {'on' if ckpt else 'off'} | " + " | ".join(
                f"{r['rss_peak_growth_mib']:.1f} ({r['maxrss_growth_mib']:.1f})" for r in cells) + " |")
    lines.append("\nEach cell: sampled peak RSS growth (ru_maxrss growth in parentheses).")
    (out / "memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def timing(args):
    import tempfile

    sys.path.insert(0, str(HERE))
    torch.set_num_threads(args.threads)
    from common import train_grid, val_losses

    with tempfile.TemporaryDirectory() as cache:  # cold cache: the teacher pairs are made in the timed run
        c0 = time.process_time()
        art, wall = train_grid(args.ckpt, Path(args.out) / f"time_{args.solver}_nfe{args.nfe}",
                               [f"method.solver={args.solver}", f"method.nfe={args.nfe}", "method.distance=l2",
                                f"method.cache_dir={cache}", f"method.checkpointing={args.checkpointing}"],
                               args.threads)
        cpu = time.process_time() - c0
    val_first, val_best = val_losses(art)
    row = {"solver": args.solver, "nfe": args.nfe, "threads": args.threads, "wall_s": round(wall, 1),
           "train_only_s": round(art.manifest["metrics"]["train_seconds"], 1), "process_cpu_s": round(cpu, 1),
           "updates": sum(1 for h in art.manifest["history"] if h.get("train") is not None),
           "val_start": val_first, "val_best": val_best, "load_average_1min": os.getloadavg()[0]}
    print(json.dumps(row))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"time_{args.solver}_nfe{args.nfe}.json").write_text(json.dumps(row, indent=1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["time", "memory", "memory-child"])
    ap.add_argument("--ckpt", default="diffode/assets/digits_unet.ckpt")
    ap.add_argument("--solver", default="dpmpp_3m")
    ap.add_argument("--nfe", type=int, default=4)
    ap.add_argument("--nfes", default="4,6,8,10")
    ap.add_argument("--batch", default="2,32")
    ap.add_argument("--checkpointing", default="true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="experiments/ld3/results/benchmark")
    args = ap.parse_args()
    if args.what == "memory-child":
        args.batch, args.checkpointing = int(args.batch), args.checkpointing == "true"
        memory_child(args)
    elif args.what == "memory":
        memory(args)
    else:
        timing(args)


if __name__ == "__main__":
    main()
