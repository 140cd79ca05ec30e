"""Gaussian-mixture data (any dimension) sampled from an exact mixture whose denoiser is known."""
from __future__ import annotations

import torch

from ..core.denoisers import GMM_PRESETS, GaussianMixture, make_gmm
from .base import DataModuleBase, tensor_dataset


class GMMDataModule(DataModuleBase):
    """A fixed pool of n_train (n_val) samples from a mixture preset (core.denoisers.GMM_PRESETS), the
    same mixture `source=gmm2d | gmm16d` denoises exactly.

    `analytic_denoiser()` is the exact float64 VE denoiser E[x0 | x] of the same mixture,
    the reference every trained denoiser and solver can be compared against.
    """

    name = "gmm"

    def __init__(self, preset: str, n_train: int, n_val: int, **kw):
        super().__init__(**kw)
        if preset not in GMM_PRESETS:
            raise ValueError(f"unknown dataset.preset {preset!r}; choose one of {', '.join(GMM_PRESETS)}")
        self.preset = preset
        self.gmm_kwargs = dict(GMM_PRESETS[preset])
        self.n_train, self.n_val = n_train, n_val
        self.shape = (self.gmm_kwargs["dim"],)
        self.dim = self.gmm_kwargs["dim"]
        self.gmm = make_gmm(**self.gmm_kwargs)

    def analytic_denoiser(self) -> GaussianMixture:
        return self.gmm

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            g = torch.Generator().manual_seed(self.gmm_kwargs["seed"] + 12345)
            self.train_set = tensor_dataset(self.gmm.sample(self.n_train, generator=g).float())
            self.val_set = tensor_dataset(self.gmm.sample(self.n_val, generator=g).float())

    def info(self) -> dict:
        return {**super().info(), "name": self.preset, "gmm": dict(self.gmm_kwargs)}
