"""Per-step cost of diffode.sample against k-diffusion and diffusers, side by side in one run.

    python experiments/solver_overhead/vs_libraries.py [--repeats 41] [--nfe 10] [--out vs_libraries.md]

Every implementation integrates the same PF-ODE with the same closed-form denoiser, the exact
D(x, sigma) = x s_d^2 / (s_d^2 + sigma^2) of data N(0, s_d^2 I) (s_d = 0.5): a few elementwise ops, so
what is timed is the samplers' own per-step work. One repetition runs every implementation once, in
a shuffled order; medians over repetitions of the process CPU time (and the wall time), and the median
of the per-repetition ratios.

  diffode          diffode.sample(D, x_T, solver, nfe, grid="edm"): planning, NFE accounting, the
                   NaN/Inf check; the whole user-facing call
  diffode fn       the registered solver function alone on a precomputed grid (no sample())
  k-diffusion      k_diffusion.sampling.sample_euler / sample_dpmpp_2m on get_sigmas_karras (no UniPC
                   there), sigmas ending at sigma_min as ours (no appended zero), disable=True (no tqdm)
  diffusers        EulerDiscreteScheduler, DPMSolverMultistepScheduler (dpmsolver++, order 2) and
                   UniPCMultistepScheduler (bh2, order 2) with Karras sigmas, prediction_type="sample":
                   set_timesteps + the step loop, the model wrapped to VE coordinates (2 extra ops); its
                   sigmas replaced by our EDM grid after set_timesteps so that all integrate the same steps

diffode's solvers: ddim (= Euler), dpmpp_2m, unipc_bh2 (diffusers' UniPC default, bh2 order 2) with
lower_order_final=False, as the libraries are run here, so every implementation does the same arithmetic
(the table's last column: the largest endpoint difference to diffode's, float32 round-off). The
state x in float32 (as the libraries run) and float64 (diffode's default for exact tests). k-diffusion
is imported as its sampling module only (its package __init__ needs skimage and more; the sampling
module needs torchsde): `pip install --no-deps k-diffusion torchsde trampoline`. Not a diffode
dependency.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import random
import statistics
import sys
import time
import types
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
S2 = 0.25  # s_d^2
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def D(x, sigma):
    """Exact denoiser of N(0, S2 I), any sigma layout: 0-d, [batch] (k-diffusion) or python float."""
    s = torch.as_tensor(sigma, device=x.device)
    if s.ndim == 1:
        s = s.reshape(-1, *[1] * (x.ndim - 1))
    return x * (S2 / (S2 + s * s)).to(x.dtype)


def k_sampling():
    """k_diffusion.sampling without running k_diffusion/__init__.py."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        return None
    root = Path(spec.submodule_search_locations[0])
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = [str(root)]
    sys.modules.setdefault("k_diffusion", pkg)
    import k_diffusion.sampling as ks

    return ks


def diffode_impls(solver, nfe):
    from diffode.core.grids import make_grid
    from diffode.core.sample import sample
    from diffode.core.solvers import get_solver

    spec = get_solver(solver)
    grid = make_grid("edm", nfe)
    same = {"lower_order_final": False} if "lower_order_final" in spec.defaults else {}  # the libraries' arithmetic
    opts = {**spec.defaults, **same}

    def full(x):
        return sample(D, x, solver=solver, nfe=nfe, grid="edm", **same)

    def fn(x):
        return spec.fn(D, x, grid, **opts)

    return {"diffode": full, "diffode fn": fn}


def kdiff_impl(ks, solver, nfe):
    f = {"ddim": ks.sample_euler, "dpmpp_2m": ks.sample_dpmpp_2m}.get(solver)
    if f is None:
        return None

    def run(x):
        sig = ks.get_sigmas_karras(nfe + 1, SIGMA_MIN, SIGMA_MAX, device=x.device)[:-1].to(x.dtype)
        return f(D, x, sig, disable=True)

    return run


