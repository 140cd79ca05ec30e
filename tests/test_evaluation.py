"""The sweep on the exact 2-D mixture: ordering by solver order, resume after a kill, failed
cells, config validation, W&B offline logging and a submitit_local multirun."""
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from diffode.cli.errors import ConfigError
from diffode.evaluation.runner import evaluate
from diffode.evaluation.results import read_rows

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(2)

# rtol 1e-6 puts the reference ~1e-6 from the exact flow, far below the solver errors compared here.
TINY = ["experiment=eval_gmm", "n_samples=64", "batch_size=32", "gmm_metrics.rtol=1e-6", "gmm_metrics.floor_repeats=2",
        "gmm_metrics.n_projections=64", "progress=false", "save_images=0"]


def cfg_for(tmp_path, *overrides):
    with initialize_config_module("diffode.conf", version_base="1.3"):
        return compose("eval", overrides=[*TINY, f"output_dir={tmp_path}", *overrides])


def keys(rows):
    return [(r["solver"], r["grid"], int(r["nfe"])) for r in rows]


def test_gmm_sweep_orders_solvers_by_order(tmp_path):
    cfg = cfg_for(tmp_path, "sweep.solvers=[euler,dpmpp_2m,dpmpp_3m]", "sweep.nfes=[10,20]", "save_images=64")
    out = evaluate(cfg)
    rows = read_rows(out["csv"])
    assert sorted(keys(rows)) == sorted((s, "logsnr", n) for s in ("euler", "dpmpp_2m", "dpmpp_3m") for n in (10, 20))
    assert all(r["status"] == "ok" and r["n_samples"] == 64 and r["seeds"] == "0-63" for r in rows)
    # both counts in every row: unguided, a call is one network pass; the condition setting is recorded
    assert all(r["forwards"] == r["nfe"] and r["condition"] == "none" for r in rows)
    rmse = {(r["solver"], r["nfe"]): r["rmse"] for r in rows}
    for n in (10, 20):  # order 1 > order 2 > order 3 in error
        assert rmse["euler", n] > rmse["dpmpp_2m", n] > rmse["dpmpp_3m", n]
    report = Path(out["report"]).read_text()
    assert "dpmpp_3m/logsnr" in report and "64 samples" in report
    assert "forwards counts the network forward passes" in report and "equal in every cell" in report
    assert "condition: none" in report
    assert (tmp_path / "rmse_vs_nfe.png").is_file() and (tmp_path / "samples" / "euler__logsnr__nfe10.png").is_file()
    assert json.loads((tmp_path / "summary.json").read_text())["sw_exact_vs_exact_mean"] > 0


def test_noise_does_not_depend_on_batch_size(tmp_path):
    a = evaluate(cfg_for(tmp_path / "a", "sweep.solvers=[dpmpp_2m]", "sweep.nfes=[10]", "batch_size=64"))
    b = evaluate(cfg_for(tmp_path / "b", "sweep.solvers=[dpmpp_2m]", "sweep.nfes=[10]", "batch_size=7"))
    assert read_rows(a["csv"])[0]["rmse"] == pytest.approx(read_rows(b["csv"])[0]["rmse"], rel=1e-9)


def test_resume_after_exception_completes_without_duplicates(tmp_path):
    over = ["sweep.solvers=[euler,heun,dpmpp_2m]", "sweep.nfes=[10,12]"]

    def boom(k, cell):
        if k == 2:
            raise KeyboardInterrupt("injected after 3 cells")

    with pytest.raises(KeyboardInterrupt):
        evaluate(cfg_for(tmp_path, *over), on_cell_done=boom)
    partial = read_rows(tmp_path / "results.csv")
    assert len(partial) == 3
    seen = []
    evaluate(cfg_for(tmp_path, *over), on_cell_done=lambda k, c: seen.append(c.key))
    rows = read_rows(tmp_path / "results.csv")
    assert len(seen) == 3 and not set(seen) & set(keys(partial))  # only the missing cells ran
    assert sorted(keys(rows)) == sorted((s, "logsnr", n) for s in ("euler", "heun", "dpmpp_2m") for n in (10, 12))
    assert len(set(keys(rows))) == len(rows) == 6
    old = {k: r["wall_time"] for k, r in zip(keys(partial), partial)}
    assert all(r["wall_time"] == old[k] for k, r in zip(keys(rows), rows) if k in old)


