"""Data modules: the fixed digits split, GMM samples, deterministic sharded shuffling, image folders, errors."""
import numpy as np
import pytest
import torch

from diffode.data.base import TrainerEpochSampler
from diffode.data.digits import DigitsDataModule, load_digits_tensors
from diffode.data.gmm import GMMDataModule
from diffode.data.image_folder import ImageFolderDataModule
from diffode.data.torchvision_data import CIFAR10DataModule


def test_digits_split_is_fixed_disjoint_and_stratified():
    xa, ya = load_digits_tensors("all")
    xt, yt = load_digits_tensors("train")
    xh, yh = load_digits_tensors("heldout")
    assert xa.shape == (1797, 1, 8, 8) and xt.shape == (1437, 1, 8, 8) and xh.shape == (360, 1, 8, 8)
    assert xa.dtype == torch.float32 and xa.min() == -1.0 and xa.max() == 1.0
    from sklearn.datasets import load_digits

    raw = load_digits()
    torch.testing.assert_close(xa.reshape(1797, 64), torch.tensor(raw.data, dtype=torch.float32) / 8 - 1)
    # train and held-out partition the data set: compare (image, label) multisets
    rows = lambda x, y: sorted(map(tuple, torch.cat([x.reshape(len(y), -1), y[:, None].float()], 1).tolist()))  # noqa: E731
    assert rows(torch.cat([xt, xh]), torch.cat([yt, yh])) == rows(xa, ya)
    assert np.abs(np.bincount(yh.numpy(), minlength=10) - 36).max() <= 1  # stratified: ~36 per class
    torch.testing.assert_close(load_digits_tensors("test")[0], xh)  # alias, same split every call
    with pytest.raises(ValueError, match="split"):
        load_digits_tensors("bogus")


def test_digits_datamodule_batches():
    dm = DigitsDataModule(batch_size=64)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (64, 1, 8, 8) and y.shape == (64,)
    assert dm.info() == {"name": "digits", "shape": [1, 8, 8], "num_classes": 10}


def test_gmm_datamodule_matches_its_mixture():
    dm = GMMDataModule(preset="gmm2d", n_train=20000, n_val=100, batch_size=100)
    dm.setup("fit")
    x = dm.train_set.tensors[0]
    assert x.shape == (20000, 2) and dm.shape == (2,)
    gmm = dm.analytic_denoiser()
    # ring of radius 1, std 0.1: E|x|^2 = 1 + 2 * 0.01
    assert abs(float((x.double() ** 2).sum(1).mean()) - 1.02) < 0.01
    assert abs(gmm.std - float(x.double().std(0).pow(2).mean().sqrt())) < 0.01
    # the exact denoiser at tiny sigma returns (almost) its input
    torch.testing.assert_close(gmm(x[:5].double(), 1e-4), x[:5].double(), atol=1e-3, rtol=0)


def test_sampler_is_a_function_of_epoch_and_rank():
    data = list(range(20))

    class T:
        current_epoch = 0

    t = T()
    s0 = TrainerEpochSampler(data, t, num_replicas=2, rank=0, shuffle=True, seed=3)
    s1 = TrainerEpochSampler(data, t, num_replicas=2, rank=1, shuffle=True, seed=3)
    e0 = list(s0) + list(s1)
    assert sorted(e0) == data  # the ranks partition the epoch
    t.current_epoch = 1
    e1 = list(s0)
    s0.set_epoch(7)  # Lightning's counter is ignored: the trainer's epoch decides
    assert list(s0) == e1 != list(e0[:10])
    t.current_epoch = 0
    assert list(s0) == e0[:10]


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "sub").mkdir()
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "sub" / f"{i}.png")
    dm = ImageFolderDataModule(path=str(tmp_path), resolution=16, batch_size=2, val_fraction=0.2)
    dm.validate()
    dm.setup("fit")
    assert len(dm.train_set) == 4 and len(dm.val_set) == 1
    x = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    with pytest.raises(FileNotFoundError, match="dataset.path"):
        ImageFolderDataModule(path=str(tmp_path / "missing")).validate()


def test_torchvision_missing_data_names_the_fix(tmp_path):
    dm = CIFAR10DataModule(root=str(tmp_path), download=False)
    with pytest.raises(RuntimeError, match="download=True"):
        dm.setup("fit")
