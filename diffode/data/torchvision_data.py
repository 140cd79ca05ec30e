"""MNIST and CIFAR-10 through torchvision: downloaded where there is internet, a clear error where not."""
from __future__ import annotations

import os

from .base import DataModuleBase

DEFAULT_ROOT = os.environ.get("DIFFODE_DATA", os.path.expanduser("~/.cache/diffode/data"))


def _to_pm1(img):
    import torchvision.transforms.functional as TF

    return TF.to_tensor(img) * 2.0 - 1.0


class _TorchvisionDataModule(DataModuleBase):
    dataset_cls = ""
    shape: tuple = ()
    num_classes = 10  # MNIST and CIFAR-10 items are (image, label)

    def __init__(self, root: str = DEFAULT_ROOT, download: bool = True, hflip: bool = False, **kw):
        super().__init__(**kw)
        self.root, self.download, self.hflip = os.path.expanduser(root), download, hflip

    def _make(self, train: bool, download: bool):
        import torchvision
        import torchvision.transforms as T

        ops = ([T.RandomHorizontalFlip()] if (train and self.hflip) else []) + [T.Lambda(_to_pm1)]
        cls = getattr(torchvision.datasets, self.dataset_cls)
        return cls(self.root, train=train, download=download, transform=T.Compose(ops))

    def prepare_data(self) -> None:  # rank 0 of each node downloads
        try:
            self._make(True, self.download)
            self._make(False, self.download)
        except Exception as e:  # URLError, RuntimeError("Dataset not found"), ...
            raise RuntimeError(
                f"{self.name}: could not find or download the dataset under {self.root!r} ({type(e).__name__}: {e}). "
                f"This machine may have no internet. Fix: on a machine with internet run `python -c \"import "
                f"torchvision; torchvision.datasets.{self.dataset_cls}('{self.root}', download=True); "
                f"torchvision.datasets.{self.dataset_cls}('{self.root}', train=False, download=True)\"` and copy "
                f"that folder here, then pass dataset.root=<folder> (or set $DIFFODE_DATA)."
            ) from e

    def validate(self) -> None:
        """Before any compute: both splits load from root, or (download=True) are fetched now; else the
        error that names the fix."""
        try:
            self._make(True, False)
            self._make(False, False)
        except Exception:
            try:
                self.prepare_data()
            except RuntimeError as e:
                raise FileNotFoundError(str(e)) from None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            try:
                self.train_set = self._make(True, False)
                self.val_set = self._make(False, False)
            except Exception:
                self.prepare_data()  # raises the error that names the fix
                raise


class MNISTDataModule(_TorchvisionDataModule):
    """28x28x1 in [-1, 1] (28 -> 14 -> 7: at most 3 UNet levels)."""

    name, dataset_cls, shape = "mnist", "MNIST", (1, 28, 28)


class CIFAR10DataModule(_TorchvisionDataModule):
    """32x32x3 in [-1, 1], random horizontal flips by default (as DDPM/EDM train)."""

    name, dataset_cls, shape = "cifar10", "CIFAR10", (3, 32, 32)

    def __init__(self, hflip: bool = True, **kw):
        super().__init__(hflip=hflip, **kw)

