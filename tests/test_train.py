"""Denoiser training end to end (tiny): every parameterization, exact resume, checkpoints, config errors."""
import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from diffode.cli.errors import ConfigError
from diffode.cli.train import train
from diffode.core.denoisers import ModelDenoiser
from diffode.core.schedules import EDM
from diffode.methods.denoiser import NonFiniteLossError, load_denoiser
from diffode.methods.denoiser.losses import edm_loss

TINY_GMM = ["dataset=gmm2d", "net=mlp", "debug=fast", "dataset.n_train=64", "dataset.batch_size=16",
            "net.hidden=32", "net.depth=2", "method.n_samples=0", "logger=none", "threads=1"]


def cfg_for(overrides, tmp_path):
    with initialize_config_module("diffode.conf", version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"output_dir={tmp_path}"])
    return cfg


def metrics(out: Path) -> list[dict]:
    import csv

    rows = []
    for f in sorted(out.glob("csv/version_*/metrics.csv")):
        rows += [r for r in csv.DictReader(open(f)) if r.get("train/loss")]
    return rows


@pytest.mark.parametrize("schedule,prediction", [("vp_linear", "eps"), ("vp_cosine", "x0"), ("vp_discrete", "v"),
                                                 ("ve", "eps"), ("edm", "edm"), ("edm", "eps")])
def test_each_parameterization_trains_and_loads(tmp_path, schedule, prediction):
    cfg = cfg_for([*TINY_GMM, f"schedule={schedule}", f"method.prediction={prediction}", "trainer.max_steps=4",
                   "method.lr=1e-3"], tmp_path)
    res = train(cfg)
    assert res["global_step"] == 4 and torch.isfinite(torch.tensor(res["train/loss"]))
    D, info = load_denoiser(tmp_path / "checkpoints" / "last.ckpt")  # weights_only=True inside
    assert info["shape"] == (2,) and info["dataset"] == "gmm2d" and info["prediction"] == prediction
    assert info["sigma_max"] == pytest.approx(info["schedule"].sigma_max)
    x = torch.randn(3, 2, dtype=torch.float64)
    assert D(x, 1.0).shape == (3, 2)
    D_raw, _ = load_denoiser(tmp_path / "checkpoints" / "last.ckpt", ema=False)
    assert not torch.allclose(D(x, 1.0), D_raw(x, 1.0))  # EMA and raw weights are different states
    D_small, _ = load_denoiser(tmp_path / "denoiser_ema.ckpt")
    torch.testing.assert_close(D_small(x, 1.0), D(x, 1.0))
    assert (tmp_path / "results.json").is_file() and metrics(tmp_path)


def test_unet_digits_edm_steps_and_sample_grid(tmp_path):
    cfg = cfg_for(["experiment=digits", "debug=fast", "logger=none", "net.model_channels=8",
                   "trainer.max_steps=2", "sample_every_n_steps=2", "method.n_samples=4", "method.sample_nfe=4",
                   "trainer.max_time=null", "threads=1"], tmp_path)
    res = train(cfg)
    assert res["global_step"] == 2
    D, info = load_denoiser(res["exported"]["ema_checkpoint"])
    assert info["shape"] == (1, 8, 8) and info["dataset"] == "digits"
    grids = sorted((tmp_path / "samples").glob("grid_*.png"))
    assert grids  # sample grids were drawn, large enough to read (4 digits: 19 px, upscaled by whole pixels)
    from PIL import Image

    assert Image.open(grids[0]).width >= 512


