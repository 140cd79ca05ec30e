"""Kill-anywhere recovery (diffode.faults): every job kind, SIGKILLed at a write of each phase, re-run with the
same command, completes with results bitwise equal to an uninterrupted run's, every eval cell once and no
temp file left; a SIGTERM stops training cleanly at a step (exit 143, one paragraph); a full disk ends in one
paragraph and leaves the results that were there intact. The smoke runs one fault per job kind in forked
copies of this process (seconds each); the measured figure (experiments/faults) is `-m slow`."""
import random

import pytest
import torch

from diffode.faults import compare
from diffode.faults.harness import Moment, baseline, one_paragraph, phase_of, run_kind, scenario, server
from diffode.faults.jobs import JOBS, teacher_of

# where each job kind is killed (the phase, and a part of the file's path): together they cover start-up,
# caches, checkpoints, results and export. PD's is the moment between its last checkpoint and its last
# student, which a re-run once skipped (Lightning calls no on_train_end when it resumes a finished fit).
# eval's is in the middle of writing results.csv (a torn file): written in place, the re-run fails on it.
SMOKE = {"denoiser": ("checkpoint", "epoch=1"), "eval": ("results", "results.csv"), "ld3": ("cache", "ld3_pairs_"),
         "amed": ("export", "weights.pt"), "gits": ("startup", "config.yaml"),
         "progressive_distillation": ("export", "students/.1.ckpt"), "consistency_distillation": ("export", "cd_2")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Uninterrupted runs, made on first use: kind -> (results, trace)."""
    root = tmp_path_factory.mktemp("faults")
    torch.set_num_threads(1)
    cache = {}

    def get(kind):
        if kind not in cache:
            cache[kind] = baseline(JOBS[kind], root, teacher(), "fork")[:2]
        return cache[kind]

    def teacher():
        return teacher_of(root / "denoiser" / "baseline")

    get.root, get.teacher = root, teacher
    return get


def _event(trace, phase, i=0, kind=None, part=""):
    picks = [e for e in trace if phase_of(e[2]) == phase and (kind is None or e[1] == kind) and part in e[2]]
    e = picks[min(i, len(picks) - 1)]
    return Moment(phase, at=[e[1], e[2], e[3]])


def _check(o):
    assert o.landed, f"{o.kind}: the fault at {o.moment} never happened"
    assert o.survived and o.identical, f"{o.kind} {o.fault} at {o.moment}:\n" + "\n".join(o.problems)


@pytest.mark.parametrize("kind", list(SMOKE))
def test_a_job_killed_at_a_write_is_finished_by_the_same_command(kind, runs):
    phase, part = SMOKE[kind]
    if JOBS[kind].needs_teacher:
        runs("denoiser")
    expected, trace = runs(kind)
    moment = _event(trace, phase, part=part)
    moment.torn = kind == "eval"
    _check(scenario(JOBS[kind], runs.root, runs.teacher(), expected, "kill", moment, 0, "fork"))


def test_sigterm_stops_training_at_a_step_in_one_paragraph_and_the_rerun_continues(runs):
    expected, trace = runs("denoiser")
    o = scenario(JOBS["denoiser"], runs.root, runs.teacher(), expected, "term",
                 _event(trace, "checkpoint", i=1, kind="open"), 0, "fork")
    _check(o)
    err = (runs.root / "denoiser" / "term0" / "faulted.log").read_text()
    # signalled while writing the checkpoint of step 4: it stops after that step, the rerun continues from it
    assert "diffode: stopped by SIGTERM at step 4" in err


@pytest.mark.parametrize("kind,phase", [("eval", "results"), ("denoiser", "checkpoint"), ("ld3", "cache")])
def test_a_full_disk_ends_in_one_paragraph_and_keeps_what_was_written(kind, phase, runs):
    expected, trace = runs(kind)
    o = scenario(JOBS[kind], runs.root, runs.teacher(), expected, "enospc",
                 _event(trace, phase, i=2, kind="open"), 0, "fork")
    _check(o)
    err = (runs.root / kind / "enospc0" / "faulted.log").read_text()
    assert "diffode: the disk is full" in err and ".tmp" not in err  # names the file, not its temp


def test_the_checks_catch_what_they_are_for():
    assert compare.differences({"w": torch.ones(2)}, {"w": torch.tensor([1.0, 1.0 + 1e-7])}) == ["/w: tensors differ"]
    assert compare.differences({"a": 1, "wall_time": 2}, {"a": 1}) == ["/wall_time: only in one run"]
    assert compare._plain({"wall_time": 2, "x": "/box/run"}, "/box") == {"x": "<box>/run"}
    assert one_paragraph("INFO x\ndiffode: the disk is full writing\n/a/b. Free space.\n") is None
    assert one_paragraph("diffode: a\nTraceback (most recent call last):\n") is not None
    assert one_paragraph("diffode: a\n\n[2026][x][INFO] - more\n") is not None


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(JOBS))
def test_every_kill_is_survived_with_identical_results(kind, runs):
    """The measured figure's scenarios for one job kind (python -m diffode.faults --mode fork --jobs KIND)."""
    if JOBS[kind].needs_teacher:
        runs("denoiser")
    outcomes = run_kind(kind, runs.root / "slow", random.Random(0), "fork", kills=5, terms=2, disk_full=2,
                        teacher=runs.teacher())
    landed = [o for o in outcomes if o.landed]
    assert sum(o.fault == "kill" for o in landed) >= 5
    for o in landed:
        _check(o)


def test_two_eval_jobs_sharing_a_cache_compute_each_entry_once(runs, tmp_path):
    """Two jobs of one multirun start together on an empty cache: each cache entry (reference solve, FID
    statistics) is computed by one of them and read by the other, both tables equal an uninterrupted run's."""
    from diffode.faults.child import job_process
    from diffode.faults.inject import Plan

    expected, _ = runs("eval")
    cache, procs = tmp_path / "cache", []
    for i in range(2):  # (forked from the harness's clean forkserver, as its jobs are)
        box = tmp_path / f"job{i}"
        (box / "tmp").mkdir(parents=True)
        env = {"DIFFODE_CACHE": str(cache), "TMPDIR": str(box / "tmp")}
        procs.append(server().Process(target=job_process, args=(Plan("none", sandbox=str(box)), JOBS["eval"].argv(box),
                                                                   env, box / "run.log")))
    for p in procs:
        p.start()
    for p in procs:
        p.join(600)
    assert [p.exitcode for p in procs] == [0, 0]
    logs = [(tmp_path / f"job{i}" / "run.log").read_text() for i in range(2)]
    for i in range(2):
        assert compare.differences(expected, compare.results(tmp_path / f"job{i}" / "run", JOBS["eval"].results)) == []
    assert sum("reference solve: " in log for log in logs) == 1  # solved by one job, read by the other
    assert sum("images (computed)" in log for log in logs) == 1  # FID statistics: the same
    assert sorted(p.parent.name for p in cache.rglob("*.pt")) == ["fid_ref", "reference_solves"]
    assert not [p for p in cache.rglob("*") if p.name.endswith((".bad", ".tmp"))]
