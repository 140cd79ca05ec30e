"""What c should multiply in the AMED-Plugin on DPM-Solver++(2M): the official plugin's model terms
(`official`: x = (t/s) x_s + c sum_j w_j D_j, diffode's update) or the whole sub-step (`whole_step`:
x = x_s + c (x(1) - x_s), diffode's convention before issue 22, obtained here by replacing the one
function that differs, diffode.core.solvers.dpmpp.unscaled, for the run).

For each source and NFE, trains the dpmpp_2m plugin twice with conf/method/amed.yaml's options (AFS at
odd NFEs), the same seeds (initial weights and trajectories), once per convention, and scores the exported predictor on held-out noise
(seeds 0..n-1): endpoint RMSE against a float64 dopri5 solve (mixtures, rtol = atol = 1e-9) or the
DPM-Solver++(3M) NFE-100 solve (digits, conf/eval.yaml's reference), plus the digits-classifier FID
on the digits. `--scale_dir` widens c's range (the paper's 0.01 by default) to see the question
where c has room.

    python experiments/amed/dpmpp_direction.py --sources gmm2d gmm16d --seeds 0 1 2 --scale_dir 0.01 0.1
    python experiments/amed/dpmpp_direction.py --sources digits --n 2000 \
        --results experiments/amed/results/dpmpp_direction_digits.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
CONVENTIONS = ("official", "whole_step")


@contextlib.contextmanager
def convention(name):
    """Inside: c scales the whole sub-step (whole_step) instead of the model terms (official)."""
    from diffode.core.solvers import dpmpp

    kept = dpmpp.unscaled
    if name == "whole_step":
        dpmpp.unscaled = lambda x, s, t: x
    try:
        yield
    finally:
        dpmpp.unscaled = kept


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sources", nargs="+", default=["gmm2d", "gmm16d"], help="gmm2d, gmm16d and/or digits")
    ap.add_argument("--nfes", nargs="+", type=int, default=[3, 4, 5, 6, 7, 8, 9])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0], help="training seeds (noise of the trajectories)")
    ap.add_argument("--scale_dir", nargs="+", type=float, default=[0.01])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--results", default=str(HERE / "results" / "dpmpp_direction.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    from omegaconf import OmegaConf

    from diffode.evaluation.metrics import FIDMetrics, ReferenceSolve
    from diffode.models import initial_noise, load_model
    from gmm import reference as gmm_reference, train  # experiments/amed/gmm.py

    path = Path(args.results)
    res = json.loads(path.read_text()) if path.exists() else {}
    for src in args.sources:
        model = load_model({"kind": "checkpoint", "path": None} if src == "digits" else {"kind": "gmm", "preset": src})
        x_T = initial_noise(model.shape, range(args.n), model.sigma_max)
        if src == "digits":
            rcfg = OmegaConf.create({"enabled": True, "solver": "dpmpp_3m", "grid": "logsnr", "nfe": 100,
                                     "check_nfe": 50, "cache_dir": None})
            ref = ReferenceSolve(model, x_T, 0, rcfg, 500)
            fid = FIDMetrics(model, OmegaConf.create({"reference": "digits", "features": "digits", "batch_size": 2000,
                                                      "bootstrap": 0, "data_root": None, "cache_dir": None}), reference=ref)
            score = lambda x: {k: float(v) for k, v in fid(x.float(), x_T).items() if k in ("fid", "rmse")}  # noqa: E731
        else:
            ref_x = gmm_reference(model.denoiser, x_T, model.sigma_max, model.sigma_min)
            score = lambda x: {"rmse": float((x - ref_x).pow(2).mean().sqrt())}  # noqa: E731
        for sd in args.scale_dir:
            for nfe in args.nfes:
                for seed in args.seeds:
                    for conv in CONVENTIONS:
                        key = f"{src}/scale_dir={sd}/nfe={nfe}/seed={seed}/{conv}"
                        if key in res:
                            continue
                        torch.manual_seed(seed)  # the predictor's initial weights: the same for both conventions
                        with convention(conv):
                            m, seconds = train(model, "dpmpp_2m", nfe, scale_dir=sd,
                                               seed=1_000_000_000 + 10_000_000 * seed)
                            with torch.no_grad():
                                x = torch.cat([m.sample(xb, m.exported()) for xb in x_T.split(500)])
                        res[key] = {**score(x), "train_s": round(seconds, 1), "selected_batch": int(m.best_batch)}
                        print(key, json.dumps(res[key]), flush=True)
                        path.write_text(json.dumps(res, indent=1, sort_keys=True))
    print_table(res)


def print_table(res):
    """official vs whole_step per (source, scale_dir, NFE): the mean over seeds of each metric, and the
    (NFE, seed) cells each convention wins."""
    cells = {}
    for key, v in res.items():
        src, sd, nfe, _, conv = key.split("/")
        for metric, val in v.items():
            if metric in ("rmse", "fid"):
                cells.setdefault((src, sd, metric), {}).setdefault(int(nfe.split("=")[1]), {}).setdefault(conv, []).append(val)
    for (src, sd, metric), by_nfe in sorted(cells.items()):
        nfes = sorted(by_nfe)
        pairs = [(a, b) for k in nfes for a, b in zip(by_nfe[k].get("official", []), by_nfe[k].get("whole_step", []))]
        ties = sum(abs(a - b) <= 1e-9 * abs(b) for a, b in pairs)  # both exported the untrained state (c = 1)
        wins = sum(a < b for a, b in pairs) - sum(a < b and abs(a - b) <= 1e-9 * abs(b) for a, b in pairs)
        print(f"\n{src}, {sd}, {metric}: mean over seeds; of {len(pairs)} (NFE, seed) cells official wins {wins}, "
              f"whole_step {len(pairs) - wins - ties}, {ties} ties")
        print("| c scales | " + " | ".join(f"NFE {k}" for k in nfes) + " |")
        print("|---|" + "---|" * len(nfes))
        for conv in CONVENTIONS:
            vals = [sum(by_nfe[k].get(conv, [math.nan])) / max(1, len(by_nfe[k].get(conv, []))) for k in nfes]
            print(f"| {conv} | " + " | ".join(f"{v:.4g}" for v in vals) + " |")


if __name__ == "__main__":
    main()
