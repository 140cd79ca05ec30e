"""`parts`: the studies an eval runs after its own (the main job's guided and flow-matching models), each in
output_dir/<experiment> with the command's overrides, all composed before any compute."""
import subprocess
import sys

from diffode.evaluation.results import read_rows

TINY = ["seed=0", "n_samples=32", "batch_size=32", "sweep.solvers=[euler,dpmpp_2m]", "sweep.nfes=[10]", "save_images=0",
        "progress=false", "gmm_metrics.floor_repeats=2", "gmm_metrics.n_projections=16"]


def run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "diffode.cli.evaluate", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_each_part_runs_into_its_folder_with_the_commands_overrides(tmp_path):
    out = tmp_path / "run"
    p = run("experiment=eval_gmm", "parts=[eval_ld3_gmm]", *TINY, f"output_dir={out}", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    root = read_rows(out / "results.csv")
    part = read_rows(out / "eval_ld3_gmm" / "results.csv")
    assert {(r["solver"], r["grid"]) for r in root} == {("euler", "logsnr"), ("dpmpp_2m", "logsnr")}
    # the part is eval_ld3_gmm (its own grids) under the command's solvers, NFEs and sample count
    assert {r["grid"] for r in part} == {"edm", "logsnr", "time_uniform"}
    assert {r["solver"] for r in part} == {"euler", "dpmpp_2m"} and {int(r["nfe"]) for r in part} == {10}
    assert "experiment=eval_ld3_gmm" in (out / "eval_ld3_gmm" / "report.md").read_text()
    # the same cell in both studies is the same number (same model, seeds and metric: the override reached it)
    same = {(r["solver"], r["grid"]): r["rmse"] for r in part}
    assert all(same[(r["solver"], r["grid"])] == r["rmse"] for r in root)


def test_a_part_that_does_not_exist_stops_the_job_before_any_compute(tmp_path):
    out = tmp_path / "run"
    p = run("experiment=eval_gmm", "parts=[no_such_study]", *TINY, f"output_dir={out}", cwd=tmp_path)
    assert p.returncode == 2 and "parts: no_such_study does not compose" in p.stderr
    assert "Traceback" not in p.stderr and not (out / "results.csv").exists()
