"""A sweep: cells that are samplers, every cell sampled from the same initial noise.

A cell is a training-free solver x grid x NFE (config names: conf/solver/<name>.yaml and
conf/grid/<name>.yaml), or a learned sampler (an artifact of diffode.artifacts: an LD3 or GITS grid,
an AMED predictor, a distilled student) at its own NFE, labelled as the artifact says (<solver>/ld3,
ipndm/amed, pd/4, ...). Pairings of the training-free cells:
- product: every solver on every grid;
- usual:   every solver on its usual grid (sweep.usual_grid, as diff-sampler runs them), plus
           every grid with one solver (sweep.grid_solver).
`diffode eval solver=heun grid=edm nfe=6` is the one cell heun/edm at NFE 6 (solver= / grid= / nfe=
replace the sweep's lists). The whole sweep is validated before any compute.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf

from diffode.config import grid_config, solver_config
from diffode.evaluation.results import samples_png

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cell:
    solver: str  # config name (conf/solver/<solver>.yaml), or the first part of a learned sampler's label
    grid: str  # config name (conf/grid/<grid>.yaml), or the second part of the label (ld3, amed, 4, ...)
    nfe: int
    solver_name: str = ""  # registry name
    grid_name: str = ""  # grid kind
    solver_options: dict = field(default_factory=dict, hash=False, compare=False)
    grid_options: dict = field(default_factory=dict, hash=False, compare=False)
    sampler: object = field(default=None, hash=False, compare=False)  # a LearnedSampler, for artifact cells
    guidance: float | None = None  # the guidance scale w of a conditional model (None: unguided)
    plan: object = field(default=None, hash=False, compare=False)  # its diffode.core.sample.Plan (validate_cells)

    @property
    def key(self):
        return (self.solver, self.grid, self.nfe) + (() if self.guidance is None else (self.guidance,))

    @property
    def label(self):
        return f"{self.solver}/{self.grid}"


def _as_list(v) -> list:
    if v is None:
        return []
    if isinstance(v, (str, int)):
        return [v]
    return list(v)


def _plain(c) -> dict:
    return OmegaConf.to_container(c, resolve=True) if OmegaConf.is_config(c) else dict(c or {})


def _one(cfg, group: str, choice: str | None):
    """A solver= / grid= group choice as (config name, registry name, options), or None."""
    node = cfg.get(group)
    if node is None or choice in (None, "null"):
        return None
    node = _plain(node)
    return choice, str(node.get("name", choice)), dict(node.get("options") or {})


def build_cells(cfg, choices: dict | None = None) -> list[Cell]:
    """The sweep's cells. `choices`: Hydra's runtime choices of the solver / grid groups, when set."""
    choices = choices or {}
    s = cfg.sweep
    one_solver, one_grid = _one(cfg, "solver", choices.get("solver")), _one(cfg, "grid", choices.get("grid"))
    given = _as_list(cfg.get("nfe") if cfg.get("nfe") is not None else s.nfes)
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in given):
        key = "nfe" if cfg.get("nfe") is not None else "sweep.nfes"
        raise ValueError(f"{key}={given if len(given) > 1 else given[0]!r} must be whole numbers of denoiser calls, "
                         "e.g. nfe=6 or sweep.nfes=[4,6,8].")
    nfes = [int(n) for n in given]
    if not nfes:
        raise ValueError("sweep.nfes is empty; set e.g. sweep.nfes=[3,4,5,6,7,8,9,10] (or nfe=6 for one cell)")
    solvers = [one_solver[0]] if one_solver else _as_list(s.solvers)
    grids = [one_grid[0]] if one_grid else _as_list(s.grids)
    pairing = "product" if (one_solver or one_grid) else s.pairing
    if pairing == "product":
        pairs = [(a, g) for a in solvers for g in grids]
    elif pairing == "usual":
        usual = dict(s.usual_grid or {})
        missing = [a for a in solvers if a not in usual]
        if missing:
            raise ValueError(f"sweep.pairing=usual but sweep.usual_grid has no entry for {missing}; add e.g. "
                             f"sweep.usual_grid.{missing[0]}=logsnr or use sweep.pairing=product")
        pairs = [(a, usual[a]) for a in solvers] + [(s.grid_solver, g) for g in grids]
    else:
        raise ValueError(f"unknown sweep.pairing {s.pairing!r}; choose product or usual")
    learned = _as_list(s.get("learned")) + _as_list(s.get("learned_grids"))  # learned_grids: the older name
    if not pairs and not learned:
        raise ValueError("the sweep has no cells; set sweep.solvers and sweep.grids, solver= and grid=, or sweep.learned")
    extra_s, extra_g = _plain(s.get("solver_options")), _plain(s.get("grid_options"))
    scales = run_scales(cfg)
    cells, seen = [], set()
    for w in scales:  # scale by scale: a long sweep over scales finishes one scale's cells (and reference) at a time
        for a, g in pairs:
            sname, sopts = one_solver[1:] if one_solver and a == one_solver[0] else solver_config(a)
            gname, gopts = one_grid[1:] if one_grid and g == one_grid[0] else grid_config(g)
            sopts, gopts = {**sopts, **extra_s.get(a, {})}, {**gopts, **extra_g.get(g, {})}
            for n in nfes:
                cell = Cell(a, g, n, sname, gname, sopts, gopts, guidance=w)
                if cell.key not in seen:
                    seen.add(cell.key)
                    cells.append(cell)
    for p in [a for entry in learned for a in expand_artifacts(entry)]:
        cell = learned_cell(p, scales)
        if cell.key in seen:
            raise ValueError(f"sweep.learned: two cells {cell.label} nfe={cell.nfe}; keep one artifact per label and NFE")
        seen.add(cell.key)
        cells.append(cell)
    return cells


def run_scales(cfg) -> list:
    """The guidance scales of a sweep (guidance.scale: null, a number or a list): one set of cells each."""
    from diffode.core.guidance import scales_of

    return list(dict.fromkeys(scales_of((cfg.get("guidance") or {}).get("scale"))))


def cell_model(cell: Cell, model, cfg):
    """The model a cell samples: `model` guided at the cell's scale, with the sweep's interval and threshold."""
    from diffode.core.guidance import Guidance, from_config

    run = from_config(cfg.get("guidance"))[0]
    return model.with_guidance(Guidance(cell.guidance, run.interval, run.threshold))


def guided_models(cells: list[Cell], model, cfg) -> dict:
    """{guidance scale: the model guided at it} for the scales of the sweep's cells; ValueError naming the fix when
    the guidance cannot apply (an unconditional model, a negative scale, an empty interval...)."""
    out, errors = {}, []
    for c in cells:
        if c.guidance not in out:
            try:
                out[c.guidance] = cell_model(c, model, cfg)
            except ValueError as e:
                errors.append(str(e))
    if errors:
        raise ValueError(" ".join(dict.fromkeys(errors)))
    return out


def resolve_path(p) -> Path:
    """A path as given (absolute, or relative to the launch directory); `asset:<rel>` names a file
    shipped in diffode/assets (the main job's learned samplers for the shipped digits UNet)."""
    from diffode.config import shipped_path

    if shipped_path(p) is not None:
        return shipped_path(p)
    path = Path(str(p)).expanduser()
    if path.is_absolute():
        return path
    try:
        from hydra.utils import get_original_cwd

        return Path(get_original_cwd()) / path
    except (ValueError, ImportError):
        return Path.cwd() / path


def expand_artifacts(entry) -> list[Path]:
    """An artifact directory, or a folder holding artifacts at any depth (sorted): a folder of them, a training
    run dir (<run dir>/artifacts/<name>) or a multirun's sweep dir (<sweep dir>/<job>/artifacts/<name>)."""
    path = resolve_path(entry)
    if path.is_dir() and not (path / "manifest.json").is_file():
        found = sorted(p.parent for p in path.rglob("manifest.json"))
        if found:
            return found
    return [path]


def learned_cell(path, scales=(None,)) -> Cell:
    """The cell of an artifact: its label (<solver>/<kind>, pd/4, ...) at its own NFE, at the guidance scale it
    was learned for when the sweep has that scale (else at the sweep's first, which validation then refuses)."""
    from diffode.artifacts import load_sampler

    sampler = load_sampler(resolve_path(path))
    first, _, second = sampler.label.partition("/")
    w = sampler.guidance.scale  # None: learned unguided, the w = 1 cells of a sweep over scales
    w = w if w in scales else 1.0 if w is None and 1.0 in scales else scales[0]
    return Cell(first, second or sampler.kind, sampler.nfe, sampler.registry_solver, "artifact",
                dict(sampler.manifest.get("solver_options") or {}), {"path": str(sampler.path)}, sampler, guidance=w)


def validate_cells(cells: list[Cell], model, cfg) -> tuple[list[Cell], dict]:
    """Check every cell before compute and plan it once for the model (Cell.plan, what every batch follows).
    Returns (the cells with their plans, {cell key: reason} of unreachable NFEs when sweep.skip_unreachable is
    set); raises ValueError listing every problem otherwise."""
    from dataclasses import replace

    from diffode.core.sample import reachable_nfes

    if cfg.afs not in (True, False, "auto"):
        raise ValueError(f"afs={cfg.afs!r}: choose afs=false, true or auto (the analytic first step only where a "
                         "cell's NFE needs it).")
    top = max([2 * c.nfe for c in cells] + [12])
    planned, unreachable = [], {}
    errors = {}  # (label, message) -> NFEs, so a problem is said once, not per NFE
    for c in cells:
        try:
            m = cell_model(c, model, cfg)
        except ValueError as e:
            errors.setdefault((c.label, str(e)), []).append(c.nfe)
            continue
        if c.sampler is not None:
            try:
                planned.append(replace(c, plan=c.sampler.check(m)))
            except ValueError as e:
                errors.setdefault((c.label, str(e)), []).append(c.nfe)
            continue
        try:
            flags = cell_flags(c, cfg)
            ok = reachable_nfes(c.solver_name, max_nfe=max(c.nfe, 1), **flags, **c.solver_options)
            if c.nfe not in ok:
                near = reachable_nfes(c.solver_name, max_nfe=top, **flags, **c.solver_options)
                if cfg.sweep.skip_unreachable:
                    unreachable[c.key] = f"{c.solver_name} cannot make exactly {c.nfe} calls (reachable: {near})"
                    planned.append(c)
                    continue
                why = (f"{c.solver_name} cannot make exactly that many calls (reachable: {near}); drop them from "
                       "sweep.nfes or set sweep.skip_unreachable=true")
                errors.setdefault((c.label, why), []).append(c.nfe)
                continue
            planned.append(replace(c, plan=m.plan(solver=c.solver_name, nfe=c.nfe, grid=c.grid_name,
                                                  grid_options=c.grid_options, **flags, **c.solver_options)))
        except ValueError as e:
            errors.setdefault((c.label, str(e)), []).append(c.nfe)
    if errors:
        lines = [f"{label} nfe={','.join(map(str, nfes))}: {msg}" for (label, msg), nfes in errors.items()]
        raise ValueError("invalid sweep (nothing was computed):\n  " + "\n  ".join(lines))
    return planned, unreachable


def cell_flags(cell: Cell, cfg) -> dict:
    """afs and denoise_to_zero of a training-free cell. afs=auto: the analytic first step exactly where the cell's
    NFE is out of reach without it (a solver of two calls per step at an odd NFE), as AMED's method.afs=auto, so
    one sweep holds DPM-Solver-2 at NFE 3, 4, 5, ... beside the one-call solvers without AFS."""
    from diffode.core.sample import reachable_nfes

    dz = bool(cfg.denoise_to_zero)
    afs = cfg.afs
    if afs == "auto":
        afs = cell.nfe not in reachable_nfes(cell.solver_name, cell.nfe, False, dz, **cell.solver_options)
    return dict(afs=bool(afs), denoise_to_zero=dz)


def sample_cell(cell: Cell, model, x_T: torch.Tensor, cfg, cond=None) -> tuple[torch.Tensor, dict]:
    """The cell's samples from x_T (one condition per row in `cond`, or None) along its plan (validate_cells),
    and its per-sample counts dict(nfe=denoiser calls, forwards=network passes). The model is guided at the cell's
    scale (cell_model). Stochastic samplers draw their noise from one generator per batch, seeded by (cfg.seed,
    batch index)."""
    model = cell_model(cell, model, cfg)
    if cell.sampler is None:
        return model.sample(x_T, int(cfg.batch_size), cond=cond, return_info=True, plan=cell.plan, seed=int(cfg.seed))
    from diffode.core.conditioning import take

    out, counts = [], {}
    cell.sampler.to(x_T.device)
    bs = int(cfg.batch_size)
    for k, lo in enumerate(range(0, x_T.shape[0], bs)):
        part = slice(lo, lo + bs)
        with torch.no_grad():  # stochastic samplers: one generator per batch, seeded by position
            g = torch.Generator(device=x_T.device).manual_seed(int(cfg.seed) * 1_000_003 + k)
            x, info = cell.sampler.sample(model, x_T[part], cond=take(cond, part), generator=g, return_info=True,
                                          plan=cell.plan)
        out.append(x)
        counts = {key: max(counts.get(key, 0), info[key]) for key in ("nfe", "forwards")}
    return torch.cat(out), counts


def measure_samples(metrics, cell: Cell, model, x_T: torch.Tensor, cfg, cond=None) -> tuple[dict, torch.Tensor]:
    """What a sample metric measures of a cell: sample it from x_T (guided at the cell's scale), refuse non-finite
    samples, decode latents to images (not an NFE; timed on its own), score them. Returns (values with the
    sampling's wall_time, forwards and a latent model's decode_time, the images)."""
    t0 = time.perf_counter()
    samples, counts = sample_cell(cell, model, x_T, cfg, cond)
    wall = time.perf_counter() - t0
    bad = int((~torch.isfinite(samples)).sum())
    if bad:
        raise FloatingPointError(f"{bad} NaN/Inf values in the samples")
    t1 = time.perf_counter()
    images = model.decode(samples)
    decode = {} if model.decoder is None else {"decode_time": time.perf_counter() - t1}
    values = metrics(images, x_T, labels=cond, guidance=cell.guidance, state=samples)
    return {**values, "wall_time": wall, "forwards": counts["forwards"], **decode}, images


def save_samples_png(samples: torch.Tensor, path: Path, n: int = 64, title: str = "") -> Path:
    """Images: a grid of the first n samples, nearest-neighbour upscaled to >= 512 px with `title` on
    it; vectors: a scatter of the first two coordinates."""
    from diffode.pictures import figure, save_grid

    if samples.ndim == 4:
        return save_grid(samples[:n], path, title)
    x = samples.reshape(len(samples), -1).float().cpu()
    fig = figure(figsize=(5, 5))
    ax = fig.add_subplot()
    ax.scatter(x[:, 0], x[:, 1], s=3, alpha=0.5)
    ax.set_title(title)
    ax.set_aspect("equal")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def run_sweep(cells, model, metrics, x_T, table, cfg, out_dir: Path, unreachable=None, on_cell_done=None,
              seeds_label: str = "", cond=None, condition: str = "none") -> list[dict]:
    """Evaluate every cell not already final in `table`; the table is rewritten after each cell. `cond`: one
    condition per sample (the same in every cell), described in each row by `condition`."""
    from tqdm import tqdm

    unreachable = unreachable or {}
    done = table.done()
    todo = [c for c in cells if c.key not in done]
    if len(todo) < len(cells):
        log.info("resuming: %d of %d cells already in %s", len(cells) - len(todo), len(cells), table.path)
    n = x_T.shape[0]
    for k, c in enumerate(tqdm(todo, desc="sweep", unit="cell", disable=not cfg.progress)):
        row = dict(solver=c.solver, grid=c.grid, nfe=c.nfe, n_samples=n, seeds=seeds_label, condition=condition)
        if c.guidance is not None:
            row["guidance"] = c.guidance
        if cfg.afs == "auto" and c.sampler is None:  # which cells took the analytic first step
            row["afs"] = cell_flags(c, cfg)["afs"]
        if c.key in unreachable:
            table.add({**row, "status": "unreachable", "n_samples": 0, "message": unreachable[c.key]})
        else:
            t0 = time.perf_counter()
            try:  # the metric measures the cell: by default it samples it from x_T and scores the samples
                values, samples = metrics.measure(c, model, x_T, cfg, cond)
                err = ""
            except FloatingPointError as e:  # NaN/Inf mid-trajectory or in the output
                values, samples, err = {}, None, str(e)
            wall = values.pop("wall_time", time.perf_counter() - t0)  # the sampling (or solving) time alone
            row.update(wall_time=wall, samples_per_s=int(values.get("n_samples", n)) / wall)
            if "forwards" in values:
                row["forwards"] = values.pop("forwards")
            if err:
                # A diverged cell is reported as failed; its numbers are never averaged into a metric.
                table.add({**row, "status": "failed", "message": err[:300]})
                log.warning("cell %s nfe=%d failed: %s", c.label, c.nfe, err)
            else:
                if samples is not None and int(cfg.save_images) > 0:
                    w = "" if c.guidance is None else f", w={c.guidance:g}"
                    save_samples_png(samples, samples_png(out_dir, row), int(cfg.save_images), f"{c.label}, NFE {c.nfe}{w}")
                table.add({**row, **values, "status": "ok", "message": ""})
        rcfg = cfg.get("reference")
        if rcfg is not None and rcfg.get("row") and getattr(metrics, "solve_ref", None):
            reference_rows(metrics, model, x_T, table, cfg, out_dir, seeds_label, cond, condition)
        if on_cell_done is not None:
            on_cell_done(k, c)
    return table.rows


def reference_rows(metrics, model, x_T, table, cfg, out_dir: Path, seeds_label: str, cond, condition: str) -> None:
    """reference.row: each reference solve (one per guidance scale) as a row of its own, scored like a cell (the
    converged column of the tables); its solver error is 0 by definition."""
    from diffode.evaluation.results import cell_key

    n = x_T.shape[0]
    for w, ref in metrics.solve_ref.items():
        if callable(ref):  # not made yet (a later scale of the sweep)
            continue
        row = dict(solver=ref.spec["solver"], grid=ref.spec["grid"], nfe=ref.spec["nfe"], n_samples=n,
                   seeds=seeds_label, condition=condition)
        if w is not None:
            row["guidance"] = w
        if cell_key(row) in table.done():
            continue
        images = model.decode(ref.x_ref)
        values = metrics(images.to(x_T.device), x_T, labels=cond, guidance=w, state=ref.x_ref)
        seconds = ref.seconds
        row.update(forwards=ref.counts.get("forwards"), wall_time=seconds,
                   samples_per_s=None if not seconds else n / seconds)
        if int(cfg.save_images) > 0:
            tag = "" if w is None else f", w={w:g}"
            save_samples_png(images, samples_png(out_dir, row), int(cfg.save_images),
                             f"{row['solver']}/{row['grid']}, NFE {row['nfe']}{tag} (reference)")
        table.add({**row, **values, "status": "ok", "message": "the reference solve (reference.row=true)"})
