"""segmentation.nodule_attributes: parsing, the lesion join and recall by attribute."""
import json

import numpy as np
import pytest

from segmentation import metrics
from segmentation.nodule_attributes import (
    NoduleRow,
    find_dataset_nodule_table,
    join_case,
    join_mask,
    parse_nodule_csv,
    parse_nodules_json,
    read_nodule_table,
    recall_by_attribute,
    rows_by_case,
    summarize_joins,
)

SHAPE = (8, 20, 8)
# two 5x5x5 cubes (125 voxels: equivalent radius 3.10 mm, tolerance 3.10 + 0.87 mm at 1 mm
# voxels) along j: lesion 1 at j 1..5 (centroid j=3), a one-voxel gap at j=6, lesion 2 at
# j 7..11 (centroid j=9); both centred at i = k = 3
AFFINES = {
    "shifted": np.array([[1.0, 0, 0, -10], [0, 1, 0, 20], [0, 0, 1, 30], [0, 0, 0, 1]]),
    "flipped": np.array([[-1.0, 0, 0, 10], [0, 1, 0, -5], [0, 0, -1, 30], [0, 0, 0, 1]]),
}


def _cubes():
    mask = np.zeros(SHAPE, dtype=bool)
    mask[1:6, 1:6, 1:6] = True
    mask[1:6, 7:12, 1:6] = True
    return mask


def _lesions(mask, affine, connectivity=26):
    labels, n = metrics.label_components(mask, connectivity=connectivity)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    return labels, metrics.lesion_properties(labels, n, spacing_mm=spacing, affine=affine)


def _world(affine, voxel):
    return tuple(float(v) for v in affine[:3, :3] @ np.asarray(voxel, float) + affine[:3, 3])


def _row(index, case_id, centre, **attributes):
    return NoduleRow(index=index, row=f"row {index + 2}", case_id=case_id,
                     centre_ras_mm=centre, attributes=attributes)


# --------------------------------------------------------------------------- join
@pytest.mark.parametrize("affine", AFFINES.values(), ids=AFFINES.keys())
def test_join_known_answers(affine):
    labels, lesions = _lesions(_cubes(), affine)
    assert [lesion["id"] for lesion in lesions] == [1, 2]
    rows = [
        _row(0, "c", _world(affine, (3, 3, 3)), kind="solid"),        # inside lesion 1
        _row(1, "c", _world(affine, (3, 11.6, 3)), kind="gg"),        # 0.6 voxel past lesion 2
        _row(2, "c", _world(affine, (3, 18, 3)), kind="solid"),       # 9 mm from lesion 2
    ]
    join = join_case(rows, labels=labels, lesions=lesions, affine=affine)
    assert join.by_lesion[1]["row"] is rows[0] and join.by_lesion[1]["how"] == "inside"
    assert join.by_lesion[1]["distance_mm"] == pytest.approx(0.0)
    assert join.by_lesion[2]["row"] is rows[1] and join.by_lesion[2]["how"] == "near"
    assert join.by_lesion[2]["distance_mm"] == pytest.approx(2.6)
    assert [u["row"] for u in join.unmatched] == ["row 4"]
    assert "lesion 2 at 9.0 mm" in join.unmatched[0]["reason"]


@pytest.mark.parametrize("j, lesion_id", [(5.6, 1), (6.4, 2)])
@pytest.mark.parametrize("affine", AFFINES.values(), ids=AFFINES.keys())
def test_centre_between_two_lesions_goes_to_the_nearer_centroid(affine, j, lesion_id):
    # both points round to the gap voxel j=6 and lie within both lesions' tolerances (3.97 mm)
    labels, lesions = _lesions(_cubes(), affine)
    row = _row(0, "c", _world(affine, (3, j, 3)))
    join = join_case([row], labels=labels, lesions=lesions, affine=affine)
    assert list(join.by_lesion) == [lesion_id] and join.by_lesion[lesion_id]["how"] == "near"
    assert join.unmatched == []


