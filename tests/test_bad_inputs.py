"""Bad inputs are refused before any compute, with one short paragraph that names the fix, said once.

In-process: each case composes `diffode train|eval <overrides>` and runs the entry with every compute
path replaced by a trap (a method's builder, the sweep, the metrics, Trainer.fit), so a case passes only
when the check fires first. The message must name the offending key and the fix. Through the console
script: the exit status, a stderr of one paragraph without a traceback (HYDRA_FULL_ERROR=1 shows it).
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from diffode.cli.errors import ConfigError


class ComputeStarted(AssertionError):
    pass


def _trap(*a, **k):
    raise ComputeStarted("compute started before the bad value was refused")


@pytest.fixture
def no_compute(monkeypatch):
    """Every road to compute raises ComputeStarted."""
    import lightning.pytorch as pl

    import diffode.evaluation.metrics as em
    import diffode.evaluation.sweep as es
    from diffode.methods import registry

    registry.load_all()
    for name, spec in list(registry.METHODS.items()):
        monkeypatch.setitem(registry.METHODS, name, dataclasses.replace(spec, build=_trap))
    monkeypatch.setattr(pl.Trainer, "fit", _trap)
    for mod, attr in ((em, "make_metrics"), (es, "run_sweep"), (es, "sample_cell")):
        monkeypatch.setattr(mod, attr, _trap)


@pytest.fixture
def hydra_ctx():
    GlobalHydra.instance().clear()
    with initialize_config_module("diffode.conf", version_base="1.3"):
        yield


def refusal(entry: str, overrides: list[str], out: Path) -> str:
    """The ConfigError message of `diffode <entry> <overrides>` (fails the test if it ran or crashed)."""
    from diffode.evaluation.runner import evaluate
    from diffode.cli.train import train

    cfg = compose(entry, overrides=[*overrides, f"output_dir={out}"], return_hydra_config=True)
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    with pytest.raises(ConfigError) as e:
        train(cfg) if entry == "train" else evaluate(cfg, choices=choices)
    msg = str(e.value)
    assert "\n\n" not in msg and "Traceback" not in msg and len(msg) < 1200, msg
    return msg


# (entry, overrides, fragments the message must contain: the key and the fix)
CASES = [
    # diffode eval: cells
    ("eval", ["solver=heun", "grid=edm", "nfe=5"], ["heun/edm nfe=5", "reachable: [2, 4, 6", "skip_unreachable"]),
    ("eval", ["solver=dpm_solver_3", "nfe=4"], ["dpm_solver_3", "reachable: [3, 6, 9"]),
    ("eval", ["sweep.solvers=[nosuch]"], ["unknown solver 'nosuch'", "conf/solver/"]),
    ("eval", ["sweep.grids=[nosuch]"], ["unknown grid 'nosuch'", "conf/grid/"]),
    ("eval", ["solver=heun", "grid=explicit", "nfe=4", "grid.options.sigmas=[80,10,1,0.002]"],
     ["has 4 sigmas (3 steps) but 2 steps", "right length"]),
    ("eval", ["solver=heun", "grid=explicit", "nfe=4", "grid.options.sigmas=[80,1,10]"], ["strictly decreasing"]),
    ("eval", ["solver=heun", "grid=explicit", "nfe=4", "grid.options.sigmas=[800,1,0.002]"], ["clip the grid"]),
    ("eval", ["solver=heun", "grid=edm", "nfe=4", "grid.options.rho=-1"], ["rho > 0"]),
    ("eval", ["solver=heun", "grid=from_file", "nfe=4"], ["grid file", "artifact directory"]),
    ("eval", ["solver=heun", "grid=edm", "nfe=4", "+sweep.solver_options.heun.bogus=1"],
     ["does not take option(s) ['bogus']", "conf/solver/heun.yaml"]),
    ("eval", ["sweep.pairing=weird"], ["sweep.pairing", "product or usual"]),
    ("eval", ["sweep.pairing=usual", "sweep.solvers=[rk45]"], ["sweep.usual_grid.rk45"]),
    ("eval", ["sweep.nfes=[]"], ["sweep.nfes is empty"]),
    ("eval", ["sweep.learned=[/nonexistent/artifact]"], ["no artifact at", "manifest.json"]),
    # diffode eval: source, sizes, metrics, device
    ("eval", ["source=gmm2d", "source.preset=nosuch"], ["unknown mixture preset 'nosuch'", "gmm2d, gmm16d"]),
    ("eval", ["source.kind=nosuch"], ["unknown source kind 'nosuch'", "source=gmm2d | gmm16d | checkpoint"]),
    ("eval", ["source.path=/nonexistent/model.ckpt"], ["not found", "source.path="]),
    ("eval", ["source=diffusers", "source.path=/nonexistent"], ["not a directory", "save_pretrained"]),
    ("eval", ["source=gmm2d", "source.sigma_min=5", "source.sigma_max=1"], ["source.sigma_min < source.sigma_max"]),
    ("eval", ["n_samples=1"], ["n_samples >= 2"]),
    ("eval", ["batch_size=0"], ["batch_size >= 1"]),
    ("eval", ["source=gmm2d", "n_samples=abc"], ["n_samples='abc' must be an integer"]),
    ("eval", ["solver=heun", "grid=edm", "nfe=4", "metric=gmm"], ["metric=gmm needs an exact mixture", "metric=fid"]),
    ("eval", ["solver=heun", "grid=edm", "nfe=4", "metric=nosuch"], ["metric=auto, fid, gmm, nll"]),
    ("eval", ["solver=heun", "grid=edm", "nfe=4", "fid.features=nosuch"], ["fid.features", "inception, digits or flatten"]),
    ("eval", ["solver=heun", "grid=edm", "nfe=4", "fid.reference=cifar10", "fid.features=digits",
             "fid.data_root=/nonexistent"],
     ["cifar-10-batches-py is missing", "fid.data_root="]),
    ("eval", ["solver=heun", "grid=edm", "nfe=4", "fid.features=digits", "fid.reference=/nonexistent/folder"],
     ["fid.reference"]),
    ("eval", ["solver=heun", "grid=edm", "nfe=4", "reference.solver=nosuch"], ["reference.solver", "unknown solver"]),
    ("eval", ["solver=heun", "grid=edm", "nfe=4", "reference.solver=heun", "reference.nfe=5"],
     ["reference.nfe=5", "nearest reachable NFEs are [2, 4, 6"]),
    ("eval", ["solver=heun", "grid=edm", "nfe=4", "device=nosuch"], ["device='nosuch'", "device=cpu"]),
    # diffode train (method=denoiser, the default)
    ("train", ["method.lr=-1"], ["method.lr=-1.0 must be positive"]),
    ("train", ["method.ema.decay=1.5"], ["method.ema.decay=1.5", "[0, 1)"]),
    ("train", ["method.sample_nfe=3"], ["method.sample_nfe=3", "reachable"]),
    ("train", ["+method.bogus=1"], ["method.bogus", "conf/method/denoiser.yaml"]),
    ("train", ["net=mlp"], ["net=mlp is for vector data", "net=unet_digits"]),
    ("train", ["net.resolution=16"], ["does not match dataset=digits", "net.resolution"]),
    ("train", ["dataset=gmm2d", "net=unet_digits"], ["a UNet needs images", "net=mlp"]),
    ("train", ["ckpt_path=/nonexistent/last.ckpt"], ["ckpt_path=/nonexistent/last.ckpt does not exist", "ckpt_path=null"]),
    ("train", ["trainer.max_steps=0"], ["trainer.max_steps must be positive"]),
    ("train", ["seed=-1"], ["seed=-1"]),
    ("train", ["dataset.batch_size=0"], ["dataset.batch_size=0 must be >= 1"]),
    ("train", ["dataset=gmm2d", "net=mlp", "dataset.n_train=10", "dataset.batch_size=32"],
     ["dataset.n_train=10", "dataset.batch_size"]),
    ("train", ["dataset=image_folder", "dataset.path=/nonexistent/images"], ["not a directory", "dataset.path="]),
    ("train", ["dataset=mnist", "net=unet_digits", "net.resolution=28", "dataset.root=/nonexistent/data",
               "dataset.download=false"], ["mnist", "dataset.root="]),
    # diffode train method=ld3
    ("train", ["method=ld3", "method.gamma=-1"], ["method.gamma=-1.0 must be >= 0"]),
    ("train", ["method=ld3", "method.distance=nosuch"],
     ["method.distance='nosuch'", "l2, l2_sum, l1, pseudo_huber, lpips, digits_perceptual"]),
    ("train", ["method=ld3", "source=gmm2d", "method.distance=lpips"], ["needs images", "method.distance=l2"]),
    ("train", ["method=ld3", "method.n_pairs=1"], ["method.n_pairs=1", "method.n_pairs=4"]),
    ("train", ["method=ld3", "method.solver=nosuch"], ["method.solver=nosuch", "unknown solver"]),
    ("train", ["method=ld3", "method.solver=heun", "method.nfe=5"], ["method.solver=heun nfe=5", "reachable"]),
    ("train", ["method=ld3", "method.solver=euler_maruyama"], ["not differentiable", "deterministic solver"]),
    ("train", ["method=ld3", "method.teacher.solver=heun", "method.teacher.nfe=20"],
     ["method.teacher.solver=heun", "does not take option(s) ['order']"]),
    ("train", ["method=ld3", "method.lr_logits=-1"], ["method.lr_logits=-1.0 must be positive"]),
    ("train", ["method=ld3", "method.win_rate=0.9"], ["method.win_rate=0.9", "(0, 0.5]"]),
    ("train", ["method=ld3", "method.init_grid=nosuch"], ["init_grid", "nosuch"]),
    ("train", ["method=ld3", "+method.bogus=1"], ["method.bogus", "conf/method/ld3.yaml"]),
    ("train", ["method=ld3", "source.kind=nosuch"], ["source: unknown source kind 'nosuch'"]),
    ("train", ["method=ld3", "source=gmm2d", "source.preset=nosuch"], ["unknown mixture preset 'nosuch'"]),
    ("train", ["method=ld3", "source.path=/nonexistent/model.ckpt"], ["not found", "source.path="]),
    # flow models (issue 24): t_max >= 1, a shift <= 0, a velocity model under a VP schedule
    ("train", ["experiment=digits_flow", "schedule.t_max=1.0"], ["t_max < 1", "schedule.t_max=0.999"]),
    ("train", ["method.prediction=velocity"], ["method.prediction=velocity", "straight path", "schedule=flow"]),
    ("eval", ["source=gmm2d_flow", "source.schedule.t_max=1.0"], ["t_max < 1"]),
    ("eval", ["source=gmm2d_flow", "source.prediction=velocity", "source.schedule._target_=diffode.core.schedules.VE",
              "~source.schedule.time_scale"], ["straight path", "schedule=flow"]),
    ("eval", ["solver=euler", "grid=sd3", "nfe=4", "grid.options.shift=0"], ["shift=0", "must be a finite number > 0"]),
    ("eval", ["solver=euler", "grid=time_uniform", "nfe=4", "+grid.options.shift=-3"], ["shift=-3", "> 0"]),
    ("eval", ["solver=euler", "grid=explicit", "nfe=2", "grid.options.sigmas=[80,1,0.002]", "+grid.options.shift=3"],
     ["takes no shift"]),
    ("train", ["method=reflow", "source=gmm2d_flow"], ["method.student_net"]),
    ("train", ["method=reflow", "method.grid=explicit"], ["one fixed grid"]),
    ("train", ["method=reflow", "method.distill_steps=[0]"], ["method.distill_steps=[0]", ">= 1"]),
    # the other methods
    pytest.param("train", ["method=amed", "method.nfe=4", "method.afs=true"], ["method.nfe=4", "odd"]),
    pytest.param("train", ["method=amed", "method.scale_dir=2"], ["method.scale_dir=2"]),
    pytest.param("train", ["method=amed", "method.lr=-1"], ["method.lr=-1.0 must be positive"]),
    pytest.param("train", ["method=gits", "method.teacher.steps=1"], ["method.teacher.steps=1", ">= 2"]),
    pytest.param("train", ["method=progressive_distillation", "method.n0=6"], ["n0=6", "power of two"]),
    pytest.param("train", ["method=progressive_distillation", "+method.bogus=1"], ["method.bogus"]),
    pytest.param("train", ["method=consistency_distillation", "method.mu=1"], ["method.mu=1", "[0, 1)"]),
    pytest.param("train", ["method=consistency_distillation", "method.distance=nosuch"],
                 ["method.distance='nosuch'"]),
]


def _id(c):
    values = c.values if hasattr(c, "values") else c
    return f"{values[0]}:" + ",".join(values[1])


@pytest.mark.parametrize("entry,overrides,fragments", CASES, ids=[_id(c) for c in CASES])
def test_refused_before_compute(hydra_ctx, no_compute, tmp_path, entry, overrides, fragments):
    msg = refusal(entry, overrides, tmp_path)
    for f in fragments:
        assert f in msg, f"{f!r} not in: {msg}"


def test_at_least_25_distinct_bad_inputs():
    entries = {(c.values if hasattr(c, "values") else c)[0] for c in CASES}
    assert len(CASES) >= 25 and entries == {"train", "eval"}


def test_a_problem_is_said_once_not_once_per_nfe(hydra_ctx, no_compute, tmp_path):
    msg = refusal("eval", ["solver=heun", "grid=edm", "nfe=[3,5,7]"], tmp_path)
    assert msg.count("cannot make exactly") == 1 and "nfe=3,5,7" in msg
    msg = refusal("eval", ["solver=heun", "grid=edm", "nfe=[4,6,8]", "+sweep.solver_options.heun.bogus=1"], tmp_path)
    assert msg.count("does not take option") == 1 and "nfe=4,6,8" in msg


def test_missing_inception_weights_name_the_file_and_the_command(hydra_ctx, no_compute, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache
    msg = refusal("eval", ["solver=heun", "grid=edm", "nfe=4", "fid.features=inception"], tmp_path / "run")
    assert "weights-inception-2015-12-05-6726825d.pth" in msg and "diffode fetch-weights inception" in msg


@pytest.mark.parametrize("method,overrides", [
    ("ld3", []),  # LD3's default distance is lpips
    ("amed", ["method.distance=lpips"]),
    ("consistency_distillation", ["method.distance=lpips"]),
])
def test_missing_lpips_weights_are_said_at_config_time(hydra_ctx, no_compute, tmp_path, monkeypatch, method, overrides):
    """Not a traceback from the LPIPS constructor once the method is built: the check names the file and the fix."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache
    msg = refusal("train", [f"method={method}", *overrides], tmp_path / "run")
    assert "vgg16-397923af.pth" in msg and "diffode fetch-weights lpips-vgg" in msg, msg
    assert msg.count("method.distance=lpips") == 1, msg


