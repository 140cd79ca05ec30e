"""Which `lower_order_final` rule: solver error vs NFE 3-20 of the multistep solvers under each rule.

    python experiments/lower_order_final/run.py [--cases gmm16d gmm16d_multiscale gmm16d_sharp gmm2d digits] [--n 200] [--digits-n 100]

Solver error = RMSE (over samples and coordinates) of the endpoint at sigma_min against a reference
solve of the same model from the same noise: a float64 dopri5 solve (rtol = atol = 1e-10, in log sigma)
for the mixtures (exact denoiser), and for the digits UNet a DPM-Solver++(3M) solve with 500 steps on
the logSNR grid (its self-consistency error against 250 steps is printed and written to results.md).

Rules: False, True, "official" (True below 10 steps), "diffusers" (True below 15 steps, for
comparison only) and "auto" with its lambda-step threshold H in H_VALUES (solvers/_order.py: the last
steps are lowered where h_i > H). A rule only decides the per-step orders, so every (cell, order
sequence) is solved once and shared by the rules that give the same sequence.

Writes results.csv (one row per case, solver, grid, NFE, rule) and results.md (per rule: the largest
error jump err(n+1)/err(n) over NFE 5-20, the geometric-mean error over NFE 3-20, and the tables).
"""
from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import torch

import diffode.core.solvers._order as order_rule
from diffode.core.denoisers import GaussianMixture, make_gmm
from diffode.core.grids import make_grid
from diffode.core.sample import sample
from diffode.core.schedules import EDM

HERE = Path(__file__).resolve().parent
F64 = torch.float64
SOLVERS = {"dpmpp_2m": ("dpmpp_2m", {}), "dpmpp_3m": ("dpmpp_3m", {}),
           "dpmpp_3m_official": ("dpmpp_3m", {"coefficients": "official"}),
           "unipc_bh1": ("unipc_bh1", {}), "unipc_bh2": ("unipc_bh2", {}), "deis": ("deis", {})}
ORDERS = {"dpmpp_2m": 2, "dpmpp_3m": 3, "dpmpp_3m_official": 3, "unipc_bh1": 3, "unipc_bh2": 2, "deis": 3}
GRIDS = ("logsnr", "edm")
NFES = list(range(3, 21))
H_VALUES = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0)
JUMP_FROM = 5  # the jump test's range: NFE 5-20


def rules():
    """label -> (rule, H) pairs; H only for auto."""
    out = {"false": (False, None), "true": (True, None), "official": ("official", None), "diffusers": ("diffusers", None)}
    out.update({f"auto[H={h:g}]": ("auto", h) for h in H_VALUES})
    return out


def realized_orders(sigmas, p, rule, H):
    """The per-step orders `rule` gives on this grid (diffusers' rule is emulated: True below 15 steps)."""
    steps = len(sigmas) - 1
    if rule == "diffusers":
        rule = steps < 15
    old = order_rule.H_AUTO
    order_rule.H_AUTO = H if H is not None else old
    try:
        return tuple(order_rule.step_orders(sigmas, p, rule)), rule
    finally:
        order_rule.H_AUTO = old


def solve(D, x_T, solver, opts, sigmas, rule, H):
    old = order_rule.H_AUTO
    order_rule.H_AUTO = H if H is not None else old
    try:
        with torch.inference_mode():
            return sample(D, x_T, solver=solver, nfe=None, grid=sigmas, lower_order_final=rule, **opts)
    except FloatingPointError:
        return torch.full_like(x_T, float("nan"))
    finally:
        order_rule.H_AUTO = old


def rmse(a, b) -> float:
    return float(((a - b) ** 2).mean().sqrt())


def dopri_reference(D, x_T, sigma_max, sigma_min):
    from diffode.metrics.gmm import reference_solve

    return reference_solve(D, x_T, sigma_max, sigma_min, rtol=1e-10, method="dopri5")  # the recorded runs' solve


