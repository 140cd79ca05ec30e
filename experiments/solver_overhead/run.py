"""Solver overhead on the digits UNet: wall time of sample() / (k x wall time of one denoiser forward).

    python experiments/solver_overhead/run.py                       # batch 256, NFE 10 and 5, 1 thread
    python experiments/solver_overhead/run.py --batch 256 --nfe 10 5 --repeats 3 --threads 1 --rk45-tol 1e-3

Writes results.md and results.csv next to this file (--out elsewhere).

What is timed, per solver and NFE k (every registered solver on its usual grid, conf/eval.yaml's usual_grid):
- S: one full `sample(D, x_T, solver, nfe=k, grid=..., schedule=...)` under torch.inference_mode,
  i.e. everything a user pays: planning (grid, NFE accounting), the k denoiser calls, the solver's
  updates and sample()'s per-step NaN/Inf check.
- F: k back-to-back calls D(x, sigma) on the same batch (D = the ModelDenoiser: float32 net,
  float64 wrapper arithmetic as the model runs), at the grid's sigmas.
- ratio = S / F (so F/k is "one forward"). Each repeat measures F1, S, F2 and takes
  2 S / (F1 + F2), which cancels a linear drift of the machine's speed within the repeat;
  the table gives the median over repeats and the 10-90 % spread.
- pure solver: S with a zero-cost denoiser (returns a cached tensor), in ms per sample() call and
  per step. It is the overhead itself, measured without the noise of a difference of two big times;
  1 + pure / F (both wall time, so both see the same machine load) is the ratio it predicts.
Both wall time (perf_counter) and process CPU time are recorded; on a shared machine the CPU-time
ratio is the less noisy cross-check (with --threads 1 the work runs on this thread only).
Adaptive rk45 has no fixed k: it runs at rtol = atol = --rk45-tol (default its own 1e-5) and k = the NFE
it reports; its pure-solver time is not comparable (with a zero-cost denoiser it takes other steps).

Model: diffode/assets/digits_unet.ckpt via load_denoiser when it exists (--ckpt), else the same UNet
built from conf/model/unet_digits.yaml with random weights under the digits experiment's EDM
preconditioning (the ratio depends on shapes and dtypes, not on weights); the table says which.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import torch

from diffode.core.sample import reachable_nfes, sample
from diffode.core.solvers import SOLVERS

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CKPT = ROOT / "diffode/assets/digits_unet.ckpt"
# conf/eval.yaml usual_grid (diff-sampler's pairing) + ipndm_v from eval_main; the stochastic samplers
# and rk45 are not in it: edm (k-diffusion's karras grid) for the SDE samplers, [sigma_max, sigma_min] for rk45.
USUAL_GRID = dict(euler="edm", ddim="edm", heun="edm", ipndm="edm", ipndm_v="edm", dpm_solver_2="logsnr",
                  dpm_solver_3="logsnr", dpmpp_2m="logsnr", dpmpp_3m="logsnr", unipc_bh1="logsnr",
                  unipc_bh2="logsnr", deis="logsnr", ddpm="edm", euler_maruyama="edm", rk45="logsnr")


def build_model(ckpt: Path):
    """(denoiser, schedule, shape, description)."""
    if ckpt.is_file():
        from diffode.methods.denoiser import load_denoiser

        D, info = load_denoiser(ckpt)
        return D, info["schedule"], info["shape"], f"trained checkpoint {ckpt.relative_to(ROOT) if ckpt.is_relative_to(ROOT) else ckpt}"
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from diffode.core.denoisers import ModelDenoiser

    net = instantiate(OmegaConf.load(ROOT / "conf/model/unet_digits.yaml"))
    schedule = instantiate(OmegaConf.load(ROOT / "conf/schedule/edm.yaml"))
    torch.manual_seed(0)
    for p in net.parameters():  # the output convs are zero-initialised: give every weight a value
        torch.nn.init.normal_(p, std=0.05)
    D = ModelDenoiser(net, schedule, "edm", 0.5).eval().requires_grad_(False)
    return D, schedule, (1, 8, 8), ("RANDOM-WEIGHT UNet from conf/model/unet_digits.yaml (EDM precond.; "
                                    f"no checkpoint at {ckpt})")


def pick_nfe(name: str, target: int) -> tuple[int, dict]:
    """The target NFE if the solver reaches it, else the nearest one it does (heun: euler_last for odd)."""
    if name == "heun" and target % 2:
        return target, dict(euler_last=True)
    ok = reachable_nfes(name, max_nfe=2 * target + 3)
    return min(ok, key=lambda n: (abs(n - target), n)), {}


class ZeroCost:
    """A denoiser that costs nothing: returns a cached tensor of x's shape and dtype."""

    def __init__(self):
        self.cache = {}

    def __call__(self, x, sigma):
        key = (x.shape, x.dtype)
        if key not in self.cache:
            self.cache[key] = torch.full_like(x, 0.1)
        return self.cache[key]


def timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w0, time.process_time() - c0, out


def quantile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def measure(D, x_T, schedule, name, k, opts, grid, repeats, warmup):
    """Per-repeat paired timings; returns dict of lists + the NFE actually made."""
    kw = dict(grid=grid, schedule=schedule, **opts)
    adaptive = SOLVERS[name].adaptive
    info = {}

    def run_sample(den):
        if adaptive:
            _, inf = sample(den, x_T, name, nfe=None, return_info=True, **kw)
            info["nfe"] = inf["nfe"]
        else:
            sample(den, x_T, name, nfe=k, **kw)

    if adaptive:
        run_sample(D)
        k = info["nfe"]
    sig = sample(ZeroCost(), x_T, name, nfe=None if adaptive else k, return_info=True, **kw)[1]["sigmas"]
    fwd_sigmas = [sig[i % (len(sig) - 1)] for i in range(k)]  # k calls at the grid's own noise levels

    def run_forwards():
        for s in fwd_sigmas:
            D(x_T, s)

    zero = ZeroCost()
    for _ in range(warmup):
        run_forwards(), run_sample(D), run_sample(zero)
    if adaptive:  # its first solve above was the warm-up of the sampling path
        run_sample(zero)
    res = dict(wall=[], cpu=[], fwd_ms=[], sample_ms=[], pure_ms=[], pure_cpu_ms=[])
    for _ in range(repeats):
        f1 = timed(run_forwards)
        s1 = timed(lambda: run_sample(D))
        f2 = timed(run_forwards)
        res["wall"].append(2 * s1[0] / (f1[0] + f2[0]))
        res["cpu"].append(2 * s1[1] / (f1[1] + f2[1]))
        res["fwd_ms"].append(1e3 * (f1[0] + f2[0]) / (2 * k))
        res["sample_ms"].append(1e3 * s1[0])
        for _ in range(3):
            p = timed(lambda: run_sample(zero))
            res["pure_ms"].append(1e3 * p[0])
            res["pure_cpu_ms"].append(1e3 * p[1])
    return res, k


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--nfe", type=int, nargs="+", default=[10, 5])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 on a loaded machine)")
    ap.add_argument("--solvers", nargs="+", default=None, help="default: every registered solver")
    ap.add_argument("--no-rk45", action="store_true")
    ap.add_argument("--rk45-repeats", type=int, default=2)
    ap.add_argument("--rk45-tol", type=float, default=1e-5, help="rk45 rtol = atol (its default: 1e-5)")
    ap.add_argument("--state-dtype", choices=["float64", "float32"], default="float64",
                    help="dtype of x_T / the solver state (evaluation draws float64 noise; the net runs float32)")
    ap.add_argument("--ckpt", type=Path, default=CKPT)
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    D, schedule, shape, model_desc = build_model(args.ckpt)
    dtype = getattr(torch, args.state_dtype)
    g = torch.Generator().manual_seed(args.seed)
    x_T = float(schedule.sigma_max) * torch.randn((args.batch, *shape), generator=g, dtype=dtype)
    names = args.solvers or [n for n in SOLVERS if n != "euler"]  # euler is an alias of ddim
    rows = []
    with torch.inference_mode():
        for target in args.nfe:
            for name in names:
                spec = SOLVERS[name]
                if spec.adaptive:
                    continue
                k, opts = pick_nfe(name, target)
                res, k = measure(D, x_T, schedule, name, k, opts, USUAL_GRID.get(name, "logsnr"), args.repeats,
                                 args.warmup)
                rows.append(summarise(name, target, k, opts, USUAL_GRID.get(name, "logsnr"), res))
                print(fmt_row(rows[-1]), flush=True)
                write(rows, args, model_desc, dtype, quiet=True)  # partial results survive an interrupted run
        if not args.no_rk45 and "rk45" in SOLVERS and (args.solvers is None or "rk45" in args.solvers):
            tol = dict(rtol=args.rk45_tol, atol=args.rk45_tol)
            res, k = measure(D, x_T, schedule, "rk45", None, tol, "logsnr", args.rk45_repeats, 0)
            rows.append(summarise("rk45", "adaptive", k, tol, "[sigma_max, sigma_min]", res))
            print(fmt_row(rows[-1]), flush=True)
    write(rows, args, model_desc, dtype)


