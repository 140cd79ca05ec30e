"""FID (digits-classifier features) and solver error of AMED against the zoo on the shipped digits UNet.

Every row is scored at every NFE on the same noise seeds 0..n-1 (--seed0 shifts them; never an AMED training seed):
FID against the digits training split (diffode.evaluation.metrics.FIDMetrics: samples clipped and
rounded to 8 bits, as `diffode eval` does) and RMSE against the reference solve of the same noise
(DPM-Solver++(3M), logSNR, NFE 100: conf/eval.yaml `reference`). Rows:

- AMED: experiments/amed/artifacts/<student>_nfe<k> (train_digits.py): amed/amed (AMED-Solver),
  ipndm/amed and dpm_solver_2/amed (AMED-Plugin);
- amed/fixed: the AMED-Solver step without a predictor (r = 1/2: DPM-Solver-2's midpoint step) on
  the same EDM grid with the same AFS, i.e. what the training starts from;
- the zoo on its usual grid (conf/eval.yaml usual_grid): DPM-Solver-2 and Heun with AFS at odd NFEs
  (the paper's single-step baselines), iPNDM, DPM-Solver++(3M), UniPC (bh1, order 3), no AFS;
- LD3 grids where one is shipped for that NFE (diffode/assets/artifacts/ld3).

Results merge into experiments/amed/results/digits_fid.json (resumable), the table into digits_fid.md,
with the FID of the reference solve itself (the model's converged FID).

    python experiments/amed/digits_fid.py --n 2000 --nfes 3 4 5 6 7 8 9
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
ZOO = [("dpm_solver_2", "logsnr", True), ("heun", "edm", True), ("ipndm", "edm", False),
       ("dpmpp_3m", "logsnr", False), ("unipc_bh1", "logsnr", False)]
AMED = ["amed", "ipndm", "dpm_solver_2"]
LD3 = ["dpmpp_3m", "ipndm", "unipc_bh1"]


def rows_for(nfe: int, artifacts: Path = HERE / "artifacts") -> dict:
    """name -> (kind, spec) of every row at this NFE whose sampler exists."""
    rows = {}
    for student in AMED:
        art = artifacts / f"{student}_nfe{nfe}"
        if (art / "manifest.json").is_file():
            rows[f"{student}/amed"] = ("artifact", art)
    rows["amed/fixed"] = ("fixed", None)
    for name, grid, afs_odd in ZOO:
        rows[f"{name}/{grid}"] = ("zoo", (name, grid, afs_odd and bool(nfe % 2)))
    for solver in LD3:
        art = ROOT / "diffode" / "assets" / "artifacts" / "ld3" / f"{solver}_nfe{nfe}"
        if (art / "manifest.json").is_file():
            rows[f"{solver}/ld3"] = ("artifact", art)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--nfes", nargs="+", type=int, default=[3, 4, 5, 6, 7, 8, 9])
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed0", type=int, default=0, help="noise seeds seed0..seed0+n-1 (screening: away from the "
                                                          "table's 0..9999)")
    ap.add_argument("--bootstrap", type=int, default=200, help="bootstrap replicates of the 95%% FID interval (0: none)")
    ap.add_argument("--only", nargs="*", default=None, help="row names to (re)score")
    ap.add_argument("--artifacts", default=str(HERE / "artifacts"), help="the AMED artifacts to score")
    ap.add_argument("--results", default=str(HERE / "results" / "digits_fid.json"),
                    help="results file (resumable); the table goes next to it as .md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from omegaconf import OmegaConf

    from diffode.artifacts import load_sampler
    from diffode.config import solver_config
    from diffode.core.grids import make_grid
    from diffode.core.sample import sample, steps_for_nfe
    from diffode.evaluation.metrics import FIDMetrics, ReferenceSolve
    from diffode.models import initial_noise, load_model

    model = load_model({"kind": "checkpoint", "path": None})
    D = model.denoiser
    x_T = initial_noise(model.shape, range(args.seed0, args.seed0 + args.n), model.sigma_max)
    rcfg = OmegaConf.create({"enabled": True, "solver": "dpmpp_3m", "grid": "logsnr", "nfe": 100, "check_nfe": 50,
                             "cache_dir": None})  # conf/eval.yaml's reference solve
    t0 = time.time()
    ref = ReferenceSolve(model, x_T, args.seed0, rcfg, args.batch)
    print(f"reference solve ready ({time.time() - t0:.0f} s)", flush=True)
    fid = FIDMetrics(model, OmegaConf.create({"reference": "digits", "features": "digits", "batch_size": 2000,
                                              "bootstrap": args.bootstrap, "data_root": None, "cache_dir": None}), reference=ref)
    res_path = Path(args.results)
    res_path.parent.mkdir(exist_ok=True)
    res = json.loads(res_path.read_text()) if res_path.exists() else {}
    key_n = f"n{args.n}" + (f"_seed{args.seed0}" if args.seed0 else "")
    table = res.setdefault(key_n, {})
    if f"{key_n}_reference" not in res:  # the reference solve's own FID: the model's converged FID
        res[f"{key_n}_reference"] = {"solve": "dpmpp_3m/logsnr NFE 100", "fid": float(fid(ref.x_ref.float(), x_T)["fid"]),
                                     "self_rmse_vs_nfe50": ref.self_rmse}
        print("reference", json.dumps(res[f"{key_n}_reference"]), flush=True)
        res_path.write_text(json.dumps(res, indent=1, sort_keys=True))

    def run(fn):
        with torch.no_grad():
            return torch.cat([fn(x_T[i:i + args.batch]) for i in range(0, args.n, args.batch)])

    for nfe in args.nfes:
        for label, (kind, spec) in rows_for(nfe, Path(args.artifacts)).items():
            if args.only and label not in args.only:
                continue
            if not args.only and str(nfe) in table.get(label, {}):
                continue
            t = time.time()
            if kind == "artifact":
                s = load_sampler(spec)
                s.check(model, nfe=nfe)
                x = run(lambda xb: s.sample(D, xb))
            elif kind == "fixed":
                afs = bool(nfe % 2)
                steps = steps_for_nfe("amed", nfe, afs)
                sig = make_grid("edm", steps, model.schedule, sigma_min=model.sigma_min, sigma_max=model.sigma_max)
                x = run(lambda xb: sample(D, xb, "amed", nfe=nfe, grid=sig, afs=afs))
            else:
                name, grid, afs = spec
                reg, opts = solver_config(name)
                try:
                    x = run(lambda xb: sample(D, xb, reg, nfe=nfe, grid=grid, afs=afs, schedule=model.schedule,
                                              sigma_min=model.sigma_min, sigma_max=model.sigma_max, **opts))
                except ValueError:
                    table.setdefault(label, {})[str(nfe)] = None
                    continue
            m = fid(x.float(), x_T)
            table.setdefault(label, {})[str(nfe)] = {"fid": float(m["fid"]), "rmse": float(m["rmse"]),
                                                     "seconds": round(time.time() - t, 1)}
            if args.bootstrap:
                table[label][str(nfe)].update(fid_lo=float(m["fid_lo"]), fid_hi=float(m["fid_hi"]))
            print(nfe, label, json.dumps(table[label][str(nfe)]), flush=True)
            res_path.write_text(json.dumps(res, indent=1, sort_keys=True))
    write_table(res, key_n, args.n, res_path.with_suffix(".md"), args.seed0)


def write_table(res: dict, key_n: str, n: int, md_path: Path, seed0: int = 0):
    table = res[key_n]
    ref = res.get(f"{key_n}_reference")
    nfes = sorted({int(k) for row in table.values() for k in row})
    order = [f"{s}/amed" for s in AMED] + ["amed/fixed"] + [f"{a}/{g}" for a, g, _ in ZOO] + [f"{s}/ld3" for s in LD3]
    lines = [f"FID (digits-classifier features, {n} samples, seeds {seed0}..{seed0 + n - 1} in every cell; +- half the 95% "
             "bootstrap interval where measured) / RMSE against the DPM-Solver++(3M) NFE-100 solve of the same noise.", "",
             "| row | " + " | ".join(f"NFE {k}" for k in nfes) + " |", "|---|" + "---|" * len(nfes)]
    for label in order:
        if label not in table:
            continue
        cells = []
        for k in nfes:
            v = table[label].get(str(k))
            pm = f" +- {(v['fid_hi'] - v['fid_lo']) / 2:.1f}" if v and "fid_hi" in v else ""
            cells.append("" if v is None else f"{v['fid']:.1f}{pm} / {v['rmse']:.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if ref:
        lines += ["", f"The reference solve itself ({ref['solve']}, the converged sampler): FID {ref['fid']:.2f}, "
                      f"RMSE {ref['self_rmse_vs_nfe50']:.4f} against the same solver at NFE 50."]
    md_path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
