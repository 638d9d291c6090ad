"""Tests for segmentation.lidc: XML parsing, contour fill, grouping, consensus, one series."""

from __future__ import annotations

import numpy as np
import pytest

from lidc_fixtures import (
    SHAPE,
    expected_reader_masks,
    ras_of,
    rect_boundary,
    rect_corners,
    standard_sessions,
    write_xml,
    z_of,
)
from segmentation.lidc import (
    LidcError,
    Mark,
    SliceIndex,
    build_case,
    consensus_mask,
    fill_contour,
    group_marks,
    parse_lidc_xml,
    read_series_uid,
)

SOPS = [f"1.2.3.{k}" for k in range(SHAPE[2])]
AFFINE = np.array([[-0.7, 0, 0, 50.0], [0, -0.8, 0, 40.0], [0, 0, 1.5, -100.0], [0, 0, 0, 1]])
INDEX = SliceIndex(by_sop={sop: k for k, sop in enumerate(SOPS)},
                   z_mm=np.array([z_of(k) for k in range(SHAPE[2])]))


@pytest.fixture()
def xml(tmp_path):
    return write_xml(tmp_path / "069.xml", "1.2.840.99", standard_sessions(SOPS))


def _case(xml, **kwargs):
    return build_case(parse_lidc_xml(xml), INDEX, shape=SHAPE, affine=AFFINE, case_id="c", **kwargs)


# --------------------------------------------------------------------------- contours


def test_fill_contour_includes_the_boundary_for_corners_and_dense_edges():
    expected = np.zeros((10, 10), bool)
    expected[2:9, 3:8] = True
    np.testing.assert_array_equal(fill_contour(rect_corners(2, 8, 3, 7), (10, 10)), expected)
    np.testing.assert_array_equal(fill_contour(rect_boundary(2, 8, 3, 7), (10, 10)), expected)


def test_fill_contour_without_boundary_keeps_the_strict_interior():
    expected = np.zeros((10, 10), bool)
    expected[4:7, 5] = True
    np.testing.assert_array_equal(fill_contour(rect_corners(3, 7, 4, 6), (10, 10), boundary=False), expected)


def test_fill_contour_of_a_triangle_known_pixels():
    filled = fill_contour([(0, 0), (4, 0), (0, 4)], (6, 6))
    expected = np.array([[i + j <= 4 for j in range(6)] for i in range(6)])
    np.testing.assert_array_equal(filled, expected)


def test_fill_contour_clips_points_outside_the_slice():
    filled = fill_contour(rect_corners(-2, 2, -2, 2), (4, 4))
    assert filled[:3, :3].all() and filled.sum() == 9


# --------------------------------------------------------------------------- XML


def test_parse_xml_with_namespace_sorts_contours_points_and_non_nodules(xml):
    reading = parse_lidc_xml(xml)
    assert reading.series_uid == "1.2.840.99" and reading.n_readers == 3
    assert [m.nodule_id for m in reading.nodules] == ["A1", "B1", "A2", "A3"]
    assert [(p.kind, p.mark_id) for p in reading.points] == [("nodule<3mm", "small"), ("non-nodule", "nn1")]
    a1 = reading.nodules[0]
    assert a1.characteristics == {"subtlety": 4.0, "malignancy": 3.0, "texture": 5.0}
    assert [r.inclusion for r in a1.rois] == [True, True, False]
    assert a1.rois[0].z_mm == pytest.approx(z_of(2)) and a1.rois[0].sop_uid == SOPS[2]


def test_malformed_xml_names_the_file(tmp_path):
    (tmp_path / "bad.xml").write_text("<LidcReadMessage><ResponseHeader>")
    with pytest.raises(LidcError, match=r"bad\.xml"):
        parse_lidc_xml(tmp_path / "bad.xml")


def test_chest_xray_xml_has_no_ct_series(tmp_path):
    (tmp_path / "cxr.xml").write_text('<IdriReadMessage xmlns="http://www.nih.gov"></IdriReadMessage>')
    assert read_series_uid(tmp_path / "cxr.xml") is None


# --------------------------------------------------------------------------- grouping, consensus


def _mark(reader, box, value=True):
    x0, x1, y0, y1, k0, k1 = box
    return Mark(reader, f"{reader}{box}", {}, (x0, y0, k0),
                np.full((x1 - x0 + 1, y1 - y0 + 1, k1 - k0 + 1), value))


