"""Loggers of a training run: the configured one (wandb / tensorboard / csv / none) plus, always, CSV."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def build_loggers(cfg: DictConfig, out: Path) -> list:
    """The configured logger (wandb / tensorboard / csv / none) plus, always, a CSV log in <run dir>/csv."""
    from hydra.utils import instantiate
    from lightning.pytorch.loggers import CSVLogger

    loggers = []
    lcfg = OmegaConf.to_container(cfg.logger, resolve=True) if cfg.get("logger") else None
    if lcfg and lcfg.get("_target_"):
        target = lcfg["_target_"]
        if target.endswith("WandbLogger"):
            from diffode.evaluation.wandb_log import wandb_mode
            from diffode.spec import locate

            mode = wandb_mode(lcfg.pop("mode", None))
            log.info("W&B logging %s", mode)
            cls = locate(lcfg.pop("_target_"))  # not instantiate(): the run config holds `_target_`s
            # mode goes to wandb.init; Lightning's own `offline` flag would set WANDB_MODE for the whole process
            loggers.append(cls(**lcfg, save_dir=str(out), mode=mode,
                               config=OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)))  # choices as str
        elif not target.endswith("CSVLogger"):
            loggers.append(instantiate(lcfg, save_dir=str(out)))
    loggers.append(CSVLogger(save_dir=str(out), name="csv"))  # csv/version_<n>: a resume adds a version
    return loggers


def finish_wandb() -> None:
    if "wandb" in sys.modules:
        wandb = sys.modules["wandb"]
        if getattr(wandb, "run", None) is not None:
            wandb.finish()
