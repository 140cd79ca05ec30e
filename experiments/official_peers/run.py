"""The papers' own code beside diffode on an exact Gaussian mixture: the official DPM-Solver (singlestep)
and diff-sampler's AMED-Plugin samplers and time_uniform schedule. Neither is a dependency: clone them
anywhere and pass their folders (nothing of theirs is copied into diffode).

    git clone https://github.com/LuChengTHU/dpm-solver /tmp/dpm-solver
    git clone https://github.com/zju-pi/diff-sampler /tmp/diff-sampler
    python experiments/official_peers/run.py --dpm_solver /tmp/dpm-solver --diff_sampler /tmp/diff-sampler

Prints, per comparison, the largest |official - diffode| over the endpoint (float64 throughout: the
peers build their time grids with torch's default dtype, set to float64 here).
"""
from __future__ import annotations

import argparse
import importlib
import sys

import torch

torch.set_default_dtype(torch.float64)
F64 = torch.float64


def dpm_solver_rows(path, gmm):
    """Official singlestep DPM-Solver (noise prediction) on the linear VP-SDE against dpm_solver_2/3."""
    sys.path.insert(0, path)
    off = importlib.import_module("dpm_solver_pytorch")
    from diffode.core.grids import make_grid
    from diffode.core.sample import sample
    from diffode.core.schedules import VPLinear

    sch, ns = VPLinear(), off.NoiseScheduleVP("linear", continuous_beta_0=0.1, continuous_beta_1=20.0)

    def eps(x, t):  # the mixture's exact noise prediction at the VP state x, continuous time t
        a, s = ns.marginal_alpha(t).reshape(-1, 1), ns.marginal_std(t).reshape(-1, 1)
        return (x - a * gmm(x / a, (s / a).reshape(-1))) / s

    solver = off.DPM_Solver(off.model_wrapper(eps, ns, model_type="noise"), ns, algorithm_type="dpmsolver")
    z = torch.randn(64, gmm.dim, generator=torch.Generator().manual_seed(0))
    x_T = sch.sigma_max * z
    a0 = float(ns.marginal_alpha(torch.tensor([1e-3])))
    grids = {"time_uniform": "time_uniform", "time_quadratic": "time_quadratic", "logSNR": "logsnr"}
    print("| official (order, skip_type, method) | NFE | inner=grid | inner=lambda |")
    print("|---|---|---|---|")
    for order, name in ((2, "dpm_solver_2"), (3, "dpm_solver_3")):
        for skip, grid in grids.items():
            for method in ("singlestep", "singlestep_fixed"):
                for nfe in (6, 7, 8, 9):
                    if method == "singlestep_fixed" and nfe % order:
                        continue  # the fixed method leaves the remainder of the NFE unused
                    ref = solver.sample(float(sch.alpha(1.0)) * x_T, steps=nfe, t_start=1.0, t_end=1e-3, order=order,
                                        skip_type=skip, method=method) / a0
                    grid_ = sample(gmm, x_T, name, nfe=nfe, grid=grid, schedule=sch, inner="grid")
                    cells = [f"{float((grid_ - ref).abs().max()):.1e}"]
                    if nfe % order == 0:
                        lam_ = sample(gmm, x_T, name, nfe=None, schedule=sch,
                                      grid=make_grid(grid, nfe // order, sch))
                        cells.append(f"{float((lam_ - ref).abs().max()):.1e}")
                    else:
                        cells.append("-")
                    print(f"| {order}, {skip}, {method} | {nfe} | " + " | ".join(cells) + " |")


def diff_sampler_rows(path, gmm):
    """diff-sampler's AMED-Plugin samplers (a fixed predictor output per step) and time_uniform schedule."""
    sys.path.insert(0, f"{path}/amed-solver-main")
    off = importlib.import_module("solvers_amed")
    utils = importlib.import_module("solver_utils")
    off.dynamic_thresholding_fn = lambda x0: x0  # Imagen's thresholding: not part of the update compared
    from diffode.core.grids import make_grid
    from diffode.core.sample import sample
    from diffode.core.stage import Stage

    K, B = 4, 8
    g = torch.Generator().manual_seed(1)
    r, c, a = (0.2 + 0.6 * torch.rand(K, B, generator=g), 0.9 + 0.2 * torch.rand(K, B, generator=g),
               0.9 + 0.2 * torch.rand(K, B, generator=g))
    ts = make_grid("edm", K)

    class Net(torch.nn.Module):  # what their init_hook and get_denoised need: a 4-D state and an encoder block
        img_resolution = 32

        def __init__(self):
            super().__init__()
            self.model = torch.nn.Module()
            self.model.enc = torch.nn.ModuleDict({"8x8_block3": torch.nn.Identity()})

        def forward(self, x, t, class_labels=None):
            self.model.enc["8x8_block3"](x)
            t = torch.as_tensor(t, dtype=F64).reshape(-1)
            return gmm(x.reshape(x.shape[0], -1), t if t.numel() > 1 else t[0]).reshape(x.shape)

    def predictor(features, t_cur, t_next):
        i = int(torch.argmin((ts - t_cur.reshape(-1)[0]).abs()))
        return r[i], c[i], a[i]

    predictor.scale_time = True
    z = torch.randn(B, 1, 1, gmm.dim, generator=torch.Generator().manual_seed(2))
    common = dict(num_steps=K + 1, sigma_min=0.002, sigma_max=80.0, schedule_type="polynomial", schedule_rho=7,
                  AMED_predictor=predictor)
    hook = lambda i, s, t, x: Stage(t ** r[i] * s ** (1 - r[i]), c=c[i], a=a[i])  # noqa: E731
    print("\n| diff-sampler sampler | diffode solver | max abs difference |")
    print("|---|---|---|")
    for fn, name, extra, opts in (("amed_sampler", "amed", {}, {}), ("euler_sampler", "euler", {}, {}),
                                  ("dpm_2_sampler", "dpm_solver_2", {}, {}),
                                  ("ipndm_sampler", "ipndm", dict(max_order=4), {}),
                                  ("dpm_pp_sampler", "dpmpp_2m", dict(max_order=2, predict_x0=True,
                                                                      lower_order_final=True),
                                   dict(lower_order_final=True))):
        ref = getattr(off, fn)(Net(), z, **common, **extra).reshape(B, -1)
        ours = sample(gmm, 80.0 * z.reshape(B, -1), name, nfe=None, grid=ts, midpoints=hook, **opts)
        print(f"| {fn} | {name} | {float((ours - ref).abs().max()):.1e} |")
    print("\n| diff-sampler get_schedule('time_uniform', rho) | diffode grid | max relative difference |")
    print("|---|---|---|")
    for rho in (1.0, 7.0):
        ref = utils.get_schedule(7, 0.002, 80.0, schedule_type="time_uniform", schedule_rho=rho)
        for grid, opts in (("time_uniform_vp", dict(rho=rho)), ("time_uniform", {})):
            ours = make_grid(grid, 6, **opts)
            print(f"| rho = {rho:g} | {grid} | {float(((ours - ref) / ref).abs().max()):.1e} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dpm_solver", required=True, help="a clone of github.com/LuChengTHU/dpm-solver")
    ap.add_argument("--diff_sampler", required=True, help="a clone of github.com/zju-pi/diff-sampler")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from diffode.core.denoisers import make_gmm

    gmm = make_gmm(4, components=5, seed=1, spread=1.5, std=0.5)
    dpm_solver_rows(args.dpm_solver, gmm)
    diff_sampler_rows(args.diff_sampler, gmm)


if __name__ == "__main__":
    main()
