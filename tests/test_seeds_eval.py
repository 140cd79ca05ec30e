"""`diffode eval` with the seeds' systems: metric=nll and metric=reconstruction rows, Analytic-DPM and PC cells
through the ordinary sweep, and their bad configs refused before compute in one paragraph."""
from __future__ import annotations

import math

import pytest
from hydra import compose, initialize_config_module

from test_bad_inputs import hydra_ctx, no_compute, refusal  # noqa: F401  (fixtures)
from diffode.evaluation.runner import evaluate

pytestmark = pytest.mark.usefixtures("one_thread")


def _eval(overrides, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFODE_CACHE", str(tmp_path / "cache"))
    with initialize_config_module("diffode.conf", version_base="1.3"):
        cfg = compose("eval", overrides=[*overrides, f"output_dir={tmp_path / 'run'}", "progress=false", "threads=1",
                                         "save_images=0"])
    return evaluate(cfg, choices={})


def test_nll_rows_on_the_exact_mixture(tmp_path, monkeypatch):
    res = _eval(["source=gmm2d", "metric=nll", "sweep.solvers=[dpmpp_3m]", "sweep.nfes=[12,40]", "data_points.n=100",
                 "n_samples=4"], tmp_path, monkeypatch)
    rows = {r["nfe"]: r for r in res["rows"]}
    for r in rows.values():
        assert r["status"] == "ok" and r["n_samples"] == 100
        assert r["bpd_lo"] < r["bpd"] < r["bpd_hi"] and r["nll"] == pytest.approx(r["bpd"] * math.log(2))
        assert r["forwards"] == r["nfe_per_point"] == r["nfe"] and r["vjps"] == 2 * r["nfe"]  # exact trace, d = 2
    ref = res["summary"]["nll_reference_bpd"]
    assert rows[40]["bpd_err"] < rows[12]["bpd_err"] and rows[40]["bpd_err"] < 0.05
    assert abs(rows[40]["bpd"] - ref) == pytest.approx(rows[40]["bpd_err"], rel=1e-9)
    report = open(res["report"]).read()
    assert "## BPD" in report and "nll_reference_bpd" in report and "same 100 data points" in report


def test_reconstruction_rows_shrink_with_nfe(tmp_path, monkeypatch):
    res = _eval(["source=gmm2d", "metric=reconstruction", "sweep.solvers=[ddim,unipc_bh1]", "sweep.nfes=[10,100]",
                 "data_points.n=50", "n_samples=4"], tmp_path, monkeypatch)
    by = {(r["solver"], r["nfe"]): r["recon_rmse"] for r in res["rows"]}
    assert by[("ddim", 100)] < by[("ddim", 10)] / 5 and by[("unipc_bh1", 100)] < by[("ddim", 100)]


def test_analytic_dpm_and_pc_cells_in_an_ordinary_sweep(tmp_path, monkeypatch):
    """The sweep knows neither: Analytic-DPM's moments come through the model-input hook, PC is a solver config."""
    res = _eval(["source=gmm2d", "sweep.solvers=[analytic_ddpm,ddpm,pc]", "sweep.nfes=[9]", "n_samples=400",
                 "batch_size=200", "gmm_metrics.floor_repeats=2"], tmp_path, monkeypatch)
    assert {r["solver"] for r in res["rows"] if r["status"] == "ok"} == {"analytic_ddpm", "ddpm", "pc"}
    assert list((tmp_path / "cache" / "analytic_moments").glob("*.pt"))
    again = _eval(["source=gmm2d", "sweep.solvers=[analytic_ddpm]", "sweep.nfes=[9]", "n_samples=400", "batch_size=100",
                   "gmm_metrics.floor_repeats=2", "output_dir=" + str(tmp_path / "again")], tmp_path / "x", monkeypatch)
    a = [r for r in res["rows"] if r["solver"] == "analytic_ddpm"][0]
    assert math.isfinite(a["sw"]) and math.isfinite(again["rows"][0]["sw"])


CASES = [
    (["source=gmm2d", "metric=nll", "solver=ddpm", "nfe=10"], ["solver 'ddpm' is stochastic", "deterministic"]),
    (["source=gmm2d", "metric=nll", "solver=heun", "nfe=10", "nll.probes=0"], ["probes=0", "at least one probe"]),
    (["source=gmm2d", "metric=nll", "solver=heun", "nfe=10", "nll.trace=sometimes"], ["trace='sometimes'"]),
    (["source=gmm2d", "metric=reconstruction", "solver=euler_maruyama", "nfe=10"], ["stochastic"]),
    (["source=gmm2d", "metric=nll", "solver=heun", "nfe=11", "afs=true"], ["afs and denoise_to_zero"]),
    (["source=gmm2d", "solver=pc", "nfe=9", "+sweep.solver_options.pc.snr=0.0"], ["snr=0.0 must be > 0"]),
    (["source=gmm2d", "solver=pc", "nfe=9", "+sweep.solver_options.pc.predictor=rk45"], ["cannot be a predictor"]),
    (["source=gmm2d", "solver=analytic_ddim", "nfe=9", "+sweep.solver_options.analytic_ddim.eta=2.0"],
     ["eta=2.0 must be in [0, 1]"]),
    (["source=gmm2d", "solver=annealed_langevin", "nfe=200", "+sweep.solver_options.annealed_langevin.step_lr=1.0"],
     ["step_lr=1.0", "stable"]),
]


@pytest.mark.parametrize("overrides, fragments", CASES)
def test_refused_before_compute(hydra_ctx, no_compute, tmp_path, overrides, fragments):  # noqa: F811
    msg = refusal("eval", overrides, tmp_path)
    for f in fragments:
        assert f in msg, msg


def test_hdsm_training_options_refused(hydra_ctx, no_compute, tmp_path):  # noqa: F811
    tiny = ["dataset=gmm2d", "net=mlp", "logger=none"]
    assert "score_order=4" in refusal("train", [*tiny, "method.score_order=4"], tmp_path)
    assert "needs discrete data" in refusal("train", [*tiny, "method.dequantize=true"], tmp_path)
    assert "no file at" in refusal("train", [*tiny, "method.init_checkpoint=/nonexistent.ckpt"], tmp_path)
    assert "trained with other" in refusal("train", [*tiny, "method.init_checkpoint=shipped"], tmp_path)


def test_hdsm_trains_a_tiny_model(tmp_path):
    from test_train import TINY_GMM, cfg_for, metrics

    from diffode.cli.train import train

    train(cfg_for([*TINY_GMM, "trainer.max_steps=3", "logger=csv", "method.score_order=3"], tmp_path))
    rows = metrics(tmp_path)
    assert rows and all(math.isfinite(float(r["train/dsm3"])) for r in rows)
    assert all(float(r["train/loss"]) == pytest.approx(float(r["train/dsm1"]) + float(r["train/dsm2"]) +
                                                       float(r["train/dsm3"]), rel=1e-5) for r in rows)
