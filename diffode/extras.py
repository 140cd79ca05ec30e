"""The optional pieces of pyproject.toml's extras, and the one paragraph that names the extra when a
config asks for a piece that is not installed.

The core (every solver, method and metric; `diffode train` / `eval` with the CSV logger) never imports
these packages; only the config choices below do, lazily, and each is checked before any compute.
"""
from __future__ import annotations

import importlib.util

# extra -> (the modules any one of which provides it, its package on PyPI, the config choice that needs it)
EXTRAS = {
    "wandb": (("wandb",), "wandb", "logger=wandb"),
    "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard", "logger=tensorboard"),
    "diffusers": (("diffusers",), "diffusers", "source=diffusers"),
    "slurm": (("hydra_plugins.hydra_submitit_launcher",), "hydra-submitit-launcher",
              "hydra/launcher=submitit_slurm (or submitit_local)"),
}


def installed(extra: str) -> bool:
    modules = EXTRAS[extra][0]
    for name in modules:
        try:
            if importlib.util.find_spec(name) is not None:
                return True
        except ModuleNotFoundError:  # the parent of a dotted name is missing
            pass
    return False


def missing_message(extra: str) -> str:
    _, package, choice = EXTRAS[extra]
    return (f"{choice} needs the optional package {package}, which is not installed here; "
            f"install it with pip install 'diffode[{extra}]' (or 'diffode[all]' for every optional piece), "
            "or choose another option.")


def needed_by(cfg) -> list[str]:
    """The extras a composed train / eval config needs (its logger and its source)."""
    need = []
    logger = cfg.get("logger")
    target = str(logger.get("_target_", "")) if hasattr(logger, "get") else str(logger or "")
    if target.endswith("WandbLogger") or target == "wandb":
        need.append("wandb")
    if target.endswith("TensorBoardLogger") or target == "tensorboard":
        need.append("tensorboard")
    source = cfg.get("source")
    if source is not None and hasattr(source, "get") and source.get("kind") == "diffusers":
        need.append("diffusers")
    return need


def config_errors(cfg) -> list[str]:
    """One message per extra that the config needs and this environment lacks."""
    return [missing_message(e) for e in needed_by(cfg) if not installed(e)]


def launcher_errors(argv: list[str]) -> list[str]:
    """Hydra instantiates the launcher before any diffode code runs, so its extra is checked on the command
    line (hydra/launcher=submitit_*)."""
    wants = any(a.split("=", 1)[0].lstrip("+~") == "hydra/launcher" and "submitit" in a for a in argv)
    return [missing_message("slurm")] if wants and not installed("slurm") else []
