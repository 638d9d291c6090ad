"""pipelines.evaluate on tiny NIfTI phantoms built in tmp_path."""
import csv
import json
import math
import re

import nibabel as nib
import numpy as np
import pytest

from pipelines.evaluate import REPORT_FILES, EvaluationError, evaluate, find_pairs
from segmentation.io import VolumeError

SHAPE = (32, 32, 32)
AFFINE = np.array([[1.0, 0, 0, -16], [0, 1, 0, -20], [0, 0, 1, 5], [0, 0, 0, 1]])


def _ball(centre_mm, radius_mm, *, shape=SHAPE, affine=AFFINE):
    """Mask of a world-space ball sampled at the voxel centres of (shape, affine)."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    return (np.linalg.norm(world - np.asarray(centre_mm), axis=-1) <= radius_mm).astype(np.uint8)


def _write(path, array, affine=AFFINE, dtype=np.uint8):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array).astype(dtype), affine), str(path))
    return path


# world centres (mm) and radii of two nodules: 8 mm and 4 mm diameter
NODULES = [((-6.0, -10.0, 14.0), 4.0), ((4.0, -2.0, 26.0), 2.0)]


@pytest.fixture
def phantom(tmp_path):
    """3 truth cases; case_a exact ({case}_mask), case_b misses one nodule and adds a FP
    (plain name), case_c has no prediction."""
    truth, pred, probs = tmp_path / "truth", tmp_path / "pred", tmp_path / "probs"
    masks = {}
    for case in ("case_a", "case_b", "case_c"):
        mask = _ball(*NODULES[0]) | _ball(*NODULES[1])
        masks[case] = mask
        _write(truth / f"{case}.nii.gz", mask)
    _write(pred / "case_a_mask.nii.gz", masks["case_a"])
    pred_b = _ball(*NODULES[0]) | _ball((8.0, 8.0, 30.0), 2.0)
    _write(pred / "case_b.nii.gz", pred_b)
    _write(probs / "case_a_probs.nii.gz", masks["case_a"] * 0.9, dtype=np.float32)
    _write(probs / "case_b_probs.nii.gz", pred_b * np.where(_ball(*NODULES[0]), 0.8, 0.6),
           dtype=np.float32)
    return tmp_path


def _read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_phantom_report_writes_every_file(phantom):
    out = phantom / "report"
    summary = evaluate(pred_dir=phantom / "pred", truth_dir=phantom / "truth",
                       probs_dir=phantom / "probs", out_dir=out)
    for name in REPORT_FILES:
        assert (out / name).is_file(), name
    for png in ("froc.png", "recall_by_size.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == {k: v for k, v in summary.items() if k != "out_dir"}
    assert on_disk["n_cases"] == 3 and on_disk["n_lesions"] == 6
    # found: case_a 2, case_b 1 (the 8 mm one), case_c 0
    assert on_disk["lesion_recall"] == pytest.approx(3 / 6)
    assert on_disk["fp_per_scan"] == pytest.approx(1 / 3)
    assert on_disk["lesion_precision"] == pytest.approx(3 / 4)
    assert on_disk["small_lesion_recall"] == pytest.approx(3 / 6)
    assert on_disk["recall_by_size"]["3-6"]["count"] == 3
    assert on_disk["recall_by_size"]["3-6"]["recall"] == pytest.approx(1 / 3)
    assert on_disk["recall_by_size"]["6-10"]["recall"] == pytest.approx(2 / 3)
    assert on_disk["missing_predictions"] == ["case_c"]
    assert on_disk["cpm"] is not None and set(on_disk["froc"]) == {
        "0.125", "0.25", "0.5", "1", "2", "4", "8"}

    cases = _read_csv(out / "cases.csv")
    assert [c["case_id"] for c in cases] == ["case_a", "case_b", "case_c"]
    assert float(cases[0]["dice"]) == 1.0 and cases[2]["prediction_missing"] == "true"
    assert cases[2]["alignment"] == "missing prediction" and float(cases[2]["dice"]) == 0.0
    lesions = _read_csv(out / "lesions.csv")
    assert len(lesions) == 6 + 1
    fp = [row for row in lesions if row["kind"] == "false_positive"]
    assert len(fp) == 1 and fp[0]["case_id"] == "case_b"
    assert float(fp[0]["max_probability"]) == pytest.approx(0.6)
    assert [float(fp[0][f"centroid_{a}_mm"]) for a in "xyz"] == pytest.approx([8, 8, 30])
    report = (out / "report.md").read_text()
    for needle in ("Matching criterion", "26-connected", "Empty cases", "case_c", "CPM"):
        assert needle in report


def test_existing_report_is_not_overwritten(phantom):
    out = phantom / "report"
    evaluate(pred_dir=phantom / "pred", truth_dir=phantom / "truth", out_dir=out)
    before = (out / "summary.json").read_text()
    with pytest.raises(EvaluationError, match="summary.json"):
        evaluate(pred_dir=phantom / "pred", truth_dir=phantom / "truth", out_dir=out,
                 connectivity=6)
    assert (out / "summary.json").read_text() == before
    summary = evaluate(pred_dir=phantom / "pred", truth_dir=phantom / "truth", out_dir=out,
                       overwrite=True, connectivity=6)
    assert summary["settings"]["connectivity"] == 6 and summary["cpm"] is None


def test_prediction_on_another_grid_of_the_same_world_space_is_resampled(tmp_path):
    truth = _ball((0.0, -4.0, 20.0), 5.0)
    _write(tmp_path / "truth" / "c1.nii.gz", truth)
    # 16^3 grid of 2 mm voxels covering the same world box: origin shifted by half a voxel
    coarse = AFFINE.copy()
    coarse[:3, :3] *= 2
    coarse[:3, 3] += 0.5
    pred = _ball((0.0, -4.0, 20.0), 5.0, shape=(16, 16, 16), affine=coarse)
    _write(tmp_path / "pred" / "c1_mask.nii.gz", pred, affine=coarse)
    summary = evaluate(pred_dir=tmp_path / "pred", truth_dir=tmp_path / "truth",
                       out_dir=tmp_path / "out")
    assert summary["resampled_cases"] == ["c1"] and summary["lesion_recall"] == 1.0
    assert summary["dice_mean"] > 0.8
    assert _read_csv(tmp_path / "out" / "cases.csv")[0]["alignment"] == "resampled"
    assert "resampled onto the truth grid" in (tmp_path / "out" / "report.md").read_text()
    assert "c1" in (tmp_path / "out" / "report.md").read_text().split("resampled onto")[1]


def test_prediction_stored_in_another_orientation_is_the_same_grid(tmp_path):
    truth = _ball((0.0, -4.0, 20.0), 5.0)
    _write(tmp_path / "truth" / "c1.nii.gz", truth)
    flip = AFFINE.copy()
    flip[0, 0] = -1.0
    flip[0, 3] = AFFINE[0, 3] + SHAPE[0] - 1  # same voxel centres, I axis stored reversed
    _write(tmp_path / "pred" / "c1.nii.gz", truth[::-1], affine=flip)
    summary = evaluate(pred_dir=tmp_path / "pred", truth_dir=tmp_path / "truth",
                       out_dir=tmp_path / "out")
    assert summary["dice_mean"] == 1.0 and summary["resampled_cases"] == []


def test_incompatible_geometry_names_the_case(tmp_path):
    _write(tmp_path / "truth" / "lung_7.nii.gz", _ball((0, -4, 20), 5))
    shifted = AFFINE.copy()
    shifted[:3, 3] += 10.0
    _write(tmp_path / "pred" / "lung_7_mask.nii.gz", _ball((0, -4, 20), 5), affine=shifted)
    with pytest.raises(EvaluationError, match="lung_7.*truth.*prediction"):
        evaluate(pred_dir=tmp_path / "pred", truth_dir=tmp_path / "truth",
                 out_dir=tmp_path / "out")
    assert not (tmp_path / "out" / "summary.json").exists()


def test_missing_prediction_is_counted_empty_and_listed(phantom):
    pairs = find_pairs(pred_dir=phantom / "pred", truth_dir=phantom / "truth")
    assert [(p["case_id"], p["pred"] is None) for p in pairs] == [
        ("case_a", False), ("case_b", False), ("case_c", True)]


def test_prediction_without_truth_is_an_error(phantom):
    _write(phantom / "pred" / "case_z_mask.nii.gz", np.zeros(SHAPE))
    with pytest.raises(EvaluationError, match="case_z_mask.nii.gz"):
        evaluate(pred_dir=phantom / "pred", truth_dir=phantom / "truth",
                 out_dir=phantom / "out")


def test_duplicate_case_ids_are_an_error(phantom):
    _write(phantom / "pred" / "case_a.nii.gz", np.zeros(SHAPE))  # next to case_a_mask.nii.gz
    with pytest.raises(EvaluationError, match="duplicate case id 'case_a'"):
        evaluate(pred_dir=phantom / "pred", truth_dir=phantom / "truth",
                 out_dir=phantom / "out")
    _write(phantom / "truth" / "case_b.nii", np.zeros(SHAPE))  # next to case_b.nii.gz
    with pytest.raises(EvaluationError, match="truth_dir.*case_b"):
        find_pairs(pred_dir=phantom / "pred", truth_dir=phantom / "truth")


def test_non_binary_mask_names_the_file(phantom):
    _write(phantom / "pred" / "case_a_mask.nii.gz", _ball(*NODULES[0]) * 2)
    with pytest.raises(VolumeError, match="case_a_mask.nii.gz"):
        evaluate(pred_dir=phantom / "pred", truth_dir=phantom / "truth",
                 out_dir=phantom / "out")


def test_nan_probabilities_name_the_file(phantom):
    probs = np.zeros(SHAPE, dtype=np.float32)
    probs[3, 3, 3] = np.nan
    _write(phantom / "probs" / "case_b_probs.nii.gz", probs, dtype=np.float32)
    with pytest.raises(ValueError, match="case_b_probs.nii.gz"):
        evaluate(pred_dir=phantom / "pred", truth_dir=phantom / "truth",
                 probs_dir=phantom / "probs", out_dir=phantom / "out")


def test_probabilities_out_of_range_name_the_case(phantom):
    _write(phantom / "probs" / "case_b_probs.nii.gz", np.full(SHAPE, 3.0), dtype=np.float32)
    with pytest.raises(EvaluationError, match="case_b"):
        evaluate(pred_dir=phantom / "pred", truth_dir=phantom / "truth",
                 probs_dir=phantom / "probs", out_dir=phantom / "out")


def test_prediction_without_probability_map_is_an_error(phantom):
    (phantom / "probs" / "case_b_probs.nii.gz").unlink()
    with pytest.raises(EvaluationError, match="case_b"):
        evaluate(pred_dir=phantom / "pred", truth_dir=phantom / "truth",
                 probs_dir=phantom / "probs", out_dir=phantom / "out")


@pytest.mark.parametrize("empty", ["truth", "pred", "probs"])
def test_empty_folders_are_an_error(phantom, empty):
    folder = phantom / empty
    for path in folder.iterdir():
        path.unlink()
    with pytest.raises(EvaluationError, match=f"{empty}_dir"):
        evaluate(pred_dir=phantom / "pred", truth_dir=phantom / "truth",
                 probs_dir=phantom / "probs", out_dir=phantom / "out")


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(EvaluationError, match="truth_dir"):
        evaluate(pred_dir=tmp_path, truth_dir=tmp_path / "nope", out_dir=tmp_path / "out")


def test_bad_options_fail_before_reading(phantom):
    with pytest.raises(ValueError, match="connectivity"):
        evaluate(pred_dir=phantom / "pred", truth_dir=phantom / "truth",
                 out_dir=phantom / "out", connectivity=8)
    with pytest.raises(ValueError, match="criterion"):
        evaluate(pred_dir=phantom / "pred", truth_dir=phantom / "truth",
                 out_dir=phantom / "out", match="centre")


def test_iou_matching_and_size_bins_are_passed_through(phantom):
    summary = evaluate(pred_dir=phantom / "pred", truth_dir=phantom / "truth",
                       out_dir=phantom / "out", match="iou", iou_threshold=0.5,
                       size_bins_mm=(5.0,), small_lesion_mm=6.0, tolerance_mm=2.0)
    assert summary["settings"] == {"connectivity": 26, "criterion": "iou",
                                   "iou_threshold": 0.5, "tolerance_mm": 2.0}
    assert list(summary["recall_by_size"]) == ["<5", ">=5"]
    assert summary["small_lesion_recall"] == pytest.approx(1 / 3)  # 4 mm ones: only case_a
    assert "pair IoU >= 0.5" in (phantom / "out" / "report.md").read_text()


def test_all_empty_dataset(tmp_path):
    for case in ("e1", "e2"):
        _write(tmp_path / "truth" / f"{case}.nii.gz", np.zeros(SHAPE))
        _write(tmp_path / "pred" / f"{case}_mask.nii.gz", np.zeros(SHAPE))
    summary = evaluate(pred_dir=tmp_path / "pred", truth_dir=tmp_path / "truth",
                       out_dir=tmp_path / "out")
    assert summary["n_empty_cases"] == 2 and summary["dice_mean"] is None
    assert summary["lesion_recall"] is None and summary["fp_per_scan"] == 0.0
    for name in REPORT_FILES:
        assert (tmp_path / "out" / name).is_file()


def test_cli_evaluate_writes_the_report(phantom, capsys):
    from pipelines.cli import main

    out = phantom / "cli_report"
    code = main(["evaluate", "--pred", str(phantom / "pred"), "--truth", str(phantom / "truth"),
                 "--probs", str(phantom / "probs"), "--out", str(out)])
    assert code == 0
    for name in REPORT_FILES:
        assert (out / name).is_file(), name
    printed = json.loads(capsys.readouterr().out)
    assert printed["n_cases"] == 3 and not math.isnan(printed["cpm"])


def test_masks_and_probability_maps_in_one_folder(phantom):
    """`lungseg predict --probs` writes {case}_mask and {case}_probs side by side."""
    shared = phantom / "pred"
    for case in ("case_a", "case_b"):
        (phantom / "probs" / f"{case}_probs.nii.gz").rename(shared / f"{case}_probs.nii.gz")
    summary = evaluate(pred_dir=shared, truth_dir=phantom / "truth", probs_dir=shared,
                       out_dir=phantom / "report")
    assert summary["cpm"] is not None
    assert summary["n_cases"] == 3


# --------------------------------------------------------------------------- --nodules
# rows of the phantom fixture: case_b misses the 4 mm nodule, case_c has no prediction;
# case_b's solid row is given in LPS, its ground-glass row 2.6 mm off the nodule's centre
# (outside the ball, within its radius + half a voxel); case_c's last row is far from both
NODULE_CSV = ("case_id,x_mm,y_mm,z_mm,frame,kind,malignancy\n"
              "case_a,-6,-10,14,,solid,3\n"
              "case_a,4,-2,26,,ground_glass,\n"
              "case_b,6,10,14,lps,solid,4\n"
              "case_b,4,-2,28.6,,ground_glass,\n"
              "case_c,-6,-10,14,ras,solid,\n"
              "case_c,4,-2,26,,ground_glass,\n"
              "case_c,10,10,10,,solid,5\n")


def _nodule_csv(folder, text=NODULE_CSV):
    path = folder / "nodules.csv"
    path.write_text(text)
    return path


def test_nodule_table_gives_recall_by_attribute(phantom, caplog):
    out = phantom / "report"
    with caplog.at_level("WARNING", logger="pipelines.evaluate"):
        summary = evaluate(pred_dir=phantom / "pred", truth_dir=phantom / "truth", out_dir=out,
                           nodules=_nodule_csv(phantom))
    assert summary["recall_by_attribute"] == {
        "kind": {"ground_glass": {"recall": pytest.approx(1 / 3), "count": 3, "detected": 1},
                 "solid": {"recall": pytest.approx(2 / 3), "count": 3, "detected": 2}},
        "malignancy": {"3": {"recall": 1.0, "count": 1, "detected": 1},
                       "4": {"recall": 1.0, "count": 1, "detected": 1}},
    }
    info = summary["nodule_attributes"]
    assert (info["n_rows"], info["n_matched_inside"], info["n_matched_near"],
            info["n_unmatched"], info["n_lesions_without_row"]) == (7, 5, 1, 1, 0)
    assert info["unmatched"][0]["case_id"] == "case_c" and info["unmatched"][0]["row"] == "row 8"
    assert "row 8" in caplog.text and "matches no truth lesion" in caplog.text
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["recall_by_attribute"]["kind"]["solid"]["detected"] == 2

    lesions = [r for r in _read_csv(out / "lesions.csv") if r["kind"] == "lesion"]
    by_key = {(r["case_id"], r["attr_kind"]): r for r in lesions}
    assert len(by_key) == 6
    near = by_key[("case_b", "ground_glass")]
    assert (near["nodule_row"], near["nodule_match"], near["detected"]) == ("row 5", "near",
                                                                              "false")
    assert float(near["nodule_distance_mm"]) == pytest.approx(2.6, abs=0.01)
    assert by_key[("case_b", "solid")]["attr_malignancy"] == "4"
    assert by_key[("case_a", "ground_glass")]["attr_malignancy"] == ""
    report = (out / "report.md").read_text()
    for needle in ("## Lesion recall by attribute", "### kind", "| ground_glass | 0.333 | 1 / 3 |",
                   "### malignancy", "Unmatched rows", "row 8"):
        assert needle in report


def test_without_nodule_table_the_keys_are_none_and_lesions_csv_unchanged(phantom):
    out = phantom / "report"
    summary = evaluate(pred_dir=phantom / "pred", truth_dir=phantom / "truth", out_dir=out)
    assert summary["recall_by_attribute"] is None and summary["nodule_attributes"] is None
    header = (out / "lesions.csv").read_text().splitlines()[0]
    assert "nodule_row" not in header and "attr_" not in header


def test_nodules_json_of_a_dataset_skips_other_splits(phantom):
    doc = {"coordinate_system": "RAS+ world mm",
           "cases": {c: {} for c in ("case_a", "case_b", "case_c", "train_0")},
           "nodules": [
               {"case_id": "train_0", "centre_mm": [0, 0, 0], "kind": "solid"},
               {"case_id": "case_b", "centre_mm": [-6.0, -10.0, 14.0], "kind": "solid",
                "diameter_mm": 8.0},
               {"case_id": "case_b", "centre_mm": [4.0, -2.0, 26.0], "kind": "ground_glass",
                "diameter_mm": 4.0}]}
    (phantom / "nodules.json").write_text(json.dumps(doc))
    summary = evaluate(pred_dir=phantom / "pred", truth_dir=phantom / "truth",
                       out_dir=phantom / "report", nodules=phantom / "nodules.json")
    assert summary["recall_by_attribute"] == {
        "kind": {"ground_glass": {"recall": 0.0, "count": 1, "detected": 0},
                 "solid": {"recall": 1.0, "count": 1, "detected": 1}}}
    info = summary["nodule_attributes"]
    assert (info["n_rows_other_cases"], info["n_lesions_without_row"]) == (1, 4)


@pytest.mark.parametrize("text, row, column", [
    ("case_id,x_mm,y_mm,z_mm\ncase_a,1,2,3\ncase_q,1,2,3\n", "row 3", "case_id"),
    ("case_id,x_mm,y_mm\ncase_a,1,2\n", "row 1", "z_mm"),
    ("case_id,x_mm,y_mm,z_mm\ncase_a,1,2,3\ncase_b,1,2,3mm\n", "row 3", "z_mm"),
])
def test_bad_nodule_table_names_the_file_row_and_column(phantom, text, row, column):
    path = _nodule_csv(phantom, text)
    with pytest.raises(ValueError, match=rf"'{re.escape(str(path))}' {row}, column '{column}'"):
        evaluate(pred_dir=phantom / "pred", truth_dir=phantom / "truth",
                 out_dir=phantom / "report", nodules=path)
    assert not (phantom / "report").exists()


def test_cli_evaluate_nodules_on_two_pairs(tmp_path, capsys):
    from pipelines.cli import main

    for case in ("p1", "p2"):
        _write(tmp_path / "truth" / f"{case}.nii.gz", _ball(*NODULES[0]) | _ball(*NODULES[1]))
    _write(tmp_path / "pred" / "p1_mask.nii.gz", _ball(*NODULES[0]) | _ball(*NODULES[1]))
    _write(tmp_path / "pred" / "p2_mask.nii.gz", _ball(*NODULES[0]))
    # LPS by the flag: x and y negated
    table = _nodule_csv(tmp_path, "case_id,x_mm,y_mm,z_mm,kind\n"
                                  "p1,6,10,14,solid\np1,-4,2,26,ground_glass\n"
                                  "p2,6,10,14,solid\np2,-4,2,26,ground_glass\n")
    args = ["evaluate", "--pred", str(tmp_path / "pred"), "--truth", str(tmp_path / "truth"),
            "--nodules", str(table), "--nodules-frame", "lps"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["recall_by_attribute"]["kind"] == {
        "ground_glass": {"recall": 0.5, "count": 2, "detected": 1},
        "solid": {"recall": 1.0, "count": 2, "detected": 2}}
    assert printed["nodule_attributes"]["n_unmatched"] == 0

    table.write_text("case_id,x_mm,y_mm,z_mm,kind\np1,6,ten,14,solid\n")
    assert main([*args, "--out", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err
    assert str(table) in err and "row 2" in err and "'y_mm'" in err


def test_phantom_nodules_json_joins_every_nodule_to_its_own_lesion(tmp_path):
    # phantom scans are stored in random orientations; nodules.json centres are world RAS mm
    from segmentation.phantom import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "ph", n_cases=1, n_test=3, seed=11,
                                 size=(48, 48, 32), spacing_mm=(2.5, 2.5, 3.0))
    doc = json.loads((data / "nodules.json").read_text())
    n_test = sum(n["case_id"].startswith("phantom_test_") for n in doc["nodules"])
    summary = evaluate(pred_dir=data / "labelsTs", truth_dir=data / "labelsTs",
                       out_dir=tmp_path / "report", nodules=data / "nodules.json")
    info = summary["nodule_attributes"]
    assert n_test >= 2 and summary["n_lesions"] == n_test
    assert (info["n_rows_evaluated"], info["n_unmatched"], info["n_lesions_without_row"]) == (
        n_test, 0, 0)
    assert info["n_rows_other_cases"] == len(doc["nodules"]) - n_test
    kinds = summary["recall_by_attribute"]["kind"]
    assert sum(v["count"] for v in kinds.values()) == n_test
    assert all(v["recall"] == 1.0 for v in kinds.values())
    rows = [r for r in _read_csv(tmp_path / "report" / "lesions.csv") if r["kind"] == "lesion"]
    for r in rows:  # each lesion carries the kind of the nodule whose centre it holds
        index = int(r["nodule_row"].split("nodules[")[1].rstrip("])"))
        nodule = doc["nodules"][index]
        assert nodule["case_id"] == r["case_id"] and r["attr_kind"] == nodule["kind"]
        assert [float(r[f"centroid_{a}_mm"]) for a in "xyz"] == pytest.approx(
            nodule["centre_mm"], abs=0.01)
