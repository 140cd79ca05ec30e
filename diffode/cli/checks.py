"""The runner's plumbing: run directories, checkpoints to resume from, the checks every method shares."""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from .errors import ConfigError  # noqa: F401  (re-exported: the error every check raises)

log = logging.getLogger(__name__)


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


def stopped_message(trainer, out: Path, checkpointed: bool) -> str:
    """What a job stopped by SIGTERM says: where it stopped and how to continue."""
    last = out / "checkpoints" / "last.ckpt"
    if checkpointed and last.is_file():
        how = (f"its last checkpoint is {last} (written at the end of each epoch); run the same command again to "
               "continue from it (ckpt_path=last, the default).")
    else:
        how = "it keeps no checkpoint to resume; run the same command again to start it over."
    return f"stopped by SIGTERM at step {trainer.global_step}: {how}"


def generic_errors(cfg: DictConfig, ctx, spec) -> list[str]:
    """What every method shares: the checkpoint to resume, the trainer's length, the data, the launcher."""
    errors = []
    ckpt = cfg.get("ckpt_path")
    if spec.checkpoint and ckpt not in (None, "", "null", "last") and not Path(str(ckpt)).is_file():
        errors.append(f"ckpt_path={ckpt} does not exist; pass an existing .ckpt (e.g. <run dir>/checkpoints/last.ckpt), "
                      f"ckpt_path=last to resume this run dir if it has one, or ckpt_path=null to start fresh.")
    tr = cfg.trainer
    if spec.trainer is None and (tr.get("max_steps", -1) in (None, 0) or
                                 (tr.get("max_steps", -1) < 0 and tr.get("max_epochs", -1) in (None, -1))):
        errors.append("trainer.max_steps must be positive (or set trainer.max_epochs); e.g. trainer.max_steps=2000.")
    from diffode.config import method_defaults

    unknown = sorted(set(cfg.method) - {"name"} - set(method_defaults(spec.name)))
    if unknown:
        errors.append(f"method={spec.name} has no option(s) {', '.join('method.' + k for k in unknown)} (its options "
                      f"are the keys of conf/method/{spec.name}.yaml); remove them.")
    devices = tr.get("devices", 1)
    dm = ctx.datamodule
    if dm is not None:
        batch = int(cfg.dataset.get("batch_size", 1))
        if batch < 1:
            errors.append(f"dataset.batch_size={batch} must be >= 1.")
        if isinstance(devices, int) and hasattr(dm, "n_train") and dm.n_train < batch * devices:
            errors.append(f"dataset.n_train={dm.n_train} is smaller than one global batch ({batch} x {devices}); "
                          "raise dataset.n_train or lower dataset.batch_size.")
        if hasattr(dm, "validate"):
            try:
                dm.validate()
            except (FileNotFoundError, ValueError) as e:
                errors.append(str(e))
    if cfg.get("seed") is None or int(cfg.seed) < 0:
        errors.append(f"seed={cfg.get('seed')} must be an integer >= 0.")
    return errors + check_launcher(cfg)


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
    if cfg.trainer.get("accelerator") in ("gpu", "cuda") and (gpus is None or gpus < devices):
        errs.append(f"hydra.launcher.gpus_per_node={gpus} but trainer.devices={devices} GPUs; set "
                    f"hydra.launcher.gpus_per_node={devices} (the launcher asks for no GPU unless told).")
    return errs
