"""Lightning vs a plain PyTorch loop: training throughput (steps/s) on the same model, batch and data.

Both loops run the same DenoiserModule loss (same per-step seeding, same finite-loss check),
the same Adam and the same DataLoader; Lightning runs without logger, checkpoints, validation
or progress bar (what remains is Lightning's own loop). Timing starts after `warmup` steps,
and the two loops alternate `reps` times so that load changes on a shared machine hit both.

    python experiments/lightning_overhead/bench.py [--model unet|mlp] [--steps 60] [--reps 3]
"""
from __future__ import annotations

import argparse
import statistics
import time

import lightning as L
import torch

from diffode.data.digits import DigitsDataModule
from diffode.config import method_defaults
from diffode.methods.denoiser import DenoiserModule

def _gmm2d(batch: int):
    from diffode.config import group_config
    from diffode.spec import build

    return build({**group_config("dataset", "gmm2d"), "batch_size": batch})  # conf/dataset/gmm2d.yaml


MODELS = {
    "unet": (dict(_target_="diffode.nets.unet.UNet", resolution=8, in_channels=1, model_channels=16,
                  channel_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[4]),
             dict(_target_="diffode.core.schedules.EDM"), "edm", lambda b: DigitsDataModule(batch_size=b)),
    "mlp": (dict(_target_="diffode.nets.mlp.MLP", dim=2, hidden=256, depth=4),
            dict(_target_="diffode.core.schedules.VPLinear"), "eps", _gmm2d),
}


def make(model: str, batch: int):
    net, schedule, prediction, data = MODELS[model]
    dm = data(batch)
    dm.setup("fit")
    torch.manual_seed(0)
    # conf/method/denoiser.yaml's options, without the EMA callback (the plain loop has none either)
    options = {**method_defaults("denoiser"), "prediction": prediction, "lr": 1e-3, "n_samples": 0, "ema": None}
    module = DenoiserModule(net=net, schedule=schedule, data=dm.info(), **options)
    return module, dm


class Clock(L.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.t0, self.t1, self.n = warmup, None, None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.t1, self.n = time.perf_counter(), trainer.global_step - self.warmup


def lightning_rate(model, batch, steps, warmup) -> float:
    module, dm = make(model, batch)
    clock = Clock(warmup)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=warmup + steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, use_distributed_sampler=False, callbacks=[clock])
    trainer.fit(module, datamodule=dm)
    return clock.n / (clock.t1 - clock.t0)


class _Stub:  # what _check_finite reads from the trainer
    world_size = 1


def plain_rate(model, batch, steps, warmup) -> float:
    module, dm = make(model, batch)
    module.train()
    opt = module.configure_optimizers()
    loader, step, t0 = dm.train_dataloader(), 0, None
    while step < warmup + steps:
        for batch_ in loader:
            if step == warmup:
                t0 = time.perf_counter()
            x0 = batch_[0]
            g = module._step_generator(step, 0)
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=g)))
            loss = module.loss(x0, g)
            if not bool(torch.isfinite(loss)):
                raise FloatingPointError("non-finite loss")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step == warmup + steps:
                break
    return steps / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=sorted(MODELS), default="unet")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ratios = []
    for r in range(a.reps):
        p = plain_rate(a.model, a.batch, a.steps, a.warmup)
        lt = lightning_rate(a.model, a.batch, a.steps, a.warmup)
        ratios.append(lt / p)
        print(f"rep {r}: plain {p:.2f} steps/s, lightning {lt:.2f} steps/s, ratio {lt / p:.3f}", flush=True)
    print(f"model={a.model} batch={a.batch} steps={a.steps} threads={a.threads}: "
          f"lightning/plain throughput ratio median {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
