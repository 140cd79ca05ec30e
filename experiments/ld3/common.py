"""Shared pieces of the LD3 studies: train a grid through the one runner (`diffode train method=ld3`),
read grids back (artifact directories, or the ld3_grid.json files recorded before artifacts existed),
score grids on held-out noise."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from diffode.config import solver_config
from diffode.core.sample import sample

GMM = ("gmm2d", "gmm16d")  # conf/source/<name>.yaml: exact mixtures
HAND_GRIDS = ["time_uniform", "logsnr", "edm"]


def source_overrides(model: str) -> list[str]:
    """'gmm2d' / 'gmm16d' (exact mixtures) or a checkpoint path."""
    return [f"source={model}"] if model in GMM else ["source=checkpoint", f"source.path={model}"]


def source_model(model: str):
    """The diffode.models.Model the studies sample: an exact mixture or a checkpoint."""
    from diffode.config import group_config
    from diffode.models import load_model

    return load_model(group_config("source", model) if model in GMM else {"kind": "checkpoint", "path": model})


def compose_ld3(model: str, overrides: list[str]):
    """conf/train.yaml with method=ld3 for `model`, as `diffode ld3 <overrides>` composes it."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from diffode.config import CONF_PACKAGE

    GlobalHydra.instance().clear()
    with initialize_config_module(CONF_PACKAGE, version_base="1.3"):
        return compose("train", overrides=["method=ld3", *source_overrides(model), *overrides])


def train_grid(model: str, out_dir: Path, overrides: list[str], threads: int) -> tuple[dict, float, object]:
    """One LD3 training through the runner; returns (grid record, wall seconds, cfg)."""
    from diffode.cli.train import train

    cfg = compose_ld3(model, [f"output_dir={out_dir}", f"threads={threads}", "trainer.enable_progress_bar=false",
                              *overrides])
    t0 = time.perf_counter()
    results = train(cfg)
    return grid_record(results["exported"]["artifact"]), time.perf_counter() - t0, cfg


def grid_record(path) -> dict:
    """An LD3 grid as these studies read it: the manifest (diffode.artifacts) of an artifact directory
    (<run dir>/artifacts/ld3), or a recorded ld3_grid.json, with val_first / val_best / train_seconds /
    teacher / init under the same keys for both."""
    from diffode.artifacts import read_manifest

    m = read_manifest(path)
    metrics, training = m.get("metrics") or {}, m.get("training") or m.get("config") or {}
    legacy = m.get("val_metric") or {}
    vals = [h["val"] for h in m.get("history") or [] if h.get("val") is not None]
    return {**m, "val_first": vals[0] if vals else None,
            "val_best": metrics.get("val_best", metrics.get("value", legacy.get("value"))),
            "train_seconds": metrics.get("train_seconds", m.get("train_seconds")),
            "teacher": training.get("teacher") or m.get("teacher"),
            "init": training.get("init") or m.get("init") or {}}


def find_grid(run_dir: Path) -> Path | None:
    """The LD3 grid of a run dir: artifacts/ld3 (today's runner) or ld3_grid.json (the recorded runs)."""
    for p in (Path(run_dir) / "artifacts" / "ld3", Path(run_dir) / "ld3_grid.json"):
        if p.exists():
            return p
    return None


@torch.no_grad()
def solve_grid(denoiser, x_T, solver, nfe, grid, schedule, sigma_min=None, sigma_max=None, batch_size=2000,
               **solver_options):
    """grid: a hand-crafted grid name or an LD3 grid record; solver: a conf/solver/ name (its options
    apply, then the record's, then solver_options); solved in batches."""
    name, options = solver_config(solver)
    if isinstance(grid, dict):
        options = {**options, **(grid.get("solver_options") or {})}
        net = grid.get("net_sigmas")
        kw = dict(grid=torch.tensor(grid["sigmas"], dtype=torch.float64),
                  net_sigmas=None if net is None else torch.tensor(net, dtype=torch.float64))
    else:
        kw = dict(grid=grid, sigma_min=sigma_min, sigma_max=sigma_max)
    options.update(solver_options)
    out = [sample(denoiser, xb, solver=name, nfe=nfe, schedule=schedule, **kw, **options)
           for xb in x_T.split(batch_size)]
    return torch.cat(out)


class DigitsFID:
    """FID with the project's digits feature net against the digits training split: the protocol of
    `diffode eval` (diffode.evaluation.metrics.FIDMetrics), without its bootstrap interval."""

    def __init__(self):
        from omegaconf import OmegaConf

        from diffode.evaluation.metrics import FIDMetrics
        from diffode.models import load_model

        fcfg = OmegaConf.create({"reference": "digits", "features": "digits", "batch_size": 2000, "bootstrap": 0})
        self.metrics = FIDMetrics(load_model({"kind": "checkpoint", "path": None}), fcfg)

    def __call__(self, samples):
        return self.metrics(samples.float(), None)["fid"]
