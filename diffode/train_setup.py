"""The plumbing of diffode.train: run directories, config checks, loggers, checkpoints to resume from."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .evaluation.wandb_log import has_credentials as wandb_has_credentials  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A combination of options that cannot work; the message names the fix."""


def resolve_output_dir(cfg: DictConfig) -> Path:
    if cfg.get("output_dir"):
        out = Path(cfg.output_dir)
    else:
        from hydra.core.hydra_config import HydraConfig

        out = Path(HydraConfig.get().runtime.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


def resolve_ckpt_path(ckpt_path, out: Path) -> str | None:
    """None -> fresh; 'last' -> <run dir>/checkpoints/last.ckpt if it exists (SLURM requeue), else fresh."""
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path == "last":
        last = out / "checkpoints" / "last.ckpt"
        if last.is_file():
            log.info("resuming from %s", last)
            return str(last)
        log.info("ckpt_path=last: no %s yet, starting fresh", last)
        return None
    return str(ckpt_path)


def _net_shape(model: DictConfig):
    target = str(model.get("_target_", ""))
    if target.endswith("UNet"):
        return "UNet", (model.in_channels, model.resolution, model.resolution)
    if target.endswith("MLP"):
        return "MLP", (model.dim,)
    return target, None


def check_config(cfg: DictConfig, datamodule, out: Path) -> None:
    """Every impossible combination fails here, before any compute, with a message that names the fix."""
    errors = []
    data_shape = tuple(datamodule.shape)
    kind, net_shape = _net_shape(cfg.model)
    if net_shape is not None and tuple(net_shape) != data_shape:
        if kind == "MLP" and len(data_shape) != 1:
            errors.append(f"model=mlp is for vector data but dataset={datamodule.name} has images of shape "
                          f"{data_shape}; use model=unet_digits (8x8 digits) or model=unet_cifar (32x32), or a vector "
                          f"dataset (dataset=gmm2d / gmm16d).")
        elif kind == "UNet" and len(data_shape) != 3:
            errors.append(f"a UNet needs images but dataset={datamodule.name} has vectors of shape {data_shape}; "
                          f"use model=mlp (its dim follows the dataset) or an image dataset.")
        else:
            errors.append(f"model input shape {net_shape} does not match dataset={datamodule.name} samples of shape "
                          f"{data_shape}; set model.in_channels / model.resolution (or model.dim) to match.")
    ckpt = cfg.get("ckpt_path")
    if ckpt not in (None, "", "null", "last") and not Path(str(ckpt)).is_file():
        errors.append(f"ckpt_path={ckpt} does not exist; pass an existing .ckpt (e.g. <run dir>/checkpoints/last.ckpt), "
                      f"ckpt_path=last to resume this run dir if it has one, or ckpt_path=null to start fresh.")
    method = cfg.method
    if method.get("prediction") == "edm" and method.get("t_sampling", "auto") == "uniform":
        errors.append("method.prediction=edm trains with EDM's log-normal sigma; remove method.t_sampling=uniform "
                      "(it only applies to eps/x0/v predictions).")
    devices, tr = cfg.trainer.get("devices", 1), cfg.trainer
    batch = int(cfg.dataset.get("batch_size", 1))
    if isinstance(devices, int) and hasattr(datamodule, "n_train") and datamodule.n_train < batch * devices:
        errors.append(f"dataset.n_train={datamodule.n_train} is smaller than one global batch ({batch} x {devices}); "
                      "raise dataset.n_train or lower dataset.batch_size.")
    if tr.get("max_steps", -1) in (None, 0) or (tr.get("max_steps", -1) < 0 and tr.get("max_epochs", -1) in (None, -1)):
        errors.append("trainer.max_steps must be positive (or set trainer.max_epochs); e.g. trainer.max_steps=2000.")
    errors += check_launcher(cfg)
    if method.get("n_samples", 0) and method.get("sample_nfe"):
        try:
            from .core.sample import check_sampling_config

            check_sampling_config("heun", int(method.sample_nfe), "edm")
        except ImportError:
            pass
        except ValueError as e:
            errors.append(f"method.sample_nfe={method.sample_nfe} (the sample grid's Heun solve): {e}")
    if hasattr(datamodule, "validate"):
        try:
            datamodule.validate()
        except (FileNotFoundError, ValueError) as e:
            errors.append(str(e))
    if errors:
        raise ConfigError("invalid training config: " + " ".join(errors))


def check_launcher(cfg: DictConfig, launcher: DictConfig | None = None) -> list[str]:
    """SLURM launcher vs trainer: one task per device, as many nodes as trainer.num_nodes."""
    if launcher is None:
        try:
            from hydra.core.hydra_config import HydraConfig

            launcher = HydraConfig.get().launcher
        except Exception:
            return []
    target = str(launcher.get("_target_", ""))
    if not target.endswith("SlurmLauncher"):
        return []
    errs = []
    devices, nodes = cfg.trainer.get("devices", 1), cfg.trainer.get("num_nodes", 1)
    if launcher.get("tasks_per_node") != devices:
        errs.append(f"hydra.launcher.tasks_per_node={launcher.get('tasks_per_node')} must equal trainer.devices="
                    f"{devices} (Lightning expects one SLURM task per device); set both to the same number.")
    if launcher.get("nodes") != nodes:
        errs.append(f"hydra.launcher.nodes={launcher.get('nodes')} must equal trainer.num_nodes={nodes}.")
    gpus = launcher.get("gpus_per_node")
    if cfg.trainer.get("accelerator") in ("gpu", "cuda") and gpus is not None and gpus < devices:
        errs.append(f"hydra.launcher.gpus_per_node={gpus} < trainer.devices={devices}; request as many GPUs as devices.")
    return errs


# -- loggers --------------------------------------------------------------------------------

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
            from .methods.spec import locate

            cls = locate(lcfg.pop("_target_"))  # not instantiate(): the run config holds `_target_`s
            loggers.append(cls(**lcfg, save_dir=str(out), offline=offline,
                               config=OmegaConf.to_container(cfg, resolve=True)))
        elif not target.endswith("CSVLogger"):
            loggers.append(instantiate(lcfg, save_dir=str(out)))
    loggers.append(CSVLogger(save_dir=str(out), name="csv"))  # csv/version_<n>: a resume adds a version
    return loggers


def finish_wandb() -> None:
    import sys

    if "wandb" in sys.modules:
        wandb = sys.modules["wandb"]
        if getattr(wandb, "run", None) is not None:
            wandb.finish()
