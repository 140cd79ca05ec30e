"""SLURM for real (issue 12): jobs on the local single-node cluster of scripts/slurm/ (see slurm_cluster.py).

Every test that needs the cluster takes the `slurm` fixture and skips, with the reason, where it cannot
start. Jobs are tiny (one thread, a few steps) and run on partition `debug`.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from slurm_cluster import DIFFODE, ROOT, finish, sacct, sh, slurm, start, wait_until  # noqa: F401 (slurm: a fixture)

CONF = str(ROOT / "conf")


# -- the launcher config (no cluster needed) ---------------------------------------------------------

@pytest.mark.parametrize("entry", ["train", "eval"])
def test_launcher_config_composes_for_every_entry_and_keeps_the_setup_line(entry):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(entry, overrides=["hydra/launcher=submitit_slurm", "hydra.launcher.partition=debug"],
                      return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)  # eval has no trainer: must not raise
    assert launcher["tasks_per_node"] == (cfg.trainer.devices if "trainer" in cfg else 1)
    assert launcher["nodes"] == (cfg.trainer.num_nodes if "trainer" in cfg else 1)
    # the launcher resolves its params again when it is built: the line must survive a second resolve
    again = OmegaConf.to_container(OmegaConf.create({"setup": launcher["setup"]}), resolve=True)
    assert again["setup"] == launcher["setup"] == ['test -n "$WANDB_MODE" || export WANDB_MODE=offline']


# -- the cluster itself -----------------------------------------------------------------------------

def test_sbatch_job_runs_and_is_accounted(slurm, tmp_path):
    job = sh("sbatch", "--parsable", "-p", "debug", "-o", str(tmp_path / "%j.out"),
             "--wrap", "echo node=$SLURMD_NODENAME job=$SLURM_JOB_ID", env=slurm).strip()
    wait_until(lambda: sacct(job).get(job, ("",))[0] == "COMPLETED", 30, f"job {job} COMPLETED in sacct")
    assert (tmp_path / f"{job}.out").read_text().strip().endswith(f"job={job}")


def test_submitit_round_trip(slurm, tmp_path):
    import os

    import submitit

    ex = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="slurm")
    ex.update_parameters(timeout_min=2, slurm_partition="debug", cpus_per_task=1)
    t0 = time.time()
    job = ex.submit(os.getenv, "SLURM_JOB_ID")  # a module-level callable: the job unpickles it by name
    assert job.result() == str(job.job_id)
    assert time.time() - t0 < 30
    jid = str(job.job_id)  # the result comes back before the job has ended: sacct follows a moment later
    wait_until(lambda: sacct(jid).get(jid, ("",))[0] == "COMPLETED", 30, f"job {jid} COMPLETED in sacct")


@pytest.mark.parametrize("entry", ["train", "eval"])
def test_run_dir_inside_a_slurm_job_is_its_id_and_the_sweep_dir_ignores_it(entry, monkeypatch):
    """A requeued job keeps its SLURM_JOB_ID but not the clock, so its run dir is keyed on the id alone;
    submitit's jobs re-resolve hydra.sweep.dir on the node, so it must not depend on the node's job id."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(entry, return_hydra_config=True)
    monkeypatch.setenv("DIFFODE_OUTPUTS", "/runs")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    outside = cfg.hydra.run.dir
    sweep = cfg.hydra.sweep.dir
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert cfg.hydra.run.dir == f"/runs/{cfg.task_name}/4242"
    assert cfg.hydra.sweep.dir == sweep and "4242" not in sweep
    assert outside.startswith(f"/runs/{cfg.task_name}/20") and outside != cfg.hydra.run.dir


# -- launches: `diffode train|eval -m ... hydra/launcher=submitit_slurm` --------------------------------