def test_centre_just_outside_the_tolerance_is_unmatched():
    affine = AFFINES["shifted"]
    labels, lesions = _lesions(_cubes(), affine)
    tolerance = lesions[1]["diameter_mm"] / 2 + 0.5 * np.sqrt(3.0)
    inside_tol = _row(0, "c", _world(affine, (3, 9 + tolerance - 0.01, 3)))
    outside_tol = _row(1, "c", _world(affine, (3, 9 + tolerance + 0.01, 3)))
    assert join_case([inside_tol], labels=labels, lesions=lesions,
                     affine=affine).by_lesion[2]["how"] == "near"
    join = join_case([outside_tol], labels=labels, lesions=lesions, affine=affine)
    assert join.by_lesion == {} and len(join.unmatched) == 1


def test_two_rows_on_one_lesion_keep_the_inside_row_and_report_the_other():
    affine = AFFINES["shifted"]
    labels, lesions = _lesions(_cubes(), affine)
    near = _row(0, "c", _world(affine, (3, -0.5, 3)))          # near lesion 1, first in file
    inside = _row(1, "c", _world(affine, (2, 2, 2)))           # inside lesion 1
    join = join_case([near, inside], labels=labels, lesions=lesions, affine=affine)
    assert join.by_lesion[1]["row"] is inside
    assert len(join.unmatched) == 1 and join.unmatched[0]["row"] == "row 2"
    assert "duplicate" in join.unmatched[0]["reason"] and "row 3" in join.unmatched[0]["reason"]


def test_centre_outside_the_scan_can_still_be_near():
    affine = AFFINES["shifted"]
    mask = np.zeros(SHAPE, dtype=bool)
    mask[0:3, 0:3, 0:3] = True                                  # 27 voxels in the corner
    labels, lesions = _lesions(mask, affine)
    near = _row(0, "c", _world(affine, (-1.0, 1, 1)))           # 2 mm from the centroid
    far = _row(1, "c", _world(affine, (-6.0, 1, 1)))
    join = join_case([near, far], labels=labels, lesions=lesions, affine=affine)
    assert join.by_lesion[1]["row"] is near and join.by_lesion[1]["how"] == "near"
    assert join.unmatched[0]["reason"].startswith("centre outside the scan")


def test_join_on_a_case_without_lesions_reports_every_row():
    labels = np.zeros(SHAPE, dtype=np.int32)
    rows = [_row(0, "c", (0.0, 0.0, 0.0)), _row(1, "c", (5.0, 5.0, 5.0))]
    join = join_case(rows, labels=labels, lesions=[], affine=np.eye(4))
    assert join.by_lesion == {}
    assert [u["reason"] for u in join.unmatched] == ["the case has no truth lesion"] * 2


def test_join_without_rows_is_empty():
    labels, lesions = _lesions(_cubes(), AFFINES["shifted"])
    join = join_case([], labels=labels, lesions=lesions, affine=AFFINES["shifted"])
    assert join.by_lesion == {} and join.unmatched == []


def test_join_follows_the_connectivity_of_the_labels():
    # two voxels touching at a corner: one lesion at 26-connectivity, two at 6
    affine = np.eye(4)
    mask = np.zeros((4, 4, 4), dtype=bool)
    mask[1, 1, 1] = mask[2, 2, 2] = True
    row = _row(0, "c", (2.0, 2.0, 2.0))
    labels26, lesions26 = _lesions(mask, affine, 26)
    labels6, lesions6 = _lesions(mask, affine, 6)
    assert list(join_case([row], labels=labels26, lesions=lesions26,
                          affine=affine).by_lesion) == [1]
    assert list(join_case([row], labels=labels6, lesions=lesions6,
                          affine=affine).by_lesion) == [2]


def test_join_rejects_lesions_that_do_not_match_the_labels():
    labels, lesions = _lesions(_cubes(), AFFINES["shifted"])
    with pytest.raises(ValueError, match="lesion ids"):
        join_case([], labels=labels, lesions=lesions[:1], affine=AFFINES["shifted"])
    with pytest.raises(ValueError, match="affine"):
        join_case([], labels=labels, lesions=lesions, affine=np.zeros((4, 4)))


