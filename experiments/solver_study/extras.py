"""The two parts of the solver study that `diffode eval` cannot do, on the study's mixture (conf/experiment/
eval_solver_study.yaml: the gmm2d ring with radius 0.7):

- rk45 (adaptive dopri5 in log sigma) at given tolerances: its NFE is what the error control spends, not a
  setting of a cell; RMSE against the same dopri8 reference solve as every eval cell, from the same noises;
- trajectories.png: ddim, dpmpp_2m, ipndm and deis at NFE 5 on the EDM grid over the data density, against the
  reference trajectory (VP scaling, alpha x with alpha = 1 / sqrt(1 + sigma^2), so every state is O(1)).

    python experiments/solver_study/extras.py [--n 1000] [--out experiments/solver_study]
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

import diffode
from diffode.metrics.gmm import endpoint_rmse, reference_solve
from diffode.models import initial_noise

HERE = Path(__file__).resolve().parent
SOURCE = {"kind": "gmm", "preset": "gmm2d", "params": {"spread": 0.7}}  # = the preset's source


def rk45_table(model, n: int) -> str:
    x_T = initial_noise(model.shape, range(n), model.sigma_max)  # the seeds of the eval cells
    ref = reference_solve(model.denoiser, x_T, model.sigma_max, model.sigma_min)
    rows = ["| rtol = atol | NFE | RMSE |", "|---|---|---|"]
    for tol in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6):
        x, info = model.sample(x_T, n, solver="rk45", nfe=None, rtol=tol, atol=tol, return_info=True)
        rows.append(f"| {tol:g} | {info['nfe']} | {endpoint_rmse(x, ref):.2e} |")
    return "\n".join(rows)


def plot_trajectories(model, path: Path, nfe=5, grid="edm", solvers=("ddim", "dpmpp_2m", "ipndm", "deis")):
    from torchdiffeq import odeint

    from diffode.pictures import figure

    D, f64 = model.denoiser, torch.float64
    x_T = initial_noise(model.shape, range(12), model.sigma_max)
    dense = torch.exp(torch.linspace(math.log(model.sigma_max), math.log(model.sigma_min), 200, dtype=f64))
    with torch.no_grad():  # the PF-ODE in u = log sigma: dx/du = x - D(x, e^u)
        ref = odeint(lambda u, y: y - D(y, torch.exp(u)), x_T, torch.log(dense), method="dopri5", rtol=1e-10,
                     atol=1e-10) / torch.sqrt(1 + dense**2)[:, None, None]
    lim = 1.3
    u = torch.linspace(-lim, lim, 200, dtype=f64)
    dens = model.gmm.log_prob(torch.stack(torch.meshgrid(u, u, indexing="xy"), -1).reshape(-1, 2)).exp().reshape(200, 200)
    fig = figure(figsize=(3.6 * len(solvers), 3.8))
    for k, s in enumerate(solvers):
        ax = fig.add_subplot(1, len(solvers), k + 1)
        ax.imshow(dens, extent=(-lim, lim, -lim, lim), origin="lower", cmap="Greys", alpha=0.6)
        _, traj, info = diffode.sample(D, x_T, solver=s, nfe=nfe, grid=grid, schedule=model.schedule,
                                       sigma_min=model.sigma_min, sigma_max=model.sigma_max,
                                       return_trajectory=True, return_info=True)
        states = torch.stack([x_T] + traj) / torch.sqrt(1 + info["sigmas"] ** 2)[:, None, None]
        for i in range(x_T.shape[0]):
            ax.plot(states[:, i, 0], states[:, i, 1], "-o", color="tab:red", ms=2.5, lw=0.9, zorder=2)
            ax.plot(ref[:, i, 0], ref[:, i, 1], color="tab:green", lw=1.0, zorder=3)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_title(f"{s}, NFE {nfe}, {grid} grid", fontsize=9)
        if k == 0:
            ax.plot([], [], color="tab:green", label="reference (dopri5)")
            ax.plot([], [], "-o", color="tab:red", ms=2.5, label="solver steps")
            ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="start points (seeds 0..n-1)")
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = diffode.load_model(SOURCE)
    print("rk45 (adaptive dopri5 in log sigma): NFE is what it used\n")
    print(rk45_table(model, args.n))
    args.out.mkdir(parents=True, exist_ok=True)
    plot_trajectories(model, args.out / "trajectories.png")
    print(f"\nwrote {args.out / 'trajectories.png'}")


if __name__ == "__main__":
    main()
