"""The real-data paths end to end, from tiny fake datasets written in the libraries' own on-disk formats:

- CIFAR-10: torchvision's python pickle batches (cifar-10-batches-py/data_batch_1..5, test_batch,
  batches.meta); torchvision checks each file's md5 against the real archive's, so the test points
  those checksums at the fake files (the only thing patched);
- MNIST: the raw idx ubyte files under MNIST/raw/;
- image_folder: a folder of PNGs;
- diffusers: a tiny UNet2DModel + DDPMScheduler written with save_pretrained.

Each goes through `diffode train` (a tiny net, a few steps) and `diffode eval` (two cells, a few samples),
in process, through the same entry functions the console script calls. FID runs on the pixels themselves
(fid.features=flatten: no weights here) against the fake data's statistics; the default Inception features
stop before any compute with the message that names the weights file and `diffode fetch-weights`.
"""
from __future__ import annotations

import hashlib
import math
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from diffode.cli.errors import ConfigError

N_TRAIN, N_TEST = 20, 8  # 4 per CIFAR-10 batch file
TINY_UNET = ["net.model_channels=8", "net.channel_mult=[1,2]", "net.num_res_blocks=1", "net.attn_resolutions=[]",
             "net.dropout=0.0"]
TRAIN = ["debug=fast", "trainer.max_steps=2", "sample_every_n_steps=2", "dataset.batch_size=4",
         "method.n_samples=4", "method.sample_nfe=4", "logger=none", "threads=1"]


def images(n: int, c: int, h: int, seed: int) -> np.ndarray:
    """Smooth random uint8 images [n, h, w, c] (blurred noise, so they look like something)."""
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, h // 4, h // 4, c)).repeat(4, 1).repeat(4, 2)
    return np.clip(128 + 60 * x, 0, 255).astype(np.uint8)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_cifar10(root: Path) -> dict:
    """torchvision's CIFAR-10 python layout; returns the md5 lists torchvision will check."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    per = N_TRAIN // 5
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        n = per if k < 5 else N_TEST
        x = images(n, 3, 32, seed=k).transpose(0, 3, 1, 2).reshape(n, 3072)  # rows: R plane, G plane, B plane
        entry = {"batch_label": name, "labels": [int(i % 10) for i in range(n)], "data": x,
                 "filenames": [f"{name}_{i}.png" for i in range(n)]}
        (d / name).write_bytes(pickle.dumps(entry, protocol=2))
    (d / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)],
                                                   "num_cases_per_batch": per, "num_vis": 3072}, protocol=2))
    return {"train_list": [[n, md5(d / n)] for n in names[:5]], "test_list": [["test_batch", md5(d / "test_batch")]],
            "meta": {"filename": "batches.meta", "key": "label_names", "md5": md5(d / "batches.meta")}}


def write_mnist(root: Path) -> None:
    """The four raw idx files (big-endian magic 0x0803 / 0x0801, then the sizes, then uint8 data)."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n, seed in (("train", N_TRAIN, 0), ("t10k", N_TEST, 1)):
        x = images(n, 1, 28, seed)[..., 0]
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x0803, n, 28, 28) + x.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x0801, n) + bytes(i % 10 for i in range(n)))


def write_pngs(folder: Path, n: int = 12, size: int = 16) -> Path:
    from PIL import Image

    (folder / "sub").mkdir(parents=True)  # searched recursively
    for i, im in enumerate(images(n, 3, size, seed=7)):
        Image.fromarray(im).save(folder / ("sub" if i % 2 else "") / f"img_{i:02d}.png")
    return folder


def write_diffusers(folder: Path, size: int = 16) -> Path:
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=size, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    unet.save_pretrained(folder / "unet")
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").save_pretrained(folder / "scheduler")
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("real_data")
    return {"root": root, "cifar_md5": write_cifar10(root), "mnist": write_mnist(root),
            "pngs": write_pngs(root / "pngs"), "diffusers": write_diffusers(root / "ddpm_tiny")}