# --------------------------------------------------------------------------- CSV
def test_csv_parses_attributes_frames_and_empty_cells():
    text = ("case_id,x_mm,y_mm,z_mm,kind,frame,malignancy\n"
            "a,1,2,3,solid,,4\n"
            "\n"
            "b, -1.5 ,2,3,ground_glass,LPS,\n")
    table = parse_nodule_csv(text, path="t.csv")
    assert table.attribute_names == ("kind", "malignancy")
    first, second = table.rows
    assert first.centre_ras_mm == (1.0, 2.0, 3.0) and first.row == "row 2"
    assert first.attributes == {"kind": "solid", "malignancy": "4"}
    assert second.centre_ras_mm == (1.5, -2.0, 3.0) and second.row == "row 4"
    assert second.attributes == {"kind": "ground_glass"}


def test_lps_and_ras_rows_of_the_same_point_join_the_same_lesion():
    affine = AFFINES["flipped"]
    labels, lesions = _lesions(_cubes(), affine)
    x, y, z = _world(affine, (3, 11.6, 3))
    ras = parse_nodule_csv(f"case_id,x_mm,y_mm,z_mm\nc,{x},{y},{z}\n")
    lps_flag = parse_nodule_csv(f"case_id,x_mm,y_mm,z_mm\nc,{-x},{-y},{z}\n", frame="lps")
    lps_column = parse_nodule_csv(f"case_id,x_mm,y_mm,z_mm,frame\nc,{-x},{-y},{z},lps\n")
    as_ras_but_lps = parse_nodule_csv(f"case_id,x_mm,y_mm,z_mm\nc,{-x},{-y},{z}\n")
    for table in (ras, lps_flag, lps_column):
        assert table.rows[0].centre_ras_mm == pytest.approx((x, y, z))
        join = join_case(table.rows, labels=labels, lesions=lesions, affine=affine)
        assert list(join.by_lesion) == [2]
    wrong = join_case(as_ras_but_lps.rows, labels=labels, lesions=lesions, affine=affine)
    assert wrong.by_lesion == {} and len(wrong.unmatched) == 1


@pytest.mark.parametrize("text, row, column", [
    ("case_id,x_mm,z_mm\na,1,2\n", "row 1", "y_mm"),
    ("case_id,x_mm,y_mm,z_mm\na,1,2,3\nb,1,two,3\n", "row 3", "y_mm"),
    ("case_id,x_mm,y_mm,z_mm\na,1,2,nan\n", "row 2", "z_mm"),
    ("case_id,x_mm,y_mm,z_mm\na,1,2,\n", "row 2", "z_mm"),
    ("case_id,x_mm,y_mm,z_mm\n,1,2,3\n", "row 2", "case_id"),
    ("case_id,x_mm,y_mm,z_mm,frame\na,1,2,3,xyz\n", "row 2", "frame"),
    ("case_id,x_mm,y_mm,z_mm,kind\na,1,2,3\n", "row 2", "kind"),
    ("case_id,x_mm,y_mm,z_mm,x_mm\na,1,2,3,4\n", "row 1", "x_mm"),
])
def test_bad_csv_names_the_file_row_and_column(text, row, column):
    with pytest.raises(ValueError, match=rf"'bad\.csv' {row}, column '{column}'"):
        parse_nodule_csv(text, path="bad.csv")


def test_empty_csv_is_an_error():
    with pytest.raises(ValueError, match="'empty.csv'.*empty file"):
        parse_nodule_csv("", path="empty.csv")


def test_unknown_case_id_names_the_file_row_and_column():
    table = parse_nodule_csv("case_id,x_mm,y_mm,z_mm\na,1,2,3\nzzz,1,2,3\n", path="n.csv")
    with pytest.raises(ValueError, match=r"'n\.csv' row 3, column 'case_id'.*'zzz'"):
        rows_by_case(table, ["a", "b"])
    grouped = rows_by_case(parse_nodule_csv("case_id,x_mm,y_mm,z_mm\na,1,2,3\n"), ["a", "b"])
    assert [len(grouped["a"]), len(grouped["b"])] == [1, 0]


def test_bad_frame_argument_is_an_error():
    with pytest.raises(ValueError, match="frame"):
        parse_nodule_csv("case_id,x_mm,y_mm,z_mm\n", frame="xyz")