SLURM = ["hydra/launcher=submitit_slurm", "hydra.launcher.partition=debug", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.timeout_min=5"]
MLP = ["dataset=gmm2d", "net=mlp", "net.hidden=32", "net.depth=2", "threads=1"]
GMM_EVAL = ["source=gmm2d", "n_samples=64", "batch_size=64", "gmm_metrics.rtol=1e-6", "gmm_metrics.floor_repeats=2",
            "gmm_metrics.n_projections=64", "progress=false", "save_images=0", "threads=1"]
LD3 = ["method=ld3", "source=gmm2d", "method.distance=l2", "method.n_pairs=8", "method.rounds_logits=1",
       "method.rounds_joint=1", "method.solver=ipndm", "method.teacher.nfe=10", "threads=1"]


METHODS = {  # the other learned methods, tiny, on the exact 2-D mixture (amed, gits, cd) or a trained MLP (pd)
    "amed": ["method=amed", "source=gmm2d", "debug=fast", "threads=1"],
    "gits": ["method=gits", "source=gmm2d", "debug=fast", "threads=1"],
    "consistency_distillation": ["method=consistency_distillation", "source=gmm2d", *MLP, "debug=fast"],
}
PD = ["method=progressive_distillation", "source=checkpoint", "dataset=gmm2d", "threads=1", "debug=fast",
      "method.n0=4", "method.updates_per_stage=4", "method.eval_samples=8"]


def multirun(entry: str, sweep_dir: Path, *overrides: str, env: dict) -> subprocess.Popen:
    sweep_dir.parent.mkdir(parents=True, exist_ok=True)
    return start([DIFFODE, entry, "-m", *SLURM, f"hydra.sweep.dir={sweep_dir}", *overrides], env,
                 sweep_dir.parent / f"{sweep_dir.name}.log")


def succeed(proc: subprocess.Popen, sweep_dir: Path, timeout: float = 300) -> str:
    rc, out = finish(proc, sweep_dir.parent / f"{sweep_dir.name}.log", timeout)
    assert rc == 0, f"multirun into {sweep_dir} exited {rc}:\n{out[-4000:]}"
    return out


def array_tasks(sweep_dir: Path) -> dict[int, str]:
    """{hydra job num: SLURM id} from submitit's folders: <array>_<task> each, or <id> for a one-job multirun."""
    dirs = [p.name for p in (sweep_dir / ".submitit").glob("*") if p.is_dir() and p.name[0].isdigit()]
    return {int(d.split("_")[1]) if "_" in d else 0: d for d in dirs}


def test_multiruns_of_every_entry_and_method_write_their_own_results(slurm, tmp_path):
    runs = {"train": multirun("train", tmp_path / "train", *MLP, "debug=fast", "seed=0,1", env=slurm),
            "eval": multirun("eval", tmp_path / "eval", *GMM_EVAL, "sweep.solvers=euler,heun", "sweep.nfes=[10]",
                             env=slurm),
            "ld3": multirun("train", tmp_path / "ld3", *LD3, "method.nfe=4,5", env=slurm)}
    runs |= {m: multirun("train", tmp_path / m, *o, "seed=0,1", env=slurm) for m, o in METHODS.items()}
    succeed(runs["train"], tmp_path / "train")  # its MLP is the teacher of progressive distillation
    teacher = tmp_path / "train" / "0" / "denoiser_ema.ckpt"
    runs["pd"] = multirun("train", tmp_path / "pd", *PD, f"source.path={teacher}", "seed=0,1", env=slurm)
    for name, proc in runs.items():
        succeed(proc, tmp_path / name)
    for name in runs:  # each multirun is one job array of 2 tasks, all COMPLETED
        tasks = array_tasks(tmp_path / name)
        assert sorted(tasks) == [0, 1]
        array = tasks[0].split("_")[0]  # results come back before the job ends: sacct follows a moment later
        wait_until(lambda: {s for s, _ in sacct(array).values()} == {"COMPLETED"}, 30, f"{name} array {array} COMPLETED")
    for i in (0, 1):
        res = json.loads((tmp_path / "train" / str(i) / "results.json").read_text())
        assert res["seed"] == i and res["global_step"] == 8 and (tmp_path / "train" / str(i) / "checkpoints" / "last.ckpt").is_file()
    rows = [read_csv(tmp_path / "eval" / str(i) / "results.csv") for i in (0, 1)]
    assert [[(r["solver"], r["nfe"], r["status"]) for r in rs] for rs in rows] == [[("euler", "10", "ok")], [("heun", "10", "ok")]]
    for i, nfe in ((0, 4), (1, 5)):
        manifest = json.loads((tmp_path / "ld3" / str(i) / "artifacts" / "ld3" / "manifest.json").read_text())
        assert manifest["nfe"] == nfe and manifest["solver"] == "ipndm" and len(manifest["sigmas"]) == nfe + 1
    for name in [*METHODS, "pd"]:  # each job its own results and artifacts
        for i in (0, 1):
            res = json.loads((tmp_path / name / str(i) / "results.json").read_text())
            assert res["seed"] == i and res["exported"], (name, res)
            assert list((tmp_path / name / str(i) / "artifacts").rglob("manifest.json")), name


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


# -- requeue that resumes ---------------------------------------------------------------------------

# 10 epochs of 32 steps; last.ckpt at every epoch end. Validation at every epoch end too: resuming from an
# epoch-end checkpoint is exact only then (without it Lightning 2.6 replays one batch of the finished epoch
# after the resume). signal_delay_s=90 with timeout_min=5: SLURM's own signal would come 3.5-4 min in,
# long after the job is done, unless the test lowers the time limit (below).
STEPS = 320
REQUEUE = [*MLP, "dataset.n_train=1024", "dataset.batch_size=32", f"trainer.max_steps={STEPS}", "sample_every_n_steps=32",
           "method.n_samples=0", "trainer.log_every_n_steps=1",
           "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
           "hydra.launcher.signal_delay_s=90", "hydra.launcher.max_num_timeout=2"]


def raw_id(task: str) -> str:
    """The plain job id of array task <array>_<i> (scontrol listpids wants it)."""
    return sh("squeue", "-h", "-j", task, "-o", "%A").strip()


def task_pid(task: str) -> int | None:
    """PID of the job's (first) task: the python process submitit runs."""
    r = subprocess.run(["scontrol", "listpids", raw_id(task)], capture_output=True, text=True)
    rows = [line.split() for line in r.stdout.splitlines()[1:]]
    pids = [int(row[0]) for row in rows if len(row) >= 4 and row[2] == "0" and row[3] == "0"]
    return pids[0] if pids else None


def submitit_log(sweep: Path, task: str) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted((sweep / ".submitit" / task).glob("*_log.*")))


