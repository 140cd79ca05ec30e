"""Training callbacks: EMA of the weights, a per-rank weight digest (DDP consistency checks), and the
checkpoint writer."""
from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.plugins.io import TorchCheckpointIO

from diffode.cache import digest, save, write_text


class EMA(WeightAveraging):
    """Lightning's WeightAveraging with the foreach EMA update, optionally starting after `start_step`.

    Checkpoints keep the EMA weights in `state_dict` and the raw ones in `current_model_state`.
    """

    def __init__(self, decay: float = 0.999, start_step: int = 0, every_n_steps: int = 1):
        super().__init__(multi_avg_fn=EMAUpdate(decay), use_buffers=True)
        self.decay, self.start_step, self.every_n_steps = decay, start_step, every_n_steps

    def should_update(self, step_idx=None, epoch_idx=None) -> bool:
        return step_idx is not None and step_idx >= self.start_step and step_idx % self.every_n_steps == 0

    def on_train_end(self, trainer, pl_module):
        # Keep the raw weights in the module: ModelCheckpoint may still write last.ckpt after this
        # hook, and its current_model_state must stay the raw weights for an exact resume.
        # The EMA weights are in every checkpoint's state_dict (train.py exports them).
        pass


class EMAUpdate:
    """torch.optim.swa_utils.get_ema_multi_avg_fn with warm-up, as a picklable object (ddp_spawn
    pickles callbacks). The decay after n updates is min(decay, (1 + n) / (10 + n)): without the
    warm-up, after n steps a share decay^n of the EMA is still the random initialisation
    (0.999^1500 = 22%), which ruins short runs."""

    def __init__(self, decay: float):
        self.decay = decay

    def decay_at(self, n: int) -> float:
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def __call__(self, ema_params, params, num_averaged):
        d = self.decay_at(int(num_averaged))
        if ema_params and (torch.is_floating_point(ema_params[0]) or torch.is_complex(ema_params[0])):
            torch._foreach_lerp_(ema_params, params, 1.0 - d)
        else:
            for e, p in zip(ema_params, params):
                e.copy_(e * d + p * (1.0 - d))


def weights_digest(module: torch.nn.Module) -> str:
    parts = [p for name, t in sorted(module.state_dict().items()) for p in (name, t)]
    return digest(*parts, algo="sha256")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer through diffode.cache.save: the temp file sits next to the checkpoint
    (Lightning's own goes to $TMPDIR and is moved across file systems by a copy that a kill can tear), and a
    full disk is an OSError that leaves the previous checkpoint as it was."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        save(checkpoint, path)


class FinalMetrics(L.Callback):
    """Keeps the logged scalars (train/loss, val/...) in every checkpoint, so that a run re-started after
    its fit had finished (killed during export) reports the same results as one that was never stopped."""

    KEY = "diffode_metrics"

    def __init__(self):
        self.restored: dict = {}

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        checkpoint[self.KEY] = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        self.restored = dict(checkpoint.get(self.KEY) or {})

    def metrics(self, trainer) -> dict:
        return {**self.restored, **{k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}}


class WeightDigest(L.Callback):
    """Each rank writes weights_rank<r>.json (sha256 of its final weights): DDP ranks must agree."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)

    def on_fit_end(self, trainer, pl_module):  # also when a re-run resumes a finished fit (no on_train_end)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        rec = {"rank": trainer.global_rank, "world_size": trainer.world_size, "global_step": trainer.global_step,
               "sha256": weights_digest(pl_module)}
        write_text(self.out_dir / f"weights_rank{trainer.global_rank}.json", json.dumps(rec))