# --------------------------------------------------------------------------- nodules.json
def _phantom_doc():
    return {
        "coordinate_system": "RAS+ world mm (NIfTI/nibabel; negate x and y for LPS)",
        "cases": {"phantom_000": {}, "phantom_001": {}, "phantom_test_000": {}},
        "nodules": [
            {"case_id": "phantom_000", "id": 1, "centre_mm": [1.0, 2.0, 3.0],
             "centre_voxel": [9, 9, 9], "diameter_mm": 5.1, "kind": "solid",
             "location": "juxtapleural", "touches_pleura": True, "mean_hu": 20.5},
            {"case_id": "phantom_test_000", "id": 1, "centre_mm": [4.0, 5.0, 6.0],
             "centre_voxel": [1, 1, 1], "diameter_mm": 3.2, "kind": "ground_glass",
             "location": "intraparenchymal", "touches_pleura": False, "mean_hu": -600.0},
        ],
    }


def test_nodules_json_takes_string_and_bool_fields_as_attributes(tmp_path):
    path = tmp_path / "nodules.json"
    path.write_text(json.dumps(_phantom_doc()))
    table = read_nodule_table(path)
    assert table.format == "nodules.json"
    assert table.attribute_names == ("kind", "location", "touches_pleura")
    assert table.rows[1].attributes == {"kind": "ground_glass", "location": "intraparenchymal",
                                        "touches_pleura": "false"}
    assert table.rows[1].centre_ras_mm == (4.0, 5.0, 6.0) and table.rows[1].row == (
        "row 2 (nodules[1])")
    # another split's nodules are skipped; declared cases without nodules get []
    grouped = rows_by_case(table, ["phantom_test_000", "phantom_001"])
    assert [r.index for r in grouped["phantom_test_000"]] == [1] and grouped["phantom_001"] == []
    with pytest.raises(ValueError, match="none of"):
        rows_by_case(table, ["other_case"])


@pytest.mark.parametrize("key, value, column", [
    ("centre_mm", [1.0, 2.0], "centre_mm"),
    ("centre_mm", [1.0, "x", 3.0], "centre_mm"),
    ("case_id", None, "case_id"),
    ("case_id", "phantom_999", "case_id"),
])
def test_bad_nodules_json_names_the_file_row_and_column(key, value, column):
    doc = _phantom_doc()
    doc["nodules"][1][key] = value
    with pytest.raises(ValueError,
                       match=rf"'n\.json' row 2 \(nodules\[1\]\), column '{column}'"):
        parse_nodules_json(doc, path="n.json")


def test_nodules_json_frame_must_agree_with_its_coordinate_system():
    assert parse_nodules_json(_phantom_doc(), frame="ras").rows[0].centre_ras_mm == (1, 2, 3)
    with pytest.raises(ValueError, match="coordinate_system"):
        parse_nodules_json(_phantom_doc(), path="n.json", frame="lps")


def test_read_nodule_table_reports_bad_json_and_missing_file(tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ValueError, match="x.json"):
        read_nodule_table(tmp_path / "x.json")
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        read_nodule_table(tmp_path / "missing.csv")


def test_read_nodule_table_reads_a_csv_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "n.csv"
    path.write_bytes("case_id,x_mm,y_mm,z_mm\na,1,2,3\n".encode("utf-8-sig"))
    assert read_nodule_table(path).rows[0].case_id == "a"


def test_find_dataset_nodule_table(tmp_path):
    assert find_dataset_nodule_table(tmp_path) is None
    (tmp_path / "nodules.json").write_text("{}")
    assert find_dataset_nodule_table(tmp_path) == tmp_path / "nodules.json"
    (tmp_path / "table.json").write_text("{}")
    (tmp_path / "dataset.json").write_text(json.dumps({"nodules": "table.json"}))
    assert find_dataset_nodule_table(tmp_path) == tmp_path / "table.json"


# --------------------------------------------------------------------------- recall
def test_recall_by_attribute_known_values():
    lesions = [
        {"detected": True, "attributes": {"kind": "solid"}},
        {"detected": False, "attributes": {"kind": "ground_glass", "location": "pleura"}},
        {"detected": True, "attributes": {"kind": "ground_glass"}},
        {"detected": False, "attributes": {}},                    # a lesion without a row
    ]
    out = recall_by_attribute(lesions, attribute_names=["kind", "location", "texture"])
    assert out == {
        "kind": {"ground_glass": {"recall": 0.5, "count": 2, "detected": 1},
                 "solid": {"recall": 1.0, "count": 1, "detected": 1}},
        "location": {"pleura": {"recall": 0.0, "count": 1, "detected": 0}},
        "texture": {},
    }