def diffusers_impl(solver, nfe):
    import diffusers

    kw = dict(use_karras_sigmas=True, prediction_type="sample")
    if solver == "ddim":
        sch = diffusers.EulerDiscreteScheduler(**kw, final_sigmas_type="sigma_min") if "final_sigmas_type" in \
            diffusers.EulerDiscreteScheduler.__init__.__code__.co_varnames else diffusers.EulerDiscreteScheduler(**kw)
    elif solver == "dpmpp_2m":
        sch = diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
                                                    final_sigmas_type="sigma_min", lower_order_final=False, **kw)
    elif solver == "unipc_bh2":
        sch = diffusers.UniPCMultistepScheduler(solver_type="bh2", solver_order=2, final_sigmas_type="sigma_min",
                                                lower_order_final=False, **kw)
    else:
        return None
    ve = isinstance(sch, diffusers.EulerDiscreteScheduler)  # Euler's sample is VE; the others' VP

    from diffode.core.grids import make_grid

    ours = make_grid("edm", nfe)

    def run(x):
        sch.set_timesteps(nfe)
        sch.sigmas = ours.to(sch.sigmas.dtype)  # the same grid as everyone (steps read sigmas[i], sigmas[i + 1])
        sigmas = sch.sigmas
        x = x if ve else x / torch.sqrt(1 + sigmas[0].to(x.dtype) ** 2)
        for i, t in enumerate(sch.timesteps):
            s = sigmas[i]
            if ve:  # diffusers' protocol (Euler checks it was called); our D takes the VE state itself
                sch.scale_model_input(x, t)
            x_ve = x if ve else x * torch.sqrt(1 + s * s).to(x.dtype)
            x = sch.step(D(x_ve, s), t, x).prev_sample
        return x if ve else x * torch.sqrt(1 + sigmas[nfe] ** 2).to(x.dtype)

    return run


def time_once(f, x):
    """(process CPU seconds, wall seconds) of one call: on a shared machine the CPU time is the one that
    does not count the time the process waits for a core."""
    c0, t0 = time.process_time(), time.perf_counter()
    f(x)
    return time.process_time() - c0, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=41)
    ap.add_argument("--nfe", type=int, default=10)
    ap.add_argument("--shapes", nargs="+", default=["64x2", "16x3x32x32"])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "vs_libraries.md"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ks = k_sampling()
    load0 = os.getloadavg()
    rows = []
    for shape_s in a.shapes:
        shape = tuple(int(v) for v in shape_s.split("x"))
        for dt in a.dtypes:
            dtype = getattr(torch, dt)
            x = SIGMA_MAX * torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)
            for solver in ("ddim", "dpmpp_2m", "unipc_bh2"):
                impls = diffode_impls(solver, a.nfe)
                if ks is not None and kdiff_impl(ks, solver, a.nfe) is not None:
                    impls["k-diffusion"] = kdiff_impl(ks, solver, a.nfe)
                if diffusers_impl(solver, a.nfe) is not None:
                    impls["diffusers"] = diffusers_impl(solver, a.nfe)
                with torch.inference_mode():
                    outs = {k: f(x) for k, f in impls.items()}  # warm-up (imports, allocator) and the check
                    for f in impls.values():
                        f(x)
                    agree = max(float((o.double() - outs["diffode"].double()).abs().max()) for o in outs.values())
                    times = {k: [] for k in impls}
                    order = list(impls)
                    for r in range(a.repeats):
                        random.Random(r).shuffle(order)
                        for k in order:
                            times[k].append(time_once(impls[k], x))
                cpu = {k: [c for c, _ in v] for k, v in times.items()}
                wall = {k: [w for _, w in v] for k, v in times.items()}
                med = {k: statistics.median(v) for k, v in cpu.items()}

                def ratio(other):
                    if other not in times:
                        return "n/a"
                    per = [d / o for d, o in zip(cpu["diffode"], cpu[other])]
                    w = statistics.median(wall["diffode"]) / statistics.median(wall[other])
                    return f"{med['diffode'] / med[other]:.2f} ({statistics.median(per):.2f}; wall {w:.2f})"

                us = lambda k: f"{1e6 * med[k] / a.nfe:.0f}" if k in med else "n/a"  # noqa: E731
                rows.append([shape_s, dt, solver, us("diffode"), us("diffode fn"), us("k-diffusion"), us("diffusers"),
                             ratio("k-diffusion"), ratio("diffusers"), f"{agree:.1e}"])
                print(" | ".join(rows[-1]), flush=True)
    load1 = os.getloadavg()
    head = ["state", "dtype", "solver", "diffode us/step", "diffode fn us/step", "k-diffusion us/step",
            "diffusers us/step", "diffode / k-diffusion", "diffode / diffusers", "max endpoint difference"]
    md = [f"# diffode vs k-diffusion vs diffusers: per-step time ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
          "", f"`python experiments/solver_overhead/vs_libraries.py --repeats {a.repeats} --nfe {a.nfe}`; NFE {a.nfe} on "
          f"the EDM (Karras, rho = 7) grid, closed-form Gaussian denoiser, {a.threads} torch thread(s), "
          f"torch.inference_mode. Load average (1/5/15 min) at start {load0[0]:.2f}/{load0[1]:.2f}/{load0[2]:.2f}, "
          f"at end {load1[0]:.2f}/{load1[1]:.2f}/{load1[2]:.2f} (2 cores).",
          "", "Times: process CPU time per step (median over repetitions; 1 thread, so it excludes waiting for a core). "
          "Ratios: median diffode CPU time / median other CPU time (in brackets: the median of the per-repetition "
          "ratios, and the ratio of the wall-time medians).", "",
          "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    Path(a.out).write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