def start_now(task: str) -> None:
    """Let a requeued job start at once: SLURM holds a requeued job for about two minutes (its begin time)."""
    wait_until(lambda: sh("squeue", "-h", "-j", task, "-o", "%T").strip() == "PENDING", 60, f"{task} PENDING")
    sh("scontrol", "update", f"JobId={task}", "StartTime=now")


def restarts(task: str) -> int:
    out = sh("scontrol", "show", "job", task)
    return int(out.split("Restarts=")[1].split()[0])


def state_dict(ckpt: Path) -> dict:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def losses(run: Path) -> list[list[float]]:
    """train/loss of every step, per csv version of a run dir (a resume adds a version)."""
    out = []
    for f in sorted((run / "csv").glob("version_*/metrics.csv"), key=lambda f: int(f.parent.name.split("_")[1])):
        rows = sorted((int(r["step"]), float(r["train/loss"])) for r in read_csv(f) if r.get("train/loss"))
        out.append([loss for _, loss in rows])
    return out


def test_requeued_training_resumes_and_ends_with_the_weights_of_an_uninterrupted_run(slurm, tmp_path):
    """Three identical jobs (one array): 0 runs through; 1 gets SLURM's time-limit signal (submitit
    requeues it, max_num_timeout); 2 is requeued by `scontrol requeue` while running (preemption).
    1 and 2 resume from their run dir's last.ckpt and end with bit-identical weights to 0."""
    sweep = tmp_path / "requeue"
    proc = multirun("train", sweep, *REQUEUE, "seed=0,0,0", env=slurm)
    last = {i: sweep / str(i) / "checkpoints" / "last.ckpt" for i in range(3)}
    tasks = wait_until(lambda: len(array_tasks(sweep)) == 3 and array_tasks(sweep), 120, "the array of 3 jobs")
    # 1 and 2: once each has a checkpoint, freeze it (SIGSTOP: it cannot finish first, however fast the
    # machine); SLURM's own SIGCONT wakes it when it signals or kills it
    frozen = {}

    def freeze_when_ready():
        for i in (1, 2):
            pid = task_pid(tasks[i]) if i not in frozen and last[i].exists() else None
            if pid:
                os.kill(pid, signal.SIGSTOP)
                frozen[i] = pid
        return len(frozen) == 2

    wait_until(freeze_when_ready, 180, "the first checkpoints of jobs 1 and 2")
    # 2: preempted, i.e. requeued from outside while it runs
    sh("scontrol", "requeue", tasks[2])
    start_now(tasks[2])
    # 1: lower its time limit so that SLURM's next time-limit pass (every 30 s) sends submitit's signal
    started = sh("squeue", "-h", "-j", tasks[1], "-o", "%M").strip().split(":")
    elapsed = int(started[-1]) + 60 * int(started[-2]) if len(started) >= 2 else 0
    # limit L minutes: USR2 is due at L*60 - signal_delay_s (90) - 30, which has passed; L*60 > elapsed + 60
    sh("scontrol", "update", f"JobId={tasks[1]}", f"TimeLimit={(elapsed + 120) // 60}")
    # slurmstepd sends SIGCONT with the signal; submitit's handler then requeues the job and exits
    wait_until(lambda: "Requeued job" in submitit_log(sweep, tasks[1]), 75, "SLURM's time-limit signal to job 1")
    sh("scontrol", "update", f"JobId={tasks[1]}", "TimeLimit=5")  # the resumed run is not signalled again
    start_now(tasks[1])
    out = succeed(proc, sweep, timeout=300)

    assert restarts(tasks[1]) == 1 and restarts(tasks[2]) == 1, out[-2000:]
    log1 = submitit_log(sweep, tasks[1])
    assert "Caught signal SIGUSR2" in log1 and "timed-out" in log1, log1[-3000:]
    ref = state_dict(last[0])
    for i in (1, 2):
        log = (sweep / str(i) / "train.log").read_text()
        resumed = [line for line in log.splitlines() if "resuming from" in line]
        assert len(resumed) == 1 and str(last[i]) in resumed[0], log[-3000:]
        got = state_dict(last[i])
        assert got.keys() == ref.keys()
        diff = max((got[k].double() - ref[k].double()).abs().max().item() for k in ref)
        assert diff == 0.0 and all(torch.equal(got[k], ref[k]) for k in ref), f"job {i}: max |dw| = {diff}"
        # the losses of both runs in this dir are the uninterrupted run's: before the interruption, and from
        # the resumed step on (Lightning labels the resumed run's csv rows one step late: compare values)
        # (a run killed before the csv logger's first flush leaves no metrics.csv: nothing to compare there)
        (ref_loss,), (*killed, after) = losses(sweep / "0"), losses(sweep / str(i))
        before = killed[0] if killed else []
        k = STEPS - len(after)  # the step it resumed at: an epoch end (32 steps each) after the first
        assert len(ref_loss) == STEPS and 0 < k < STEPS and k % 32 == 0
        assert before == ref_loss[:len(before)] and after == ref_loss[k:], f"job {i} resumed at step {k}"
        print(f"job {i} ({'time limit' if i == 1 else 'scontrol requeue'}): interrupted after step {len(before)}, "
              f"resumed at step {k}, max |w - w_ref| = {diff} over {len(ref)} tensors, losses equal: "
              f"{len(before)} before and {len(after)} after the resume")
        assert json.loads((sweep / str(i) / "results.json").read_text())["global_step"] == STEPS