def test_recall_by_attribute_leaves_out_attributes_with_too_many_values():
    lesions = [{"detected": True, "attributes": {"id": str(i), "kind": "solid"}}
               for i in range(3)]
    out = recall_by_attribute(lesions, attribute_names=["id", "kind"], max_values=2)
    assert list(out) == ["kind"]


def test_recall_by_attribute_without_lesions_is_empty_per_attribute():
    assert recall_by_attribute([], attribute_names=["kind"]) == {"kind": {}}


# --------------------------------------------------------------------------- with evaluate_case
def test_join_mask_and_summarize_joins_follow_evaluate_case():
    affine = AFFINES["flipped"]
    truth = _cubes()
    pred = np.zeros(SHAPE, dtype=bool)
    pred[2:4, 8:10, 2:4] = True                                 # finds lesion 2 only
    result = metrics.evaluate_case(truth, pred, spacing_mm=(1, 1, 1), affine=affine,
                                   case_id="c")
    table = parse_nodule_csv(
        "case_id,x_mm,y_mm,z_mm,kind\n"
        "c,{},{},{},solid\n".format(*_world(affine, (3, 3, 3)))
        + "c,{},{},{},ground_glass\n".format(*_world(affine, (3, 9, 3)))
        + "c,{},{},{},solid\n".format(*_world(affine, (3, 30, 3))), path="t.csv")
    join = join_mask(table.rows, mask_true=truth, lesions=result.lesions, affine=affine)
    empty = join_mask([], mask_true=np.zeros(SHAPE, bool), lesions=[], affine=affine)
    other = metrics.evaluate_case(np.zeros(SHAPE, bool), np.zeros(SHAPE, bool),
                                  spacing_mm=(1, 1, 1), affine=affine, case_id="d")
    by_attribute, info = summarize_joins(table, [result, other], [join, empty])
    assert by_attribute == {"kind": {
        "ground_glass": {"recall": 1.0, "count": 1, "detected": 1},
        "solid": {"recall": 0.0, "count": 1, "detected": 0}}}
    assert (info["n_rows"], info["n_rows_evaluated"], info["n_matched_inside"],
            info["n_unmatched"], info["n_lesions_without_row"]) == (3, 3, 2, 1, 0)
    assert info["unmatched"][0]["row"] == "row 4"
    with pytest.raises(ValueError, match="one join per result"):
        summarize_joins(table, [result], [])


@pytest.mark.parametrize("connectivity", [6, 26])
def test_join_mask_on_the_bounding_box_equals_join_case_on_full_labels(connectivity):
    rng = np.random.default_rng(0)
    mask = np.zeros((12, 14, 10), dtype=bool)
    mask[3:10, 4:12, 2:8] = rng.random((7, 8, 6)) < 0.15      # many small components
    affine = AFFINES["flipped"]
    labels, lesions = _lesions(mask, affine, connectivity)
    centres = [np.asarray(lesion["centroid_mm"]) + rng.uniform(-1.5, 1.5, 3)
               for lesion in lesions] + [_world(affine, rng.uniform(-2, 14, 3)) for _ in range(10)]
    rows = [_row(i, "c", tuple(centre)) for i, centre in enumerate(centres)]
    full = join_case(rows, labels=labels, lesions=lesions, affine=affine)
    boxed = join_mask(rows, mask_true=mask, lesions=lesions, affine=affine,
                      connectivity=connectivity)
    assert len(full.by_lesion) > 3 and len(full.unmatched) > 3
    assert any(u["reason"].startswith("centre outside the scan") for u in full.unmatched)
    assert {k: (v["row"].index, v["how"]) for k, v in boxed.by_lesion.items()} == {
        k: (v["row"].index, v["how"]) for k, v in full.by_lesion.items()}
    assert boxed.unmatched == full.unmatched


def test_join_mask_on_an_empty_mask_reports_the_row():
    join = join_mask([_row(0, "c", (1.0, 1.0, 1.0))], mask_true=np.zeros(SHAPE, bool),
                     lesions=[], affine=np.eye(4))
    assert join.by_lesion == {} and join.unmatched[0]["reason"] == "the case has no truth lesion"
