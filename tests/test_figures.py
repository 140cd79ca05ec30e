"""The report's pictures: families of cells and their panels, the best-per-NFE envelope, sample grids
large enough to read, the contact sheet, and no global matplotlib state touched by the package."""
import ast
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from diffode.evaluation.families import OTHER_PAIRS, USUAL, families
from diffode.evaluation.report import OTHER, envelope, panels, representatives, write_report
from diffode.evaluation.results import samples_png
from diffode.evaluation.sweep import Cell, save_samples_png
from diffode.pictures import grid_tiles

REPO = Path(__file__).resolve().parents[1]


def _artifact(kind, *, student=False, hook=False):
    return SimpleNamespace(kind=kind, manifest={"kind": kind, "student": {"spec": {}} if student else None,
                                                "hook": {"spec": {}} if hook else None})


def _learned(solver, grid, nfe, sampler):
    return Cell(solver, grid, nfe, solver, "artifact", sampler=sampler)


def main_like_cells():
    """The main job's shape: solvers on their usual grid, dpmpp_3m on every grid, then artifacts."""
    usual = {"euler": "edm", "dpmpp_3m": "logsnr", "unipc_bh1": "logsnr"}
    pairs = [(s, g) for s, g in usual.items()] + [("dpmpp_3m", g) for g in ("edm", "time_uniform")]
    cells = [Cell(s, g, n) for s, g in pairs for n in (4, 6)]
    cells += [_learned("unipc_bh1", "ld3", n, _artifact("ld3")) for n in (4, 6)]
    cells += [_learned("ipndm", "gits", n, _artifact("gits")) for n in (4, 6)]
    cells += [_learned("ipndm", "amed", n, _artifact("amed", hook=True)) for n in (4, 6)]
    cells += [_learned("pd", str(n), n, _artifact("pd", student=True)) for n in (1, 2, 4)]
    cells += [_learned("cd", str(n), n, _artifact("cd", student=True)) for n in (1, 4)]
    return cells, usual


def test_families_follow_the_pairing_and_what_each_artifact_holds():
    cells, usual = main_like_cells()
    fam = families(cells, usual)
    assert list(fam) == [USUAL, "dpmpp_3m on every grid", "learned grids (ld3, gits)", "learned solvers (amed)",
                         "distilled students (pd, cd)"]
    assert list(fam[USUAL]) == ["euler/edm", "dpmpp_3m/logsnr", "unipc_bh1/logsnr"]
    assert list(fam["dpmpp_3m on every grid"]) == ["dpmpp_3m/logsnr", "dpmpp_3m/edm", "dpmpp_3m/time_uniform"]
    assert list(fam["learned grids (ld3, gits)"]) == ["unipc_bh1/ld3", "ipndm/gits"]
    assert list(fam["learned solvers (amed)"]) == ["ipndm/amed"]
    students = fam["distilled students (pd, cd)"]
    assert students == {"pd/1": "pd/{1,2,4}", "pd/2": "pd/{1,2,4}", "pd/4": "pd/{1,2,4}",
                        "cd/1": "cd/{1,4}", "cd/4": "cd/{1,4}"}  # one line per kind


def test_a_mixture_sweep_of_training_free_solvers_gets_only_its_panels():
    # product pairing, one grid: heun is off its usual grid (edm), dpmpp_2m on it; nothing learned
    cells = [Cell(s, "logsnr", n) for s in ("heun", "dpmpp_2m") for n in (10, 20)]
    fam = families(cells, {"heun": "edm", "dpmpp_2m": "logsnr"})
    assert {t: list(v) for t, v in fam.items()} == {USUAL: ["dpmpp_2m/logsnr"], OTHER_PAIRS: ["heun/logsnr"]}
    rows = [_row(c.solver, c.grid, c.nfe, 1.0 / c.nfe) for c in cells]
    assert [(t, sorted({(r["solver"], r["nfe"]) for r in rs})) for t, rs in panels(rows, fam)] == [
        (USUAL, [("dpmpp_2m", 10), ("dpmpp_2m", 20)]), (OTHER_PAIRS, [("heun", 10), ("heun", 20)])]


def _row(solver, grid, nfe, fid, status="ok", confident=0.5, half=None):
    r = {"solver": solver, "grid": grid, "nfe": nfe, "status": status, "n_samples": 10, "seeds": "0-9",
         "fid": fid, "confident": confident, "forwards": nfe}  # an extra column is carried along
    if half is not None:
        r.update(fid_lo=fid - half, fid_hi=fid + half)
    return r


