"""What the LD3 scripts that stay (ablation.py, benchmark.py) share: train one grid through the one runner
(`diffode ld3 ...`, composed from the packaged configs) and score samplers on a model, all through the public
API (diffode.load_model, diffode.load_sampler, Model.sample)."""
from __future__ import annotations

import time
from pathlib import Path

GMM = ("gmm2d", "gmm16d")  # conf/source/<name>.yaml: exact mixtures


def source_overrides(model: str) -> list[str]:
    """'gmm2d' / 'gmm16d' (exact mixtures) or a checkpoint path."""
    return [f"source={model}"] if model in GMM else ["source=checkpoint", f"source.path={model}"]


def source_model(model: str):
    """The diffode Model of `model`: an exact mixture or a checkpoint."""
    import diffode
    from diffode.config import group_config

    return diffode.load_model(group_config("source", model) if model in GMM else {"kind": "checkpoint", "path": model})


def compose_ld3(model: str, overrides: list[str]):
    """conf/train.yaml with method=ld3 for `model`, as `diffode ld3 <overrides>` composes it."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from diffode.config import CONF_PACKAGE

    GlobalHydra.instance().clear()
    with initialize_config_module(CONF_PACKAGE, version_base="1.3"):
        return compose("train", overrides=["method=ld3", *source_overrides(model), *overrides])


def train_grid(model: str, out_dir: Path, overrides: list[str], threads: int):
    """One LD3 training through the runner; returns (its LearnedSampler, wall seconds)."""
    import diffode
    from diffode.cli.train import train

    cfg = compose_ld3(model, [f"output_dir={out_dir}", f"threads={threads}", "trainer.enable_progress_bar=false",
                              *overrides])
    t0 = time.perf_counter()
    results = train(cfg)
    return diffode.load_sampler(results["exported"]["artifact"]), time.perf_counter() - t0


def val_losses(sampler) -> tuple[float, float]:
    """(first, best) validation distance of an LD3 artifact (its manifest's metrics)."""
    return sampler.manifest["metrics"]["val_first"], sampler.manifest["metrics"]["val_best"]
