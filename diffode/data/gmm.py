"""Gaussian-mixture data (any dimension) sampled from an exact mixture whose denoiser is known."""
from __future__ import annotations

import torch

from ..core.denoisers import GaussianMixture, make_gmm
from .base import DataModuleBase, tensor_dataset


class GMMDataModule(DataModuleBase):
    """A fixed pool of n_train (n_val) samples from make_gmm(dim, components, seed, spread, std, layout).

    `analytic_denoiser()` is the exact float64 VE denoiser E[x0 | x] of the same mixture,
    the reference every trained denoiser and solver can be compared against.
    """

    name = "gmm"

    def __init__(self, dim: int = 2, components: int = 8, gmm_seed: int = 0, spread: float = 1.0, std: float = 0.1,
                 layout: str = "random", n_train: int = 50000, n_val: int = 5000, **kw):
        super().__init__(**kw)
        self.gmm_kwargs = dict(dim=dim, components=components, seed=gmm_seed, spread=spread, std=std, layout=layout)
        self.n_train, self.n_val = n_train, n_val
        self.shape = (dim,)
        self.gmm = make_gmm(**self.gmm_kwargs)

    def analytic_denoiser(self) -> GaussianMixture:
        return self.gmm

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            g = torch.Generator().manual_seed(self.gmm_kwargs["seed"] + 12345)
            self.train_set = tensor_dataset(self.gmm.sample(self.n_train, generator=g).float())
            self.val_set = tensor_dataset(self.gmm.sample(self.n_val, generator=g).float())

    def info(self) -> dict:
        return {**super().info(), "gmm": dict(self.gmm_kwargs)}
