"""A sweep: solver x grid x NFE cells, every cell sampled from the same initial noise.

Cells come from config names (conf/solver/<name>.yaml: name + options; conf/grid/<name>.yaml:
name + options). Two pairings:
- product: every solver on every grid;
- usual:   every solver on its usual grid (cfg.usual_grid, as diff-sampler runs them), plus
           every grid with one solver (cfg.grid_solver).
Learned grids (sweep.learned_grids: LD3 artifact files) add one cell each, at the solver and NFE
the file was trained for, labelled <solver>/<method> (e.g. ipndm/ld3).
The whole sweep is validated (check_sampling_config) before any compute.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf

log = logging.getLogger(__name__)

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


@dataclass(frozen=True)
class Cell:
    solver: str  # config name (conf/solver/<solver>.yaml)
    grid: str  # config name (conf/grid/<grid>.yaml)
    nfe: int
    solver_name: str = ""
    grid_name: str = ""
    solver_options: dict = field(default_factory=dict, hash=False, compare=False)
    grid_options: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def key(self):
        return (self.solver, self.grid, self.nfe)

    @property
    def label(self):
        return f"{self.solver}/{self.grid}"


def named_config(group: str, name: str, conf_dir: Path = CONF_DIR) -> tuple[str, dict]:
    """(registry name, options) from conf/<group>/<name>.yaml; a bare registry name otherwise."""
    path = conf_dir / group / f"{name}.yaml"
    if not path.is_file():
        return name, {}
    c = OmegaConf.to_container(OmegaConf.load(path), resolve=True) or {}
    return str(c.get("name", name)), dict(c.get("options") or {})


def _as_list(v) -> list:
    if v is None:
        return []
    if isinstance(v, (str, int)):
        return [v]
    return list(v)


def _plain(c) -> dict:
    return OmegaConf.to_container(c, resolve=True) if OmegaConf.is_config(c) else dict(c or {})


def build_cells(cfg, conf_dir: Path = CONF_DIR) -> list[Cell]:
    s = cfg.sweep
    solvers, grids, nfes = _as_list(s.solvers), _as_list(s.grids), [int(n) for n in _as_list(s.nfes)]
    if not nfes:
        raise ValueError("sweep.nfes is empty; set e.g. sweep.nfes=[3,4,5,6,7,8,9,10]")
    if s.pairing == "product":
        pairs = [(a, g) for a in solvers for g in grids]
    elif s.pairing == "usual":
        usual = dict(s.usual_grid or {})
        missing = [a for a in solvers if a not in usual]
        if missing:
            raise ValueError(f"sweep.pairing=usual but sweep.usual_grid has no entry for {missing}; add e.g. "
                             f"sweep.usual_grid.{missing[0]}=logsnr or use sweep.pairing=product")
        pairs = [(a, usual[a]) for a in solvers] + [(s.grid_solver, g) for g in grids]
    else:
        raise ValueError(f"unknown sweep.pairing {s.pairing!r}; choose product or usual")
    if not pairs:
        raise ValueError("the sweep has no (solver, grid) pairs; set sweep.solvers and sweep.grids")
    extra_s, extra_g = _plain(s.get("solver_options")), _plain(s.get("grid_options"))
    cells, seen = [], set()
    for a, g in pairs:
        sname, sopts = named_config("solver", a, conf_dir)
        gname, gopts = named_config("grid", g, conf_dir)
        sopts, gopts = {**sopts, **extra_s.get(a, {})}, {**gopts, **extra_g.get(g, {})}
        for n in nfes:
            if (a, g, n) not in seen:
                seen.add((a, g, n))
                cells.append(Cell(a, g, n, sname, gname, sopts, gopts))
    for p in _as_list(s.get("learned_grids")):
        cell = learned_grid_cell(p, conf_dir)
        if cell.key in seen:
            raise ValueError(f"sweep.learned_grids: two cells {cell.label} nfe={cell.nfe}; keep one file per solver and NFE")
        seen.add(cell.key)
        cells.append(cell)
    return cells


def learned_grid_cell(path, conf_dir: Path = CONF_DIR) -> Cell:
    """The cell of a learned-grid file (LD3 artifact): its solver (with the file's options) at its NFE."""
    path = Path(path)
    if not path.is_file() and (conf_dir.parent / path).is_file():
        path = conf_dir.parent / path  # relative to the repository root
    if not path.is_file():
        raise ValueError(f"sweep.learned_grids: no file {str(path)!r}; give the ld3_grid.json an LD3 run wrote")
    meta = json.loads(path.read_text())
    sname, sopts = named_config("solver", meta["solver"], conf_dir)
    sopts = {**sopts, **(meta.get("solver_options") or {})}
    return Cell(meta["solver"], str(meta.get("method", "learned")), int(meta["nfe"]), sname, "from_file", sopts,
                {"path": str(path)})


def validate_cells(cells: list[Cell], model, cfg) -> dict:
    """Check every cell before compute. Returns {cell key: reason} of unreachable NFEs when
    sweep.skip_unreachable is set; raises ValueError listing every problem otherwise."""
    from diffode.core.sample import check_sampling_config, reachable_nfes

    flags = dict(afs=bool(cfg.afs), denoise_to_zero=bool(cfg.denoise_to_zero))
    unreachable, errors = {}, []
    for c in cells:
        try:
            ok = reachable_nfes(c.solver_name, max_nfe=max(c.nfe, 1), **flags, **c.solver_options)
            if c.nfe not in ok:
                near = reachable_nfes(c.solver_name, max_nfe=max(2 * c.nfe, 12), **flags, **c.solver_options)
                why = f"{c.solver_name} cannot make exactly {c.nfe} calls (reachable: {near})"
                if cfg.sweep.skip_unreachable:
                    unreachable[c.key] = why
                    continue
                errors.append(f"{c.label} nfe={c.nfe}: {why}; drop it from sweep.nfes or set sweep.skip_unreachable=true")
                continue
            check_sampling_config(c.solver_name, c.nfe, c.grid_name, grid_options=c.grid_options,
                                  schedule=model.schedule, sigma_min=model.sigma_min, sigma_max=model.sigma_max,
                                  **flags, **c.solver_options)
        except ValueError as e:
            errors.append(f"{c.label} nfe={c.nfe}: {e}")
    if errors:
        raise ValueError("invalid sweep (nothing was computed):\n  " + "\n  ".join(errors))
    return unreachable


def sample_cell(cell: Cell, model, x_T: torch.Tensor, cfg) -> torch.Tensor:
    from diffode.core.sample import sample

    out = []
    for xb in x_T.split(int(cfg.batch_size)):
        with torch.no_grad():
            out.append(sample(model.denoiser, xb, solver=cell.solver_name, nfe=cell.nfe, grid=cell.grid_name,
                              schedule=model.schedule, grid_options=cell.grid_options, sigma_min=model.sigma_min,
                              sigma_max=model.sigma_max, afs=bool(cfg.afs), denoise_to_zero=bool(cfg.denoise_to_zero),
                              **cell.solver_options))
    return torch.cat(out)


def save_samples_png(samples: torch.Tensor, path: Path, n: int = 64, title: str = "") -> None:
    """Images: a grid of the first n samples; vectors: a scatter of the first two coordinates."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if samples.ndim == 4:
        from torchvision.utils import save_image

        save_image((samples[:n].float().clamp(-1, 1) + 1) / 2, path, nrow=int(math.ceil(math.sqrt(min(n, len(samples))))))
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = samples.reshape(len(samples), -1).float()
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.5)
    ax.set_title(title, fontsize=9)
    ax.set_aspect("equal")
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


def run_sweep(cells, model, metrics, x_T, table, cfg, out_dir: Path, unreachable=None, on_cell_done=None,
              seeds_label: str = "") -> list[dict]:
    """Evaluate every cell not already final in `table`; the table is rewritten after each cell."""
    from tqdm import tqdm

    unreachable = unreachable or {}
    done = table.done()
    todo = [c for c in cells if c.key not in done]
    if len(todo) < len(cells):
        log.info("resuming: %d of %d cells already in %s", len(cells) - len(todo), len(cells), table.path)
    n = x_T.shape[0]
    for k, c in enumerate(tqdm(todo, desc="sweep", unit="cell", disable=not cfg.progress)):
        row = dict(solver=c.solver, grid=c.grid, nfe=c.nfe, n_samples=n, seeds=seeds_label)
        if c.key in unreachable:
            table.add({**row, "status": "unreachable", "n_samples": 0, "message": unreachable[c.key]})
        else:
            t0 = time.perf_counter()
            try:
                samples = sample_cell(c, model, x_T, cfg)
                bad = int((~torch.isfinite(samples)).sum())
                err = f"{bad} NaN/Inf values in the samples" if bad else ""
            except FloatingPointError as e:  # sample() found NaN/Inf mid-trajectory
                samples, err = None, str(e)
            wall = time.perf_counter() - t0
            row.update(wall_time=wall, samples_per_s=n / wall)
            if err:
                # A diverged cell is reported as failed; its numbers are never averaged into a metric.
                table.add({**row, "status": "failed", "message": err[:300]})
                log.warning("cell %s nfe=%d failed: %s", c.label, c.nfe, err)
            else:
                values = metrics(samples, x_T)
                if int(cfg.save_images) > 0:
                    save_samples_png(samples, out_dir / "samples" / f"{c.solver}__{c.grid}__nfe{c.nfe:02d}.png",
                                     int(cfg.save_images), f"{c.label} NFE={c.nfe}")
                table.add({**row, **values, "status": "ok", "message": ""})
        if on_cell_done is not None:
            on_cell_done(k, c)
    return table.rows
