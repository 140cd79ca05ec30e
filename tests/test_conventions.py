"""What users of Python / Lightning / Hydra packages expect of diffode: W&B's mode decided by wandb's own
settings, optional extras named when a config needs one, library code that logs instead of printing, no
private Lightning imports, shipped artifacts without the paths of the machine that made them, learned
samplers that print as one line and load by their shipped name, Hydra's shell completion."""
import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "diffode"

# Each case: (environment, the mode a config requests, the mode expected). The .netrc of every case holds
# a key for wandb.example.org only: it counts where WANDB_BASE_URL names that server, not elsewhere.
KEY = "k" * 40
WANDB_CASES = [
    ({}, None, "offline"),
    ({"WANDB_API_KEY": KEY}, None, "online"),
    ({"WANDB_API_KEY": KEY, "WANDB_MODE": "offline"}, None, "offline"),
    ({"WANDB_API_KEY": KEY, "WANDB_MODE": "dryrun"}, None, "offline"),
    ({"WANDB_MODE": "disabled"}, None, "disabled"),
    ({"WANDB_API_KEY": KEY}, "offline", "offline"),
    ({"WANDB_BASE_URL": "https://wandb.example.org"}, None, "online"),
]


def test_wandb_mode_follows_wandb_settings_without_network(tmp_path):
    (tmp_path / ".netrc").write_text(f"machine wandb.example.org\n  login user\n  password {KEY}\n")
    (tmp_path / ".netrc").chmod(0o600)
    # One process for every case: wandb reads its environment once per session, so each case tears it down.
    script = f"""
import json, os, wandb
from diffode.evaluation.wandb_log import wandb_mode
out = []
for env, requested, _ in {WANDB_CASES!r}:
    for k in [k for k in os.environ if k.startswith("WANDB_") and k != "WANDB_SILENT"]:
        del os.environ[k]
    os.environ.update(env)
    wandb.teardown()
    out.append(wandb_mode(requested))
print(json.dumps(out))
"""
    # WANDB_SILENT: wandb would otherwise ask its server for the user name to greet (no network here)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), WANDB_SILENT="true", WANDB_CONFIG_DIR=str(tmp_path / "config"))
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got == [want for *_, want in WANDB_CASES], list(zip(WANDB_CASES, got))
    assert not (tmp_path / "config").exists() or not any((tmp_path / "config").iterdir())  # nothing written


# -- optional extras ---------------------------------------------------------------------------------

def _train_cfg(overrides, tmp_path):
    with initialize_config_module("diffode.conf", version_base="1.3"):
        return compose("train", overrides=[*overrides, f"output_dir={tmp_path}"])


def _eval_cfg(overrides, tmp_path):
    with initialize_config_module("diffode.conf", version_base="1.3"):
        return compose("eval", overrides=["source=gmm2d", "n_samples=8", "batch_size=8", f"output_dir={tmp_path}",
                                          *overrides])


@pytest.mark.parametrize("override,modules,extra", [
    ("logger=wandb", ["wandb"], "wandb"),
    ("logger=tensorboard", ["tensorboard", "tensorboardX"], "tensorboard"),
])
def test_a_logger_whose_extra_is_missing_is_named_before_any_compute(tmp_path, monkeypatch, override, modules, extra):
    from diffode.cli.errors import ConfigError
    from diffode.evaluation.runner import evaluate
    from diffode.cli.train import train

    for m in modules:  # None in sys.modules: `import m` fails and find_spec(m) is None, as when it is absent
        monkeypatch.setitem(sys.modules, m, None)
    with pytest.raises(ConfigError, match=re.escape(f"pip install 'diffode[{extra}]'")):
        train(_train_cfg(["dataset=gmm2d", "net=mlp", "debug=fast", override], tmp_path / "train"))
    assert not (tmp_path / "train" / "checkpoints").exists()
    if extra == "wandb":  # eval logs to W&B only (its CSV/Markdown are always written)
        with pytest.raises(ConfigError, match=re.escape("pip install 'diffode[wandb]'")):
            evaluate(_eval_cfg([override], tmp_path / "eval"))
        assert not (tmp_path / "eval" / "results.csv").exists()


