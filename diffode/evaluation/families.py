"""The families of a sweep's cells, which the report draws as one panel each (small multiples) and
samples once each in its contact sheet.

Decided from what the sweep itself knows, never from a list of names, so any sweep gets the panels
its cells make (a mixture sweep of training-free solvers gets only those):
- a training-free cell (solver x grid) is on its usual grid when grid == sweep.usual_grid[solver];
  it is one of "<solver> on every grid" when the sweep runs that solver on two grids or more; any
  other training-free cell is an "other solver/grid pair";
- a learned cell by what its artifact holds (diffode.artifacts): a student network replaces the
  model -> distilled students; a hook is handed to the solver (AMED's predictor) -> learned solvers;
  a grid alone (LD3, GITS) -> learned grids. The panel title names the artifact kinds it holds.
A label may be in two families: DPM-Solver++(3M) on logSNR is on its usual grid and one of its grids.
Each label also names the line it is drawn on: itself, except for students, whose labels are
<kind>/<steps> (one network per step count for PD, one network at several step counts for CD): one
line per kind, pd/{1,2,4,8}, joins them across NFE.
"""
from __future__ import annotations

USUAL = "training-free solvers on their usual grid"
OTHER_PAIRS = "training-free solvers: other solver/grid pairs"
LEARNED = {"grid": "learned grids", "hook": "learned solvers", "student": "distilled students"}


def artifact_part(sampler) -> str:
    """What a learned sampler learned: 'student', 'hook' or 'grid' (read from its manifest)."""
    m = sampler.manifest
    return "student" if m.get("student") else "hook" if m.get("hook") else "grid"


def _add(out: dict, family: str, label: str, line: str | None = None) -> None:
    out.setdefault(family, {}).setdefault(label, line or label)


def families(cells, usual_grid=None) -> dict[str, dict[str, str]]:
    """{family title: {cell label: line name}} in panel order: usual grids, each solver on every grid,
    other training-free pairs, learned grids, learned solvers, distilled students (labels in sweep order)."""
    usual_grid = dict(usual_grid or {})
    free = [c for c in cells if c.sampler is None]
    grids_of: dict[str, set] = {}
    for c in free:
        grids_of.setdefault(c.solver, set()).add(c.grid)
    usual, studies, other = {}, {}, {}
    for c in free:
        on_usual, study = usual_grid.get(c.solver) == c.grid, len(grids_of[c.solver]) > 1
        if on_usual:
            _add(usual, USUAL, c.label)
        if study:
            _add(studies, f"{c.solver} on every grid", c.label)
        if not (on_usual or study):
            _add(other, OTHER_PAIRS, c.label)
    learned, kinds = {}, {}
    for c in cells:
        if c.sampler is not None:
            part = artifact_part(c.sampler)
            _add(learned, part, c.label, c.solver if part == "student" else None)
            _add(kinds, part, str(c.sampler.kind))
    for labels in learned.values():  # pd/{1,2,4,8}: the line's name says which labels it joins
        for line in set(labels.values()) - set(labels):
            steps = [lab.partition("/")[2] for lab, ln in labels.items() if ln == line]
            labels.update({lab: f"{line}/{{{','.join(steps)}}}" for lab, ln in labels.items() if ln == line})
    titled = {f"{LEARNED[p]} ({', '.join(kinds[p])})": learned[p] for p in LEARNED if p in learned}
    return {**usual, **studies, **other, **titled}
