"""The report's judgements: who is best per NFE (with ties) and whether the reference solve resolves the table."""
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
    assert "less than 100x" not in _header(tmp_path, 0.05 / 230)
    assert "230x below the smallest solver error" in _header(tmp_path, 0.05 / 230)
