"""Interrupt jobs and check that re-running the same command repairs everything.

One scenario: a fresh sandbox, the job run with a fault (SIGKILL or SIGTERM at a moment, or a full disk from
one write on), then the same command again without it. It survives when that re-run exits 0, every eval
cell is in results.csv once and no temp file is left; it is identical when its results equal those of an
uninterrupted run bitwise (diffode.faults.compare). A full disk must also end in one paragraph (no
traceback) and leave the result files that were there intact.

Moments are drawn (seeded) from the trace of the uninterrupted run: its write events by phase (Hydra's
start-up, caches, checkpoints, results, export) and times before the first write (start-up) or between
writes (compute). Jobs run in a forked copy of this process (`fork`: imports already done, seconds per
run) or as a fresh `python -m diffode.faults.child` process (`exec`: exactly the user's command).
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import compare
from .inject import Plan, fingerprint
from .jobs import JOBS, Job, teacher_of

PHASES = ("startup", "compute", "checkpoint", "results", "export", "cache")


@dataclass
class Run:
    rc: int
    seconds: float
    stderr: str


@dataclass
class Moment:
    phase: str
    time: float | None = None  # seconds after the start (a signal from outside)
    at: list | None = None  # [event, path, occurrence] (a fault from inside, at that write...
    delay: float = 0.0  # ...or this many seconds after it: in the compute that follows)
    torn: bool = False  # a SIGKILL in the middle of writing the file that write opens

    def __str__(self):
        if self.at is None:
            return f"{self.phase} @{self.time:.2f}s"
        return (f"{self.phase} {'torn ' if self.torn else ''}{self.at[0]} {self.at[1]} #{self.at[2]}"
                + (f" +{self.delay:.2f}s" if self.delay else ""))


@dataclass
class Outcome:
    kind: str
    fault: str
    moment: Moment
    landed: bool
    survived: bool = False
    identical: bool = False
    problems: list = field(default_factory=list)


# -- running one job --------------------------------------------------------------------------

_SERVER = None


def server():
    """multiprocessing's forkserver, with what the jobs import imported once (diffode.faults.preload).

    Jobs are forked from it, not from this process: a fork of a process whose OpenMP threads have run
    (any torch op of a test before) hangs in its first parallel region, the server has run none."""
    global _SERVER
    if _SERVER is None:
        import multiprocessing as mp

        _SERVER = mp.get_context("forkserver")
        _SERVER.set_forkserver_preload(["diffode.faults.preload"])
    return _SERVER


def _exitcode(proc) -> int | None:
    return proc.poll() if isinstance(proc, subprocess.Popen) else proc.exitcode

def _child_env(sandbox: Path) -> dict:
    return {"DIFFODE_CACHE": str(sandbox / "cache"), "TMPDIR": str(sandbox / "tmp"), "OMP_NUM_THREADS": "1",
            "HYDRA_FULL_ERROR": "0", "DIFFODE_TRACEBACK": "0", "WANDB_MODE": "disabled"}


def launch(argv: list[str], sandbox: Path, plan: Plan, mode: str = "fork", signal_at: float | None = None,
           sig: int = signal.SIGKILL, timeout: float = 600, log: str = "run") -> Run:
    """Run `diffode <argv>` in `sandbox` under `plan`; `signal_at`: send `sig` after that many seconds.
    Its stdout and stderr go to <sandbox>/<log>.log."""
    (sandbox / "tmp").mkdir(parents=True, exist_ok=True)
    err = sandbox / f"{log}.log"
    err.write_text("")
    plan.sandbox = str(sandbox)
    t0 = time.monotonic()
    if mode == "fork":
        from .child import job_process

        proc = server().Process(target=job_process, args=(plan, argv, _child_env(sandbox), err))
        proc.start()
    else:
        with open(err, "ab") as f:
            proc = subprocess.Popen([sys.executable, "-m", "diffode.faults.child", plan.to_json(), *argv],
                                    env={**os.environ, **_child_env(sandbox)}, stdout=f, stderr=f)
    sent = False
    while (rc := _exitcode(proc)) is None:
        now = time.monotonic() - t0
        if signal_at is not None and not sent and now >= signal_at:
            os.kill(proc.pid, sig)
            sent = True
        if now > timeout:
            os.kill(proc.pid, signal.SIGKILL)
        time.sleep(0.005)
    return Run(rc, time.monotonic() - t0, err.read_text(errors="replace"))


# -- moments ----------------------------------------------------------------------------------

def phase_of(path: str) -> str:
    path = path.replace("/.", "/").removesuffix(".<tmp>")  # a temp file is in its file's phase
    if path.startswith("cache/"):
        return "cache"
    if path.startswith("run/checkpoints/"):
        return "checkpoint"
    if path.startswith(("run/artifacts/", "run/students/")) or "denoiser_ema" in path:
        return "export"
    if path.startswith("run/") and (path.startswith("run/samples/") or path.rsplit("/", 1)[-1] in (
            "results.csv", "results.json", "summary.json", "report.md", "weights_rank0.json")
            or "_vs_nfe" in path):
        return "results"
    return "startup" if path.startswith("hydra/") else "other"


def moments(trace: list, seconds: float, k: int, rng: random.Random, kinds=("open", "rename")) -> list[Moment]:
    """k moments spread over the phases present in the trace (cycling through PHASES). Start-up: a time
    before the first write of the job; compute: a time inside a gap between two writes, as a delay after the
    first of them (so that it lands in that gap however fast the machine runs today); the others: a write."""
    events = [e for e in trace if e[1] in kinds]
    by_phase = {p: [e for e in events if phase_of(e[2]) == p] for p in PHASES}
    first_write = min([e[0] for e in trace if phase_of(e[2]) != "startup"] or [seconds])
    gaps = [(e, n[0] - e[0]) for e, n in zip(trace, trace[1:]) if n[0] - e[0] > 0.02 and e[0] >= first_write]
    present = [p for p in PHASES if (p == "startup" and first_write > 0.05) or (p == "compute" and gaps)
               or by_phase.get(p)]
    out = []
    for i in range(k):
        p = present[i % len(present)]
        if p == "startup":
            out.append(Moment(p, time=rng.uniform(0.02, first_write)))
        elif p == "compute":
            e, gap = rng.choices(gaps, weights=[g for _, g in gaps])[0]
            out.append(Moment(p, at=[e[1], e[2], e[3]], delay=rng.uniform(0, gap)))
        else:  # a write: just before it, or (half of the opens) in the middle of writing the file it opens
            e = rng.choice(by_phase[p])
            out.append(Moment(p, at=[e[1], e[2], e[3]], torn=e[1] == "open" and rng.random() < 0.5))
    return out


# -- scenarios --------------------------------------------------------------------------------

def fresh(sandbox: Path) -> Path:
    if sandbox.exists():
        shutil.rmtree(sandbox)
    sandbox.mkdir(parents=True)
    return sandbox


def baseline(job: Job, root: Path, teacher: Path | None, mode: str) -> tuple[dict, list, float]:
    """(results, trace, seconds) of one uninterrupted run."""
    import json

    box = fresh(root / job.kind / "baseline")
    plan = Plan("record", trace=str(root / job.kind / "trace.json"))
    run = launch(job.argv(box, teacher), box, plan, mode)
    if run.rc != 0:
        raise RuntimeError(f"the uninterrupted {job.kind} run failed (rc {run.rc}):\n{run.stderr[-3000:]}")
    return compare.results(box / "run", job.results), json.loads(Path(plan.trace).read_text()), run.seconds


def one_paragraph(stderr: str) -> str | None:
    """None when a failed run ended in one `diffode:` paragraph without a traceback, else what is wrong."""
    if "Traceback" in stderr:
        return "a traceback on stderr"
    lines = stderr.rstrip().split("\n")
    starts = [i for i, line in enumerate(lines) if line.startswith("diffode: ")]
    if not starts:
        return "no `diffode:` paragraph on stderr"
    tail = lines[starts[-1]:]
    if len(starts) > 1 or any(not line.strip() or line.startswith(("[", "INFO", "WARNING")) for line in tail):
        return "more than one paragraph, or output after it"
    return None


def scenario(job: Job, root: Path, teacher: Path | None, expected: dict, fault: str, moment: Moment, i: int,
             mode: str) -> Outcome:
    """fault: kill | term | enospc. Runs the job with the fault, then the same command again."""
    import json

    box = fresh(root / job.kind / f"{fault}{i}")
    argv = job.argv(box, teacher)
    moment.torn = moment.torn and fault == "kill"
    action = "torn" if moment.torn else fault
    plan = Plan(action if moment.at else "none", at=moment.at, delay=moment.delay, trace=str(box / "fingerprints.json"),
                fingerprint=list(job.results))
    sig = signal.SIGKILL if fault == "kill" else signal.SIGTERM
    first = launch(argv, box, plan, mode, signal_at=moment.time, sig=sig, log="faulted")
    out = Outcome(job.kind, fault, moment, landed=first.rc != 0)
    if not out.landed:
        return out  # finished before the moment came: not an interruption
    if fault == "kill" and first.rc != -signal.SIGKILL:
        out.problems.append(f"the killed run ended with rc {first.rc}: {first.stderr[-500:]}")
    if fault == "term" and first.rc not in (-signal.SIGTERM, 128 + signal.SIGTERM):
        out.problems.append(f"SIGTERM ended the run with rc {first.rc}, not 143: {first.stderr[-800:]}")
    graceful = fault == "enospc" or first.rc == 128 + signal.SIGTERM  # these end in one paragraph
    why = one_paragraph(first.stderr) if graceful else None
    if why:
        out.problems.append(f"{fault}: {why}: ...{first.stderr[-1500:]}")
    if fault == "enospc":
        before = json.loads((box / "fingerprints.json").read_text()) if (box / "fingerprints.json").is_file() else {}
        after = fingerprint(box / "run", list(before))
        broken = [p for p in before if after.get(p) != before[p]]
        if broken:
            out.problems.append(f"the full disk changed results that were there: {broken}")
    again = launch(argv, box, Plan("none"), mode, log="rerun")
    if again.rc != 0:
        out.problems.append(f"the re-run failed (rc {again.rc}): ...{again.stderr[-1500:]}")
        return out
    cells, temps = compare.repeated_cells(box / "run"), compare.temp_files(box)
    if cells:
        out.problems.append(f"cells in results.csv more than once: {cells}")
    if temps:
        out.problems.append(f"temp files left: {temps}")
    out.survived = not out.problems
    diffs = compare.differences(expected, compare.results(box / "run", job.results))
    out.identical = not diffs
    if diffs:
        out.problems.append(f"results differ from the uninterrupted run: {diffs[:6]}")
    return out


def run_kind(kind: str, root: Path, rng: random.Random, mode: str = "fork", kills: int = 5, terms: int = 2,
             disk_full: int = 2, teacher: Path | None = None, report=print) -> list[Outcome]:
    """Every scenario of one job kind: `kills` SIGKILLs, `terms` SIGTERMs and `disk_full` full disks, at moments
    drawn from its uninterrupted run's trace. `report(outcome)` is called as each one ends."""
    job = JOBS[kind]
    if job.needs_teacher and teacher is None:
        raise ValueError(f"{kind} distils a teacher: run the denoiser job first and pass its export")
    expected, trace, seconds = baseline(job, root, teacher, mode)
    out = []
    plans = [("kill", kills, ("open", "rename", "remove", "symlink")), ("term", terms, ("open", "rename")),
             ("enospc", disk_full, ("open",))]
    for fault, n, kinds in plans:
        # 3n moments in the phases' cycle, taken until n have landed: one after the job's end is replaced
        picks = moments(trace, seconds, 3 * n, rng, kinds) if fault != "enospc" else \
            [m for m in moments(trace, seconds, 18 * n, rng, kinds) if m.phase not in ("startup", "compute")]
        landed = 0
        for i, m in enumerate(picks):
            if landed == n:
                break
            o = scenario(job, root, teacher, expected, fault, m, i, mode)
            landed += o.landed
            out.append(o)
            report(o)
    return out


def table(outcomes: list[Outcome]) -> str:
    """Per job kind and fault: survived / tried and identical / runs."""
    kinds = list(dict.fromkeys(o.kind for o in outcomes))  # (a fault that came after the job's end is not counted)
    rows = ["| job | SIGKILL survived | identical | SIGTERM survived | identical | disk full survived | identical |",
            "|---|---|---|---|---|---|---|"]
    for k in kinds:
        cells = []
        for fault in ("kill", "term", "enospc"):
            os_ = [o for o in outcomes if o.kind == k and o.fault == fault and o.landed]
            cells += [f"{sum(o.survived for o in os_)}/{len(os_)}", f"{sum(o.identical for o in os_)}/{len(os_)}"]
        rows.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(rows)
