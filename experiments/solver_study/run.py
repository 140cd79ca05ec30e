"""Endpoint error vs NFE of every solver on every grid, on a 2-D Gaussian mixture with an exact denoiser.

    python experiments/solver_study/run.py            # writes results.md, results.csv, *.png here

Setup: 8-mode ring mixture (radius 0.7, mode std 0.1, data std ~0.5), VE/EDM coordinates, sigma from
80 to 0.002, `n` start points x_T = 80 z (seed 0). Error = RMSE over points and coordinates of the
endpoint at sigma_min against a float64 torchdiffeq dopri5 solve (rtol = atol = 1e-10, in log sigma)
from the same x_T. Grids come from diffode.core.grids with the EDM schedule (t = sigma, so
time_uniform is uniform in sigma and time_quadratic uniform in sqrt(sigma)). A cell an NFE cannot
reach is '-'; a run that blows up (NaN/Inf) is 'nan'. rk45 (adaptive) gets its own table over
tolerances; the stochastic samplers (ddpm, euler_maruyama) have no ODE endpoint to compare with and
get a sliced-Wasserstein table against exact mixture samples instead (ODE solvers included).
"""
from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import torch

from diffode.core.denoisers import make_gmm
from diffode.core.sample import sample
from diffode.core.schedules import EDM
from diffode.core.solvers import SOLVERS

HERE = Path(__file__).resolve().parent
SIGMA_MAX, SIGMA_MIN = 80.0, 0.002
GRIDS = ["time_uniform", "time_quadratic", "logsnr", "edm"]
NFES = [3, 4, 5, 6, 7, 8, 9, 10, 20]
F64 = torch.float64


VARIANTS = {"deis[tau=vp_t]": ("deis", {"tau": "vp_t"}),  # extra rows: label -> (solver, options)
            "dpmpp_3m[official]": ("dpmpp_3m", {"coefficients": "official"}),
            "heun[euler_last]": ("heun", {"euler_last": True})}


def ode_solvers():
    """Row label -> (solver, options): every registered fixed-step ODE solver with its defaults, plus VARIANTS."""
    seen, rows = set(), {}
    for name, spec in SOLVERS.items():
        if spec.adaptive or spec.stochastic or spec.fn in seen:  # 'euler' is an alias of 'ddim'
            continue
        seen.add(spec.fn)
        rows[name] = (name, {})
    return {**rows, **VARIANTS}


def reference(gmm, x_T, sigmas=None):
    """dopri5 float64 at rtol = atol = 1e-10 in u = log sigma; states at `sigmas` (default: both ends)."""
    from torchdiffeq import odeint

    sigmas = torch.tensor([SIGMA_MAX, SIGMA_MIN], dtype=F64) if sigmas is None else sigmas
    with torch.no_grad():
        return odeint(lambda u, y: y - gmm(y, torch.exp(u)), x_T, torch.log(sigmas), method="dopri5",
                      rtol=1e-10, atol=1e-10)


def rmse(a, b) -> float:
    return float(((a - b) ** 2).mean().sqrt())


def sliced_w2(a, b, n_proj=128, seed=0) -> float:
    g = torch.Generator().manual_seed(seed)
    th = torch.randn(n_proj, a.shape[1], dtype=F64, generator=g)
    th = th / th.norm(dim=1, keepdim=True)
    pa, pb = (a @ th.T).sort(0).values, (b @ th.T).sort(0).values
    return float(((pa - pb) ** 2).mean().sqrt())


def run_cell(gmm, x_T, row, nfe, grid, schedule, **opts):
    solver, row_opts = row
    opts = {**row_opts, **opts}
    try:
        return sample(gmm, x_T, solver=solver, nfe=nfe, grid=grid, schedule=schedule, **opts)
    except ValueError:  # this NFE is not reachable by this solver
        return None
    except FloatingPointError:
        return torch.full_like(x_T, float("nan"))


def fmt(v) -> str:
    if v is None:
        return "-"
    return "nan" if not math.isfinite(v) else f"{v:.2e}"


