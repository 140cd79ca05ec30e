"""Where a solver's own time goes: sample() with a zero-cost denoiser, split into its parts.

    python experiments/solver_overhead/profile_solvers.py [--batch 256] [--nfe 10] [--threads 1]

Per solver (usual grid, NFE k), median over --repeats of (CPU time, ms):
- total:    sample(ZeroCost, x_T, solver, nfe=k, ...) (what run.py calls "pure solver")
- plan:     check_sampling_config(...) (grid construction, NFE accounting, option checks), paid once per call
- finite:   k x sample()'s per-step NaN/Inf check _check_finite(x) on the state
- fn:       the registered solver function alone on the precomputed grid (no callback)
for float64 and float32 states; plus the denoiser's own split (raw float32 net vs the ModelDenoiser
wrapper's float64 arithmetic, timed around a zero-cost net) so the "one forward" of run.py can be read. A cProfile of the
costliest solver is printed at the end (--cprofile NAME to choose).
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time

import torch

from diffode.core.sample import _check_finite, check_sampling_config, sample
from diffode.core.solvers import SOLVERS
from run import CKPT, USUAL_GRID, ZeroCost, build_model, pick_nfe


def cpu_ms(fn, repeats):
    out = []
    for _ in range(repeats):
        t = time.process_time()
        fn()
        out.append(1e3 * (time.process_time() - t))
    return statistics.median(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--nfe", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--cprofile", default="unipc_bh1")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    D, schedule, shape, desc = build_model(CKPT)
    print(f"model: {desc}; batch {args.batch}; NFE {args.nfe}; CPU ms, median of {args.repeats}")
    with torch.inference_mode():
        for dtype in (torch.float64, torch.float32):
            x_T = 80.0 * torch.randn((args.batch, *shape), generator=torch.Generator().manual_seed(0), dtype=dtype)
            print(f"\nstate {dtype}:  solver | NFE | total | plan | finite (steps checks) | fn | total/step")
            for name, spec in SOLVERS.items():
                if spec.adaptive or name == "euler":
                    continue
                k, opts = pick_nfe(name, args.nfe)
                grid = USUAL_GRID[name]
                z = ZeroCost()
                plan = check_sampling_config(name, k, grid, schedule=schedule, **opts)
                sig = plan.sigmas
                fn_opts = {**spec.defaults, **opts}
                run_total = lambda: sample(z, x_T, name, nfe=k, grid=grid, schedule=schedule, **opts)  # noqa: E731
                run_plan = lambda: check_sampling_config(name, k, grid, schedule=schedule, **opts)  # noqa: E731
                run_fin = lambda: [_check_finite(x_T, i, sig[0]) for i in range(len(sig) - 1)]  # noqa: E731
                run_fn = lambda: spec.fn(z, x_T, sig, **fn_opts)  # noqa: E731
                for f in (run_total, run_plan, run_fin, run_fn):
                    f()
                t = [cpu_ms(f, args.repeats) for f in (run_total, run_plan, run_fin, run_fn)]
                print(f"  {name:15s} | {k:2d} | {t[0]:6.2f} | {t[1]:5.2f} | {t[2]:5.2f} | {t[3]:6.2f} | {t[0] / k:5.2f}")
            # the denoiser: wrapper vs raw net
            s = torch.tensor(1.0, dtype=torch.float64)
            c = torch.full((args.batch,), 0.0, dtype=torch.float32)
            xf = x_T.float()
            net_ms = cpu_ms(lambda: D.net(xf, c), 5)
            d_ms = cpu_ms(lambda: D(x_T, s), 5)
            from diffode.core.denoisers import ModelDenoiser

            class Free(torch.nn.Module):  # a zero-cost float32 "net": isolates the wrapper's own work
                def __init__(self):
                    super().__init__()
                    self.w = torch.nn.Parameter(torch.zeros(()))

                def forward(self, x, c):
                    return x

            wrap = ModelDenoiser(Free(), D.schedule, D.prediction, D.sigma_data)
            wrap(x_T, s)
            w_ms = cpu_ms(lambda: wrap(x_T, s), args.repeats)
            print(f"  one forward D(x, sigma): {d_ms:.2f} ms; raw float32 net alone {net_ms:.2f} ms; "
                  f"ModelDenoiser wrapper alone (zero-cost net: casts + preconditioning) {w_ms:.3f} ms")
        name = args.cprofile
        k, opts = pick_nfe(name, args.nfe)
        x_T = 80.0 * torch.randn((args.batch, *shape), dtype=torch.float64)
        z = ZeroCost()
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(20):
            sample(z, x_T, name, nfe=k, grid=USUAL_GRID[name], schedule=schedule, **opts)
        pr.disable()
        print(f"\ncProfile: 20 x sample(ZeroCost, {name}, nfe={k}), float64 state")
        pstats.Stats(pr).sort_stats("tottime").print_stats(18)


if __name__ == "__main__":
    main()
