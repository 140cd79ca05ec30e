"""The report's judgements: who is best per NFE (with ties) and whether the reference solve resolves the table."""
import pytest

from diffode.evaluation.report import winners, write_report


def _row(solver, nfe, fid, half, rmse=0.1):
    return {"solver": solver, "grid": "edm", "nfe": nfe, "status": "ok", "n_samples": 10, "seeds": "0-9",
            "fid": fid, "fid_lo": fid - half, "fid_hi": fid + half, "rmse": rmse}


def test_best_is_alone_only_when_its_interval_clears_every_other():
    clear = [_row("a", 4, 10.0, 1.0), _row("b", 4, 13.0, 1.0), _row("c", 4, 30.0, 1.0)]
    assert [r["solver"] for r in winners(clear, "fid")[4]] == ["a"]
    tie = [_row("a", 4, 10.0, 1.5), _row("b", 4, 12.0, 1.0), _row("c", 4, 30.0, 1.0)]
    assert sorted(r["solver"] for r in winners(tie, "fid")[4]) == ["a", "b"]


def _header(tmp_path, self_rmse):
    rows = [_row("a", 4, 10.0, 1.0, rmse=0.05), _row("b", 4, 13.0, 1.0, rmse=0.2)]
    summary = {"reference": "dpmpp_3m/logsnr NFE 200", "reference_check_nfe": 100, "reference_self_rmse": self_rmse,
               "fid_bootstrap": 200, "fid_level": 0.95}
    return write_report(rows, ["fid", "rmse"], tmp_path, "t", summary).read_text()


def test_report_says_when_the_reference_does_not_resolve_the_table(tmp_path):
    assert "less than 100x" in _header(tmp_path, 0.05 / 27)      # the old NFE-100 default: 27x
    assert ("is 0.00185, 27x below the smallest solver error in the table (less than 100x: the smallest errors are "
            "not resolved; raise reference.nfe and reference.check_nfe). For a distilled") in _header(tmp_path, 0.05 / 27)
    assert "less than 100x" not in _header(tmp_path, 0.05 / 230)
    assert "230x below the smallest solver error" in _header(tmp_path, 0.05 / 230)


# -- the tie rule end to end: several NFEs, a higher-is-better metric, the rendered Markdown ------------------

def _cell_row(solver, nfe, **metrics):
    """A result row with metric values and, for (value, half) pairs, a symmetric interval."""
    r = {"solver": solver, "grid": "edm", "nfe": nfe, "status": "ok", "n_samples": 10, "seeds": "0-9"}
    for m, v in metrics.items():
        if isinstance(v, tuple):
            r[m], r[f"{m}_lo"], r[f"{m}_hi"] = v[0], v[0] - v[1], v[0] + v[1]
        else:
            r[m] = v
    return r


