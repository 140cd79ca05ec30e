"""The report's figures, drawn from what diffode.evaluation.report hands over: a metric against NFE
as small multiples, one panel per family of cells (diffode.evaluation.families).

Every panel shares both axes with the others and carries, in grey behind its own lines, the best
value per NFE over ALL cells (the envelope), so a panel says at a glance how far its family is from
the best sampler at each budget. Legends sit to the right of their panel, never over the data.
Figures are `matplotlib.figure.Figure`s with their own canvas (diffode.pictures.figure): no pyplot.
"""
from __future__ import annotations

import math
from pathlib import Path

from diffode.pictures import figure

AXIS = {"fid": "FID", "rmse": "solver error (RMSE)", "confident": "confident share", "sw": "sliced W2"}
MARKERS = "osD^v<>P"

# A panel: (title, {label: [(nfe, value, (lo, hi) or None), ...]}), points sorted by NFE.
Panel = tuple[str, dict[str, list[tuple[int, float, tuple[float, float] | None]]]]


def _style(i: int) -> dict:
    from matplotlib import colormaps

    return dict(color=colormaps["tab10"](i % 10), marker=MARKERS[i % len(MARKERS)], ms=4,
                ls="-" if i < 10 else "--", lw=1.3)


def _draw_panel(ax, title: str, lines: dict, env: list[tuple[int, float]]) -> None:
    if env:
        ax.plot(*zip(*env), color="0.55", lw=6, alpha=0.35, zorder=0, solid_capstyle="round",
                label="best of all cells")
    for i, (lab, pts) in enumerate(lines.items()):
        x, y = [p[0] for p in pts], [p[1] for p in pts]
        if all(p[2] is not None for p in pts):
            err = [[max(p[1] - p[2][0], 0) for p in pts], [max(p[2][1] - p[1], 0) for p in pts]]
            ax.errorbar(x, y, yerr=err, capsize=2, elinewidth=0.8, label=lab, **_style(i))
        else:
            ax.plot(x, y, label=lab, **_style(i))
    ax.set_title(title, fontsize=10, loc="left")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False, borderaxespad=0)


def metric_figure(panels: list[Panel], env: list[tuple[int, float]], path: Path, metric: str, title: str = "",
                  lower_is_better: bool = True) -> Path:
    """<metric> vs NFE, one panel per family (shared axes), the all-cells envelope `env` in each."""
    from matplotlib.ticker import NullFormatter, NullLocator

    ncols = 1 if len(panels) == 1 else 2
    nrows = max(1, math.ceil(len(panels) / ncols))
    fig = figure(figsize=(6.6 * ncols, 3.2 * nrows + 0.7), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False).ravel()
    for ax, (t, lines) in zip(axes, panels):
        _draw_panel(ax, t, lines, env)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    for ax in axes[max(0, len(panels) - ncols):len(panels)]:  # the lowest panel of each column shows its NFEs
        ax.xaxis.set_tick_params(labelbottom=True)
    pts = [p for _, lines in panels for line in lines.values() for p in line]
    values, nfes = [p[1] for p in pts], sorted({p[0] for p in pts})
    ax = axes[0]
    if values and min(values) > 0 and max(values) > 10 * min(values):
        ax.set_yscale("log")
    if nfes and max(nfes) > 8 * min(nfes):
        ax.set_xscale("log")
    if nfes and len(nfes) <= 16:  # every evaluated NFE is a tick, written as a plain number
        ax.set_xticks(nfes, [str(n) for n in nfes])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
    direction = "lower" if lower_is_better else "higher"
    fig.suptitle(f"{title or AXIS.get(metric, metric) + ' vs NFE'}  ({direction} is better; grey: best of all "
                 "cells at each NFE)", fontsize=11)
    fig.supxlabel("NFE (denoiser calls)", fontsize=10)
    fig.supylabel(AXIS.get(metric, metric), fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
