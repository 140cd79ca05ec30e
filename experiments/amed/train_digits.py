"""Train AMED on the shipped digits UNet: one `diffode train method=amed` job per (student, NFE), timed.

Each job runs the one runner in its own process (1 thread: the machine is shared) with the options of
conf/method/amed.yaml plus the student, the NFE and its AFS parity (odd NFE: afs=true). The exported
artifact is copied to experiments/amed/artifacts/<student>_nfe<k>/ (what `diffode eval experiment=eval_amed`
evaluates, through its shipped copy); wall time, trajectories, Adam updates, held-out loss before/after and the
machine's load average (uptime) and the job's CPU time (one thread, so on an idle core it is its
wall time; the wall time here is inflated by the other jobs sharing the two cores) go to experiments/amed/results/train_digits.json.

    python experiments/amed/train_digits.py --students amed ipndm dpm_solver_2 --nfes 3 4 5 6 7 8 9

A script rather than `diffode train -m method=amed ...` (which trains the same jobs) for the timing tables: it
records each job's CPU seconds and the load around it.
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


def load() -> str:
    return Path("/proc/loadavg").read_text().split(" ")[0] if Path("/proc/loadavg").exists() else "?"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--students", nargs="+", default=["amed", "ipndm", "dpm_solver_2"])
    ap.add_argument("--nfes", nargs="+", type=int, default=[3, 4, 5, 6, 7, 8, 9])
    ap.add_argument("--extra", nargs="*", default=[], help="more overrides, e.g. method.n_trajectories=1024")
    ap.add_argument("--runs", default=str(HERE / "runs"))
    ap.add_argument("--skip_done", action="store_true")
    ap.add_argument("--artifacts", default=str(HERE / "artifacts"), help="where the exported artifacts go")
    ap.add_argument("--results", default=str(HERE / "results" / "train_digits.json"),
                    help="one file per concurrent driver (merge them afterwards)")
    args = ap.parse_args()
    res_path = Path(args.results)
    res_path.parent.mkdir(parents=True, exist_ok=True)
    res = json.loads(res_path.read_text()) if res_path.exists() else {}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    for student in args.students:
        for nfe in args.nfes:
            key = f"{student}_nfe{nfe}"
            art = Path(args.artifacts) / key
            if args.skip_done and (art / "manifest.json").is_file():
                continue
            out = Path(args.runs) / key
            shutil.rmtree(out, ignore_errors=True)
            cmd = [sys.executable, "-m", "diffode.cli.train", "method=amed", "source=checkpoint", "logger=csv",
                   "threads=1", "trainer.enable_progress_bar=false", f"method.student={student}", f"method.nfe={nfe}",
                   f"method.afs={'true' if nfe % 2 else 'false'}", f"output_dir={out}", *args.extra]
            load_before, t0 = load(), time.time()
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            wall = time.time() - t0
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)  # one thread: ~ wall time when idle
            if p.returncode != 0:
                print(key, "FAILED", p.stderr[-2000:], flush=True)
                res[key] = {"failed": p.stderr[-2000:]}
                res_path.write_text(json.dumps(res, indent=1, sort_keys=True))
                continue
            shutil.rmtree(art, ignore_errors=True)
            shutil.copytree(out / "artifacts" / "amed", art)
            man = json.loads((art / "manifest.json").read_text())
            m = man["metrics"]
            res[key] = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "fit_s": round(m["train_seconds"], 1), "load_before": load_before,
                        "load_after": load(), "trajectories": m["trajectories"], "updates": m["updates"],
                        "parameters": m["parameters"], "predictor": m["predictor"],
                        "val_loss": [m.get("val_loss_start"), m.get("val_loss_end")],
                        "val_endpoint_rmse": [m.get("val_rmse_start"), m.get("val_rmse_end")],
                        "selected": [m.get("val_rmse_selected"), m.get("selected_batch")],
                        "command": "diffode train " + " ".join(cmd[3:])}
            print(key, json.dumps(res[key]), flush=True)
            res_path.write_text(json.dumps(res, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
