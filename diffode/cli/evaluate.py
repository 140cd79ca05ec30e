"""`diffode eval [overrides]` / `python -m diffode.evaluate`: FID (or exact GMM metrics) vs NFE.

    diffode main                                    # = diffode eval experiment=eval_main
    diffode eval experiment=eval_gmm
    diffode eval sweep.solvers=[heun,dpmpp_2m] sweep.grids=[edm,logsnr] sweep.nfes=[4,6,8]
    diffode eval -m sweep.solvers=heun,dpmpp_2m logger=wandb        # Hydra multirun, one W&B group

Writes into the run dir: results.csv (one row per cell, atomic, resumable), report.md,
<metric>_vs_nfe.png, samples/*.png and summary.json; the table is printed at the end.
"""
from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]


def _resolve_path(p: str) -> Path:
    """Relative paths: the launch directory first, then the repository root."""
    path = Path(p)
    if path.is_absolute():
        return path
    try:
        from hydra.utils import get_original_cwd

        base = Path(get_original_cwd())
    except (ValueError, ImportError):
        base = Path.cwd()
    return base / path if (base / path).exists() or not (REPO_ROOT / path).exists() else REPO_ROOT / path


def _output_dir(cfg) -> Path:
    if cfg.get("output_dir"):
        return _resolve_path(cfg.output_dir)
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def _train_checkpoint(cfg, path: Path, run_dir: Path) -> None:
    """The main job's fallback: train the model with the project's own training entry, then
    put its exported EMA checkpoint (denoiser_ema.ckpt) at `path`."""
    import shutil

    cmd = [sys.executable, "-m", "diffode.train", f"experiment={cfg.model.train_experiment}", f"output_dir={run_dir}"]
    log.info("checkpoint %s missing: training it with %s", path, " ".join(cmd))
    subprocess.run(cmd, check=True, cwd=REPO_ROOT)
    exported = run_dir / "denoiser_ema.ckpt"
    if not exported.is_file():
        raise FileNotFoundError(f"training finished but wrote no {exported}")
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(exported, path)


def logger_kind(cfg) -> str:
    lg = cfg.get("logger")
    if lg is None:
        return "csv"
    if isinstance(lg, str):
        return lg
    text = str(lg.get("_target_", "")) + str(lg.get("name", ""))
    return "wandb" if "wandb" in text.lower() else "csv"


def settings_hash(cfg) -> str:
    """Identity of what the numbers mean (not of how they were computed: batch size, threads)."""
    keys = dict(model=cfg.model, n_samples=cfg.n_samples, seed=cfg.seed, afs=cfg.afs,
                denoise_to_zero=cfg.denoise_to_zero, metric=cfg.metric, fid=cfg.fid, gmm=cfg.gmm_metrics,
                solver_options=cfg.sweep.get("solver_options"), grid_options=cfg.sweep.get("grid_options"))
    blob = json.dumps(OmegaConf.to_container(OmegaConf.create(keys), resolve=True), sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def evaluate(cfg: DictConfig, on_cell_done=None) -> dict:
    """Run (or resume) the sweep described by cfg; returns rows, paths and the summary."""
    from diffode.evaluation.models import initial_noise, load_model, make_metrics
    from diffode.evaluation.report import markdown_table, write_report
    from diffode.evaluation.results import ResultsTable
    from diffode.evaluation.sweep import build_cells, run_sweep, validate_cells

    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    out_dir = _output_dir(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.model.source != "gmm":
        path = _resolve_path(cfg.model.path)
        if not path.is_file() and cfg.model.source == "checkpoint" and cfg.model.train_if_missing:
            _train_checkpoint(cfg, path, out_dir / "train")
        cfg = OmegaConf.merge(cfg, {"model": {"path": str(path)}})

    # Everything that can be wrong with the config fails here, before any sampling.
    cells = build_cells(cfg)
    model = load_model(cfg.model)
    unreachable = validate_cells(cells, model, cfg)
    n = int(cfg.n_samples)
    seeds = range(int(cfg.seed), int(cfg.seed) + n)
    seeds_label = f"{seeds.start}-{seeds.stop - 1}"
    device = _device(cfg.get("device")) if cfg.model.source != "gmm" else torch.device("cpu")  # the mixture is tiny
    model.denoiser = model.denoiser.to(device) if hasattr(model.denoiser, "to") else model.denoiser
    x_T = initial_noise(model.shape, seeds, model.sigma_max).to(device)  # drawn on CPU: same noise on any device
    metrics = make_metrics(model, cfg, x_T)
    names = [metrics.primary] + [m for m in ("fid", "confident", "rmse", "sw") if m != metrics.primary]

    table = ResultsTable(out_dir / "results.csv", settings_hash(cfg))
    log.info("sweep: %d cells (%d unreachable), %d samples each, output %s", len(cells), len(unreachable), n, out_dir)
    rows = run_sweep(cells, model, metrics, x_T, table, cfg, out_dir, unreachable, on_cell_done, seeds_label)

    summary = dict(model=cfg.model.source, dataset=model.dataset, n_samples=n, seeds=seeds_label,
                   sigma_min=model.sigma_min, sigma_max=model.sigma_max, **metrics.summary())
    command = "diffode eval " + " ".join(_overrides())
    report = write_report(rows, names, out_dir, cfg.title, summary, command.strip())
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"\n{cfg.title} ({n} samples per cell; {out_dir})\n")
    print(markdown_table(rows, metrics.primary))
    result = dict(rows=rows, out_dir=str(out_dir), csv=str(table.path), report=str(report), summary=summary)
    if logger_kind(cfg) == "wandb":
        from diffode.evaluation.wandb_log import log_sweep

        wcfg = OmegaConf.merge(cfg.wandb, _wandb_overrides(cfg.get("logger")))
        config = OmegaConf.to_container(cfg, resolve=True)
        result["wandb"] = log_sweep(rows, names, wcfg, out_dir, config, summary)
    return result


def _device(name) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _wandb_overrides(lg) -> dict:
    """Settings a logger=wandb config (Lightning WandbLogger kwargs) may carry."""
    if lg is None or isinstance(lg, str):
        return {}
    out = {k: lg[k] for k in ("project", "entity", "group", "tags", "mode") if lg.get(k) is not None}
    offline = lg.get("offline")
    if offline is True or offline is False:  # 'auto' (or absent): offline unless credentials
        out["mode"] = "offline" if offline else "online"
    return out


def _overrides() -> list[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []


# The absolute form of "../conf": a relative config_path is resolved against the calling module,
# which breaks when the `diffode` console script imports this module instead of running it as __main__.
@hydra.main(config_path=str(REPO_ROOT / "conf"), config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