def test_requeued_eval_sweep_keeps_its_cells_and_computes_the_rest(slurm, tmp_path):
    """Two identical eval jobs; 1 is requeued (scontrol requeue) once its first cells are in results.csv.
    The resumed job keeps the rows written before it was killed and computes only the others: every cell
    once, each equal to job 0's."""
    sweep = tmp_path / "eval_requeue"
    n = 24
    # cells of ~1 s each: job 1 cannot finish its 24 cells between its first row and the SIGSTOP below,
    # even on an idle machine (with 10-32 NFE x 4000 samples it sometimes did)
    cells = ["sweep.solvers=[euler,heun,dpmpp_2m,ipndm]", "sweep.nfes=[40,60,80,100,120,160]", "n_samples=16000",
             "batch_size=16000"]
    proc = multirun("eval", sweep, *GMM_EVAL, *cells, "seed=0,0", env=slurm)
    csv1 = sweep / "1" / "results.csv"
    tasks = wait_until(lambda: len(array_tasks(sweep)) == 2 and array_tasks(sweep), 120, "the array of 2 jobs")
    wait_until(lambda: csv1.exists() and len(read_csv(csv1)) >= 1, 180, "job 1's first cell", every=0.02)
    pid = task_pid(tasks[1])
    if pid is not None:  # frozen until SLURM's SIGCONT, SIGTERM (which submitit ignores), KillWait, SIGKILL
        os.kill(pid, signal.SIGSTOP)
    sh("scontrol", "requeue", tasks[1])
    start_now(tasks[1])
    succeed(proc, sweep, timeout=300)

    assert restarts(tasks[1]) == 1
    log = "".join(p.read_text() for p in (sweep / "1").glob("*.log"))
    resumed = [line for line in log.splitlines() if "resuming:" in line]
    assert len(resumed) == 1, log[-3000:]
    kept = int(resumed[0].split("resuming: ")[1].split()[0])
    assert 1 <= kept < n and f"{kept} of {n} cells already" in resumed[0]
    key = lambda r: (r["solver"], r["grid"], r["nfe"])  # noqa: E731
    ref, got = read_csv(sweep / "0" / "results.csv"), read_csv(csv1)
    assert len(got) == len({key(r) for r in got}) == n  # every cell once
    assert {key(r) for r in got} == {key(r) for r in ref}
    by_cell = {key(r): r for r in ref}
    for r in got:
        for m in ("rmse", "sw", "status", "n_samples", "seeds", "settings_hash"):
            assert r[m] == by_cell[key(r)][m], (key(r), m)
    print(f"eval job 1: requeued with {kept} of {n} cells in results.csv; resumed, computed the other {n - kept}; "
          f"{n} cells, each once, equal to the uninterrupted job's")


