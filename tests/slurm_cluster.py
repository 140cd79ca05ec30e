"""The local SLURM cluster of scripts/slurm/ for the tests: `slurm` (a session fixture) and helpers.

`.ci/run` brings the cluster up before pytest and passes its env file in DIFFODE_SLURM_ENV; without it
the fixture runs scripts/slurm/up.sh itself (packages are installed if missing) and tears down what it
started. Where no cluster can start (no root, no apt: up.sh exits 2) every test using the fixture
skips with the reason, which `pytest -ra` lists. DIFFODE_SLURM=0 switches them off.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts" / "slurm"
DIFFODE = str(Path(sys.executable).with_name("diffode"))


def _env_from_file(path: str) -> dict:
    conf = re.search(r"SLURM_CONF=(\S+)", Path(path).read_text())
    if conf is None:
        raise RuntimeError(f"{path} does not export SLURM_CONF")
    return {"SLURM_CONF": conf.group(1).strip("'\""), "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin"}


@pytest.fixture(scope="session")
def slurm():
    """Environment (a dict for subprocesses) of a running local cluster; os.environ gets it too."""
    if os.environ.get("DIFFODE_SLURM") == "0":
        pytest.skip("SLURM tests off: " + os.environ.get("DIFFODE_SLURM_SKIP", "DIFFODE_SLURM=0"))
    started, env_file = False, os.environ.get("DIFFODE_SLURM_ENV")
    if not env_file:
        r = subprocess.run(["bash", str(SCRIPTS / "up.sh")], capture_output=True, text=True, timeout=600)
        if r.returncode == 2:
            pytest.skip(r.stderr.strip().splitlines()[-1])
        if r.returncode != 0:
            pytest.fail(f"scripts/slurm/up.sh failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
        env_file, started = r.stdout.strip().splitlines()[-1], "already up" not in r.stderr  # leave one we found
    extra = _env_from_file(env_file)
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    yield {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    if started:
        subprocess.run(["bash", str(SCRIPTS / "down.sh")], capture_output=True, timeout=120)


def sh(*cmd: str, env: dict | None = None, timeout: float = 60) -> str:
    r = subprocess.run(list(cmd), capture_output=True, text=True, env=env, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r.stdout


def sacct(job: str) -> dict:
    """{job id (array tasks as <array>_<task>): (state, exit code)} of the job's allocations, steps left out."""
    out = sh("sacct", "-n", "-P", "-X", "-j", job, "-o", "JobID,State,ExitCode")
    return {row.split("|")[0]: tuple(row.split("|")[1:]) for row in out.splitlines() if row}


def wait_until(pred, timeout: float, what: str, every: float = 0.25):
    t0 = time.time()
    while time.time() - t0 < timeout:
        got = pred()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    """A launching command in the background (its output in `log`), for tests that act while it waits."""
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, text=True)


def finish(proc: subprocess.Popen, log: Path, timeout: float) -> tuple[int, str]:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"launching command still running after {timeout:.0f} s:\n{log.read_text()[-3000:]}")
    return proc.returncode, log.read_text()