def test_resume_after_hard_kill(tmp_path):
    """A sweep process SIGKILLed after 2 cells leaves a complete-looking table of 2 rows; the re-run adds the rest."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_evaluation import cfg_for
        from diffode.evaluation.runner import evaluate
        from pathlib import Path
        def die(k, cell):
            if k == 1:
                os.kill(os.getpid(), signal.SIGKILL)
        evaluate(cfg_for(Path({str(tmp_path)!r}), "sweep.solvers=[euler,dpmpp_2m]", "sweep.nfes=[10,12]"), on_cell_done=die)
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    assert len(read_rows(tmp_path / "results.csv")) == 2  # (a stray temp file of the killed write is harmless)
    evaluate(cfg_for(tmp_path, "sweep.solvers=[euler,dpmpp_2m]", "sweep.nfes=[10,12]"))
    rows = read_rows(tmp_path / "results.csv")
    assert sorted(keys(rows)) == sorted((s, "logsnr", n) for s in ("euler", "dpmpp_2m") for n in (10, 12))


def test_resume_refuses_other_settings(tmp_path):
    evaluate(cfg_for(tmp_path, "sweep.solvers=[euler]", "sweep.nfes=[10]"))
    with pytest.raises(ValueError, match="other settings"):
        evaluate(cfg_for(tmp_path, "sweep.solvers=[euler]", "sweep.nfes=[10]", "n_samples=32"))


def test_nan_cell_is_reported_failed(tmp_path, monkeypatch):
    import diffode.models as models
    from diffode.core.grids import make_grid

    real_load = models.load_model
    poison = make_grid("edm", 10, sigma_min=0.002, sigma_max=80.0)[5]  # a sigma only the edm grid visits

    class Poisoned(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, sigma):
            out = self.inner(x, sigma)
            s = torch.as_tensor(sigma, dtype=torch.float64)
            return out * float("nan") if bool((s - poison).abs().max() < 1e-12) else out

    def load(mcfg):
        m = real_load(mcfg)
        m.denoiser = Poisoned(m.denoiser)
        return m

    monkeypatch.setattr(models, "load_model", load)
    out = evaluate(cfg_for(tmp_path, "sweep.solvers=[euler]", "sweep.grids=[logsnr,edm]", "sweep.nfes=[10]"))
    rows = {r["grid"]: r for r in read_rows(out["csv"])}
    assert rows["logsnr"]["status"] == "ok" and rows["edm"]["status"] == "failed"
    assert rows["edm"]["rmse"] is None and "NaN" in rows["edm"]["message"]
    assert "Failed cells" in Path(out["report"]).read_text()


def test_bad_config_fails_before_compute(tmp_path):
    with pytest.raises(ConfigError, match="skip_unreachable"):
        evaluate(cfg_for(tmp_path, "sweep.solvers=[heun]", "sweep.nfes=[9]", "sweep.skip_unreachable=false"))
    with pytest.raises(ConfigError, match="unknown solver"):
        evaluate(cfg_for(tmp_path, "sweep.solvers=[no_such_solver]", "sweep.nfes=[10]"))
    assert not (tmp_path / "results.csv").exists()
    out = evaluate(cfg_for(tmp_path, "sweep.solvers=[heun]", "sweep.nfes=[9,10]", "sweep.skip_unreachable=true"))
    st = {r["nfe"]: r["status"] for r in read_rows(out["csv"])}
    assert st == {9: "unreachable", 10: "ok"}


def test_usual_pairing_builds_solver_and_grid_cells(tmp_path):
    from diffode.evaluation.sweep import build_cells

    cfg = cfg_for(tmp_path, "sweep.pairing=usual", "sweep.solvers=[heun,dpmpp_2m]", "sweep.grids=[edm,logsnr]",
                  "sweep.grid_solver=dpmpp_3m", "sweep.nfes=[4]")
    got = [(c.solver, c.grid) for c in build_cells(cfg)]
    assert got == [("heun", "edm"), ("dpmpp_2m", "logsnr"), ("dpmpp_3m", "edm"), ("dpmpp_3m", "logsnr")]


def test_wandb_offline_run_summary_and_table(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = evaluate(cfg_for(tmp_path, "sweep.solvers=[euler,dpmpp_2m]", "sweep.nfes=[10,12]", "logger=wandb",
                           "logger.group=test_group"))
    from diffode.evaluation.wandb_log import read_offline_run

    info = out["wandb"]
    assert info["mode"] == "offline"
    run = read_offline_run(info["run_dir"])  # from the run's .wandb record log, as a sync would read it
    summary = run["summary"]
    assert summary["n_cells"] == 4 and summary["n_ok"] == 4 and summary["n_samples"] == 64
    meta = summary["cells"]
    assert meta["_type"] == "table-file" and meta["nrows"] == 4
    table = json.loads((Path(info["run_dir"]) / "files" / meta["path"]).read_text())
    col = table["columns"].index
    got = {(r[col("solver")], r[col("nfe")]): r[col("rmse")] for r in table["data"]}
    csv_rows = {(r["solver"], r["nfe"]): r["rmse"] for r in read_rows(out["csv"])}
    assert got == pytest.approx(csv_rows)
    # the line chart data: one history row per NFE with nfe as its x value
    hist = [h for h in run["history"] if "nfe" in h]
    assert [h["nfe"] for h in hist] == [10, 12]
    assert hist[0]["rmse/euler/logsnr"] == pytest.approx(csv_rows["euler", 10])
    assert "chart/rmse_vs_nfe_table" in summary
    assert run["group"] == "test_group" and run["config"]["n_samples"] == 64


def test_submitit_local_multirun_two_jobs(tmp_path):
    sweep_dir = tmp_path / "multi"
    cmd = [sys.executable, "-m", "diffode.cli", "eval", "-m", "hydra/launcher=submitit_local",
           "hydra.launcher.timeout_min=5", "hydra.launcher.cpus_per_task=1", "hydra.launcher.gpus_per_node=0",
           f"hydra.sweep.dir={sweep_dir}", *TINY, "sweep.solvers=euler,dpmpp_2m", "sweep.nfes=[10]", "save_images=0"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    done = sorted(sweep_dir.glob("*/results.csv"))
    assert len(done) == 2
    solvers = sorted(read_rows(f)[0]["solver"] for f in done)
    assert solvers == ["dpmpp_2m", "euler"]
    assert all(read_rows(f)[0]["status"] == "ok" for f in done)


@pytest.mark.slow
def test_digits_checkpoint_sweep_small(tmp_path):
    """The main job's path on the shipped digits UNet (few samples): FID and confident share per cell."""
    with initialize_config_module("diffode.conf", version_base="1.3"):
        cfg = compose("eval", overrides=["experiment=eval_main", "n_samples=200", "batch_size=100", "progress=false",
                                         "sweep.solvers=[euler,dpmpp_3m]", "sweep.grids=[logsnr]", "sweep.nfes=[4,10]",
                                         f"output_dir={tmp_path}"])
    out = evaluate(cfg)
    rows = {(r["solver"], r["grid"], r["nfe"]): r for r in read_rows(out["csv"])}
    assert all(r["status"] == "ok" and r["n_samples"] == 200 for r in rows.values())
    # more steps give better samples; at 10 NFE the third-order multistep solver beats Euler
    assert rows["dpmpp_3m", "logsnr", 10]["fid"] < rows["dpmpp_3m", "logsnr", 4]["fid"]
    assert rows["dpmpp_3m", "logsnr", 10]["fid"] < rows["euler", "edm", 10]["fid"]
    assert (tmp_path / "fid_vs_nfe.png").is_file()