# Each NFE is one case of the rule, the expected marks written out by hand (label -> "bold" | "tie" | ""),
# best value first: the "best" row names it first, then the cells tied with it.
SWEEP = [
    # NFE 2: a's interval [9, 11] clears b's [12, 14] and c's: a alone, in bold
    _cell_row("a", 2, fid=(10.0, 1.0), confident=(0.50, 0.01), rmse=0.30),
    _cell_row("b", 2, fid=(13.0, 1.0), confident=(0.70, 0.01), rmse=0.31),
    _cell_row("c", 2, fid=(30.0, 1.0), confident=(0.60, 0.01), rmse=0.32),
    # NFE 4: a [8.5, 11.5] overlaps b [11, 13]: both tied, c is not
    _cell_row("a", 4, fid=(10.0, 1.5), confident=(0.80, 0.05), rmse=0.20),
    _cell_row("b", 4, fid=(12.0, 1.0), confident=(0.84, 0.05), rmse=0.10),
    _cell_row("c", 4, fid=(30.0, 1.0), confident=(0.20, 0.05), rmse=0.25),
    # NFE 8: intervals that only touch ([9, 11] and [11, 13]) do not clear each other: a tie. b [11.1, 11.9]
    # does not overlap the best one's, although it overlaps c's: ties are judged against the best cell only.
    _cell_row("a", 8, fid=(10.0, 1.0), confident=(0.95, 0.01), rmse=0.05),
    _cell_row("b", 8, fid=(11.5, 0.4), confident=(0.90, 0.01), rmse=0.04),
    _cell_row("c", 8, fid=(12.0, 1.0), confident=(0.92, 0.01), rmse=0.06),
    # a failed cell with a better number and an unreachable one: never best, never tied
    {"solver": "d", "grid": "edm", "nfe": 8, "status": "failed", "fid": 1.0, "fid_lo": 0.5, "fid_hi": 1.5,
     "confident": 1.0, "rmse": 0.001, "n_samples": 10, "seeds": "0-9", "message": "NaN at step 3"},
    {"solver": "d", "grid": "edm", "nfe": 4, "status": "unreachable"},
    # NFE 16: no cell with a value, so no best
    {"solver": "d", "grid": "edm", "nfe": 16, "status": "failed", "n_samples": 10, "seeds": "0-9", "message": "Inf"},
]
EXPECTED = {
    "fid": {2: {"a": "bold"}, 4: {"a": "tie", "b": "tie"}, 8: {"a": "tie", "c": "tie"}},
    # higher is better: the largest value wins, with the same interval rule
    "confident": {2: {"b": "bold"}, 4: {"b": "tie", "a": "tie"}, 8: {"a": "bold"}},
    # no intervals: the smallest value alone, however close the runner-up
    "rmse": {2: {"a": "bold"}, 4: {"b": "bold"}, 8: {"b": "bold"}},
}


