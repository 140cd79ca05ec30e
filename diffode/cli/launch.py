"""Checks of the Hydra launcher (SLURM through hydra-submitit-launcher), before any job is submitted."""
from __future__ import annotations

from omegaconf import DictConfig


def slurm_errors(argv: list[str]) -> list[str]:
    """hydra/launcher=submitit_slurm needs a reachable SLURM controller: said before Hydra builds the launcher
    (submitit would fail deep inside with 'Could not detect srun')."""
    import shutil
    import subprocess

    if not any(a.split("=", 1)[0].lstrip("+~") == "hydra/launcher" and a.endswith("submitit_slurm") for a in argv):
        return []
    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        return ["hydra/launcher=submitit_slurm needs a SLURM cluster, but there is no sbatch / srun on this machine's "
                "PATH; launch from a node of the cluster (a login node), or use hydra/launcher=submitit_local to run "
                "the same jobs here."]
    try:
        p = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=20)
        why = None if p.returncode == 0 else (p.stderr.strip().splitlines() or ["sinfo failed"])[0]
    except (OSError, subprocess.TimeoutExpired) as e:
        why = str(e)
    if why:
        return [f"hydra/launcher=submitit_slurm: the SLURM controller is unreachable ({why}); start it or check "
                "SLURM_CONF, or use hydra/launcher=submitit_local."]
    return []


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