def test_each_panel_gets_its_family_rows_and_strays_go_to_a_last_panel():
    cells, usual = main_like_cells()
    fam = families(cells, usual)
    rows = [_row(c.solver, c.grid, c.nfe, 10.0 + i) for i, c in enumerate(cells)]
    rows.append(_row("heun", "edm", 6, 50.0))  # kept in the table from an earlier sweep: no family claims it
    got = {t: {f"{r['solver']}/{r['grid']}" for r in rs} for t, rs in panels(rows, fam)}
    assert list(got) == [*fam, OTHER]
    for t, labels in fam.items():
        assert got[t] == set(labels)
    assert got[OTHER] == {"heun/edm"}
    assert sum(len(rs) for _, rs in panels(rows, fam)) == len(rows) + 2  # dpmpp_3m/logsnr is in two panels
    # a family adding nothing to a larger one is dropped; no families: one panel of everything
    assert [t for t, _ in panels(rows[:4], {"a": ["euler/edm"], "b": ["euler/edm", "dpmpp_3m/logsnr"]})] == ["b"]
    assert [t for t, _ in panels(rows, None)] == ["all cells"]


def test_envelope_is_the_per_nfe_minimum_or_maximum_over_every_ok_cell():
    gen = torch.Generator().manual_seed(0)
    rows = []
    for k, solver in enumerate(("a", "b", "c", "d")):
        for n in (3, 4, 6):
            fid, conf = torch.rand(2, generator=gen).tolist()
            rows.append(_row(solver, "g", n, 10 + 90 * fid, confident=conf))
    rows.append(_row("e", "g", 4, 0.5, status="failed", confident=0.99))  # never counted
    for metric, pick in (("fid", min), ("confident", max)):
        want = [(n, pick(r[metric] for r in rows if r["nfe"] == n and r["status"] == "ok")) for n in (3, 4, 6)]
        assert envelope(rows, metric) == want


def test_representatives_share_an_nfe_where_they_can():
    rows = [_row("a", "g", 4, 20.0), _row("a", "g", 6, 8.0), _row("b", "g", 4, 12.0), _row("b", "g", 6, 30.0),
            _row("x", "ld3", 4, 9.0), _row("x", "ld3", 5, 7.0), _row("pd", "1", 1, 15.0), _row("pd", "2", 2, 11.0)]
    fam = {"free": ["a/g", "b/g"], "grids": ["x/ld3"], "students": ["pd/1", "pd/2"]}
    reps = [(t, r["solver"], r["nfe"]) for t, r in representatives(rows, fam, "fid")]
    # NFE 4 is the one two families share: each family's best there; the students at their nearest NFE
    assert reps == [("free", "b", 4), ("grids", "x", 4), ("students", "pd", 2)]


def _digits(n=64, seed=0):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_sample_grid_is_at_least_512_px_nearest_neighbour_and_titled(tmp_path):
    x = _digits()
    path = save_samples_png(x, tmp_path / "g.png", 64, "dpmpp_3m/logsnr, NFE 4")
    img = np.asarray(Image.open(path).convert("RGB"))
    side = 8 * 9 + 1  # 8 digits of 8 px per row, 1 px between them and around
    k = img.shape[1] // side
    assert img.shape[1] == k * side >= 512
    band = img.shape[0] - k * side
    assert band > 0 and (img[:band] < 128).any()  # the title is written above the grid
    grid = img[band:]
    blocks = grid.reshape(side, k, side, k, 3)
    assert (blocks == blocks[:, :1, :, :1]).all()  # every source pixel is a constant k x k block
    want = ((x + 1) * 127.5 + 0.5).floor().to(torch.uint8)  # the pixels of each digit, as a PNG rounds them
    first = blocks[1:9, 0, 1:9, 0, 0]  # digit 0 sits one padding pixel in from the corner
    last = blocks[-9:-1, 0, -9:-1, 0, 0]
    assert (first == want[0, 0].numpy()).all() and (last == want[63, 0].numpy()).all()
    assert (grid_tiles(path)[..., 0] == want[:, 0].numpy()).all()  # the contact sheet cuts them out exactly


