"""The job's side of the fault harness.

- `python -m diffode.faults.child '<plan json>' <diffode args...>` (mode exec): installs the plan
  (diffode.faults.inject) and runs the `diffode` command line in this process;
- `job_process(plan, argv, env, log)` (mode fork): the same in a process forked from multiprocessing's
  forkserver, which has imported what the jobs use once (diffode.faults.preload).

The exit status is the command's (a SystemExit's code, 1 for an exception, whose traceback goes to stderr).
"""
from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

from .inject import Plan, finish, install


def run_in_child(plan: Plan, argv: list[str], env: dict, stderr: Path | None = None) -> int:
    """Run `diffode <argv>` here under `plan`; returns the exit status. `stderr`: send fds 1 and 2 there."""
    import tempfile

    if stderr is not None:
        fd = os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        # the parent's sys.stdout / stderr may be other files (pytest's capture): write to fds 1 and 2
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
    os.environ.update(env)
    tempfile.tempdir = env.get("TMPDIR")  # a forked child inherits the parent's cached choice
    install(plan)
    code = 0
    try:
        from diffode.cli import main

        main(list(argv))
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        finish()
        sys.stdout.flush()
        sys.stderr.flush()
    return code


def job_process(plan: Plan, argv: list[str], env: dict, stderr: Path) -> None:
    """A multiprocessing target: the job, then exit with its status (no interpreter clean-up to wait on)."""
    import torch

    torch.set_num_threads(1)
    os._exit(run_in_child(plan, argv, env, stderr))


if __name__ == "__main__":
    sys.exit(run_in_child(Plan.from_json(sys.argv[1]), sys.argv[2:], {}))