def test_cli_composes_main_job_config():
    """`diffode main` goes through diffode.cli, which imports diffode.cli.evaluate (not __main__)."""
    p = subprocess.run([sys.executable, "-m", "diffode.cli", "main", "--cfg", "job"], capture_output=True, text=True,
                       cwd="/", timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "pairing: usual" in p.stdout and "asset:artifacts/ld3" in p.stdout and "asset:artifacts/cd" in p.stdout


def test_learned_artifacts_add_one_cell_each_and_are_checked(tmp_path):
    """An artifact becomes the row <solver>/<kind> at its own NFE; an LD3 artifact holding the EDM grid's
    own sigmas must reproduce the edm cell of the same solver exactly. One made for another model is refused."""
    from diffode.artifacts import save_artifact
    from diffode.core.grids import make_grid
    from diffode.core.schedules import EDM
    from diffode.models import load_model

    identity = load_model({"kind": "gmm", "preset": "gmm2d"}).identity
    path = save_artifact(tmp_path / "ld3", kind="ld3", solver="ipndm", nfe=5, sigmas=make_grid("edm", 5, EDM()),
                         schedule=EDM(), model=identity, solver_options={"max_order": 4})
    cfg = cfg_for(tmp_path / "run", "sweep.solvers=[ipndm]", "sweep.grids=[edm]", "sweep.nfes=[5]",
                  f"sweep.learned=[{path}]")
    rows = {(r["solver"], r["grid"], int(r["nfe"])): r for r in read_rows(evaluate(cfg)["csv"])}
    assert set(rows) == {("ipndm", "edm", 5), ("ipndm", "ld3", 5)}
    assert rows["ipndm", "ld3", 5]["forwards"] == 5
    assert rows["ipndm", "ld3", 5]["rmse"] == rows["ipndm", "edm", 5]["rmse"]
    with pytest.raises(ConfigError, match="no artifact"):
        evaluate(cfg_for(tmp_path / "bad", "sweep.solvers=[ipndm]", "sweep.nfes=[5]", "sweep.learned=[nope]"))
    other = save_artifact(tmp_path / "other", kind="ld3", solver="ipndm", nfe=5, sigmas=make_grid("edm", 5, EDM()),
                          schedule=EDM(), model={**identity, "hash": "0123"})
    with pytest.raises(ConfigError, match="another model"):
        evaluate(cfg_for(tmp_path / "bad2", "sweep.solvers=[ipndm]", "sweep.nfes=[5]", f"sweep.learned=[{other}]"))
    assert not (tmp_path / "bad2" / "results.csv").exists()


def test_a_cell_is_planned_once_whatever_its_batches(tmp_path, monkeypatch):
    """Each cell (training-free or an artifact) is planned once, at validation: its 8 batches follow that plan;
    Model.sample takes a plan or the options that make one, not both."""
    import diffode.core.sample as core
    from diffode.artifacts import save_artifact
    from diffode.core.grids import make_grid
    from diffode.core.schedules import EDM
    from diffode.models import load_model

    model = load_model({"kind": "gmm", "preset": "gmm2d"})
    path = save_artifact(tmp_path / "ld3", kind="ld3", solver="ipndm", nfe=5, sigmas=make_grid("edm", 5, EDM()),
                         schedule=EDM(), model=model.identity)
    planned, real = [], core.check_sampling_config

    def counted(*a, **k):
        planned.append((k.get("solver", a[0] if a else None), k.get("nfe", a[1] if len(a) > 1 else None)))
        return real(*a, **k)

    monkeypatch.setattr(core, "check_sampling_config", counted)
    out = evaluate(cfg_for(tmp_path / "run", "sweep.solvers=[dpmpp_2m]", "sweep.nfes=[7]", f"sweep.learned=[{path}]",
                           "batch_size=8"))
    assert all(r["status"] == "ok" for r in read_rows(out["csv"]))
    assert planned.count(("dpmpp_2m", 7)) == 1 and planned.count(("ipndm", 5)) == 1
    plan = model.plan(solver="dpmpp_2m", nfe=7)
    x_T = 80.0 * torch.randn(10, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    whole = core.sample(model.denoiser, x_T, "dpmpp_2m", 7, schedule=model.schedule, sigma_min=model.sigma_min,
                        sigma_max=model.sigma_max)
    assert torch.equal(model.sample(x_T, 3, plan=plan), whole)
    with pytest.raises(ValueError, match="a plan or the sampling options"):
        model.sample(x_T, 3, plan=plan, nfe=5)


def test_one_cell_from_solver_and_grid_groups(tmp_path):
    """`diffode eval solver=heun grid=edm nfe=6`: exactly that cell, with the group's options."""
    from diffode.evaluation.sweep import build_cells

    cfg = cfg_for(tmp_path, "solver=dpmpp_3m_official", "grid=edm", "nfe=6")
    cells = build_cells(cfg, {"solver": "dpmpp_3m_official", "grid": "edm"})
    assert [(c.solver, c.grid, c.nfe, c.solver_name) for c in cells] == [("dpmpp_3m_official", "edm", 6, "dpmpp_3m")]
    assert cells[0].solver_options["coefficients"] == "official" and cells[0].grid_options == {"rho": 7.0}


def test_reference_solve_is_cached_per_spec_and_reused(tmp_path):
    """The solver-error yardstick is solved once per (model, seeds, spec): a second run loads it without
    one network call; another spec (NFE) or other seeds solve again."""
    from omegaconf import OmegaConf

    from diffode.evaluation.metrics import ReferenceSolve
    from diffode.models import initial_noise, load_model

    model = load_model({"kind": "gmm", "preset": "gmm2d"})
    calls = []
    exact = model.denoiser
    model.denoiser = lambda x, s: calls.append(1) or exact(x, s)
    x_T = initial_noise(model.shape, range(16), model.sigma_max)
    spec = OmegaConf.create({"solver": "dpmpp_3m", "grid": "logsnr", "nfe": 20, "check_nfe": 10, "cache_dir": str(tmp_path)})
    first = ReferenceSolve(model, x_T, 0, spec, 8)
    n_first = len(calls)
    assert n_first == 2 * (20 + 10) and not first.cached  # two batches of 8, NFE 20 + 10
    second = ReferenceSolve(model, x_T, 0, spec, 16)
    assert len(calls) == n_first and second.cached and torch.equal(second.x_ref, first.x_ref)
    assert second.self_rmse == first.self_rmse > 0
    ReferenceSolve(model, x_T, 0, OmegaConf.merge(spec, {"nfe": 24}), 16)
    ReferenceSolve(model, x_T, 1, spec, 16)  # the seed is part of the key
    assert len(calls) == n_first + (24 + 10) + (20 + 10) and len(list(tmp_path.glob("ref_*.pt"))) == 3