def summarise(name, target, k, opts, grid, res):
    med = statistics.median
    fwd = med(res["fwd_ms"])
    return dict(solver=name, target_nfe=target, nfe=k, options=" ".join(f"{a}={b}" for a, b in opts.items()),
                grid=grid, ratio=med(res["wall"]), ratio_p10=quantile(res["wall"], 0.1),
                ratio_p90=quantile(res["wall"], 0.9), cpu_ratio=med(res["cpu"]),
                cpu_ratio_p10=quantile(res["cpu"], 0.1), cpu_ratio_p90=quantile(res["cpu"], 0.9),
                fwd_ms=fwd, sample_ms=med(res["sample_ms"]), pure_ms=med(res["pure_ms"]),
                pure_cpu_ms=med(res["pure_cpu_ms"]), pure_per_step_ms=med(res["pure_ms"]) / k,
                pure_over_F=1 + med(res["pure_ms"]) / (k * fwd), repeats=len(res["wall"]))


LEGEND = ("Ratio = 2 S / (F1 + F2) per repeat (order F1, S, F2), median and 10-90 % spread over repeats; "
          "F = k back-to-back D(x, sigma) calls. CPU ratio: the same with process CPU time. "
          "pure-solver ms: the same sample() with a zero-cost denoiser; 1 + pure/F: the ratio that "
          "overhead alone predicts (wall / wall). **>1.05**: that prediction, or the 10 % quantile of the wall "
          "ratio, is above 1.05 (a median above 1.05 with neither is the machine's noise).")


HEADER = ("| solver | NFE | grid | wall ratio (median) | wall 10-90% | CPU ratio (median) | CPU 10-90% | "
          "1 forward ms | sample ms | pure-solver ms (per call) | 1 + pure/F |")


def fmt_row(r):
    nfe = f"{r['nfe']}" + (f" ({r['options']})" if r["options"] else "")
    # flagged only when the excess is real: the overhead alone predicts it, or even the 10 % quantile is above
    pred = 1 + float(r["pure_ms"]) / (int(r["nfe"]) * float(r["fwd_ms"]))  # wall / wall: both see the same load
    flag = " **>1.05**" if pred > 1.05 or float(r["ratio_p10"]) > 1.05 else ""
    adaptive = r["target_nfe"] == "adaptive"  # a zero-cost denoiser changes rk45's step control: no prediction
    return (f"| {r['solver']} | {nfe} | {r['grid']} | {r['ratio']:.3f}{flag} | {r['ratio_p10']:.3f}-{r['ratio_p90']:.3f} | "
            f"{r['cpu_ratio']:.3f} | {r['cpu_ratio_p10']:.3f}-{r['cpu_ratio_p90']:.3f} | {r['fwd_ms']:.2f} | "
            f"{r['sample_ms']:.1f} | {r['pure_ms']:.2f} | {'n/a' if adaptive else format(pred, '.3f')} |")


def write(rows, args, model_desc, dtype, quiet=False):
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    import platform

    lines = ["# Solver overhead: sample() wall time / (NFE x one denoiser forward)", "",
             f"- model: {model_desc}",
             f"- batch {args.batch}, state dtype {str(dtype).replace('torch.', '')}, network float32, CPU, "
             f"torch {torch.__version__}, {args.threads} thread(s), {args.repeats} repeats "
             f"(rk45: {args.rk45_repeats}), {args.warmup} warm-up, inference_mode",
             f"- host {platform.node()}, load average at the end {open('/proc/loadavg').read().split()[:3]}",
             f"- written {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}", "",
             LEGEND, "",
             HEADER, "|" + "---|" * HEADER.count(" | ") + "---|"]
    lines += [fmt_row(r) for r in rows]
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    if not quiet:
        print(f"wrote {args.out / 'results.md'} and results.csv")


if __name__ == "__main__":
    main()
