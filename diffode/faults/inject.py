"""Inside the job's process: see every write it makes, and fail at one of them.

`install(plan)` adds a Python audit hook (sys.addaudithook) that sees each `open` for writing, each
rename / replace, remove and symlink under the sandbox, as (seconds since start, event, path relative
to the sandbox). Temp names lose their host and pid, so the n-th write of a file names the same
moment in every run of a deterministic job. The plan says what to do at one such moment:

- record: nothing; the trace is written at exit (the baseline run, from which moments are drawn);
- kill:   SIGKILL this process just before the event happens (no cleanup code runs), or `delay` seconds
          after it (in the compute that follows);
- torn:   at an `open`, let the file be written, then (at the next write event, or at exit) cut it to its
          first half and SIGKILL: the file as a kill in the middle of writing it leaves it;
- term:   SIGTERM this process there (Lightning's handler stops the fit at the end of the step);
- enospc: this write and every later one fail with OSError(ENOSPC), as on a full disk; the result
          files present at the first failure are fingerprinted, to check that they stay intact.

Kills at random times are the parent's (diffode.faults.harness); they need nothing in here.
"""
from __future__ import annotations

import errno
import json
import os
import re
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

TEMP = re.compile(r"\.[^./]+\.\d+\.tmp$")  # diffode.cache temp names: .<name>.<host>.<pid>.tmp
RANDOM_TEMP = re.compile(r"(^|/)tmp/tmp[^/]+$")  # tempfile's names in $TMPDIR
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


@dataclass
class Plan:
    action: str = "record"  # record | kill | term | enospc
    at: list | None = None  # [event, path, occurrence]: the moment to act at...
    delay: float = 0.0  # ...or this many seconds after it (kill / term)
    trace: str = ""  # where to write the trace (record) or the fingerprints (enospc)
    sandbox: str = ""
    fingerprint: list = field(default_factory=list)  # glob patterns (under run/) of files to fingerprint

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        return cls(**json.loads(text))


def normal(path: str) -> str:
    return RANDOM_TEMP.sub(r"\1tmp/<tmp>", TEMP.sub(".<tmp>", path))


def _writing(event: str, args) -> str | None:
    """The path an audited event writes, or None."""
    if event == "open":
        path, mode, flags = args
        if isinstance(path, int) or path is None:
            return None
        w = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & WRITE_FLAGS)
        return os.fsdecode(path) if w else None
    if event in ("os.rename", "os.remove", "os.symlink", "os.truncate"):
        p = args[1] if event in ("os.rename", "os.symlink") else args[0]
        return None if isinstance(p, int) else os.fsdecode(p)
    return None


def fingerprint(run: Path, patterns) -> dict:
    from diffode.cache import digest

    return {str(p.relative_to(run)): digest(p) for pat in patterns for p in sorted(run.glob(pat))
            if p.is_file() and not TEMP.search(p.name)}


def install(plan: Plan) -> None:
    root = str(Path(plan.sandbox).resolve()) + os.sep
    t0 = time.monotonic()
    events, counts = [], {}
    state = {"off": False, "full": False, "torn": None}

    def tear(path: str):
        """Leave `path` as a kill in the middle of writing it would: its first half, then SIGKILL."""
        state["off"] = True
        if os.path.isfile(path):
            os.truncate(path, os.path.getsize(path) // 2)
        os.kill(os.getpid(), signal.SIGKILL)

    def hook(event, args):
        if state["off"] or event not in ("open", "os.rename", "os.remove", "os.symlink", "os.truncate"):
            return
        path = _writing(event, args)
        if path is None:
            return
        full = os.path.abspath(path)
        if not full.startswith(root):
            return
        rel = normal(full[len(root):])
        name = "open" if event == "open" else event[3:]
        n = counts[(name, rel)] = counts.get((name, rel), 0) + 1
        events.append([round(time.monotonic() - t0, 4), name, rel, n])
        if state["full"] and name == "open":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), full)
        if state["torn"] is not None:  # the file opened at the moment has been written: tear it
            tear(state["torn"])
        if plan.at is None or [name, rel, n] != list(plan.at):
            return
        if plan.action == "torn" and name == "open":
            state["torn"] = full
        elif plan.action in ("kill", "term"):
            sig = signal.SIGKILL if plan.action == "kill" else signal.SIGTERM
            if plan.delay > 0:
                timer = threading.Timer(plan.delay, os.kill, (os.getpid(), sig))
                timer.daemon = True  # a job that ends first is not held up by it
                timer.start()
            else:
                os.kill(os.getpid(), sig)
        elif plan.action == "enospc" and name == "open":
            state["off"] = True
            Path(plan.trace).write_text(json.dumps(fingerprint(Path(plan.sandbox) / "run", plan.fingerprint)))
            state["off"], state["full"] = False, True
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), full)

    def write_trace():
        if state["torn"] is not None:
            tear(state["torn"])
        state["off"] = True
        if plan.action == "record" and plan.trace:
            Path(plan.trace).write_text(json.dumps(events))

    sys.addaudithook(hook)
    install.write_trace = write_trace


def finish() -> None:
    """Write the trace (record plans); call before the process exits."""
    f = getattr(install, "write_trace", None)
    if f is not None:
        f()
