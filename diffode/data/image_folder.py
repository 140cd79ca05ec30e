"""Any folder of images (searched recursively), resized and center-cropped to a square resolution."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .base import DataModuleBase

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


class ImageFolder(Dataset):
    def __init__(self, files: list[Path], resolution: int, channels: int, hflip: bool):
        import torchvision.transforms as T

        self.files, self.mode = files, {1: "L", 3: "RGB"}[channels]
        ops = [T.Resize(resolution), T.CenterCrop(resolution)] + ([T.RandomHorizontalFlip()] if hflip else [])
        self.transform = T.Compose(ops + [T.ToTensor()])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.files[i]) as im:
            return self.transform(im.convert(self.mode)) * 2.0 - 1.0


class ImageFolderDataModule(DataModuleBase):
    """All images under `path`; the last `val_fraction` of the sorted file list is held out."""

    name = "image_folder"

    def __init__(self, path: str, resolution: int = 64, channels: int = 3, hflip: bool = True,
                 val_fraction: float = 0.02, **kw):
        super().__init__(**kw)
        if channels not in (1, 3):
            raise ValueError(f"image_folder: channels must be 1 or 3, got {channels}")
        self.path, self.resolution, self.channels, self.hflip = path, resolution, channels, hflip
        self.val_fraction = val_fraction
        self.shape = (channels, resolution, resolution)

    def files(self) -> list[Path]:
        root = Path(os.path.expanduser(str(self.path)))
        if not root.is_dir():
            raise FileNotFoundError(f"image_folder: {str(root)!r} is not a directory; pass dataset.path=<folder of images>")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in EXTENSIONS)
        if len(files) < 2:
            raise FileNotFoundError(f"image_folder: found {len(files)} images ({sorted(EXTENSIONS)}) under {str(root)!r}; "
                                    "pass dataset.path=<folder of images>")
        return files

    def validate(self) -> None:
        self.files()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            files = self.files()
            n_val = max(1, int(len(files) * self.val_fraction))
            self.train_set = ImageFolder(files[:-n_val], self.resolution, self.channels, self.hflip)
            self.val_set = ImageFolder(files[-n_val:], self.resolution, self.channels, False)

    def info(self) -> dict:
        return {**super().info(), "path": str(self.path)}
