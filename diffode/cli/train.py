"""`diffode train method=<name> [group=option ...]`: the one runner of every method.

Composes conf/train.yaml (method x source x dataset x net x schedule x trainer x logger), asks the
method's registry entry what it needs (diffode/methods/registry.py), checks everything before any
compute, then runs Lightning and the method's export. Nothing here knows a method by name.
Outputs, all under the run dir: checkpoints/last.ckpt (when the method is checkpointed;
ckpt_path=last resumes, which a requeued SLURM job does), what the method exports (denoiser_ema.ckpt,
artifacts/<name>/), csv/metrics.csv (always), wandb/ or tb/, results.json.
"""
from __future__ import annotations

import json
import logging
import time

import torch
from omegaconf import DictConfig, OmegaConf

from .checks import (ConfigError, generic_errors, record_run, resolve_ckpt_path, resolve_output_dir, run_dir_errors,
                     type_errors)
from .errors import hydra_entry

log = logging.getLogger(__name__)


def _plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if node is not None else {}


def prepare(cfg: DictConfig):
    """(method spec, the config its builder takes, Context) with every check done; ConfigError (one paragraph)
    otherwise. The builder takes the method's typed options (registry.typed_options), or what its `resolve`
    makes of them."""
    from hydra.utils import instantiate

    from diffode.extras import config_errors as extras_missing
    from diffode.methods.registry import Context, get_method, typed_options
    from diffode.models import load_model

    try:
        spec = get_method(str(cfg.method.name))
        options = typed_options(spec, cfg.method)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    missing = extras_missing(cfg) + type_errors(cfg, "train")  # before the teacher and the data are loaded
    if missing:
        raise ConfigError(f"invalid config for method={spec.name}: " + " ".join(missing))
    out = resolve_output_dir(cfg)
    ctx = Context(out_dir=out, seed=int(cfg.seed), net=_plain(cfg.get("net")), schedule=_plain(cfg.get("schedule")),
                  trainer=_plain(cfg.trainer), source=_plain(cfg.get("source")))
    errors = []
    if spec.needs_teacher:
        try:
            ctx.teacher = load_model(cfg.source)
        except (ValueError, FileNotFoundError) as e:
            errors.append(f"source: {e}")
    if spec.needs_data:
        try:
            ctx.datamodule = instantiate(cfg.dataset, seed=cfg.seed)
        except (ValueError, FileNotFoundError) as e:
            errors.append(f"dataset: {e}")
    if ctx.teacher is not None and ctx.datamodule is not None and tuple(ctx.datamodule.shape) != tuple(ctx.teacher.shape):
        errors.append(f"dataset={getattr(ctx.datamodule, 'name', '?')} has samples of shape {tuple(ctx.datamodule.shape)} "
                      f"but the teacher (source) makes {tuple(ctx.teacher.shape)}; pick the dataset the teacher was "
                      f"trained on ({ctx.teacher.dataset}).")
    errors += run_dir_errors(cfg, out) + generic_errors(cfg, ctx, spec)
    if not errors and spec.check is not None:
        errors += spec.check(options, ctx)
    config = options
    if not errors and spec.resolve is not None:
        try:
            config = spec.resolve(options, ctx)
        except ValueError as e:
            errors.append(str(e))
    if errors:
        raise ConfigError(f"invalid config for method={spec.name}: " + " ".join(errors))
    return spec, config, ctx


def train(cfg: DictConfig) -> dict:
    """Run one job described by a composed config; returns its results (also in results.json)."""
    from .loggers import finish_wandb

    try:
        return _train(cfg)
    finally:
        finish_wandb()  # every multirun job gets its own W&B run


def _train(cfg: DictConfig) -> dict:
    import lightning as L
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ModelCheckpoint

    from diffode.methods.callbacks import WeightDigest

    from .loggers import build_loggers

    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    spec, config, ctx = prepare(cfg)  # before any compute
    out = ctx.out_dir
    record_run(cfg, out)  # after the checks: a refused config leaves no claim on the dir
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), out) if spec.checkpoint else None
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    module = spec.build(config, ctx)
    n_params = sum(p.numel() for p in module.parameters() if p.requires_grad)
    log.info("method %s: %s trainable parameters, run dir %s", spec.name, f"{n_params:,}", out)

    callbacks = [WeightDigest(str(out))]
    if spec.checkpoint:  # epoch ends only: resuming there is exact
        callbacks.insert(0, ModelCheckpoint(dirpath=str(out / "checkpoints"), save_last="link", save_top_k=1,
                                            every_n_epochs=cfg.get("checkpoint_every_n_epochs", 1),
                                            save_on_train_epoch_end=True, enable_version_counter=False))
    tcfg = dict(ctx.trainer)  # a copy: the method may fix some settings
    if spec.trainer is not None:
        tcfg.update(spec.trainer(config))
    trainer = instantiate(tcfg, callbacks=callbacks, logger=build_loggers(cfg, out), default_root_dir=str(out),
                          use_distributed_sampler=False, num_sanity_val_steps=0,
                          enable_checkpointing=spec.checkpoint, _convert_="all")
    t0 = time.time()
    trainer.fit(module, datamodule=ctx.datamodule, ckpt_path=ckpt_path)
    seconds = time.time() - t0
    if not trainer.is_global_zero:
        return {}
    last = out / "checkpoints" / "last.ckpt"
    step = trainer.global_step
    if last.is_file() and step == 0:  # after ddp_spawn the main process's trainer keeps no loop state
        step = int(torch.load(last, map_location="cpu", weights_only=True)["global_step"])
    results = {"method": spec.name, "output_dir": str(out), "global_step": step, "train_seconds": round(seconds, 2),
               "parameters": n_params, "seed": int(cfg.seed),
               **{k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}}
    if spec.export is not None:
        results["exported"] = spec.export(module, ctx)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    log.info("done in %.1f s: %s", seconds, json.dumps(results))
    return results


@hydra_entry(config_name="train")
def main(cfg: DictConfig) -> float | None:
    return train(cfg).get("train/loss")


if __name__ == "__main__":
    main()