# -- learned samplers made for something else ------------------------------------------------

@pytest.fixture
def artifacts(tmp_path):
    """Artifacts that cannot be used with the default source (the shipped digits UNet), each for one reason."""
    from diffode.artifacts import save_artifact
    from diffode.core.grids import make_grid
    from diffode.models import load_model, schedule_spec

    digits = load_model({"kind": "checkpoint", "path": None})
    gmm = load_model({"kind": "gmm", "preset": "gmm2d"})

    def grid(m, steps):
        return make_grid("logsnr", steps, m.schedule, sigma_min=m.sigma_min, sigma_max=m.sigma_max)

    out = {"ok": save_artifact(tmp_path / "ok", kind="ld3", solver="dpmpp_3m", nfe=4, sigmas=grid(digits, 4),
                               model=digits.identity, schedule=digits.schedule)}
    out["another_model"] = save_artifact(tmp_path / "a", kind="ld3", solver="dpmpp_3m", nfe=4, sigmas=grid(gmm, 4),
                                         model=gmm.identity, schedule=gmm.schedule)
    other = {**digits.identity, "sha256": "0" * 64}
    out["another_checkpoint"] = save_artifact(tmp_path / "b", kind="ld3", solver="dpmpp_3m", nfe=4,
                                              sigmas=grid(digits, 4), model=other, schedule=digits.schedule)
    spec = {**schedule_spec(digits.schedule), "name": "not_" + digits.schedule.name}
    out["another_schedule"] = save_artifact(tmp_path / "c", kind="ld3", solver="dpmpp_3m", nfe=4,
                                            sigmas=grid(digits, 4), model=digits.identity, schedule=spec)
    out["another_sigma_max"] = save_artifact(tmp_path / "d", kind="ld3", solver="dpmpp_3m", nfe=4,
                                             sigmas=grid(digits, 4) * 0.5, model=digits.identity,
                                             schedule=digits.schedule)
    out["nfe_not_its_grid"] = save_artifact(tmp_path / "e", kind="ld3", solver="dpmpp_3m", nfe=6,
                                            sigmas=grid(digits, 4), model=digits.identity, schedule=digits.schedule)
    return out