def _parse_table(md: str, heading: str) -> dict:
    """The table under `## heading` as {label: {nfe: cell text}}, columns found by their 'NFE n' header."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"## {heading}"))
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("## "):
            break
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    header = rows[0]
    assert header[0] == "solver/grid" and set(rows[1]) == {"---"}, rows[:2]
    cols = {int(h.split()[1]): j for j, h in enumerate(header) if h.startswith("NFE ")}
    return {r[0]: {n: r[j] for n, j in cols.items()} for r in rows[2:]}


def _mark(cell: str) -> str:
    if cell.startswith("**") and cell.endswith("**"):
        return "bold"
    if cell.startswith("*") and cell.endswith("* (tie)"):
        return "tie"
    assert "*" not in cell, cell
    return ""


@pytest.mark.parametrize("metric", list(EXPECTED))
def test_winners_follow_the_interval_rule_at_every_nfe(metric):
    got = {n: sorted(r["solver"] for r in w) for n, w in winners(SWEEP, metric).items()}
    assert got == {n: sorted(e) for n, e in EXPECTED[metric].items()}


def test_rendered_report_marks_best_and_ties_as_the_rule_says(tmp_path):
    summary = {"fid_bootstrap": 200, "fid_level": 0.95}
    md = write_report(SWEEP, ["fid", "confident", "rmse"], tmp_path, "sweep", summary).read_text()
    assert "## FID (lower is better" in md and "## CONFIDENT (higher is better" in md
    assert "## RMSE (lower is better" in md
    assert "95% bootstrap interval" in md and "B = 200" in md
    for metric, heading in (("fid", "FID"), ("confident", "CONFIDENT"), ("rmse", "RMSE")):
        table = _parse_table(md, heading)
        for nfe, marks in EXPECTED[metric].items():
            for solver in "abc":
                cell = table[f"{solver}/edm"][nfe]
                assert _mark(cell) == marks.get(solver, ""), (metric, nfe, solver, cell)
            want = [f"{s}/edm" for s in marks]
            best = table["**best**"][nfe]
            assert best == (want[0] if len(want) == 1 else "tie: " + ", ".join(want)), (metric, nfe, best)
        assert table["d/edm"][8] == "failed" and table["d/edm"][4] == "n/a" and table["d/edm"][2] == ""
        assert table["**best**"][16] == "-" and table["a/edm"][16] == ""
    # values and half-widths as printed: 4 significant digits, +- half the interval to 2
    fid = _parse_table(md, "FID")
    assert fid["a/edm"][2] == "**10 ± 1**" and fid["b/edm"][4] == "*12 ± 1* (tie)" and fid["c/edm"][2] == "30 ± 1"
    assert _parse_table(md, "RMSE")["b/edm"][8] == "**0.04**"
    assert "d/edm NFE 8: NaN at step 3" in md and "n/a: the solver cannot make exactly that many calls (1 cells)" in md


def test_plot_draws_each_label_with_its_values_and_intervals(tmp_path, monkeypatch):
    """The figure's data, read back from the panel: one line per solver/grid over its ok cells, the interval
    as asymmetric error bars, the best-per-NFE envelope behind them, log y only when the values span more
    than 10x, log x only when the NFE range spans more than 8x."""
    import diffode.evaluation.figures as figures
    from diffode.evaluation.report import plot

    made = []
    original = figures.figure
    monkeypatch.setattr(figures, "figure", lambda *a, **k: made.append(original(*a, **k))
                        or made[-1])
    rows = [_cell_row("a", n, fid=(v, h)) for n, v, h in ((4, 10.0, 1.0), (2, 20.0, 4.0), (8, 5.0, 0.5))]
    rows[1]["fid_hi"] = 26.0  # asymmetric: 16 .. 26 around 20
    rows += [_cell_row("b", 2, fid=30.0), _cell_row("b", 4, fid=12.0),
             {"solver": "b", "grid": "edm", "nfe": 8, "status": "failed", "fid": 1.0}]
    path = plot(rows, "fid", tmp_path / "sub" / "fid.png", title="T")
    assert path == tmp_path / "sub" / "fid.png" and path.is_file()
    (fig,) = made
    ax = fig.axes[0]
    # a has intervals at every point (an errorbar container), b has none (a plain line)
    (eb,) = ax.containers
    assert eb.get_label() == "a/edm"
    data, _, (bars,) = eb.lines
    assert list(data.get_xdata()) == [2, 4, 8] and list(data.get_ydata()) == [20.0, 10.0, 5.0]
    assert [tuple(s[:, 1]) for s in bars.get_segments()] == [(16.0, 26.0), (9.0, 11.0), (4.5, 5.5)]
    (line,) = [ln for ln in ax.get_lines() if ln.get_label() == "b/edm"]
    assert list(line.get_xdata()) == [2, 4] and list(line.get_ydata()) == [30.0, 12.0]
    (env,) = [ln for ln in ax.get_lines() if ln.get_label() == "best of all cells"]
    assert list(env.get_xdata()) == [2, 4, 8] and list(env.get_ydata()) == [20.0, 10.0, 5.0]  # the minimum per NFE
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["a/edm", "b/edm", "best of all cells"]
    assert ax.get_yscale() == "linear" and ax.get_xscale() == "linear"  # 5 .. 30: not 10x; 2 .. 8: not more than 8x
    assert fig._suptitle.get_text().startswith("T") and fig._supxlabel.get_text().startswith("NFE")
    assert fig._supylabel.get_text() == "FID"
    rows.append(_cell_row("c", 20, fid=0.2))  # 0.2 .. 30 and 2 .. 20: both axes logarithmic
    plot(rows, "fid", tmp_path / "wide.png")
    assert made[-1].axes[0].get_yscale() == "log" and made[-1].axes[0].get_xscale() == "log"


def test_report_text_around_the_tables(tmp_path):
    """Every line write_report adds around the tables, for a sweep with a reference solve, a command,
    failed and unreachable cells and wall times (the numbers derived by hand)."""
    rows = [dict(_row("a", 4, 10.0, 1.0, rmse=0.05), wall_time=1.25), dict(_row("b", 4, 13.0, 1.0, rmse=0.2), wall_time=2.5),
            {"solver": "c", "grid": "edm", "nfe": 4, "status": "failed", "n_samples": 10, "seeds": "0-9",
             "message": "NaN at step 2", "wall_time": 0.25},
            {"solver": "c", "grid": "edm", "nfe": 6, "status": "unreachable"}]
    summary = {"reference": "ref NFE 200", "reference_check_nfe": 100, "reference_self_rmse": 0.0005,
               "fid_bootstrap": 50, "fid_level": 0.9}
    md = write_report(rows, ["fid", "sw", "rmse"], tmp_path, "Title", summary, command="diffode eval x=1").read_text()
    lines = md.splitlines()
    assert lines[:6] == ["# Title", "", "Command:", "", "    diffode eval x=1", ""]
    assert "Every evaluated cell used 10 samples (seeds 0-9, the same initial noise in every cell)." in lines
    ref = ("Solver error (RMSE) is measured against a reference solve of the same model from the same noise: ref NFE 200; "
           "its self-consistency (RMSE against NFE 100) is 0.0005, 100x below the smallest solver error in the table. "
           "For a distilled student it is the distance to the teacher's reference solve.")
    assert ref in lines  # 0.05 / 0.0005 = 100: resolved (not "less than 100x")
    assert ("FID +- is half the width of a 90% bootstrap interval over the generated samples' features (B = 50); "
            "best per NFE in bold only where its interval clears every other cell's, else the overlapping cells are "
            "marked as tied.") in lines
    assert "## SW" not in md  # no cell has the metric: no table
    assert (tmp_path / "fid_vs_nfe.png").is_file() and (tmp_path / "rmse_vs_nfe.png").is_file()
    assert not (tmp_path / "sw_vs_nfe.png").exists()
    assert "![fid vs NFE](fid_vs_nfe.png)" in lines and "![rmse vs NFE](rmse_vs_nfe.png)" in lines
    assert "## Failed cells (NaN/Inf samples; not averaged)" in lines and "- c/edm NFE 4: NaN at step 2" in lines
    assert "n/a: the solver cannot make exactly that many calls (1 cells)." in lines
    assert "- cells: 4 (2 ok, 1 failed, 1 unreachable); sampling wall time 4.0 s" in lines
    for k, v in summary.items():
        assert f"- {k}: {v}" in lines
    # samples differ between cells: each cell's count is listed instead
    rows[1]["n_samples"] = 20
    md = write_report(rows[:2], ["fid"], tmp_path, "T", {}).read_text()
    assert "Samples per cell: a/edm@4: 10, b/edm@4: 20" in md.splitlines()
    assert "Solver error (RMSE)" not in md and "## Failed cells" not in md and "n/a:" not in md
    assert md.splitlines()[:3] == ["# T", "", "Samples per cell: a/edm@4: 10, b/edm@4: 20"]  # no command given
    assert "FID +- is half the width of a 95% bootstrap interval over the generated samples' features (B = None)" in md


def test_samples_note_counts_ok_and_failed_cells_only():
    from diffode.evaluation.report import samples_note

    ok = _row("a", 4, 10.0, 1.0)
    unreachable = {"solver": "u", "grid": "edm", "nfe": 3, "status": "unreachable"}  # no samples at all
    assert samples_note([ok, unreachable]) == ("Every evaluated cell used 10 samples (seeds 0-9, the same initial "
                                               "noise in every cell).")
    failed = {**_row("b", 4, 1.0, 1.0), "status": "failed", "n_samples": 20}
    assert samples_note([ok, failed]) == "Samples per cell: a/edm@4: 10, b/edm@4: 20"
    other_seeds = {**_row("c", 4, 1.0, 1.0), "seeds": "10-19"}
    assert samples_note([other_seeds, ok]).startswith("Every evaluated cell used 10 samples (seeds 0-9, 10-19, ")


def test_reference_line_without_any_solver_error(tmp_path):
    """A reference solve but no cell with an RMSE (all failed): the line is written without a ratio."""
    rows = [{**_row("a", 4, 10.0, 1.0), "rmse": float("nan")}]
    summary = {"reference": "ref", "reference_check_nfe": 100, "reference_self_rmse": 0.001}
    md = write_report(rows, ["fid"], tmp_path, "t", summary).read_text()
    assert "its self-consistency (RMSE against NFE 100) is 0.001. For a distilled student" in md
