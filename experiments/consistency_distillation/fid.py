"""Consistency distillation on the shipped digits UNet: FID vs updates, the sampling sigmas, final FIDs, ablation.

FID uses the project's digits classifier features against the digits training split (the protocol of
`diffode eval`: diffode.evaluation.metrics.FIDMetrics, samples clipped and rounded to 8 bits). x_T comes
from diffode.models.initial_noise with seeds 0..n-1, the seeds every `diffode eval` row uses; the fresh
noise between consistency steps comes from one generator per batch of 2000, seeded by the batch index
(`diffode eval ... batch_size=2000` seeds its batches the same way, so an exported artifact scores the same there).

    python experiments/consistency_distillation/fid.py curve  --run <run dir> --n 2000
    python experiments/consistency_distillation/fid.py search --run <run dir> --n 2000 --select
    python experiments/consistency_distillation/fid.py final  --run <run dir> --n 10000 --export
    python experiments/consistency_distillation/fid.py ablation --runs <dir> ... --run <main> --baseline <snapshot>

Why a script: what it scores are not samplers `diffode eval` knows. `curve` scores the run's EMA snapshots
(snapshots/ema_step*.pt, written during training); `search` picks the intermediate sigmas greedily, as the
CM paper does (Sec. 3; it ternary-searches FID): tau_1 for 2 steps, then tau_2 < tau_1 for 3, tau_3 < tau_2
for 4, each among the interior points of the N = 40 Karras grid, scored on seeds 100000.. (not the seeds of
the final FID); `final --export` writes the artifacts cd_1, cd_2, cd_4 of the chosen student and sigmas;
`ablation` puts runs of one (student, NFE) label side by side, which one sweep cannot hold.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SEARCH_SEED0 = 100_000
BATCH = 2000


class DigitsFID:
    def __init__(self, bootstrap: int = 0):
        from omegaconf import OmegaConf

        from diffode.evaluation.metrics import FIDMetrics

        fcfg = OmegaConf.create({"reference": "digits", "features": "digits", "batch_size": BATCH,
                                 "bootstrap": bootstrap})
        self.metrics = FIDMetrics(teacher_model(), fcfg)

    def __call__(self, samples) -> dict:
        out = self.metrics(samples, None)
        return {k: float(v) for k, v in out.items() if isinstance(v, (int, float)) or getattr(v, "numel", lambda: 0)() == 1}


def teacher_model():
    import diffode

    return diffode.load_model({"kind": "checkpoint", "path": None})


def noise(n: int, seed0: int, sigma_max: float):
    from diffode.models import initial_noise

    return initial_noise((1, 8, 8), range(seed0, seed0 + n), sigma_max)


def load_student(path: Path):
    """The evaluation-EMA consistency function of a snapshot file, a run dir (its cd_1 artifact) or an artifact."""
    from diffode.artifacts import load_sampler
    from diffode.spec import build

    path = Path(path)
    if path.suffix == ".ckpt":  # a Lightning checkpoint of the run: its evaluation EMA
        ck = torch.load(path, map_location="cpu", weights_only=True)
        f = build(ck["hyper_parameters"]["student_spec"])
        f.load_state_dict({k[4:]: v for k, v in ck["state_dict"].items() if k.startswith("ema.")})
        return f.eval().requires_grad_(False)
    if path.suffix == ".pt":
        blob = torch.load(path, map_location="cpu", weights_only=True)
        f = build(blob["spec"])
        f.load_state_dict(blob["state_dict"])
        return f.eval().requires_grad_(False)
    if (path / "artifacts" / "cd_1").is_dir():
        path = path / "artifacts" / "cd_1"
    return load_sampler(path).student


@torch.no_grad()
def cd_samples(f, x_T, sigmas, clip=1.0):
    from diffode import sample

    out = []
    for b, xb in enumerate(x_T.split(BATCH)):
        g = torch.Generator().manual_seed(b)
        out.append(sample(f, xb, solver="consistency", nfe=len(sigmas) - 1, grid=torch.as_tensor(sigmas, dtype=torch.float64),
                          generator=g, clip=clip))
    return torch.cat(out)


def karras(k: int, lo=0.002, hi=80.0):
    from diffode.core.consistency import karras_grid

    return karras_grid(k + 1, lo, hi).tolist()


def _save(name: str, data) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    p = RESULTS / name
    p.write_text(json.dumps(data, indent=1))
    return p


def _load(name: str, default=None):
    p = RESULTS / name
    return json.loads(p.read_text()) if p.is_file() else default


def chosen_sigmas() -> dict:
    """k -> sigmas: the search's choice where it ran, else the Karras grid of k + 1 points."""
    s = _load("sigma_search.json", {}).get("chosen", {})
    return {k: s.get(str(k), karras(k)) for k in (1, 2, 4)}


