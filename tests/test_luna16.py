"""Tests for segmentation.luna16: LUNA16 tables, LPS/RAS, sphere masks."""

from __future__ import annotations

import numpy as np
import pytest

from segmentation.luna16 import (
    Luna16Error,
    candidates_csv_text,
    lps_to_ras,
    ras_nodules,
    read_annotations,
    read_candidates,
    read_seriesuids,
    sphere_mask,
)


def _write(path, text):
    path.write_text(text)
    return path


def test_read_annotations_groups_rows_by_scan_in_file_order(tmp_path):
    path = _write(tmp_path / "annotations.csv",
                  "seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2,1,2,3,4.5\n1.3,0,0,0,-1\n1.2,5,6,7,8\n")
    table = read_annotations(path)
    assert sorted(table) == ["1.2", "1.3"]
    np.testing.assert_array_equal(table["1.2"], [[1, 2, 3, 4.5], [5, 6, 7, 8]])
    np.testing.assert_array_equal(table["1.3"], [[0, 0, 0, -1]])


def test_missing_column_names_option_file_and_columns(tmp_path):
    path = _write(tmp_path / "cands.csv", "seriesuid,coordX,coordY,coordZ\n1.2,1,2,3\n")
    with pytest.raises(Luna16Error, match=r"--candidates file '.*cands\.csv'.*missing \['probability'\]"):
        read_candidates(path, option="--candidates")


def test_bad_number_names_the_line(tmp_path):
    path = _write(tmp_path / "cands.csv",
                  "seriesuid,coordX,coordY,coordZ,probability\n1.2,1,2,3,0.5\n1.2,1,nan,3,0.5\n")
    with pytest.raises(Luna16Error, match=r"line 3.*coordY='nan'"):
        read_candidates(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(Luna16Error, match=r"--excluded='.*absent\.csv' \(not found\)"):
        read_annotations(tmp_path / "absent.csv", option="--excluded")


def test_empty_candidates_file_has_no_scans(tmp_path):
    path = _write(tmp_path / "cands.csv", "seriesuid,coordX,coordY,coordZ,probability\n")
    assert read_candidates(path) == {}


def test_read_seriesuids_with_and_without_header(tmp_path):
    assert read_seriesuids(_write(tmp_path / "a.csv", "seriesuid\n1.2\n1.3\n1.2\n")) == ["1.2", "1.3"]
    assert read_seriesuids(_write(tmp_path / "b.csv", "1.2\n1.3\n")) == ["1.2", "1.3"]


def test_candidates_text_round_trips(tmp_path):
    text = candidates_csv_text([("1.2", -1.5, 2.25, 3, 0.123456789)])
    path = _write(tmp_path / "c.csv", text)
    np.testing.assert_allclose(read_candidates(path)["1.2"], [[-1.5, 2.25, 3, 0.123457]])


def test_lps_to_ras_negates_x_and_y():
    np.testing.assert_array_equal(lps_to_ras([1.0, -2.0, 3.0]), [-1.0, 2.0, 3.0])
    np.testing.assert_array_equal(ras_nodules([[1, 2, 3, 4]]), [[-1, -2, 3, 4]])


def test_sphere_mask_known_voxels_on_an_anisotropic_flipped_grid():
    affine = np.diag([-1.0, 2.0, 3.0, 1.0])
    affine[:3, 3] = (10.0, 0.0, 0.0)
    # centre at voxel (5, 5, 5): world (5, 10, 15); radius 3 mm
    mask = sphere_mask((11, 11, 11), affine, [[5.0, 10.0, 15.0, 6.0]])
    index = np.argwhere(mask)
    world = index * [-1.0, 2.0, 3.0] + [10.0, 0.0, 0.0]
    assert np.all(np.linalg.norm(world - [5, 10, 15], axis=1) <= 3.0)
    # along i: 7 voxels (|di| <= 3), along j: 3 (|2 dj| <= 3), along k: 3 (|3 dk| <= 3)
    assert mask[:, 5, 5].sum() == 7 and mask[5, :, 5].sum() == 3 and mask[5, 5, :].sum() == 3
    assert mask.sum() == len(index)
    full = np.indices((11, 11, 11)).reshape(3, -1).T
    inside = np.linalg.norm(full * [-1.0, 2.0, 3.0] + [10, 0, 0] - [5, 10, 15], axis=1) <= 3.0
    assert mask.sum() == inside.sum()


def test_sphere_mask_outside_the_grid_or_without_size_marks_nothing():
    assert sphere_mask((4, 4, 4), np.eye(4), [[100, 0, 0, 10], [1, 1, 1, -1]]).sum() == 0