@pytest.fixture
def env(data, tmp_path, monkeypatch):
    """An empty cache and torch hub; torchvision's CIFAR-10 checksums pointed at the fake files."""
    from torchvision.datasets import CIFAR10

    monkeypatch.setenv("DIFFODE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for k, v in data["cifar_md5"].items():
        monkeypatch.setattr(CIFAR10, k, v)
    torch.set_num_threads(1)
    GlobalHydra.instance().clear()
    with initialize_config_module("diffode.conf", version_base="1.3"):
        yield data


def run(entry: str, overrides: list[str], out: Path) -> dict:
    """`diffode <entry> <overrides>` in process (the functions the console script's tasks call)."""
    from diffode.evaluation.runner import evaluate
    from diffode.cli.train import train

    cfg = compose(entry, overrides=[*overrides, f"output_dir={out}"], return_hydra_config=True)
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return train(cfg) if entry == "train" else evaluate(cfg, choices=choices)


def eval_args(ckpt_or_source: list[str], reference: str, data_root: Path | None = None) -> list[str]:
    return [*ckpt_or_source, "solver=euler", "grid=edm", "nfe=[2,3]", "n_samples=4", "batch_size=4", "save_images=4",
            "fid.features=flatten", f"fid.reference={reference}", "fid.bootstrap=0", "reference.nfe=6",
            "reference.check_nfe=3", "progress=false", "threads=1",
            *([f"fid.data_root={data_root}"] if data_root else [])]


def check_rows(res: dict, n_real: int, shape: tuple, labels: set) -> None:
    rows = res["rows"]
    assert {f"{r['solver']}/{r['grid']}" for r in rows} == labels
    assert all(r["status"] == "ok" and math.isfinite(float(r["fid"])) and float(r["fid"]) > 0 for r in rows), rows
    assert all(math.isfinite(float(r["rmse"])) for r in rows)
    assert res["summary"]["fid_reference_n"] == n_real  # the statistics are those of the fake real data
    assert res["summary"]["fid_features"] == "flatten"
    png = Path(res["out_dir"]) / "samples"
    assert len(list(png.glob("*.png"))) == len(rows)


@pytest.fixture(scope="module")
def cifar10_ckpt(data, tmp_path_factory):
    """`diffode train dataset=cifar10` on the fake archive: the exported EMA checkpoint."""
    from torchvision.datasets import CIFAR10

    mp = pytest.MonkeyPatch()
    for k, v in data["cifar_md5"].items():
        mp.setattr(CIFAR10, k, v)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("diffode.conf", version_base="1.3"):
            res = run("train", ["dataset=cifar10", f"dataset.root={data['root']}", "dataset.download=false",
                                "net=unet_cifar", *TINY_UNET, *TRAIN], tmp_path_factory.mktemp("cifar_train"))
    finally:
        mp.undo()
    assert res["global_step"] == 2
    return res["exported"]["ema_checkpoint"]


def test_cifar10_train_and_inception_eval_refused(env, tmp_path, cifar10_ckpt):
    from diffode.models import load_denoiser

    _, info = load_denoiser(cifar10_ckpt)
    assert info["dataset"] == "cifar10" and info["shape"] == (3, 32, 32)
    src = ["source=checkpoint", f"source.path={cifar10_ckpt}"]
    with pytest.raises(ConfigError, match=r"weights-inception-2015-12-05-6726825d\.pth.*diffode fetch-weights inception"):
        run("eval", [*src, "solver=euler", "grid=edm", "nfe=2", "n_samples=4", "batch_size=4",
                     f"fid.data_root={env['root']}"], tmp_path / "eval_inception")
    assert not (tmp_path / "eval_inception" / "results.csv").exists()


@pytest.mark.slow  # FID on 3072 pixel features: a few 3072 x 3072 eigendecompositions
def test_cifar10_eval_against_the_fake_archive(env, tmp_path, cifar10_ckpt):
    src = ["source=checkpoint", f"source.path={cifar10_ckpt}"]
    out = run("eval", eval_args(src, "auto", env["root"]), tmp_path / "eval")  # auto: the model's dataset, cifar10
    check_rows(out, N_TRAIN, (3, 32, 32), {"euler/edm"})


def test_mnist_train_and_eval(env, tmp_path):
    root = env["root"]
    res = run("train", ["dataset=mnist", f"dataset.root={root}", "dataset.download=false", "net=unet_digits",
                        "net.resolution=28", *TINY_UNET, *TRAIN], tmp_path / "train")
    assert res["global_step"] == 2
    src = ["source=checkpoint", f"source.path={res['exported']['ema_checkpoint']}"]
    out = run("eval", eval_args(src, "mnist", root), tmp_path / "eval")
    check_rows(out, N_TRAIN, (1, 28, 28), {"euler/edm"})


def test_missing_torchvision_data_is_refused_before_compute(env, tmp_path):
    with pytest.raises(ConfigError, match=r"mnist: could not find or download the dataset.*dataset.root="):
        run("train", ["dataset=mnist", f"dataset.root={tmp_path / 'empty'}", "dataset.download=false",
                      "net=unet_digits", "net.resolution=28", *TINY_UNET, *TRAIN], tmp_path / "train")
    assert not (tmp_path / "train" / "checkpoints").exists()


def test_image_folder_train_and_eval(env, tmp_path):
    pngs = env["pngs"]
    res = run("train", ["dataset=image_folder", f"dataset.path={pngs}", "dataset.resolution=16", "dataset.val_fraction=0.2",
                        "net=unet_cifar", "net.resolution=16", *TINY_UNET, *TRAIN], tmp_path / "train")
    assert res["global_step"] == 2
    src = ["source=checkpoint", f"source.path={res['exported']['ema_checkpoint']}"]
    out = run("eval", eval_args(src, str(pngs)), tmp_path / "eval")
    check_rows(out, 12, (3, 16, 16), {"euler/edm"})


def test_diffusers_unet_ld3_and_eval(env, tmp_path):
    """A diffusers folder as the teacher of LD3 (train) and as the evaluated model with the LD3 row (eval)."""
    src = ["source=diffusers", f"source.path={env['diffusers']}", f"source.dataset={env['pngs']}"]
    res = run("train", ["method=ld3", *src, "method.solver=ipndm", "method.nfe=3", "method.distance=l2",
                        "method.n_pairs=4", "method.batch_size=2", "method.val_batch_size=2", "method.rounds_logits=1",
                        "method.rounds_joint=1", "method.val_every=1", "method.teacher.nfe=6", "method.init_grid=uniform",
                        "method.checkpointing=false", "logger=none", "threads=1"], tmp_path / "ld3")
    artifact = res["exported"]["artifact"]
    from diffode.artifacts import load_sampler

    s = load_sampler(artifact)
    assert s.label == "ipndm/ld3" and s.nfe == 3 and s.manifest["model"]["kind"] == "diffusers"
    out = run("eval", [*eval_args(src, "auto"), f"sweep.learned=[{artifact}]"], tmp_path / "eval")
    check_rows(out, 12, (3, 16, 16), {"euler/edm", "ipndm/ld3"})
    assert {r["nfe"] for r in out["rows"] if r["grid"] == "ld3"} == {3}