def cmd_curve(args):
    fid = DigitsFID()
    x_T = noise(args.n, 0, 80.0)
    snaps = sorted((Path(args.run) / "snapshots").glob("ema_step*.pt"))
    if args.with_init:
        snaps = [None] + snaps
    sig = {k: karras(k) for k in (1, 2, 4)}  # fixed along the curve (the search runs on the final student)
    rows = _load(f"curve_{Path(args.run).name}.json", {"run": str(args.run), "n": args.n, "rows": [],
                                                        "sigmas": "Karras grid of k + 1 points (rho 7)"})
    done = {r["step"] for r in rows["rows"]}
    for p in snaps:
        step = 0 if p is None else int(p.stem.split("step")[1])
        if step in done:
            continue
        if p is None:  # step 0: the student as initialised, i.e. the teacher's network in the consistency form
            from diffode.core.consistency import ConsistencyFunction

            f = ConsistencyFunction(teacher_model().denoiser, 0.002, 0.5)
        else:
            f = load_student(p)
        row = {"step": step}
        for k in (1, 2, 4):
            row[f"fid_{k}"] = fid(cd_samples(f, x_T, sig[k]))["fid"]
        rows["rows"].append(row)
        rows["rows"].sort(key=lambda r: r["step"])
        _save(f"curve_{Path(args.run).name}.json", rows)
        print(json.dumps(row), flush=True)
    plot_curve(rows, RESULTS / f"fid_vs_updates_{Path(args.run).name}.png")


