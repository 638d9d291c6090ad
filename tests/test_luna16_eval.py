"""Tests for pipelines.luna16_eval: ``lungseg evaluate --luna16`` files and candidates output."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.luna16_eval import LUNA16_FILES, evaluate_luna16, write_candidates
from pipelines.cli import main
from segmentation.luna16 import Luna16Error, read_candidates

ANNOTATIONS = """seriesuid,coordX,coordY,coordZ,diameter_mm
A,0,0,0,10
A,50,0,0,6
B,0,0,0,8
"""
EXCLUDED = "seriesuid,coordX,coordY,coordZ,diameter_mm\nA,0,50,0,-1\n"
CANDIDATES = """seriesuid,coordX,coordY,coordZ,probability
A,1,0,0,0.9
A,0,2,0,0.6
A,0,51,0,0.95
A,100,0,0,0.7
A,50,3,0,0.99
B,0,0,5,0.5
B,0,0,3,0.3
B,20,0,0,0.8
C,0,0,0,0.4
"""


@pytest.fixture()
def tables(tmp_path):
    paths = {}
    for name, text in (("annotations", ANNOTATIONS), ("excluded", EXCLUDED), ("candidates", CANDIDATES)):
        paths[name] = tmp_path / f"{name}.csv"
        paths[name].write_text(text)
    return paths


def test_evaluate_writes_summary_and_plot_with_hand_computed_values(tables, tmp_path):
    summary = evaluate_luna16(annotations=tables["annotations"], candidates=tables["candidates"],
                              excluded=tables["excluded"], out_dir=tmp_path / "out", n_bootstrap=20)
    written = json.loads((tmp_path / "out" / "luna16_froc.json").read_text())
    assert written["cpm"] == pytest.approx(8 / 21) == summary["cpm"]
    assert list(written["sensitivity"]) == ["0.125", "0.25", "0.5", "1", "2", "4", "8"]
    assert written["sensitivity"]["2"] == pytest.approx(2 / 3)
    assert written["n_scans"] == 3 and written["n_ignored"] == 1 and written["n_double_hits"] == 1
    assert len(written["cpm_ci95"]) == 2 and set(written["sensitivity_ci95"]) == set(written["sensitivity"])
    png = (tmp_path / "out" / "luna16_froc.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(LUNA16_FILES)


def test_seriesuids_sets_the_denominator_and_ignores_unknown_scans(tables, tmp_path):
    uids = tmp_path / "seriesuids.csv"
    uids.write_text("seriesuid\nA\nB\nD\nE\n")  # C's candidate is ignored; D, E are empty scans
    summary = evaluate_luna16(annotations=tables["annotations"], candidates=tables["candidates"],
                              excluded=tables["excluded"], seriesuids=uids, out_dir=tmp_path / "out",
                              n_bootstrap=0)
    assert summary["n_scans"] == 4 and summary["n_candidates_unknown_scan"] == 1
    assert summary["n_false_positives"] == 4


def test_earlier_report_is_kept_without_overwrite(tables, tmp_path):
    kwargs = dict(annotations=tables["annotations"], candidates=tables["candidates"],
                  out_dir=tmp_path / "out", n_bootstrap=0)
    evaluate_luna16(**kwargs)
    with pytest.raises(ValueError, match="--overwrite"):
        evaluate_luna16(**kwargs)
    evaluate_luna16(**kwargs, overwrite=True)


def test_malformed_candidates_name_the_option_and_write_nothing(tables, tmp_path):
    tables["candidates"].write_text("seriesuid,x,y,z,probability\nA,1,2,3,0.5\n")
    with pytest.raises(Luna16Error, match="--candidates"):
        evaluate_luna16(annotations=tables["annotations"], candidates=tables["candidates"],
                        out_dir=tmp_path / "out", n_bootstrap=0)
    assert not (tmp_path / "out").exists()


def test_cli_evaluate_luna16(tables, tmp_path, capsys):
    status = main(["evaluate", "--luna16", str(tables["annotations"]), "--candidates",
                   str(tables["candidates"]), "--excluded", str(tables["excluded"]),
                   "--out", str(tmp_path / "out"), "--bootstrap", "10"])
    assert status == 0
    assert json.loads(capsys.readouterr().out)["cpm"] == pytest.approx(8 / 21)


def test_cli_evaluate_luna16_without_candidates_exits_2(tables, tmp_path, capsys):
    status = main(["evaluate", "--luna16", str(tables["annotations"]), "--out", str(tmp_path / "o")])
    assert status == 2 and "--candidates" in capsys.readouterr().err


def test_write_candidates_uses_lps_for_metaimage_and_ras_for_nifti(tmp_path):
    record = {"nodules": [{"centroid_x_mm": 1.5, "centroid_y_mm": -2.0, "centroid_z_mm": 3.0,
                           "max_prob": 0.75}]}
    (tmp_path / "a.json").write_text(json.dumps(record))
    path, n_rows = write_candidates(tmp_path / "cands.csv", [("1.2.3", "metaimage", tmp_path / "a.json"),
                                                             ("nii_case", "nifti", tmp_path / "a.json")])
    table = read_candidates(path)
    assert n_rows == 2
    np.testing.assert_allclose(table["1.2.3"], [[-1.5, 2.0, 3.0, 0.75]])
    np.testing.assert_allclose(table["nii_case"], [[1.5, -2.0, 3.0, 0.75]])
