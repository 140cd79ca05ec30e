"""`diffode eval [overrides]`: FID (or exact GMM metrics) and solver error vs NFE for one model.

    diffode main                                    # = diffode eval experiment=eval_main
    diffode eval solver=heun grid=edm nfe=6         # one cell
    diffode eval -m solver=heun,dpmpp_3m nfe=4,6    # Hydra multirun: one job per cell
    diffode eval source=gmm2d sweep.solvers=[heun,dpmpp_2m] sweep.grids=[edm,logsnr] sweep.nfes=[4,6,8]
    diffode eval sweep.learned=[<run dir>/artifacts/ld3]   # adds the row <solver>/ld3

The Hydra entry of the evaluation runner (diffode/evaluation/runner.py: what it writes, where, and its
checks). The one thing done here is the main job's fallback, which needs the training runner: a missing
checkpoint with source.train_if_missing is trained first.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from omegaconf import DictConfig, open_dict

from .errors import hydra_entry

log = logging.getLogger(__name__)


def train_if_missing(cfg: DictConfig) -> None:
    """The main job's fallback when its checkpoint is missing: train it in this process with the
    project's own runner (conf/experiment/<source.train_experiment>), then copy its EMA export where
    source.path says."""
    from hydra import compose

    from diffode.cache import atomic_path
    from diffode.evaluation.runner import output_dir
    from diffode.models import checkpoint_path

    from .train import train

    if cfg.source.kind != "checkpoint" or not cfg.source.get("train_if_missing"):
        return
    path = checkpoint_path(cfg.source)
    if path.is_file():
        return
    if cfg.get("threads"):
        import torch

        torch.set_num_threads(int(cfg.threads))
    run_dir = output_dir(cfg) / "train"
    exp = cfg.source.get("train_experiment") or "digits"
    log.info("checkpoint %s missing: training it (diffode train experiment=%s)", path, exp)
    tcfg = compose("train", overrides=[f"experiment={exp}", f"output_dir={run_dir}"])
    exported = train(tcfg).get("exported", {}).get("ema_checkpoint")
    if not exported or not Path(exported).is_file():
        raise FileNotFoundError(f"training finished but wrote no denoiser_ema.ckpt under {run_dir}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:  # a kill during the copy leaves no half checkpoint under its name
        shutil.copyfile(exported, tmp)


def compose_parts(cfg: DictConfig) -> list[tuple[DictConfig, dict, str]]:
    """cfg.parts (experiment names): further studies that run after this one, each an eval of its own under
    output_dir/<experiment> with this command's overrides (the main job's guided and flow-matching models). All are
    composed before any compute, so a bad name or override stops the job at once. A part has no parts."""
    from hydra import compose
    from diffode.config import ConfigError
    from diffode.evaluation.runner import output_dir, task_overrides

    parts = cfg.get("parts") or []
    if not parts:
        return []
    passed = [o for o in task_overrides() if o.split("=", 1)[0].lstrip("+~") not in ("experiment", "output_dir", "parts")]
    root = output_dir(cfg)
    composed = []
    for experiment in parts:
        overrides = [f"experiment={experiment}", *passed, f"output_dir={root / str(experiment)}"]
        try:
            pcfg = compose("eval", overrides=overrides, return_hydra_config=True)
        except Exception as e:  # noqa: BLE001  (Hydra's composition errors have no common base worth naming)
            raise ConfigError(f"parts: {experiment} does not compose ({' '.join(str(e).split())}); "
                              f"parts name experiments of conf/experiment/.") from None
        choices = dict(pcfg.hydra.runtime.choices)
        with open_dict(pcfg):
            del pcfg["hydra"]
        if pcfg.get("parts"):
            raise ConfigError(f"parts: {experiment} has parts of its own; a part must be a "
                              "single study.")
        composed.append((pcfg, choices, " ".join(["diffode eval", *overrides[:-1]])))
    return composed


@hydra_entry(config_name="eval")
def main(cfg: DictConfig) -> None:
    from diffode.evaluation.runner import evaluate

    parts = compose_parts(cfg)
    train_if_missing(cfg)
    evaluate(cfg)
    for pcfg, choices, command in parts:
        log.info("part %s: %s", pcfg.output_dir, command)
        train_if_missing(pcfg)
        evaluate(pcfg, choices=choices, command=command)


if __name__ == "__main__":
    main()