def test_resume_gives_the_same_next_losses(tmp_path):
    common = [*TINY_GMM, "method.lr=1e-2", "schedule=vp_linear"]  # 4 steps per epoch
    full = train(cfg_for([*common, "trainer.max_steps=8"], tmp_path / "full"))
    train(cfg_for([*common, "trainer.max_steps=4"], tmp_path / "part"))
    resumed = train(cfg_for([*common, "trainer.max_steps=8", "ckpt_path=last"], tmp_path / "part"))
    assert full["global_step"] == resumed["global_step"] == 8
    a = [float(r["train/loss"]) for r in metrics(tmp_path / "full")]
    b = [float(r["train/loss"]) for r in metrics(tmp_path / "part")]
    assert len(a) == len(b) == 8
    assert a[4:] == b[4:]  # bit-identical continuation
    assert len(set(a[4:])) == 4


def test_explicit_ckpt_path_resumes(tmp_path):
    train(cfg_for([*TINY_GMM, "trainer.max_steps=4"], tmp_path / "a"))
    ck = tmp_path / "a" / "checkpoints" / "last.ckpt"
    res = train(cfg_for([*TINY_GMM, "trainer.max_steps=6", f"ckpt_path={ck}"], tmp_path / "b"))
    assert res["global_step"] == 6


def test_non_finite_loss_stops_with_clear_error_and_keeps_checkpoint(tmp_path):
    # one step per epoch: the epoch-0 checkpoint is written, then lr=1e30 blows the weights up
    cfg = cfg_for([*TINY_GMM, "dataset.n_train=16", "trainer.max_steps=5", "method.lr=1e30", "method.ema.decay=0"],
                  tmp_path)
    with pytest.raises(NonFiniteLossError, match="non-finite training loss"):
        train(cfg)
    ck = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ck["global_step"] >= 1
    assert all(torch.isfinite(v).all() for v in ck["state_dict"].values())


def test_edm_loss_of_zero_net_is_one_for_unit_scaled_data():
    # c_out normalises the EDM target: F = 0 gives loss E[F_target^2] = 1 when std(x0) = sigma_data
    class Zero(torch.nn.Module):
        def forward(self, x, c):
            return torch.zeros_like(x)

    D = ModelDenoiser(Zero(), EDM(), "edm")
    g = torch.Generator().manual_seed(0)
    x0 = 0.5 * torch.randn(20000, 4, generator=g, dtype=torch.float64)
    sigma = torch.exp(-1.2 + 1.2 * torch.randn(20000, generator=g, dtype=torch.float64))
    loss = edm_loss(D, x0, sigma, torch.randn(x0.shape, generator=g, dtype=torch.float64))
    assert abs(float(loss) - 1.0) < 0.03


@pytest.mark.parametrize("overrides,match", [
    (["dataset=digits", "net=mlp", "net.dim=2"], "net=mlp is for vector data"),
    (["dataset=gmm2d", "net=unet_digits"], "a UNet needs images"),
    (["dataset=digits", "net=unet_cifar"], "does not match"),
    ([*TINY_GMM, "ckpt_path=/nonexistent/last.ckpt"], "ckpt_path=/nonexistent/last.ckpt does not exist"),
    ([*TINY_GMM, "method.sample_nfe=5", "method.n_samples=4"], "sample_nfe"),
    ([*TINY_GMM, "method.prediction=edm", "method.t_sampling=uniform"], "log-normal"),
    (["dataset=image_folder", "dataset.path=/nonexistent", "net=unet_cifar", "dataset.resolution=32"],
     "dataset.path"),
])
def test_config_errors_name_the_fix(tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        train(cfg_for(overrides, tmp_path))
    assert not (tmp_path / "checkpoints").exists()  # nothing was computed


def test_unknown_group_option_lists_choices(tmp_path):
    with pytest.raises(MissingConfigException, match="Available options") as e:
        cfg_for(["net=resnet"], tmp_path)
    assert "mlp" in str(e.value) and "unet_digits" in str(e.value)


def test_results_file_and_parameter_count(tmp_path):
    res = train(cfg_for([*TINY_GMM, "trainer.max_steps=2"], tmp_path))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["parameters"] == res["parameters"] > 0
    assert OmegaConf.load(tmp_path / "csv" / "version_0" / "hparams.yaml")["prediction"] == "eps"


def test_wandb_runs_offline_without_credentials_and_is_finished(tmp_path, monkeypatch):
    import wandb

    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):  # how the mode is chosen: tests/test_conventions.py
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    train(cfg_for([*TINY_GMM, "logger=wandb", "trainer.max_steps=2"], tmp_path / "run"))
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))  # offline, under the run dir
    assert wandb.run is None  # finished, so the next multirun job starts its own run
    assert metrics(tmp_path / "run")  # the CSV log is written as well


