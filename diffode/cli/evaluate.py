"""`diffode eval [overrides]`: FID (or exact GMM metrics) and solver error vs NFE for one model.

    diffode main                                    # = diffode eval experiment=eval_main
    diffode eval solver=heun grid=edm nfe=6         # one cell
    diffode eval -m solver=heun,dpmpp_3m nfe=4,6    # Hydra multirun: one job per cell
    diffode eval source=gmm2d sweep.solvers=[heun,dpmpp_2m] sweep.grids=[edm,logsnr] sweep.nfes=[4,6,8]
    diffode eval sweep.learned=[<run dir>/artifacts/ld3]   # adds the row <solver>/ld3

Writes into the run dir: results.csv (one row per cell, atomic, resumable), report.md,
<metric>_vs_nfe.png, samples/*.png and summary.json; the table is printed at the end.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError, hydra_entry

log = logging.getLogger(__name__)


def _output_dir(cfg) -> Path:
    if cfg.get("output_dir"):
        from diffode.evaluation.sweep import resolve_path

        return resolve_path(cfg.output_dir)
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def _train_checkpoint(cfg, path: Path, run_dir: Path) -> None:
    """The main job's fallback when its checkpoint is missing: train it in this process with the
    project's own runner (conf/experiment/<source.train_experiment>), then copy its EMA export to `path`."""
    import shutil

    from hydra import compose

    from .train import train

    exp = cfg.source.get("train_experiment") or "digits"
    log.info("checkpoint %s missing: training it (diffode train experiment=%s)", path, exp)
    tcfg = compose("train", overrides=[f"experiment={exp}", f"output_dir={run_dir}"])
    exported = train(tcfg).get("exported", {}).get("ema_checkpoint")
    if not exported or not Path(exported).is_file():
        raise FileNotFoundError(f"training finished but wrote no denoiser_ema.ckpt under {run_dir}")
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(exported, path)


def _choices() -> dict:
    try:
        from hydra.core.hydra_config import HydraConfig

        return dict(HydraConfig.get().runtime.choices)
    except ValueError:
        return {}


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
    keys = dict(source=cfg.source, n_samples=cfg.n_samples, seed=cfg.seed, afs=cfg.afs,
                denoise_to_zero=cfg.denoise_to_zero, metric=cfg.metric, fid=cfg.fid, gmm=cfg.gmm_metrics,
                reference=cfg.get("reference"),
                solver_options=cfg.sweep.get("solver_options"), grid_options=cfg.sweep.get("grid_options"))
    if cfg.metric in ("nll", "reconstruction"):  # the data metrics' settings (not in older tables' hash)
        keys.update(data_points=cfg.get("data_points"), nll=cfg.get("nll") if cfg.metric == "nll" else None)
    blob = json.dumps(OmegaConf.to_container(OmegaConf.create(keys), resolve=True), sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def evaluate(cfg: DictConfig, on_cell_done=None, choices: dict | None = None) -> dict:
    """Run (or resume) the sweep described by cfg; returns rows, paths and the summary."""
    from diffode.evaluation.metrics import check_metrics, make_metrics
    from diffode.evaluation.report import markdown_table, write_report
    from diffode.evaluation.results import ResultsTable
    from diffode.evaluation.sweep import build_cells, run_sweep, validate_cells
    from diffode.models import checkpoint_path, initial_noise, load_model

    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    out_dir = _output_dir(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.source.kind == "checkpoint":
        path = checkpoint_path(cfg.source)
        if not path.is_file() and cfg.source.get("train_if_missing"):
            _train_checkpoint(cfg, path, out_dir / "train")

    # Everything that can be wrong with the config fails here, before any sampling.
    try:
        if not all(isinstance(v, int) for v in (cfg.n_samples, cfg.batch_size)):
            raise ValueError(f"n_samples={cfg.n_samples!r} and batch_size={cfg.batch_size!r} must be whole numbers, "
                             "e.g. n_samples=1000 batch_size=500.")
        if int(cfg.n_samples) < 2 or int(cfg.batch_size) < 1:
            raise ValueError(f"n_samples={cfg.n_samples} and batch_size={cfg.batch_size}: need n_samples >= 2 "
                             "(FID needs a covariance) and batch_size >= 1.")
        cells = build_cells(cfg, _choices() if choices is None else choices)
        model = load_model(cfg.source)
        unreachable = validate_cells(cells, model, cfg)
        check_metrics(model, cfg, cells)
        device = _device(cfg.get("device"))  # refused here when it does not exist
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from None
    n = int(cfg.n_samples)
    seeds = range(int(cfg.seed), int(cfg.seed) + n)
    seeds_label = f"{seeds.start}-{seeds.stop - 1}"
    if model.gmm is not None:
        device = torch.device("cpu")  # the mixture is tiny
    model.denoiser = model.denoiser.to(device)
    x_T = initial_noise(model.shape, seeds, model.sigma_max).to(device)  # drawn on CPU: same noise on any device
    metrics = make_metrics(model, cfg, x_T)
    names = [metrics.primary] + [m for m in metrics.names if m != metrics.primary]

    table = ResultsTable(out_dir / "results.csv", settings_hash(cfg))
    log.info("sweep: %d cells (%d unreachable), %d samples each, output %s", len(cells), len(unreachable), n, out_dir)
    rows = run_sweep(cells, model, metrics, x_T, table, cfg, out_dir, unreachable, on_cell_done, seeds_label)

    summary = dict(source=cfg.source.kind, model=model.label, dataset=model.dataset, n_samples=n, seeds=seeds_label,
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
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device={name!r} is not a torch device; use device=cpu, cuda, cuda:<i> or auto.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name} but torch sees no CUDA device here; use device=cpu or device=auto.")
    return device


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


@hydra_entry(config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