def test_diffusers_source_and_slurm_launcher_name_their_extras(tmp_path, monkeypatch):
    from diffode.cli.errors import ConfigError
    from diffode.evaluation.runner import evaluate
    from diffode.cli.evaluate import main as eval_main

    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ConfigError, match=re.escape("source=diffusers needs the optional package diffusers")):
        evaluate(_eval_cfg(["source=diffusers", f"source.path={tmp_path}"], tmp_path / "eval"))
    monkeypatch.setitem(sys.modules, "hydra_plugins.hydra_submitit_launcher", None)
    monkeypatch.setattr(sys, "argv", ["diffode-eval", "-m", "source=gmm2d", "hydra/launcher=submitit_local"])
    with pytest.raises(SystemExit) as e:  # Hydra would build the launcher before any diffode code runs
        eval_main()
    assert e.value.code == 2


def test_launcher_check_reads_the_command_line(monkeypatch):
    from diffode.extras import launcher_errors

    monkeypatch.setitem(sys.modules, "hydra_plugins.hydra_submitit_launcher", None)
    assert "pip install 'diffode[slurm]'" in launcher_errors(["-m", "hydra/launcher=submitit_slurm"])[0]
    assert launcher_errors(["-m", "hydra/launcher=basic", "solver=heun"]) == []


def test_inception_extractor_imports_before_the_weights_lookup(tmp_path, monkeypatch):
    from diffode.metrics.fid import InceptionFeatures
    from diffode.metrics.weights import MissingWeightsError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no weights here
    with pytest.raises(MissingWeightsError, match="diffode fetch-weights inception"):
        InceptionFeatures()  # torch-fidelity (torchmetrics[image]) is installed: the weights are what is missing
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", None)
    with pytest.raises(ImportError):
        InceptionFeatures()  # without it, the import fails first, not the weights look-up


# -- library code ------------------------------------------------------------------------------------

def _calls_and_imports(root: Path):
    for f in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            yield f.relative_to(REPO), node


def test_methods_log_instead_of_printing_and_the_cli_shows_info():
    prints = [f"{f}:{n.lineno}" for f, n in _calls_and_imports(PACKAGE / "methods")
              if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "print"]
    assert not prints, f"print() in method code (use logging.getLogger(__name__)): {prints}"
    with initialize_config_module("diffode.conf", version_base="1.3"):
        cfg = compose("train", return_hydra_config=True)
    logging_cfg = cfg.hydra.job_logging
    assert logging_cfg.root.level == "INFO" and "console" in logging_cfg.root.handlers  # export lines reach the user


def test_no_private_lightning_imports():
    private = []
    for f, n in _calls_and_imports(PACKAGE):
        if isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] in ("lightning", "pytorch_lightning"):
            if any(p.startswith("_") for p in n.module.split(".")) or any(a.name.startswith("_") for a in n.names):
                private.append(f"{f}:{n.lineno} from {n.module} import {', '.join(a.name for a in n.names)}")
    assert not private, private


def test_stage_progress_bar_shows_each_stage_with_public_tqdm_api(capsys):
    from types import SimpleNamespace

    from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

    from diffode.methods.progressive_distillation.module import StageProgressBar

    module = SimpleNamespace(steps=[4, 2], starts=[0, 3], updates=[3, 2], stage_of=lambda s: int(s >= 3))
    trainer = SimpleNamespace(global_step=0)
    bar = StageProgressBar()
    bar.train_progress_bar = Tqdm(total=1, file=sys.stdout)
    bar.get_metrics = lambda *_: {"loss": 0.5}  # Lightning's own needs a running trainer
    seen = []
    for step in range(5):
        trainer.global_step = step
        bar.on_train_batch_start(trainer, module, None, step)
        trainer.global_step = step + 1
        bar.on_train_batch_end(trainer, module, None, None, step)
        b = bar.train_progress_bar
        seen.append((b.desc.rstrip(": "), b.n, b.total))
    assert seen == [("stage 1/2: 8 -> 4 steps", 1, 3), ("stage 1/2: 8 -> 4 steps", 2, 3),
                    ("stage 1/2: 8 -> 4 steps", 3, 3), ("stage 2/2: 4 -> 2 steps", 1, 2),
                    ("stage 2/2: 4 -> 2 steps", 2, 2)]
    assert "stage 2/2: 4 -> 2 steps" in capsys.readouterr().out


