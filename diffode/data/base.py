"""Shared plumbing of the data modules: tensors in memory, deterministic per-epoch shuffling.

Each epoch's order is a pure function of (seed, epoch, rank), through a DistributedSampler
that the module builds itself (Lightning's sampler replacement is switched off in train.py),
so a run resumed from an end-of-epoch checkpoint sees exactly the batches an uninterrupted
run sees, with one process or many.
"""
from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset


class TrainerEpochSampler(DistributedSampler):
    """DistributedSampler whose epoch is the trainer's current epoch when iteration starts.

    Lightning's own set_epoch call passes a progress counter that is one ahead after a resume
    from an end-of-epoch checkpoint; the trainer's current_epoch is right in both cases.
    """

    def __init__(self, dataset, trainer=None, **kw):
        super().__init__(dataset, **kw)
        self._trainer = trainer

    def __iter__(self):
        if self._trainer is not None:
            self.epoch = self._trainer.current_epoch
        return super().__iter__()


class DataModuleBase(L.LightningDataModule):
    """Subclasses set self.train_set / self.val_set in setup(); `shape` is one sample's shape. A dataset whose
    items are (x, label) says how many classes it has (`num_classes`; None: no labels)."""

    name: str = "data"
    shape: tuple = ()
    num_classes: int | None = None

    def __init__(self, batch_size: int = 128, val_batch_size: int | None = None, seed: int = 0,
                 num_workers: int = 0):
        super().__init__()
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.val_batch_size = val_batch_size or batch_size
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def _world(self):
        t = getattr(self, "trainer", None)
        return (t.world_size, t.global_rank) if t is not None else (1, 0)

    def train_dataloader(self) -> DataLoader:
        world, rank = self._world()
        if len(self.train_set) < self.batch_size * world:
            raise ValueError(f"{self.name}: {len(self.train_set)} training samples are fewer than one global batch "
                             f"({self.batch_size} x {world} processes); lower dataset.batch_size")
        sampler = TrainerEpochSampler(self.train_set, getattr(self, "trainer", None), num_replicas=world, rank=rank,
                                      shuffle=True, seed=self.seed, drop_last=True)
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler, drop_last=True,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        world, rank = self._world()
        sampler = DistributedSampler(self.val_set, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(self.val_set, batch_size=self.val_batch_size, sampler=sampler, num_workers=self.num_workers)

    def validate(self) -> None:
        """Cheap checks run by train.py before any compute (raise FileNotFoundError / ValueError naming the fix)."""

    def info(self) -> dict:
        """Plain-data description stored in checkpoints."""
        return {"name": self.name, "shape": list(self.shape), "num_classes": self.num_classes}


def tensor_dataset(x: torch.Tensor, y: torch.Tensor | None = None) -> TensorDataset:
    return TensorDataset(x) if y is None else TensorDataset(x, y)
