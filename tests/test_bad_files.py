"""Bad files and bad values end in one paragraph that names the path or the key (before any compute): a
malformed artifact manifest, checkpoint or grid file, a value of the wrong type, an unreachable SLURM."""
from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module

from diffode.cli.checks import type_errors
from diffode.cli.launch import slurm_errors
from diffode.cli.errors import ConfigError
from diffode.evaluation.runner import evaluate

TINY = ["source=gmm2d", "n_samples=8", "batch_size=8", "progress=false", "save_images=0"]


def _eval_cfg(tmp_path, *overrides):
    with initialize_config_module("diffode.conf", version_base="1.3"):
        return compose("eval", overrides=[*TINY, f"output_dir={tmp_path}", *overrides])


@pytest.mark.parametrize("content", ["{bad json", "", "\x00\x01garbage"])
def test_a_malformed_manifest_is_named_by_its_path(tmp_path, content):
    art = tmp_path / "art"
    art.mkdir()
    (art / "manifest.json").write_text(content)
    with pytest.raises(ConfigError, match=f"{art / 'manifest.json'}' is not valid JSON"):
        evaluate(_eval_cfg(tmp_path / "run", f"sweep.learned=[{art}]"))


@pytest.mark.parametrize("content", [b"garbage", b"", b"PK\x03\x04truncated zip"])
def test_a_damaged_checkpoint_is_named_by_its_path(tmp_path, content):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(content)
    with pytest.raises(ConfigError, match=f"{bad}' is not a readable diffode checkpoint"):
        evaluate(_eval_cfg(tmp_path / "run", "source=checkpoint", f"source.path={bad}"))


def test_a_malformed_grid_file_is_named_by_its_path(tmp_path):
    bad = tmp_path / "grid.json"
    bad.write_text("{'sigmas': [1, 2]")
    with pytest.raises(ConfigError, match=f"grid file '{bad}' is not valid JSON"):
        evaluate(_eval_cfg(tmp_path / "run", "grid=from_file", f"grid.options.path={bad}", "solver=heun", "nfe=6"),
                 choices={"grid": "from_file", "solver": "heun"})


def test_a_non_integer_nfe_names_its_key(tmp_path):
    with pytest.raises(ConfigError, match="nfe='abc' must be whole numbers"):
        evaluate(_eval_cfg(tmp_path, "nfe=abc"))
    with pytest.raises(ConfigError, match=r"sweep.nfes=\[4, 5.5\] must be whole numbers"):
        evaluate(_eval_cfg(tmp_path, "sweep.nfes=[4,5.5]"))


@pytest.mark.parametrize("override,message", [
    ("trainer.max_steps=abc", "trainer.max_steps='abc' must be an integer"),
    ("trainer.max_steps=2.5", "trainer.max_steps=2.5 must be an integer (its default is"),
    ("dataset.batch_size=yes", "dataset.batch_size='yes' must be an integer"),
])
def test_a_value_of_the_wrong_type_names_its_key(override, message):
    """Keys without a schema (the method's options have one: Hydra refuses theirs, tests/test_configs.py) are
    compared with the config composed from the same group choices."""
    choices = {"method": "ld3", "source": "gmm2d", "dataset": "digits", "net": "unet_digits", "schedule": "vp_linear",
               "trainer": "cpu", "logger": "csv"}
    with initialize_config_module("diffode.conf", version_base="1.3"):
        cfg = compose("train", overrides=[f"{g}={o}" for g, o in choices.items()] + [override])
        errors = type_errors(cfg, "train", choices)
        assert len(errors) == 1 and message in errors[0], errors
        good = compose("train", overrides=[f"{g}={o}" for g, o in choices.items()] + ["method.lr_logits=1",
                                                                                         "trainer.max_epochs=[4,5]"])
        assert type_errors(good, "train", choices) == []  # an integer for a number, a list for a sweep


def test_an_unreachable_slurm_is_said(monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    errors = slurm_errors(["-m", "hydra/launcher=submitit_slurm"])
    assert len(errors) == 1 and "no sbatch / srun" in errors[0] and "submitit_local" in errors[0]
    assert slurm_errors(["-m", "hydra/launcher=submitit_local"]) == []
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr("subprocess.run", lambda *a, **k: type("P", (), {"returncode": 1, "stderr":
                        "sinfo: error: Unable to contact slurm controller (connect failure)"})())
    assert "controller is unreachable (sinfo: error: Unable to contact" in slurm_errors(
        ["hydra/launcher=submitit_slurm"])[0]
