"""`python -m diffode.faults [--kills K] [--seed S] [--mode fork|exec] [--jobs a,b]`: the fault figure.

Runs every job kind (diffode.faults.jobs) uninterrupted, then K times killed with SIGKILL, then with
SIGTERM and with a full disk, each followed by the same command again, and prints per job kind the
interruptions survived / tried and the re-runs whose results are identical / runs (experiments/faults).
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m diffode.faults", description=__doc__.split("\n\n")[1])
    p.add_argument("--kills", type=int, default=6, help="SIGKILLs per job kind (default 6)")
    p.add_argument("--terms", type=int, default=3, help="SIGTERMs per job kind (default 3)")
    p.add_argument("--disk-full", type=int, default=2, help="full disks per job kind (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mode", choices=("fork", "exec"), default="fork",
                   help="fork (default): each run is a forked copy of this process, imports done (seconds per run); "
                        "exec: a fresh `python -m diffode.faults.child` process, imports and all")
    p.add_argument("--jobs", default="", help="comma-separated job kinds (default: all)")
    p.add_argument("--dir", default=None, help="sandbox root (default: a temp folder, removed at the end)")
    p.add_argument("-v", "--verbose", action="store_true", help="print every scenario as it ends")
    a = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from .harness import run_kind, table
    from .jobs import JOBS, teacher_of

    kinds = [k for k in (a.jobs.split(",") if a.jobs else JOBS) if k]
    unknown = sorted(set(kinds) - set(JOBS))
    if unknown:
        p.error(f"unknown job kind(s) {unknown}; choose from {', '.join(JOBS)}")
    if any(JOBS[k].needs_teacher for k in kinds) and "denoiser" not in kinds:
        kinds.insert(0, "denoiser")  # its export is the distillations' teacher
    rng = random.Random(a.seed)
    tmp = None if a.dir else tempfile.TemporaryDirectory(prefix="diffode_faults_")
    root = Path(a.dir or tmp.name)
    t0, outcomes = time.time(), []

    def report(o):
        if a.verbose or o.problems:
            flag = "missed" if not o.landed else "ok" if o.survived and o.identical else "FAIL"
            print(f"[{flag}] {o.kind} {o.fault} at {o.moment}" + "".join(f"\n    {x}" for x in o.problems), flush=True)

    for k in kinds:
        outcomes += run_kind(k, root, rng, a.mode, a.kills, a.terms, a.disk_full,
                             teacher=teacher_of(root / "denoiser" / "baseline"), report=report)
    print(f"\nfault injection, seed {a.seed}, mode {a.mode}: {len(outcomes)} interrupted runs + their re-runs in "
          f"{time.time() - t0:.0f} s\n")
    print(table(outcomes))
    if tmp is not None:
        tmp.cleanup()
    return 0 if all(o.survived and o.identical for o in outcomes if o.landed) else 1


if __name__ == "__main__":
    sys.exit(main())
