"""The runner's plumbing: run directories, checkpoints to resume from, the checks every method shares."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from diffode.config import ConfigError, type_errors  # noqa: F401  (re-exported: what every check raises / runs)

from .launch import check_launcher

log = logging.getLogger(__name__)


def resolve_output_dir(cfg: DictConfig) -> Path:
    if cfg.get("output_dir"):
        out = Path(cfg.output_dir)
    else:
        from hydra.core.hydra_config import HydraConfig

        out = Path(HydraConfig.get().runtime.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


RUN_RECORD = "run.json"
# What makes two trainings the same run (the length, threads, loggers and launch may change between a run and
# its continuation): a run dir holding another identity is never resumed or written into.
RUN_IDENTITY = ("method", "source", "dataset", "net", "schedule", "seed")


def run_identity(cfg: DictConfig) -> dict:
    return {k: OmegaConf.to_container(cfg[k], resolve=True, enum_to_str=True) if OmegaConf.is_config(cfg.get(k))
            else cfg.get(k) for k in RUN_IDENTITY}


def _differences(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix[:-1]}: {json.dumps(a, default=str)} -> {json.dumps(b, default=str)}"]


def run_dir_errors(cfg: DictConfig, out: Path) -> list[str]:
    """A run dir that holds another config's run (a second `diffode train` inside one SLURM job lands in the
    first one's outputs/<task>/<job id>) is refused: resuming its checkpoint would silently continue a
    different run. A requeue of the same job, or any run of the same config, passes (and resumes)."""
    record = out / RUN_RECORD
    if not record.is_file():
        return []
    try:
        theirs = json.loads(record.read_text())["identity"]
    except (OSError, ValueError, KeyError, TypeError):
        return [f"{record} is not a readable diffode run record, so this run dir cannot be checked before it is "
                f"resumed or written into; give this run its own directory (output_dir=<new dir>) or remove {record}."]
    diff = _differences(theirs, json.loads(json.dumps(run_identity(cfg), default=str)))
    if not diff:
        return []
    job = os.environ.get("SLURM_JOB_ID")
    where = f" (SLURM job {job}: every `diffode train` of one task in this job lands here)" if job else ""
    return [f"run dir {out}{where} already holds a run of another config, which differs in "
            f"{'; '.join(diff[:6])}{' ...' if len(diff) > 6 else ''}. Nothing was resumed or overwritten: give this "
            "run its own directory (output_dir=<dir> or hydra.run.dir=<dir>), or delete that run dir to start over."]


def record_run(cfg: DictConfig, out: Path) -> None:
    """Write the run's identity into its dir (atomic; every rank writes the same bytes)."""
    record = out / RUN_RECORD
    tmp = record.with_name(f".{RUN_RECORD}.tmp{os.getpid()}")
    tmp.write_text(json.dumps({"identity": run_identity(cfg)}, indent=1, sort_keys=True, default=str))
    tmp.replace(record)


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
