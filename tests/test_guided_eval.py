"""Guided evaluation and learned samplers for a guided teacher: `diffode eval guidance.scale=[...]` (a sweep axis,
forwards per row, class accuracy with its interval, the per-scale report), artifacts that record their guidance
and are refused at another scale or interval, and bad guidance configs refused in one paragraph before compute."""
from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_module

from _tiny_models import conditional_checkpoint
from diffode.artifacts import load_sampler, save_artifact
from diffode.cli.errors import ConfigError
from diffode.evaluation.runner import evaluate
from diffode.cli.train import train
from diffode.evaluation.results import read_rows
from diffode.models import initial_labels, initial_noise, load_model

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["n_samples=24", "batch_size=24", "progress=false", "save_images=0", "fid.bootstrap=10", "threads=1",
        "reference.enabled=false", "sweep.solvers=[ddim]", "sweep.grids=[edm]", "sweep.nfes=[3]",
        "sweep.learned=[]"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return conditional_checkpoint(tmp_path_factory.mktemp("cond") / "cond.ckpt")


def _eval_cfg(tmp_path, ckpt, *over):
    with initialize_config_module("diffode.conf", version_base="1.3"):
        return compose("eval", overrides=["source=checkpoint", f"source.path={ckpt}", *FAST,
                                          f"output_dir={tmp_path}", *over])


def test_guidance_scale_is_a_sweep_axis_with_forwards_accuracy_and_a_per_scale_report(tmp_path, ckpt):
    out = evaluate(_eval_cfg(tmp_path, ckpt, "guidance.scale=[0,1,3]", "save_images=8"))
    rows = {r["guidance"]: r for r in read_rows(out["csv"])}
    assert sorted(rows) == [0, 1, 3] and all(r["status"] == "ok" and r["nfe"] == 3 for r in rows.values())
    assert rows[0]["forwards"] == rows[1]["forwards"] == 3 and rows[3]["forwards"] == 6
    for r in rows.values():
        assert 0 <= r["accuracy_lo"] <= r["accuracy"] <= r["accuracy_hi"] <= 1
    assert rows[0]["fid"] != rows[1]["fid"] != rows[3]["fid"]
    report = (tmp_path / "report.md").read_text()
    assert "### w = 3" in report and "against the guidance scale" in report and "ACCURACY" in report
    assert "ddim/edm (w = 3) at NFE 3: 6 forwards" in report
    for f in ("fid_vs_nfe.png", "fid_vs_scale.png", "accuracy_vs_scale.png", "contact_sheet.png",
              "samples/ddim__edm__nfe03__w3.png"):
        assert (tmp_path / f).is_file(), f
    assert json.loads((tmp_path / "summary.json").read_text())["guidance_scales"] == [0.0, 1.0, 3.0]


def test_samples_at_w1_are_the_unguided_conditional_ones_and_rows_resume(tmp_path, ckpt):
    a = read_rows(evaluate(_eval_cfg(tmp_path / "a", ckpt, "guidance.scale=1"))["csv"])[0]
    b = read_rows(evaluate(_eval_cfg(tmp_path / "b", ckpt))["csv"])[0]
    assert a["fid"] == b["fid"] and a["accuracy"] == b["accuracy"] and a["guidance"] == 1 and b.get("guidance") is None
    seen = []
    evaluate(_eval_cfg(tmp_path / "a", ckpt, "guidance.scale=[1,2]"), on_cell_done=lambda k, c: seen.append(c.key))
    assert seen == [("ddim", "edm", 3, 2.0)]  # the w = 1 cell was already done


def test_a_guidance_interval_saves_the_unconditional_forwards_outside_it(tmp_path, ckpt):
    from diffode.core.grids import make_grid
    from diffode.core.schedules import EDM

    sig = make_grid("edm", 3, EDM(), sigma_min=0.002, sigma_max=80.0)[:3]  # ddim evaluates at the first 3 points
    lo, hi = 0.5, 20.0
    inside = sum(1 for s in sig if lo < float(s) <= hi)
    rows = read_rows(evaluate(_eval_cfg(tmp_path, ckpt, "guidance.scale=3", f"guidance.interval=[{lo},{hi}]"))["csv"])
    assert rows[0]["forwards"] == 3 + inside and 0 < inside < 3


@pytest.mark.parametrize("over, words", [
    (["source.path=null", "guidance.scale=2"], "is unconditional"),
    (["guidance.scale=-1"], "negative"),
    (["guidance.scale=2", "guidance.interval=[3,1]"], "lo < hi"),
    (["guidance.scale=2", "guidance.threshold=2"], "quantile"),
    (["guidance.scale=abc"], "not a number"),
])
def test_bad_guidance_configs_are_refused_in_one_paragraph_before_compute(tmp_path, ckpt, over, words, monkeypatch):
    import diffode.evaluation.sweep as sweep

    monkeypatch.setattr(sweep, "run_sweep", lambda *a, **k: pytest.fail("sampled despite a bad config"))
    with pytest.raises(ConfigError, match=words) as e:
        evaluate(_eval_cfg(tmp_path, ckpt, *over))
    assert "\n" not in str(e.value).strip()


def _artifact(tmp_path, model, guidance_record, name="g"):
    from diffode.core.grids import make_grid

    cond = {"num_classes": 10, **({} if guidance_record is None else {"guidance": guidance_record})}
    return save_artifact(tmp_path / name, kind="ld3", solver="ddim", nfe=3,
                         sigmas=make_grid("logsnr", 3, model.schedule, sigma_min=0.002, sigma_max=80.0),
                         model=model.identity, schedule=model.schedule, condition=cond)


def test_an_artifact_learned_at_one_scale_is_refused_at_another_saying_which(tmp_path, ckpt):
    model = load_model({"kind": "checkpoint", "path": str(ckpt)})
    art = _artifact(tmp_path, model, {"scale": 2.0, "interval": None, "threshold": None})
    sampler = load_sampler(art)
    sampler.check(model.with_guidance(__import__("diffode.core.guidance", fromlist=["Guidance"]).Guidance(2.0)))
    with pytest.raises(ConfigError, match=r"learned for a model guided with w=2 but is used with w=4.*guidance.scale=2"):
        evaluate(_eval_cfg(tmp_path / "e1", ckpt, "guidance.scale=4", f"sweep.learned=[{art}]"))
    with pytest.raises(ConfigError, match="learned for a model guided with w=2 but is used with no guidance"):
        evaluate(_eval_cfg(tmp_path / "e2", ckpt, f"sweep.learned=[{art}]"))
    with pytest.raises(ConfigError, match=r"interval"):
        evaluate(_eval_cfg(tmp_path / "e3", ckpt, "guidance.scale=2", "guidance.interval=[0.1,5]",
                           f"sweep.learned=[{art}]"))
    rows = read_rows(evaluate(_eval_cfg(tmp_path / "ok", ckpt, "guidance.scale=[1,2]", f"sweep.learned=[{art}]"))["csv"])
    learned = [r for r in rows if r["grid"] == "ld3"]
    assert len(learned) == 1 and learned[0]["guidance"] == 2 and learned[0]["forwards"] == 6
    unguided = _artifact(tmp_path, model, None, "u")  # learned without guidance: the w = 1 column
    rows = read_rows(evaluate(_eval_cfg(tmp_path / "ok2", ckpt, "guidance.scale=[1,2]",
                                        f"sweep.learned=[{unguided}]"))["csv"])
    assert [r["guidance"] for r in rows if r["grid"] == "ld3"] == [1]


def _train_cfg(tmp_path, ckpt, *over):
    with initialize_config_module("diffode.conf", version_base="1.3"):
        return compose("train", overrides=["source=checkpoint", f"source.path={ckpt}", "logger=none", "threads=1",
                                          f"output_dir={tmp_path}", *over])


def test_gits_learns_for_a_guided_teacher_with_a_label_per_trajectory(tmp_path, ckpt):
    res = train(_train_cfg(tmp_path, ckpt, "method=gits", "method.solver=ipndm", "method.nfe=3",
                           "method.teacher.steps=8", "method.n_warmup=6", "method.batch_size=6", "guidance.scale=2"))
    art = load_sampler(res["exported"]["ipndm_nfe3"])
    assert art.manifest["condition"] == {"num_classes": 10, "guidance": {"scale": 2.0, "interval": None,
                                                                         "threshold": None}}
    # the DP's cost comes from the guided teacher under the labels eval would draw for the warm-up seeds: by hand
    from diffode.core.conditioning import bind
    from diffode.core.gits import cost_matrix, path_cost, teacher_trajectory
    from diffode.core.guidance import Guidance

    m = load_model({"kind": "checkpoint", "path": str(ckpt)}).with_guidance(Guidance(2.0))
    fine = torch.tensor(art.manifest["training"]["teacher_sigmas"], dtype=torch.float64)
    seeds = range(art.manifest["training"]["seed"], art.manifest["training"]["seed"] + 6)
    x_T, y = initial_noise(m.shape, seeds, 80.0), initial_labels(10, seeds)
    idx, coeff = art.manifest["gits"]["indices"], art.manifest["metrics"]["coeff"]
    guided = path_cost(cost_matrix(*teacher_trajectory(m.denoiser_for(y), x_T, fine, "ipndm"), fine, "dev"), idx, coeff)
    plain = path_cost(cost_matrix(*teacher_trajectory(bind(m.denoiser, y), x_T, fine, "ipndm"), fine, "dev"), idx, coeff)
    assert guided == pytest.approx(art.manifest["metrics"]["dp_cost"], rel=1e-9) and guided != pytest.approx(plain)
    with pytest.raises(ConfigError, match="guided at one scale"):
        train(_train_cfg(tmp_path / "b", ckpt, "method=gits", "guidance.scale=[2,4]"))
    with pytest.raises(ConfigError, match="has none"):
        train(_train_cfg(tmp_path / "c", ckpt, "method=denoiser", "guidance.scale=2"))


def test_wandb_gets_metrics_per_scale_and_against_the_scale(tmp_path, ckpt, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    from diffode.evaluation.wandb_log import read_offline_run

    out = evaluate(_eval_cfg(tmp_path, ckpt, "guidance.scale=[1,2]", "sweep.nfes=[2,3]", "logger=wandb"))
    run = read_offline_run(out["wandb"]["run_dir"])
    rows = {(r["nfe"], r["guidance"]): r for r in read_rows(out["csv"])}
    hist = {h["nfe"]: h for h in run["history"] if "nfe" in h}
    assert hist[3]["fid/ddim/edm/w2"] == pytest.approx(rows[3, 2]["fid"])
    assert hist[2]["accuracy/ddim/edm/w1"] == pytest.approx(rows[2, 1]["accuracy"])
    assert hist[3]["forwards/ddim/edm/w2"] == 6
    assert "chart/fid_vs_scale/nfe3_table" in run["summary"] and "chart/accuracy_vs_nfe_table" in run["summary"]


def test_each_scales_reference_solve_is_a_row_when_asked(tmp_path, ckpt):
    out = evaluate(_eval_cfg(tmp_path, ckpt, "guidance.scale=[1,2]", "reference.enabled=true", "reference.nfe=5",
                             "reference.check_nfe=null", "reference.row=true", "reference.solver=dpmpp_2m"))
    rows = {(r["solver"], r["guidance"]): r for r in read_rows(out["csv"])}
    for w in (1, 2):
        ref = rows["dpmpp_2m", w]
        assert ref["nfe"] == 5 and ref["rmse"] == 0 and ref["forwards"] == 5 * w and ref["fid"] > 0
        assert rows["ddim", w]["rmse"] > 0
    assert "self-consistency was not measured" in (tmp_path / "report.md").read_text()
