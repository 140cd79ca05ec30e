"""The evaluation runner: `evaluate(cfg)` runs (or resumes) the sweep a composed `conf/eval.yaml` describes, for
one model: FID (or the exact mixture metrics) and the solver error vs NFE of solvers x grids and learned samplers.
`diffode eval` (diffode/cli/evaluate.py) is its thin Hydra entry, as `diffode train` is the method runner's.

Writes into the run dir: results.csv (one row per cell, atomic, resumable), report.md,
<metric>_vs_nfe.png (one panel per family of cells), samples/*.png, contact_sheet.png and
summary.json; the table is printed at the end. Every check runs before any sampling, and a bad config
raises ConfigError (one paragraph naming the fix).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from diffode.config import ConfigError, type_errors

log = logging.getLogger(__name__)


def output_dir(cfg) -> Path:
    """cfg.output_dir (relative to the launch directory), else Hydra's run dir."""
    if cfg.get("output_dir"):
        from diffode.evaluation.sweep import resolve_path

        return resolve_path(cfg.output_dir)
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def _choices() -> dict:
    try:
        from hydra.core.hydra_config import HydraConfig

        return dict(HydraConfig.get().runtime.choices)
    except ValueError:
        return {}


def task_overrides() -> list[str]:
    """The command line's overrides of the running Hydra job (none outside one)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []


def logger_kind(cfg) -> str:
    lg = cfg.get("logger")
    if lg is None:
        return "csv"
    if isinstance(lg, str):
        return lg
    text = str(lg.get("_target_", "")) + str(lg.get("name", ""))
    return "wandb" if "wandb" in text.lower() else "csv"


def settings_hash(cfg, condition: str = "none") -> str:
    """Identity of what the numbers mean (not of how they were computed: batch size, threads). The condition
    enters only when there is one, so an unconditional sweep keeps the hash it always had (and resumes)."""
    keys = dict(source=cfg.source, n_samples=cfg.n_samples, seed=cfg.seed, afs=cfg.afs,
                denoise_to_zero=cfg.denoise_to_zero, metric=cfg.metric, fid=cfg.fid, gmm=cfg.gmm_metrics,
                reference=_reference_identity(cfg.get("reference")),
                solver_options=cfg.sweep.get("solver_options"), grid_options=cfg.sweep.get("grid_options"))
    if condition != "none":
        keys["condition"] = condition
    g = cfg.get("guidance") or {}
    if g.get("interval") is not None or g.get("threshold") is not None:  # the scale is each row's own column
        keys["guidance"] = {"interval": g.get("interval"), "threshold": g.get("threshold")}
    if cfg.metric in ("nll", "reconstruction"):  # the data metrics' settings (not in older tables' hash)
        keys.update(data_points=cfg.get("data_points"), nll=cfg.get("nll") if cfg.metric == "nll" else None)
    from diffode.cache import key_digest

    return key_digest(OmegaConf.to_container(OmegaConf.create(keys), resolve=True), length=12)


def _reference_identity(rcfg):
    """The reference settings that change the numbers (reference.row only adds a row: not part of the hash)."""
    if rcfg is None:
        return None
    return {k: v for k, v in OmegaConf.to_container(rcfg, resolve=True).items() if k != "row"}


def evaluate(cfg: DictConfig, on_cell_done=None, choices: dict | None = None, command: str | None = None) -> dict:
    """Run (or resume) the sweep described by cfg; returns rows, paths and the summary. `command` (for the report)
    defaults to the running Hydra job's."""
    from diffode.cache import sweep_stale, write_text
    from diffode.evaluation.families import families
    from diffode.evaluation.metrics import check_metrics, make_metrics
    from diffode.evaluation.report import markdown_table, write_report
    from diffode.evaluation.results import ResultsTable
    from diffode.core.conditioning import to_device
    from diffode.evaluation.sweep import build_cells, guided_models, run_sweep, validate_cells
    from diffode.extras import config_errors as extras_missing
    from diffode.models import initial_noise, load_model

    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    out_dir = output_dir(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    sweep_stale(out_dir)  # temp files of an earlier run of this dir that was killed

    # Everything that can be wrong with the config fails here, before any sampling.
    try:
        missing = extras_missing(cfg) + type_errors(cfg, "eval", choices)
        if missing:
            raise ValueError(" ".join(missing))
        if not all(isinstance(v, int) for v in (cfg.n_samples, cfg.batch_size)):
            raise ValueError(f"n_samples={cfg.n_samples!r} and batch_size={cfg.batch_size!r} must be whole numbers, "
                             "e.g. n_samples=1000 batch_size=500.")
        if int(cfg.n_samples) < 2 or int(cfg.batch_size) < 1:
            raise ValueError(f"n_samples={cfg.n_samples} and batch_size={cfg.batch_size}: need n_samples >= 2 "
                             "(FID needs a covariance) and batch_size >= 1.")
        cells = build_cells(cfg, _choices() if choices is None else choices)
        model = load_model(cfg.source)
        guided = guided_models(cells, model, cfg)  # {scale: the model guided at it}; refuses bad guidance
        cells, unreachable = validate_cells(cells, model, cfg)
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
    if model.decoder is not None:
        model.decoder.to(device)
    x_T = initial_noise(model.shape, seeds, model.sigma_max).to(device)  # drawn on CPU: same noise on any device
    # a conditional model samples one label (or condition) per seed (uniform; the same in every cell)
    labels = to_device(model.labels(seeds), device)
    condition = model.describe_condition()
    metrics = make_metrics(model, cfg, x_T, labels, guided)
    names = [metrics.primary] + [m for m in metrics.names if m != metrics.primary]

    table = ResultsTable(out_dir / "results.csv", settings_hash(cfg, condition))
    log.info("sweep: %d cells (%d unreachable), %d samples each, output %s", len(cells), len(unreachable), n, out_dir)
    rows = run_sweep(cells, model, metrics, x_T, table, cfg, out_dir, unreachable, on_cell_done, seeds_label,
                     labels, condition)

    summary = dict(source=cfg.source.kind, model=model.label, dataset=model.dataset, n_samples=n, seeds=seeds_label,
                   condition=condition, sigma_min=model.sigma_min, sigma_max=model.sigma_max,
                   **guidance_summary(cfg, guided), **metrics.summary())
    command = command or "diffode eval " + " ".join(task_overrides())
    report = write_report(rows, names, out_dir, cfg.title, summary, command.strip(),
                          families(cells, cfg.sweep.get("usual_grid")))
    write_text(out_dir / "summary.json", json.dumps(summary, indent=2, default=str))
    print(f"\n{cfg.title} ({n} samples per cell; {out_dir})\n")
    for w in sorted({r.get("guidance") for r in rows}, key=lambda w: -1 if w is None else w):
        if w is not None:
            print(f"guidance scale w = {w:g}\n")
        print(markdown_table([r for r in rows if r.get("guidance") == w], metrics.primary))
    result = dict(rows=rows, out_dir=str(out_dir), csv=str(table.path), report=str(report), summary=summary)
    if logger_kind(cfg) == "wandb":
        from diffode.evaluation.wandb_log import log_sweep

        wcfg = OmegaConf.merge(cfg.wandb, _wandb_overrides(cfg.get("logger")))
        config = OmegaConf.to_container(cfg, resolve=True)
        result["wandb"] = log_sweep(rows, names, wcfg, out_dir, config, summary)
    return result


def guidance_summary(cfg, guided: dict) -> dict:
    """What summary.json says of the guidance (nothing for an unguided sweep)."""
    if list(guided) == [None]:
        return {}
    g = cfg.guidance
    return {"guidance_scales": [w for w in guided], "guidance_interval": g.get("interval"),
            "guidance_threshold": g.get("threshold"),
            "guidance_convention": "D = D_u + w (D_c - D_u): w = 1 conditional, w = 0 unconditional (w = 1 + Ho & "
                                   "Salimans' w); a guided call is one forward of the stacked 2B batch"}


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
    return {k: lg[k] for k in ("project", "entity", "group", "tags", "mode") if lg.get(k) is not None}