def plot_curve(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = rows["rows"]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for k, m in ((1, "o"), (2, "s"), (4, "^")):
        ax.plot([x["step"] for x in r], [x[f"fid_{k}"] for x in r], marker=m, label=f"CD, {k} step{'s' * (k > 1)}")
    ax.set_yscale("log")
    ax.set_xlabel("updates (batch 128)")
    ax.set_ylabel(f"FID (digits features, {rows['n']} samples)")
    ax.set_title("Consistency distillation of the digits UNet")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    print("wrote", path)


def cmd_search(args):
    fid = DigitsFID()
    x_T = noise(args.n, SEARCH_SEED0, 80.0)
    res = {"run": str(args.run), "n": args.n, "seeds": f"{SEARCH_SEED0}..", "steps": {}}
    # which weights: the evaluation-EMA snapshot with the best 1-step FID on the search seeds (model selection
    # on seeds the final FID does not use), or the run's exported student
    picks = {str(p): p for p in sorted((Path(args.run) / "snapshots").glob("ema_step*.pt"))} if args.select else {}
    picks["final"] = Path(args.run)
    scores = {name: fid(cd_samples(load_student(p), x_T, karras(1)))["fid"] for name, p in picks.items()}
    res["student"] = min(scores, key=scores.get)
    res["student_scores_1step"] = scores
    print("student", res["student"], scores[res["student"]], flush=True)
    f = load_student(picks[res["student"]])
    cands = karras(39)[1:-1][::2]  # interior points of the N = 40 training grid, every other one
    res["candidates"] = cands
    taus = []
    for k in (2, 3, 4):
        scores = {}
        for tau in cands:
            if taus and tau >= taus[-1]:
                continue
            scores[tau] = fid(cd_samples(f, x_T, [80.0, *taus, tau, 0.002]))["fid"]
        best = min(scores, key=scores.get)
        taus.append(best)
        res["steps"][str(k)] = {"scores": {f"{t:.6g}": v for t, v in scores.items()}, "best_tau": best,
                                "best_fid": scores[best], "sigmas": [80.0, *taus, 0.002],
                                "karras_fid": fid(cd_samples(f, x_T, karras(k)))["fid"]}
        print(k, json.dumps({kk: v for kk, v in res["steps"][str(k)].items() if kk != "scores"}), flush=True)
    res["chosen"] = {"1": karras(1), "2": res["steps"]["2"]["sigmas"], "4": res["steps"]["4"]["sigmas"]}
    _save("sigma_search.json", res)


def cmd_final(args):
    fid = DigitsFID(bootstrap=200)
    chosen = _load("sigma_search.json", {}).get("student", "final")
    f = load_student(Path(args.run) if chosen == "final" else Path(chosen))
    x_T = noise(args.n, 0, 80.0)
    sig = chosen_sigmas()
    out = _load("final.json", {})
    for k in (1, 2, 4):
        t0 = time.perf_counter()
        s = cd_samples(f, x_T, sig[k])
        out[f"cd_{k}"] = {"nfe": k, "n": args.n, "sigmas": sig[k], **fid(s),
                          "sample_seconds": round(time.perf_counter() - t0, 2)}
        print(k, json.dumps(out[f"cd_{k}"]), flush=True)
        if k == 1 and args.png:
            from diffode.evaluation.sweep import save_samples_png

            save_samples_png(s[:64], RESULTS / "samples_cd_1.png", title="CD, 1 step")
        elif args.png:
            from diffode.evaluation.sweep import save_samples_png

            save_samples_png(s[:64], RESULTS / f"samples_cd_{k}.png", title=f"CD, {k} steps")
    out["run"], out["student"] = str(args.run), chosen
    _save("final.json", out)
    if args.export:
        export(Path(args.run), f, sig)


def export(run: Path, f, sig):
    """experiments/consistency_distillation/artifacts/cd_<k>: the run's student with the chosen sigmas."""
    from diffode.artifacts import load_sampler, save_artifact

    model = teacher_model()
    src = load_sampler(run / "artifacts" / "cd_1")
    final = _load("final.json", {})
    for k in (1, 2, 4):
        m = src.manifest
        path = save_artifact(HERE / "artifacts" / f"cd_{k}", kind="cd", label=f"cd/{k}", solver="consistency",
                             solver_options=m["solver_options"], nfe=k, sigmas=sig[k], model=model.identity,
                             schedule=model.schedule, training={**m["training"], "run": str(run), "weights": final.get("student", "final")},
                             metrics={"fid_digits": final.get(f"cd_{k}", {}).get("fid"),
                                      "fid_n": final.get(f"cd_{k}", {}).get("n"),
                                      "sigmas": "greedy FID search (fid.py search)" if k > 1 else "one step"},
                             student=f, student_spec=m["student"]["spec"])
        print("artifact", path)


def cmd_ablation(args):
    fid = DigitsFID()
    x_T = noise(args.n, 0, 80.0)
    sig = {k: karras(k) for k in (1, 2, 4)}  # one fixed sampler for every setting: the ablation is of training
    out = _load("ablation.json", {})
    entries = [(Path(r), None) for r in args.runs]
    if args.baseline:  # a snapshot of the main run at the ablation's budget: the same config and trajectory
        entries.insert(0, (Path(args.run), Path(args.baseline)))
    for run, snap in entries:
        if snap is not None:
            cfg = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
            cfg = cfg["hyper_parameters"]["cd"]
            step = int(torch.load(snap, map_location="cpu", weights_only=True)["step"])
            res = {"global_step": step, "train_seconds": None}
        else:
            cfg = json.loads((run / "artifacts" / "cd_1" / "manifest.json").read_text())["training"]
            res = json.loads((run / "results.json").read_text())
        f = load_student(snap or run)
        row = {"N": cfg["N"], "mu": cfg["mu"], "distance": cfg["distance"], "lr": cfg["lr"],
               "updates": res["global_step"], "train_seconds": res["train_seconds"], "n": args.n,
               "val_distill_l2": res.get("val/distill_l2"), "weights": str(snap or run)}
        for k in (1, 2, 4):
            row[f"fid_{k}"] = fid(cd_samples(f, x_T, sig[k]))["fid"]
        out["baseline" if snap is not None else str(run)] = row
        print(json.dumps(row), flush=True)
        _save("ablation.json", out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["curve", "search", "final", "ablation"])
    ap.add_argument("--run", help="a `diffode train experiment=cd_digits` run directory")
    ap.add_argument("--runs", nargs="*", default=[])
    ap.add_argument("--baseline", help="ablation: the main run's EMA snapshot at the ablation budget (with --run)")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--with_init", action="store_true", help="curve: also score the student before training")
    ap.add_argument("--export", action="store_true")
    ap.add_argument("--select", action="store_true", help="search: pick the best EMA snapshot on the search seeds")
    ap.add_argument("--png", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    {"curve": cmd_curve, "search": cmd_search, "final": cmd_final, "ablation": cmd_ablation}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
