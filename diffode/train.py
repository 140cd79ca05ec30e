"""Train a denoiser (or any method LightningModule): `python -m diffode.train [overrides]`.

Composes conf/train.yaml (dataset x model x schedule x method x trainer x logger), checks
the combination before any compute, then runs Lightning. Outputs, all under the run dir:
checkpoints/last.ckpt (resumable: ckpt_path=last or a path), denoiser_ema.ckpt (small,
EMA weights only, for load_denoiser), samples/, csv/metrics.csv (always), wandb/ or tb/,
results.json.
"""
from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from .train_setup import ConfigError, build_loggers, check_config, finish_wandb, resolve_ckpt_path, resolve_output_dir

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict:
    """Run one training job described by a composed config; returns its results (also in results.json)."""
    try:
        return _train(cfg)
    finally:
        finish_wandb()  # every multirun job gets its own W&B run


def _train(cfg: DictConfig) -> dict:
    import lightning as L
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ModelCheckpoint

    from .methods.callbacks import EMA, WeightDigest

    out = resolve_output_dir(cfg)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    if "_target_" not in cfg.method:  # a method with its own runner (method=ld3)
        return _run_method(cfg, out)
    datamodule = instantiate(cfg.dataset, seed=cfg.seed)
    check_config(cfg, datamodule, out)  # before any compute: raises ValueError naming the fix
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), out)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    method_cfg = OmegaConf.to_container(cfg.method, resolve=True)
    ema_cfg = method_cfg.pop("ema", None)
    module = instantiate(method_cfg, net=OmegaConf.to_container(cfg.model, resolve=True),
                         schedule=OmegaConf.to_container(cfg.schedule, resolve=True), data=datamodule.info(),
                         seed=cfg.seed, out_dir=str(out), _convert_="all", _recursive_=False)
    if hasattr(datamodule, "analytic_denoiser"):
        module.analytic = datamodule.analytic_denoiser()
    n_params = sum(p.numel() for p in module.parameters())
    log.info("model %s: %s parameters", cfg.model._target_.rsplit(".", 1)[-1], f"{n_params:,}")

    callbacks = [ModelCheckpoint(dirpath=str(out / "checkpoints"), save_last="link", save_top_k=1,
                                 every_n_epochs=cfg.get("checkpoint_every_n_epochs", 1),
                                 save_on_train_epoch_end=True, enable_version_counter=False),  # epoch ends only: resuming there is exact
                 WeightDigest(str(out))]
    if ema_cfg and ema_cfg.get("decay", 0) > 0:
        callbacks.insert(0, EMA(**ema_cfg))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=build_loggers(cfg, out),
                          default_root_dir=str(out), use_distributed_sampler=False, num_sanity_val_steps=0)
    t0 = time.time()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    seconds = time.time() - t0
    if not trainer.is_global_zero:
        return {}

    last = out / "checkpoints" / "last.ckpt"
    step = trainer.global_step
    if last.is_file() and step == 0:  # after ddp_spawn the main process's trainer keeps no loop state
        step = int(torch.load(last, map_location="cpu", weights_only=True)["global_step"])
    results = {"output_dir": str(out), "global_step": step, "train_seconds": round(seconds, 2),
               "parameters": n_params, "seed": cfg.seed,
               **{k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}}
    if last.is_file() and cfg.method._target_.endswith("DenoiserModule"):
        from .methods.denoiser import export_denoiser

        from .methods.denoiser import load_denoiser

        results["ema_checkpoint"] = str(export_denoiser(last, out / "denoiser_ema.ckpt", ema=True))
        module.denoiser.load_state_dict(load_denoiser(results["ema_checkpoint"])[0].state_dict())
        module.log_samples(step)  # final samples with the EMA weights
    (out / "results.json").write_text(json.dumps(results, indent=2))
    log.info("done in %.1f s: %s", seconds, json.dumps(results))
    return results


def _run_method(cfg: DictConfig, out: Path) -> dict:
    name = cfg.method.get("name")
    if name == "ld3":
        from .ld3 import run_from_train_cfg

        return run_from_train_cfg(cfg, out)
    raise ConfigError(f"method={name}: a method config needs a `_target_` (a LightningModule) or a runner known to "
                      "diffode.train (ld3); see conf/method/denoiser.yaml.")


# Absolute: a relative config_path resolves against the calling module, which breaks the console script.
@hydra.main(config_path=str(Path(__file__).resolve().parents[1] / "conf"), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    res = train(cfg)
    return res.get("train/loss")


if __name__ == "__main__":
    # conf/hydra/launcher/submitit_*.yaml share their names with the plugin's schemas on purpose:
    # Hydra then type-checks them against hydra-submitit-launcher's fields.
    warnings.filterwarnings("ignore", message=".*validated against ConfigStore schema.*")
    main()
