"""SLURM for real (issue 12): jobs on the local single-node cluster of scripts/slurm/ (see slurm_cluster.py).

Every test that needs the cluster takes the `slurm` fixture and skips, with the reason, where it cannot
start. Jobs are tiny (one thread, a few steps) and run on partition `debug`.
"""
from __future__ import annotations

import pickle
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from slurm_cluster import ROOT, sacct, sh, slurm, wait_until  # noqa: F401 (slurm is a fixture)

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
