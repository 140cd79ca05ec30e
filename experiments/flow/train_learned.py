"""Train every learned method on the flow-matching digits UNet (source=digits_flow) and ship the artifacts.

One `diffode train` job per entry, each in its own process with one thread (the machine is shared), timed
(wall seconds, the job's CPU seconds, the load average before and after); the exported artifacts are copied
to diffode/assets/artifacts/flow/<method>/<name>/ (what `diffode eval experiment=eval_flow` rows), and the
timings to experiments/flow/results/train_learned.json.

    python experiments/flow/train_learned.py                     # everything, in the order below
    python experiments/flow/train_learned.py --only gits amed    # some methods
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
ASSETS = ROOT / "diffode" / "assets" / "artifacts" / "flow"
COMMON = ["source=digits_flow", "logger=csv", "threads=1", "trainer.enable_progress_bar=false"]


def jobs() -> list[tuple[str, str, list[str]]]:
    """(method folder, job name, overrides)."""
    out = []
    for s in ("dpmpp_3m", "unipc_bh1", "ipndm"):  # as the shipped UNet's LD3 grids (experiments/ld3, section 2)
        for n in (4, 5, 6):
            out.append(("ld3", f"{s}_nfe{n}", ["method=ld3", f"method.solver={s}", f"method.nfe={n}",
                                               "method.distance=l2", "method.val_every=5"]))
    out.append(("gits", "search", ["method=gits", "method.solver=[ipndm,unipc_bh1]", "method.nfe=[4,5,6,7,8,9,10]"]))
    for n in (3, 4, 5, 6, 7, 8, 9):  # the iPNDM plugin with the shipped UNet's settings (experiments/amed)
        out.append(("amed", f"ipndm_nfe{n}", ["method=amed", "method.student=ipndm", f"method.nfe={n}",
                                              "method.afs=auto", "method.n_trajectories=8192",
                                              "method.val_refine=4", "method.objective=endpoint", "method.M=5"]))
    out.append(("reflow", "reflow", ["experiment=reflow_digits"]))
    out.append(("pd", "pd", ["experiment=pd_digits"]))
    out.append(("cd", "cd", ["experiment=cd_digits"]))
    return out


def load() -> str:
    return Path("/proc/loadavg").read_text().split(" ")[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=None, help="method folders to run (ld3 gits amed reflow pd cd)")
    ap.add_argument("--runs", default="/tmp/flow_learned_runs")
    ap.add_argument("--skip_done", action="store_true", help="skip jobs whose run dir has results.json")
    ap.add_argument("--results", default=str(HERE / "results" / "train_learned.json"))
    args = ap.parse_args()
    res_path = Path(args.results)
    res_path.parent.mkdir(parents=True, exist_ok=True)
    res = json.loads(res_path.read_text()) if res_path.exists() else {}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    for method, name, overrides in jobs():
        if args.only and method not in args.only:
            continue
        out = Path(args.runs) / method / name
        if args.skip_done and (out / "results.json").is_file():
            continue
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "diffode.cli.train", *overrides, *COMMON, f"output_dir={out}"]
        load_before, t0 = load(), time.time()
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall = time.time() - t0
        (out / "log.txt").parent.mkdir(parents=True, exist_ok=True)
        (out / "log.txt").write_text(p.stdout + p.stderr)
        if p.returncode != 0:
            print(f"{method}/{name} failed (see {out / 'log.txt'}):\n{p.stderr[-2000:]}", file=sys.stderr)
            continue
        copied = []
        for art in sorted((out / "artifacts").glob("**/manifest.json")):
            src = art.parent
            dest = ASSETS / method / (name if method in ("ld3", "amed") else src.name)
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(src, dest)
            copied.append(str(dest.relative_to(ROOT)))
        res[f"{method}/{name}"] = {"command": "diffode train " + " ".join([*overrides, *COMMON]),
                                   "wall_s": round(wall, 1),
                                   "cpu_s": round((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), 1),
                                   "load_before": load_before, "load_after": load(), "artifacts": copied}
        res_path.write_text(json.dumps(res, indent=1))
        print(f"{method}/{name}: {wall:.0f} s wall, {res[f'{method}/{name}']['cpu_s']} s CPU -> {copied}", flush=True)


if __name__ == "__main__":
    main()