def md_table(rows, header) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def plot_errors(results, solvers, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(GRIDS), figsize=(4.2 * len(GRIDS), 4), sharey=True)
    for ax, grid in zip(axes, GRIDS):
        for s in solvers:
            pts = [(n, results[(s, grid, n)]) for n in NFES if results.get((s, grid, n)) is not None
                   and math.isfinite(results[(s, grid, n)])]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=s)
        ax.set_yscale("log")
        ax.set_xscale("log")
        ax.set_xticks(NFES, [str(n) for n in NFES])
        ax.set_title(f"grid: {grid}")
        ax.set_xlabel("NFE")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("endpoint RMSE vs reference")
    axes[-1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_trajectories(gmm, schedule, path, nfe=5, grid="edm", solvers=("ddim", "dpmpp_2m", "ipndm", "deis")):
    """Trajectories in VP scaling (alpha x, alpha = 1/sqrt(1 + sigma^2), so every state is O(1)) over the data density."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_T = SIGMA_MAX * torch.randn(12, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    dense = torch.exp(torch.linspace(math.log(SIGMA_MAX), math.log(SIGMA_MIN), 200, dtype=F64))
    ref = reference(gmm, x_T, dense) / torch.sqrt(1 + dense**2)[:, None, None]
    lim = 1.3
    u = torch.linspace(-lim, lim, 200, dtype=F64)
    grid_pts = torch.stack(torch.meshgrid(u, u, indexing="xy"), -1).reshape(-1, 2)
    dens = gmm.log_prob(grid_pts).exp().reshape(200, 200)
    fig, axes = plt.subplots(1, len(solvers), figsize=(3.6 * len(solvers), 3.8))
    for ax, s in zip(axes, solvers):
        ax.imshow(dens, extent=(-lim, lim, -lim, lim), origin="lower", cmap="Greys", alpha=0.6)
        x, traj, info = sample(gmm, x_T, solver=s, nfe=nfe, grid=grid, schedule=schedule, return_trajectory=True,
                               return_info=True)
        sig = info["sigmas"]
        states = torch.stack([x_T] + traj) / torch.sqrt(1 + sig**2)[:, None, None]
        for k in range(x_T.shape[0]):
            ax.plot(states[:, k, 0], states[:, k, 1], "-o", color="tab:red", ms=2.5, lw=0.9, zorder=2)
            ax.plot(ref[:, k, 0], ref[:, k, 1], color="tab:green", lw=1.0, zorder=3)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_title(f"{s}, NFE {nfe}, {grid} grid", fontsize=9)
    axes[0].plot([], [], color="tab:green", label="reference (dopri5)")
    axes[0].plot([], [], "-o", color="tab:red", ms=2.5, label="solver steps")
    axes[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="start points")
    ap.add_argument("--n-dist", type=int, default=4000, help="samples for the sliced-Wasserstein table")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (tiny ops: 1 avoids spin contention)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    gmm = make_gmm(2, 8, layout="ring", spread=0.7, std=0.1)
    schedule = EDM(SIGMA_MIN, SIGMA_MAX, sigma_data=0.5)
    x_T = SIGMA_MAX * torch.randn(args.n, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    x_ref = reference(gmm, x_T)[-1]
    solvers = ode_solvers()

    results, lines = {}, []
    for grid in GRIDS:
        for s in solvers:
            for n in NFES:
                x = run_cell(gmm, x_T, solvers[s], n, grid, schedule)
                results[(s, grid, n)] = None if x is None else rmse(x, x_ref)
    rk = []
    for tol in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6):
        x, info = sample(gmm, x_T, solver="rk45", schedule=schedule, return_info=True, rtol=tol, atol=tol)
        rk.append((tol, info["nfe"], rmse(x, x_ref)))

    # distribution table: exact samples vs each sampler from fresh noise, logsnr grid
    data = gmm.sample(args.n_dist, torch.Generator().manual_seed(2))
    z = SIGMA_MAX * torch.randn(args.n_dist, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    floor = sliced_w2(gmm.sample(args.n_dist, torch.Generator().manual_seed(4)), data)
    dist_nfes = [5, 10, 20, 50]
    dist = {}
    dist_rows = {**solvers, "ddpm": ("ddpm", {}), "euler_maruyama": ("euler_maruyama", {})}
    for s, row in dist_rows.items():
        for n in dist_nfes:
            x = run_cell(gmm, z, row, n, "logsnr", schedule,
                         **({"generator": torch.Generator().manual_seed(5)} if SOLVERS[row[0]].stochastic else {}))
            dist[(s, n)] = None if x is None else sliced_w2(x, data)

    # ---- write -----------------------------------------------------------------------------
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["table", "solver", "grid", "nfe", "value", "option"])
        for (s, grid, n), v in results.items():
            w.writerow(["endpoint_rmse", s, grid, n, "" if v is None else f"{v:.6e}", ""])
        for tol, nfe, e in rk:
            w.writerow(["endpoint_rmse", "rk45", "adaptive", nfe, f"{e:.6e}", f"rtol=atol={tol:g}"])
        for (s, n), v in dist.items():
            w.writerow(["sliced_w2", s, "logsnr", n, "" if v is None else f"{v:.6e}", ""])
    header = ["solver"] + [str(n) for n in NFES]
    md = ["# Solver study: endpoint RMSE vs NFE on a 2-D Gaussian mixture", "",
          "Produced by `python experiments/solver_study/run.py` (see README.md for the setup).", ""]
    for grid in GRIDS:
        rows = [[s] + [fmt(results[(s, grid, n)]) for n in NFES] for s in solvers]
        md += [f"## grid: {grid}", "", md_table(rows, header), ""]
    md += ["## rk45 (adaptive dopri5 in log sigma): NFE is what it used", "",
           md_table([[f"{t:g}", str(n), fmt(e)] for t, n, e in rk], ["rtol = atol", "NFE", "RMSE"]), ""]
    md += [f"## sliced W2 to {args.n_dist} exact samples (logsnr grid; two exact sample sets differ by {floor:.2e})",
           "", md_table([[s] + [fmt(dist[(s, n)]) for n in dist_nfes] for s in dist_rows],
                        ["solver"] + [str(n) for n in dist_nfes]), ""]
    md += [f"Runtime {time.time() - t0:.0f} s on {torch.get_num_threads()} CPU threads; n = {args.n} start points."]
    text = "\n".join(md)
    (args.out / "results.md").write_text(text + "\n")
    print(text)
    plot_errors(results, solvers, args.out / "error_vs_nfe.png")
    plot_trajectories(gmm, schedule, args.out / "trajectories.png")


if __name__ == "__main__":
    main()
