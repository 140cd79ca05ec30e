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

from omegaconf import DictConfig

from .errors import hydra_entry

log = logging.getLogger(__name__)


def train_if_missing(cfg: DictConfig) -> None:
    """The main job's fallback when its checkpoint is missing: train it in this process with the
    project's own runner (conf/experiment/<source.train_experiment>), then copy its EMA export where
    source.path says."""
    from hydra import compose

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
    shutil.copyfile(exported, path)


@hydra_entry(config_name="eval")
def main(cfg: DictConfig) -> None:
    from diffode.evaluation.runner import evaluate

    train_if_missing(cfg)
    evaluate(cfg)


if __name__ == "__main__":
    main()
