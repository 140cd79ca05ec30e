"""Conditions belong to the model, not to the solvers.

A conditional denoiser is called D(x, sigma, cond=c), c the condition of each sample of the batch: class
labels [B] (the null label, index num_classes, meaning "none"), a tensor [B, ...], or a dict of such
tensors (text embeddings and their masks). Solvers take the plain D(x, sigma) of k-diffusion and
EDM; `Conditioned` is that plain denoiser for one batch: a closure over the batch's condition.

We bind the condition in a closure rather than pass it through every solver (k-diffusion's
`extra_args`) because then no solver changes, a solver cannot forget to forward it, and whatever
acts on a whole call (classifier-free guidance: two forwards per call, dynamic thresholding, the
count of network passes) is one more denoiser around a denoiser.

Forward accounting: NFE counts denoiser calls (what a solver spends). A call may cost more than one
network pass (a guided call: conditional and unconditional). A denoiser says what one call at
sigma costs with a method `forwards(sigma) -> int` (absent: 1), and sample() adds it up as
`forwards` beside `nfe`.
"""
from __future__ import annotations

from torch import Tensor, nn


def take(cond, index):
    """The rows `index` (a slice or an index tensor) of a condition: a tensor, a dict of tensors, or None."""
    if cond is None:
        return None
    if isinstance(cond, dict):
        return {k: take(v, index) for k, v in cond.items()}
    return cond[index]


def to_device(cond, device):
    if cond is None:
        return None
    if isinstance(cond, dict):
        return {k: to_device(v, device) for k, v in cond.items()}
    return cond.to(device)


def batch_size(cond) -> int | None:
    """The number of samples a condition is for (None for no condition)."""
    if cond is None:
        return None
    if isinstance(cond, dict):
        sizes = {int(v.shape[0]) for v in cond.values()}
        if len(sizes) != 1:
            raise ValueError(f"a condition's tensors must share their first (batch) dimension, got sizes {sorted(sizes)}")
        return sizes.pop()
    return int(cond.shape[0])


def forwards_of(denoiser, sigma) -> int:
    """Network passes one call of `denoiser` at sigma costs (1 unless the denoiser says otherwise)."""
    f = getattr(denoiser, "forwards", None)
    return 1 if f is None else int(f(sigma))


def bind(denoiser, cond):
    """`denoiser` as a plain D(x, sigma) under `cond` (itself when cond is None)."""
    return denoiser if cond is None else Conditioned(denoiser, cond)


class Conditioned(nn.Module):
    """D(x, sigma) = denoiser(x, sigma, cond=cond) for a batch whose samples have conditions `cond`."""

    def __init__(self, denoiser: nn.Module, cond):
        super().__init__()
        self.denoiser, self.cond = denoiser, cond

    @property
    def feature_shape(self):
        return getattr(self.denoiser, "feature_shape", None)

    def forward(self, x: Tensor, sigma) -> Tensor:
        return self.denoiser(x, sigma, cond=self.cond)

    def forward_with_features(self, x: Tensor, sigma):
        fn = getattr(self.denoiser, "forward_with_features", None)
        return (self(x, sigma), None) if fn is None else fn(x, sigma, cond=self.cond)

    def forwards(self, sigma) -> int:
        return forwards_of(self.denoiser, sigma)