@pytest.mark.parametrize("which,fragments", [
    ("another_model", ["made for another model", "kind 'gmm' vs 'checkpoint'"]),
    ("another_checkpoint", ["made for another model", "sha256"]),
    ("another_schedule", ["made for schedule 'not_"]),
    ("another_sigma_max", ["source.sigma_max="]),
    ("nfe_not_its_grid", ["nfe=6", "5 sigmas", "re-export"]),
])
def test_learned_sampler_for_something_else_is_refused(hydra_ctx, no_compute, tmp_path, artifacts, which, fragments):
    msg = refusal("eval", ["solver=heun", "grid=edm", "nfe=4", f"sweep.learned=[{artifacts[which]}]"], tmp_path / "run")
    assert "dpmpp_3m/ld3 nfe=" in msg
    for f in fragments:
        assert f in msg, f"{f!r} not in: {msg}"


def test_learned_sampler_at_another_nfe_is_refused(artifacts):
    from diffode.artifacts import load_sampler
    from diffode.models import load_model

    s, model = load_sampler(artifacts["ok"]), load_model({"kind": "checkpoint", "path": None})
    s.check(model, nfe=4)
    with pytest.raises(ValueError, match="samples with nfe=4, not nfe=5"):
        s.check(model, nfe=5)


# -- through the console script ------------------------------------------------------------------