def test_slurm_launcher_config_follows_the_trainer(tmp_path):
    from diffode.cli.launch import check_launcher

    with initialize_config_module("diffode.conf", version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=submitit_slurm", "trainer=ddp", "trainer.devices=4",
                                          "trainer.num_nodes=2", "hydra.launcher.partition=gpu",
                                          "hydra.launcher.gpus_per_node=4"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert launcher.tasks_per_node == launcher.gpus_per_node == 4 and launcher.nodes == 2
    assert launcher.max_num_timeout > 0 and launcher.timeout_min > 0
    assert check_launcher(cfg, launcher) == []
    bad = OmegaConf.merge(launcher, {"tasks_per_node": 1})
    assert "tasks_per_node=1 must equal trainer.devices=4" in " ".join(check_launcher(cfg, bad))
    no_gpus = OmegaConf.merge(launcher, {"gpus_per_node": None})
    assert "set hydra.launcher.gpus_per_node=4" in " ".join(check_launcher(cfg, no_gpus))


def test_ema_update_with_warmup_matches_the_recurrence():
    from torch.optim.swa_utils import AveragedModel

    from diffode.methods.callbacks import EMAUpdate

    p = torch.nn.Parameter(torch.zeros(1))
    upd = EMAUpdate(0.9)
    avg = AveragedModel(torch.nn.ParameterList([p]), multi_avg_fn=upd, use_buffers=True)
    ema = None
    for k in range(1, 40):
        with torch.no_grad():
            p.fill_(float(k))
        avg.update_parameters(torch.nn.ParameterList([p]))
        n = k - 1  # updates before this one
        ema = float(k) if n == 0 else (lambda d: d * ema + (1 - d) * k)(min(0.9, (1 + n) / (10 + n)))
        assert float(avg.module[0]) == pytest.approx(ema, rel=1e-6)
    assert upd.decay_at(0) == pytest.approx(0.1) and upd.decay_at(10**6) == 0.9


def test_a_run_dir_is_resumed_only_by_the_same_config(tmp_path):
    """Inside one SLURM job every `diffode train` of a task lands in outputs/<task>/<job id>: a second training
    with another config there is refused in one paragraph (nothing resumed, nothing overwritten); the same
    config (a requeue, or a longer continuation) resumes."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "DIFFODE_OUTPUTS": str(tmp_path), "SLURM_JOB_ID": "4242"}
    env.pop("HYDRA_FULL_ERROR", None)
    cli = [sys.executable, "-m", "diffode.cli", "train", *TINY_GMM]
    first = subprocess.run([*cli, "trainer.max_steps=2"], env=env, capture_output=True, text=True, timeout=300)
    run_dir = tmp_path / "denoiser" / "4242"
    assert first.returncode == 0, first.stderr[-2000:]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "run.json").is_file()
    before = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    other = subprocess.run([*cli, "trainer.max_steps=4", "method.lr=0.05"], env=env, capture_output=True, text=True,
                           timeout=300)
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert "already holds a run of another config" in other.stderr and "method.lr" in other.stderr
    assert "SLURM job 4242" in other.stderr and len(other.stderr.strip().split("\n\n")) == 1
    assert (run_dir / "checkpoints" / "last.ckpt").read_bytes() == before  # untouched
    res = train(cfg_for([*TINY_GMM, "trainer.max_steps=4"], run_dir))  # the same config continues
    assert res["global_step"] == 4