# -- DDP started by SLURM -----------------------------------------------------------------------------

def test_ddp_with_two_slurm_tasks_ends_with_identical_weights_on_both_ranks(slurm, tmp_path):
    """trainer=ddp on CPU: SLURM starts the 2 processes (submitit tasks), Lightning's SLURMEnvironment gives
    them their ranks, gloo connects them; each rank writes the sha256 of its final weights."""
    sweep = tmp_path / "ddp"
    succeed(multirun("train", sweep, *MLP, "debug=fast", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                     env=slurm), sweep)
    (task,) = array_tasks(sweep).values()
    digests = [json.loads((sweep / "0" / f"weights_rank{r}.json").read_text()) for r in (0, 1)]
    assert [d["rank"] for d in digests] == [0, 1] and {d["world_size"] for d in digests} == {2}
    assert {d["global_step"] for d in digests} == {8}
    assert digests[0]["sha256"] == digests[1]["sha256"]
    logs = [(sweep / ".submitit" / task / f"{task}_{r}_log.err").read_text() for r in (0, 1)]
    for r, log in enumerate(logs):  # each SLURM task set up its own rank: nothing was spawned
        assert f"GLOBAL_RANK: {r}, MEMBER: {r + 1}/2" in log, log[-2000:]


# -- failures reach the launching command -------------------------------------------------------------

def test_a_failing_job_fails_the_launching_command_with_its_error(slurm, tmp_path):
    """An exception in the job, and a job whose process is killed: the multirun exits non-zero, says why,
    and does not hang (accounting tells submitit the killed job is over)."""
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")
    raising = multirun("eval", tmp_path / "raises", *GMM_EVAL, "source=checkpoint", f"source.path={junk}",
                       "sweep.solvers=euler", "sweep.nfes=[10]", env=slurm)
    killed_dir = tmp_path / "killed"
    killed = multirun("train", killed_dir, *REQUEUE, "trainer.max_steps=100000", env=slurm)
    tasks = wait_until(lambda: array_tasks(killed_dir), 120, "the job to be killed")
    wait_until(lambda: (killed_dir / "0" / "checkpoints" / "last.ckpt").exists(), 120, "the job to train")
    os.kill(task_pid(tasks[0]), signal.SIGKILL)  # the job's python process dies, as under the OOM killer
    t0 = time.time()
    rc, out = finish(killed, tmp_path / "killed.log", timeout=120)
    waited = time.time() - t0
    assert rc != 0 and "Killed" in out and "state: FAILED" in out, out[-3000:]
    rc, out = finish(raising, tmp_path / "raises.log", timeout=120)
    # the job refuses the file in its one paragraph and exits 2; the launching process fails with the job's stderr
    assert rc != 0 and "is not a readable diffode checkpoint" in " ".join(out.split()) and "state: FAILED" in out, out[-3000:]
    assert array_tasks(tmp_path / "raises")  # it did run as a SLURM job
    print(f"killed job: the launching command failed {waited:.0f} s after the kill")
