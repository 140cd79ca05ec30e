"""What the studies of experiments/ need from `diffode eval`: afs=auto (the analytic first step exactly where a
cell's NFE needs it, so DPM-Solver-2 and Heun at odd NFEs sit in one sweep beside the one-call solvers) and
sweep.learned naming a folder that holds artifacts at any depth (a training run dir, a multirun's sweep dir)."""
import pytest
import torch
from hydra import compose, initialize_config_module

from diffode.cli.errors import ConfigError
from diffode.evaluation.runner import evaluate
from diffode.evaluation.results import read_rows

TINY = ["source=gmm2d", "n_samples=16", "batch_size=16", "gmm_metrics.rtol=1e-6", "gmm_metrics.floor_repeats=2",
        "gmm_metrics.n_projections=16", "progress=false", "save_images=0", "sweep.grids=[logsnr]"]


def cfg_for(tmp_path, *overrides):
    with initialize_config_module("diffode.conf", version_base="1.3"):
        return compose("eval", overrides=[*TINY, f"output_dir={tmp_path}", *overrides])


def test_afs_auto_takes_the_first_step_only_where_the_nfe_needs_it(tmp_path):
    out = evaluate(cfg_for(tmp_path, "afs=auto", "sweep.solvers=[dpm_solver_2,ddim]", "sweep.nfes=[3,4]"))
    rows = {(r["solver"], int(r["nfe"])): r for r in read_rows(out["csv"])}
    # dpm_solver_2 spends two calls per step: NFE 3 only with AFS; ddim reaches every NFE without it
    assert {k: r["afs"] for k, r in rows.items()} == {("dpm_solver_2", 3): "True", ("dpm_solver_2", 4): "False",
                                                       ("ddim", 3): "False", ("ddim", 4): "False"}  # as the CSV reads
    assert all(r["status"] == "ok" and r["nfe"] == r["forwards"] for r in rows.values())
    # each row is the sample with those flags spelled out
    explicit = evaluate(cfg_for(tmp_path / "afs", "afs=true", "sweep.solvers=[dpm_solver_2,ddim]", "sweep.nfes=[3]"))
    with_afs = {r["solver"]: r["rmse"] for r in read_rows(explicit["csv"])}
    plain = evaluate(cfg_for(tmp_path / "plain", "afs=false", "sweep.solvers=[dpm_solver_2,ddim]", "sweep.nfes=[4]",
                             "sweep.skip_unreachable=true"))
    without = {r["solver"]: r["rmse"] for r in read_rows(plain["csv"])}
    assert rows["dpm_solver_2", 3]["rmse"] == with_afs["dpm_solver_2"]
    assert rows["dpm_solver_2", 4]["rmse"] == without["dpm_solver_2"] and rows["ddim", 4]["rmse"] == without["ddim"]
    assert rows["ddim", 3]["rmse"] != with_afs["ddim"]  # ddim at 3 kept its first step: not the AFS solve
    assert "afs" not in read_rows(plain["csv"])[0]  # only afs=auto records the per-cell choice


def test_afs_must_be_true_false_or_auto(tmp_path):
    with pytest.raises(ConfigError, match="afs='sometimes'"):
        evaluate(cfg_for(tmp_path, "afs=sometimes", "sweep.solvers=[ddim]", "sweep.nfes=[3]"))
    assert not (tmp_path / "results.csv").exists()


def test_learned_folder_finds_artifacts_at_any_depth(tmp_path):
    """A multirun's sweep dir holds <job>/artifacts/<name>/manifest.json: naming the sweep dir adds every one."""
    from diffode.artifacts import save_artifact
    from diffode.core.grids import make_grid
    from diffode.core.schedules import EDM
    from diffode.evaluation.sweep import build_cells
    from diffode.models import load_model

    identity = load_model({"kind": "gmm", "preset": "gmm2d"}).identity
    for job, (solver, nfe) in enumerate([("ipndm", 4), ("dpmpp_3m", 5)]):
        save_artifact(tmp_path / "sweep" / str(job) / "artifacts" / "ld3", kind="ld3", solver=solver, nfe=nfe,
                      sigmas=make_grid("edm", nfe, EDM()), schedule=EDM(), model=identity)
    cells = build_cells(cfg_for(tmp_path / "run", "sweep.solvers=[]", f"sweep.learned=[{tmp_path / 'sweep'}]"))
    assert [(c.label, c.nfe) for c in cells] == [("ipndm/ld3", 4), ("dpmpp_3m/ld3", 5)]


def test_a_mixture_source_takes_a_variant_of_its_preset():
    """source.params overrides the preset's mixture parameters (the solver study's ring of radius 0.7); the
    model's identity says which mixture it is, and a key the mixture does not take is refused."""
    from diffode.models import load_model

    base = load_model({"kind": "gmm", "preset": "gmm2d"})
    ring = load_model({"kind": "gmm", "preset": "gmm2d", "params": {"spread": 0.7}})
    assert torch.allclose(ring.gmm.mu.norm(dim=-1), torch.full((8,), 0.7, dtype=torch.float64))
    assert torch.allclose(base.gmm.mu.norm(dim=-1), torch.ones(8, dtype=torch.float64))
    assert ring.identity["params"]["spread"] == 0.7 and ring.identity["hash"] != base.identity["hash"]
    with pytest.raises(ValueError, match="source.params"):
        load_model({"kind": "gmm", "preset": "gmm2d", "params": {"radius": 0.7}})