DIFFODE = Path(sys.executable).with_name("diffode")


def run_cli(args: list[str], tmp_path: Path, **env) -> subprocess.CompletedProcess:
    e = {**os.environ, "OMP_NUM_THREADS": "1", "DIFFODE_OUTPUTS": str(tmp_path / "outputs"), **env}
    e.pop("HYDRA_FULL_ERROR", None) if "HYDRA_FULL_ERROR" not in env else None
    return subprocess.run([str(DIFFODE), *args], cwd=tmp_path, env=e, capture_output=True, text=True, timeout=300)


def paragraphs(text: str) -> list[str]:
    return [p for p in text.strip().split("\n\n") if p.strip()]


@pytest.mark.skipif(not DIFFODE.is_file(), reason="the console script is not installed in this environment")
@pytest.mark.parametrize("args,fragment", [
    (["eval", "solver=heun", "grid=edm", "nfe=[3,5,7]", "n_samples=4"], "cannot make exactly"),
    (["eval", "source=gmm2d", "source.preset=nosuch"], "unknown mixture preset"),
    pytest.param(["train", "method=ld3", "method.gamma=-1"], "method.gamma=-1.0 must be >= 0",
                 marks=pytest.mark.slow),  # Lightning's import: ~40 s on a loaded 2-core machine
])
def test_cli_prints_one_paragraph_without_traceback(tmp_path, args, fragment):
    r = run_cli(args, tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    assert r.stderr.startswith("diffode: ") and len(paragraphs(r.stderr)) == 1, r.stderr
    assert r.stderr.count(fragment) == 1, r.stderr
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("results.csv"))


@pytest.mark.skipif(not DIFFODE.is_file(), reason="the console script is not installed in this environment")
def test_cli_unknown_solver_is_hydras_short_error(tmp_path):
    r = run_cli(["eval", "solver=nosuch"], tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.startswith("In 'eval': Could not find 'solver/nosuch'") and r.stderr.count("solver/nosuch") == 1
    assert "heun" in r.stderr  # Hydra lists the options


@pytest.mark.skipif(not DIFFODE.is_file(), reason="the console script is not installed in this environment")
def test_cli_full_error_shows_the_traceback(tmp_path):
    r = run_cli(["eval", "source=gmm2d", "source.preset=nosuch"], tmp_path, HYDRA_FULL_ERROR="1")
    assert r.returncode != 0
    assert "Traceback" in r.stderr and "ConfigError" in r.stderr and "unknown mixture preset" in r.stderr
