"""Scale-out plumbing, run as subprocesses (DDP re-launches and submitit pickle the task):
trainer=ddp_sim trains with 2 CPU processes over gloo and both ranks end with identical
weights; hydra/launcher=submitit_local runs a 2-job multirun whose jobs write their own results."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["dataset=gmm2d", "net=mlp", "debug=fast", "dataset.n_train=256", "dataset.batch_size=16",
        "net.hidden=32", "net.depth=2", "method.n_samples=0", "logger=none", "threads=1"]


def run(args, tmp_path, timeout=400):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}  # not a SLURM job, even inside one
    env.update(DIFFODE_OUTPUTS=str(tmp_path / "runs"), OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    p = subprocess.run([sys.executable, "-m", "diffode.cli", "train", *args], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def test_ddp_sim_two_processes_end_with_identical_weights(tmp_path):
    out = tmp_path / "ddp"
    run([*TINY, "trainer=ddp_sim", "trainer.max_steps=6", f"output_dir={out}"], tmp_path)
    recs = [json.loads((out / f"weights_rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in recs] == [0, 1] and all(r["world_size"] == 2 for r in recs)
    assert all(r["global_step"] == 6 for r in recs)
    assert recs[0]["sha256"] == recs[1]["sha256"]
    assert json.loads((out / "results.json").read_text())["global_step"] == 6


def test_submitit_local_multirun_jobs_write_their_own_results(tmp_path):
    sweep = tmp_path / "sweep"
    run(["-m", "hydra/launcher=submitit_local", *TINY, "trainer.max_steps=2", "seed=1,2",
         f"hydra.sweep.dir={sweep}"], tmp_path)
    results = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/results.json")}
    assert sorted(results) == ["0", "1"]
    assert sorted(r["seed"] for r in results.values()) == [1, 2]
    assert len({r["output_dir"] for r in results.values()}) == 2
    assert all((sweep / j / "checkpoints" / "last.ckpt").is_file() for j in ("0", "1"))
