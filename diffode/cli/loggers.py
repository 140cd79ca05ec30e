"""Loggers of a training run: the configured one (wandb / tensorboard / csv / none) plus, always, CSV."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from diffode.evaluation.wandb_log import has_credentials as wandb_has_credentials

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
            mode = lcfg.pop("offline", "auto")
            offline = (not wandb_has_credentials() or os.environ.get("WANDB_MODE") in ("offline", "dryrun")
                       if mode == "auto" else bool(mode))
            log.info("W&B logging %s", "offline (no credentials; `wandb sync` later)" if offline else "online")
            from diffode.spec import locate

            cls = locate(lcfg.pop("_target_"))  # not instantiate(): the run config holds `_target_`s
            loggers.append(cls(**lcfg, save_dir=str(out), offline=offline,
                               config=OmegaConf.to_container(cfg, resolve=True)))
        elif not target.endswith("CSVLogger"):
            loggers.append(instantiate(lcfg, save_dir=str(out)))
    loggers.append(CSVLogger(save_dir=str(out), name="csv"))  # csv/version_<n>: a resume adds a version
    return loggers


def finish_wandb() -> None:
    if "wandb" in sys.modules:
        wandb = sys.modules["wandb"]
        if getattr(wandb, "run", None) is not None:
            wandb.finish()