def test_report_has_a_contact_sheet_of_one_band_per_family(tmp_path):
    fam = {"free": ["a/g", "b/g"], "students": ["pd/4"]}
    rows = [_row("a", "g", 4, 20.0, half=1.0), _row("b", "g", 4, 12.0, half=1.0), _row("pd", "4", 4, 9.0, half=1.0)]
    for i, r in enumerate(rows):
        save_samples_png(_digits(seed=i), samples_png(tmp_path, r), 64, f"{r['solver']}/{r['grid']}")
    text = write_report(rows, ["fid", "confident"], tmp_path, "t", {}, families=fam).read_text()
    assert "![samples per family](contact_sheet.png)" in text
    sheet = Image.open(tmp_path / "contact_sheet.png")
    one = np.asarray(Image.open(samples_png(tmp_path, rows[0])))
    assert sheet.width >= 512 and sheet.height < 2 * one.shape[0]  # two bands of 4 x 16 digits, not two grids
    assert (tmp_path / "fid_vs_nfe.png").is_file() and (tmp_path / "confident_vs_nfe.png").is_file()
    assert "contact_sheet" not in write_report(rows, ["fid"], tmp_path / "none", "t", {}, families=fam).read_text()


def test_writing_a_report_leaves_the_matplotlib_backend_alone(tmp_path):
    import matplotlib

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # a backend the package would not pick itself, as a notebook's inline one
    try:
        write_report([_row("a", "g", 4, 20.0), _row("a", "g", 6, 10.0)], ["fid"], tmp_path, "t", {})
        save_samples_png(torch.randn(50, 2), tmp_path / "scatter.png", title="2-D")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    assert (tmp_path / "fid_vs_nfe.png").stat().st_size > 0


def test_the_package_never_sets_a_backend_nor_uses_pyplot():
    found = []
    for path in sorted((REPO / "diffode").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        names = {"matplotlib"} | {a.asname for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
                                  if a.name == "matplotlib" and a.asname}
        for node in ast.walk(tree):
            where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "use" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in names:
                found.append(f"{where} matplotlib.use()")
            if isinstance(node, ast.Import) and any(a.name == "matplotlib.pyplot" for a in node.names) or \
                    isinstance(node, ast.ImportFrom) and (node.module == "matplotlib.pyplot" or node.module ==
                                                          "matplotlib" and any(a.name == "pyplot" for a in node.names)):
                found.append(f"{where} imports pyplot")
    assert not found, found


TINY_GMM = ["experiment=eval_gmm", "n_samples=64", "batch_size=32", "gmm_metrics.rtol=1e-6", "gmm_metrics.floor_repeats=2",
            "gmm_metrics.n_projections=64", "progress=false", "save_images=64", "sweep.solvers=[euler,dpmpp_2m]",
            "sweep.grids=[logsnr,edm]", "sweep.nfes=[10]"]


def _cfg(tmp_path, *overrides):
    from hydra import compose, initialize_config_module

    with initialize_config_module("diffode.conf", version_base="1.3"):
        return compose("eval", overrides=[*TINY_GMM, f"output_dir={tmp_path}", *overrides])


def test_diffode_report_rerenders_a_finished_sweep_from_its_table(tmp_path, monkeypatch):
    import diffode.evaluation.render as render
    from diffode.cli.errors import ConfigError
    from diffode.evaluation.runner import evaluate
    from diffode.cli.report import report

    torch.set_num_threads(1)
    evaluate(_cfg(tmp_path))
    table, before = (tmp_path / "results.csv").read_bytes(), (tmp_path / "report.md").read_text()
    pictures = ["rmse_vs_nfe.png", "sw_vs_nfe.png", "contact_sheet.png"]
    for name in pictures:
        (tmp_path / name).unlink()
    drawn = []
    real = render.sample_cell  # drawn along the cell's plan: validated, as evaluate() does
    monkeypatch.setattr(render, "sample_cell", lambda c, *a: drawn.append(c.key) or real(c, *a))
    reps = {f.name for f in (tmp_path / "samples").glob("*.png")}
    missing = samples_png(tmp_path, {"solver": "dpmpp_2m", "grid": "logsnr", "nfe": 10})  # a contact-sheet cell
    missing.unlink()
    after = Path(report(_cfg(tmp_path), "diffode report x")).read_text()
    assert all((tmp_path / name).is_file() for name in pictures) and missing.is_file()
    assert drawn == [("dpmpp_2m", "logsnr", 10)]  # only the missing picture was drawn, no cell's numbers
    assert (tmp_path / "results.csv").read_bytes() == table
    assert {f.name for f in (tmp_path / "samples").glob("*.png")} == reps
    assert after.replace("Figures and this report re-rendered from results.csv (no metric recomputed): "
                         "`diffode report x`\n\n", "") == before  # the same tables and the run's own command
    with pytest.raises(ConfigError, match="other settings.*overrides of the command"):
        report(_cfg(tmp_path, "n_samples=32"))
    with pytest.raises(ConfigError, match="no results.csv"):
        report(_cfg(tmp_path / "empty"))
