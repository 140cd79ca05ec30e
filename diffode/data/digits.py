"""scikit-learn's 8x8 handwritten digits (1797 images, shipped with scikit-learn: no download)."""
from __future__ import annotations

import numpy as np
import torch

from .base import DataModuleBase, tensor_dataset

HELDOUT_FRACTION = 0.2
SPLIT_SEED = 0
_SPLITS = {"train": "train", "heldout": "heldout", "test": "heldout", "val": "heldout", "all": "all"}


def load_digits_tensors(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """(images float32 [N, 1, 8, 8] in [-1, 1], labels int64 [N]) of the fixed split.

    split: 'train' (80%, 1437 images), 'heldout' (20%, 360 images; aliases 'test', 'val') or
    'all'. The split is stratified by label with seed 0 and never changes: the generator
    trains on 'train'; the digits classifier and digits FID use it as documented there.
    Pixel values 0..16 map linearly to [-1, 1].
    """
    if split not in _SPLITS:
        raise ValueError(f"unknown digits split {split!r}; choose one of {sorted(_SPLITS)}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32).reshape(-1, 1, 8, 8) / 8.0 - 1.0
    y = torch.as_tensor(d.target, dtype=torch.int64)
    if _SPLITS[split] == "all":
        return x, y
    idx_train, idx_held = train_test_split(np.arange(len(y)), test_size=HELDOUT_FRACTION, random_state=SPLIT_SEED,
                                           stratify=d.target)
    idx = np.sort(idx_train if _SPLITS[split] == "train" else idx_held)
    return x[idx], y[idx]


class DigitsDataModule(DataModuleBase):
    """Training on the 'train' split, validation (loss, sample grids) on 'heldout'. Batches are (x, label)."""

    name = "digits"
    shape = (1, 8, 8)
    num_classes = 10

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = tensor_dataset(*load_digits_tensors("train"))
            self.val_set = tensor_dataset(*load_digits_tensors("heldout"))