# -- artifacts ---------------------------------------------------------------------------------------

ABSOLUTE = re.compile(r'"(/|~/|[A-Za-z]:\\\\)[^"]*"')


def test_shipped_manifests_carry_no_absolute_path():
    manifests = sorted(PACKAGE.glob("assets/artifacts/**/manifest.json")) + sorted(REPO.glob("experiments/**/ld3_grid.json"))
    assert len(manifests) > 40
    found = [f"{m.relative_to(REPO)}: {hit.group(0)}" for m in manifests for hit in ABSOLUTE.finditer(m.read_text())]
    assert not found, found[:10]


def test_artifact_writer_records_no_absolute_path(tmp_path):
    from diffode.artifacts import read_manifest, save_artifact
    from diffode.core.schedules import EDM

    out = save_artifact(tmp_path / "a", kind="ld3", solver="heun", nfe=3, sigmas=[80.0, 1.0, 0.002],
                        model={"kind": "gmm", "hash": "abc"}, schedule=EDM(),
                        training={"cache_dir": str(tmp_path / "cache"), "home": "~/x", "grid": "edm/rho7",
                                  "nested": [{"source": "/data/set.pt"}]})
    m = read_manifest(out)
    assert m["training"] == {"cache_dir": None, "home": None, "grid": "edm/rho7", "nested": [{"source": None}]}
    assert not ABSOLUTE.search((out / "manifest.json").read_text())


def test_load_sampler_takes_a_shipped_name_in_any_directory_and_prints_one_line(tmp_path, monkeypatch):
    import diffode

    from diffode.config import asset

    monkeypatch.chdir(tmp_path)
    s = diffode.load_sampler("asset:artifacts/ld3/ipndm_nfe4")
    assert (s.kind, s.solver, s.nfe, s.path) == ("ld3", "ipndm", 4, asset("artifacts/ld3/ipndm_nfe4"))
    assert diffode.load_sampler("asset:artifacts/pd/pd_4").student is not None  # its weights.pt found too
    text = repr(s)
    assert text == str(s) and "\n" not in text and len(text) < 300
    for part in ("ld3", "ipndm/ld3", "ipndm", "nfe=4", "ipndm_nfe4"):
        assert part in text
    assert "history" not in text and "sigmas" not in text


# -- shell completion ---------------------------------------------------------------------------------

@pytest.mark.parametrize("entry,line,want", [
    ("diffode.cli.train", "diffode-train meth", "method="),
    ("diffode.cli.train", "diffode-train method=", "method=ld3"),
    ("diffode.cli.evaluate", "diffode-eval sol", "solver="),
    ("diffode.cli.evaluate", "diffode-eval solver=dpm", "solver=dpmpp_3m"),
])
def test_console_scripts_complete_with_hydra(entry, line, want, monkeypatch, capsys):
    import importlib

    main = importlib.import_module(entry).main  # what the console scripts diffode-train / diffode-eval call
    monkeypatch.setenv("COMP_LINE", line)
    monkeypatch.setattr(sys, "argv", [line.split()[0], "-sc", "query=bash"])
    main()
    assert want in capsys.readouterr().out.split()
    monkeypatch.setattr(sys, "argv", [line.split()[0], "-sc", "install=bash"])
    main()
    assert capsys.readouterr().out.rstrip().endswith(f"hydra_bash_completion {line.split()[0]}")