GMMS = {  # the project's mixtures (conf/dataset/gmm16d.yaml, gmm2d.yaml) and a sharp 16-D one
    "gmm16d": dict(dim=16, components=8, seed=0, spread=1.0, std=0.1),
    "gmm2d": dict(dim=2, components=8, seed=0, spread=1.0, std=0.1, layout="ring"),
    # modes of std 0.01-0.03 against a spread of 1, like the digits' nearly discrete pixel values:
    # the regime where the official rule's cliff shows (tests/test_lower_order_final.py uses it)
    "gmm16d_sharp": dict(dim=16, components=16, seed=0, spread=1.0, std=0.02),
    "gmm16d_multiscale": None,  # multiscale_gmm(): the mixture of tests/test_lower_order_final.py
}


def multiscale_gmm():
    """4 well-separated modes (means ~ N(0, I), 16-D) with per-coordinate stds log-spaced over
    [0.01, 0.1]: sharp like image data at small sigma, but no sample path near a mode boundary, so its
    error is smooth in the NFE (the sharp mixture's error jumps whenever one sample changes mode)."""
    g = torch.Generator().manual_seed(0)
    stds = torch.logspace(-2, -1, 16, dtype=F64).repeat(4, 1)
    return GaussianMixture(torch.ones(4, dtype=F64), torch.randn(4, 16, dtype=F64, generator=g), stds=stds)


def gmm_case(name, n):
    """A mixture of GMMS with its exact denoiser, EDM range [0.002, 80]."""
    gmm = multiscale_gmm() if GMMS[name] is None else make_gmm(**GMMS[name])
    dim = 16 if GMMS[name] is None else GMMS[name]["dim"]
    x_T = 80.0 * torch.randn(n, dim, dtype=F64, generator=torch.Generator().manual_seed(0))
    return gmm, x_T, EDM(), dopri_reference(gmm, x_T, 80.0, 0.002), None


def digits_case(n, ckpt):
    from diffode.methods.denoiser import load_denoiser

    D, info = load_denoiser(ckpt)
    sch = info["schedule"]
    x_T = info["sigma_max"] * torch.randn(n, *info["shape"], dtype=F64, generator=torch.Generator().manual_seed(0))
    t0 = time.time()
    with torch.inference_mode():
        ref = sample(D, x_T, "dpmpp_3m", nfe=500, grid="logsnr", schedule=sch, lower_order_final=False)
        half = sample(D, x_T, "dpmpp_3m", nfe=250, grid="logsnr", schedule=sch, lower_order_final=False)
    self_err = rmse(ref, half)
    print(f"digits reference: 500 vs 250 steps RMSE {self_err:.2e} ({time.time() - t0:.0f} s)", flush=True)
    return D, x_T, sch, ref, self_err


def run_case(case, D, x_T, sch, ref, writer):
    results = {}  # (solver, grid, nfe, rule label) -> error
    for label, (solver, opts) in SOLVERS.items():
        for grid in GRIDS:
            t0 = time.time()
            for nfe in NFES:
                sigmas = make_grid(grid, nfe, sch)
                done = {}
                for rlabel, (rule, H) in rules().items():
                    seq, concrete = realized_orders(sigmas, ORDERS[label], rule, H)
                    if seq not in done:
                        done[seq] = rmse(solve(D, x_T, solver, opts, sigmas, concrete, H), ref)
                    results[(label, grid, nfe, rlabel)] = done[seq]
                    writer.writerow([case, label, grid, nfe, rlabel, " ".join(map(str, seq)), f"{done[seq]:.6e}"])
            print(f"{case} {label} {grid}: {time.time() - t0:.1f} s", flush=True)
    return results