def test_group_marks_by_overlap_else_distance_one_mark_per_reader():
    marks = [_mark("r1", (0, 3, 0, 3, 0, 1)),     # 0: nodule X
             _mark("r2", (2, 5, 2, 5, 0, 1)),     # 1: overlaps 0
             _mark("r1", (3, 4, 3, 4, 0, 0)),     # 2: same reader as 0, overlaps 1: own nodule
             _mark("r3", (7, 10, 0, 3, 0, 1)),    # 3: no overlap; centroid 6 voxels (4.2 mm) from 0
             _mark("r2", (13, 15, 13, 15, 4, 5))]  # 4: far away
    groups = group_marks(marks, np.diag([0.7, 0.7, 1.0, 1.0]))
    # 0-1 share voxels (strongest link); 2 overlaps 1 but r1 is already in that group; 3 is
    # 4.2 mm from 0, beyond the sum of their equivalent radii (2 x 1.55 mm): alone.
    assert groups == [[0, 1], [2], [3], [4]]


def test_group_marks_links_near_centroids_without_overlap():
    a = _mark("r1", (0, 5, 0, 5, 0, 2))
    b = _mark("r2", (6, 8, 1, 4, 0, 2))  # touching, no shared voxel; centroids 4.5 mm apart
    # equivalent radii: (6 * 108 / pi)^(1/3) / 2 = 2.95 and (6 * 36 / pi)^(1/3) / 2 = 2.05
    assert group_marks([a, b], np.eye(4)) == [[0, 1]]
    far = _mark("r2", (8, 10, 1, 4, 0, 2))  # 6.5 mm > 5.0 mm
    assert group_marks([a, far], np.eye(4)) == [[0], [1]]


def test_consensus_levels_on_three_marks():
    marks = [_mark("r1", (0, 2, 0, 0, 0, 0)), _mark("r2", (1, 3, 0, 0, 0, 0)), _mark("r3", (2, 4, 0, 0, 0, 0))]
    for fraction, expected in ((0.25, [1, 1, 1, 1, 1]), (0.5, [0, 1, 1, 1, 0]), (1.0, [0, 0, 1, 0, 0])):
        offset, mask = consensus_mask(marks, consensus=fraction)
        assert offset == (0, 0, 0)
        np.testing.assert_array_equal(mask[:, 0, 0], np.array(expected, bool))


# --------------------------------------------------------------------------- one series


@pytest.mark.parametrize("consensus, needed", [(0.25, 1), (0.5, 2), (1.0, 3)])
def test_build_case_masks_voxel_for_voxel_at_each_consensus(xml, consensus, needed):
    hand = expected_reader_masks()
    count = hand["A1"].astype(int) + hand["A2"] + hand["A3"]
    expected = (count >= needed) | hand["B1"]  # B: one reader of one
    case = _case(xml, consensus=consensus)
    np.testing.assert_array_equal(case["mask"], expected.astype(np.uint8))
    rows = case["nodules"]
    assert [(r["n_readers"], r["in_mask"]) for r in rows] == [(3, 1), (1, 1)]
    agreed = np.argwhere(count >= needed)
    np.testing.assert_allclose([rows[0][f"centre_{a}_mm"] for a in "xyz"], ras_of(agreed.mean(axis=0)), atol=1e-3)
    assert rows[0]["volume_mm3"] == pytest.approx(len(agreed) * 0.7 * 0.8 * 1.5, rel=1e-6)


def test_build_case_medians_and_readers(xml):
    rows = _case(xml)["nodules"]
    assert rows[0]["readers"] == "1:111;2:222;3:333"
    assert (rows[0]["malignancy"], rows[0]["texture"], rows[0]["subtlety"]) == (4.0, 5.0, 4.0)
    assert rows[1]["malignancy"] == 2.0 and "texture" not in rows[1]


def test_min_readers_keeps_single_reader_nodules_out_of_the_mask(xml):
    case = _case(xml, min_readers=2)
    assert [r["in_mask"] for r in case["nodules"]] == [1, 0]
    assert case["mask"][11:14, 10:13, 1].sum() == 0


def test_points_go_to_their_own_table_never_to_the_mask(xml):
    case = _case(xml)
    points = case["points"]
    assert [(p["kind"], p["slice_k"]) for p in points] == [("nodule<3mm", 4), ("non-nodule", 0)]
    np.testing.assert_allclose([points[0][f"centre_{a}_mm"] for a in "xyz"], ras_of([12, 2, 4]), atol=1e-4)
    assert case["mask"][12, 2, 4] == 0 and case["mask"][5, 12, 0] == 0


def test_roi_on_a_slice_the_series_lacks_names_the_xml(tmp_path):
    sessions = [{"reader": "1", "nodules": [{"id": "x", "rois": [(40, "1.2.nope", rect_corners(1, 3, 1, 3), True)]}]}]
    xml = write_xml(tmp_path / "stray.xml", "1.2.840.99", sessions)
    with pytest.raises(LidcError, match=r"stray\.xml.*imageZposition=-40\.0.*no such slice"):
        _case(xml)


def test_bad_consensus_and_min_readers(xml):
    with pytest.raises(ValueError, match="--consensus"):
        _case(xml, consensus=0.0)
    with pytest.raises(ValueError, match="--min-readers"):
        _case(xml, min_readers=0)