def summary(results, case):
    """Per rule: largest jump over NFE >= JUMP_FROM (and where), geometric-mean error, over all solvers x grids."""
    lines = [f"### {case}: per rule, over {len(SOLVERS)} solvers x {len(GRIDS)} grids",
             "", "| rule | largest jump err(n+1)/err(n), NFE 5-20 | where | cells with a jump > 2x | "
             "geometric-mean error NFE 3-20 | geometric-mean error NFE 3-10 |", "|---|---|---|---|---|---|"]
    for rlabel in rules():
        worst, where, n_bad, logs, logs10 = 0.0, "", 0, [], []
        for label in SOLVERS:
            for grid in GRIDS:
                errs = [results[(label, grid, n, rlabel)] for n in NFES]
                for n, e in zip(NFES, errs):
                    e = e if math.isfinite(e) else 1e3
                    logs.append(math.log(e))
                    if n <= 10:
                        logs10.append(math.log(e))
                for n, a, b in zip(NFES[:-1], errs[:-1], errs[1:]):
                    if n < JUMP_FROM:
                        continue
                    r = b / a if math.isfinite(b) else math.inf
                    if r > 2:
                        n_bad += 1
                    if r > worst:
                        worst, where = r, f"{label}/{grid} {n}->{n + 1}"
        lines.append(f"| {rlabel} | {worst:.2f} | {where} | {n_bad} | {math.exp(sum(logs) / len(logs)):.3e} | "
                     f"{math.exp(sum(logs10) / len(logs10)):.3e} |")
    return "\n".join(lines)


def table(results, case, shown=("official", "true", "false", "auto[H=1.25]")):
    out = []
    for grid in GRIDS:
        out += [f"#### {case}, grid {grid}: RMSE vs reference", "",
                "| solver | rule | " + " | ".join(str(n) for n in NFES) + " |", "|---|---|" + "---|" * len(NFES)]
        for label in SOLVERS:
            for r in shown:
                out.append(f"| {label} | {r} | " + " | ".join(f"{results[(label, grid, n, r)]:.2e}" for n in NFES) + " |")
        out.append("")
    return "\n".join(out)


def rebuild(paths, out):
    """Merge results.csv files (e.g. the mixtures' and the digits' runs) into one results.csv / results.md."""
    rows = [r for p in paths for r in csv.DictReader(open(p))]
    cases = list(dict.fromkeys(r["case"] for r in rows))
    md = [f"# lower_order_final: measured (rebuilt {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from "
          f"{', '.join(str(p) for p in paths)})", ""]
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "solver", "grid", "nfe", "rule", "orders", "rmse"])
        for r in rows:
            w.writerow([r[k] for k in ("case", "solver", "grid", "nfe", "rule", "orders", "rmse")])
    for case in cases:
        res = {(r["solver"], r["grid"], int(r["nfe"]), r["rule"]): float(r["rmse"]) for r in rows if r["case"] == case}
        md += [summary(res, case), "", table(res, case), ""]
    (out / "results.md").write_text("\n".join(md) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="+", default=["gmm16d", "gmm16d_multiscale", "gmm16d_sharp", "gmm2d", "digits"])
    ap.add_argument("--n", type=int, default=200, help="samples per mixture cell")
    ap.add_argument("--digits-n", type=int, default=100, help="samples per digits cell")
    ap.add_argument("--ckpt", default="diffode/assets/digits_unet.ckpt")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(HERE))
    ap.add_argument("--from-csv", nargs="+", help="rebuild results.md/csv from earlier results.csv files, no compute")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    if a.from_csv:
        return rebuild(a.from_csv, out)
    md = [f"# lower_order_final: measured ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", ""]
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "solver", "grid", "nfe", "rule", "orders", "rmse"])
        for case in a.cases:
            t0 = time.time()
            if case == "digits":
                D, x_T, sch, ref, self_err = digits_case(a.digits_n, a.ckpt)
                md.append(f"digits reference: DPM-Solver++(3M), 500 logSNR steps; RMSE against 250 steps: {self_err:.2e}")
            else:
                D, x_T, sch, ref, _ = gmm_case(case, a.n)
            res = run_case(case, D, x_T, sch, ref, w)
            f.flush()
            md += [summary(res, case), "", table(res, case), f"({case}: {time.time() - t0:.0f} s)", ""]
            (out / "results.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
