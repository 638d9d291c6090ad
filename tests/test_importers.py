"""Tests for pipelines.importers: ``lungseg import luna16`` and ``lungseg import lidc``."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from pipelines.importers import import_lidc, import_luna16
from pipelines.cli import main
from segmentation.dataset import discover_cases
from segmentation.io import check_pair, read_volume

import SimpleITK as sitk  # a dependency: missing must fail, not skip

LUNA_SPACING = (0.75, 0.8, 2.0)


def _mhd(path, *, origin, size=(20, 18, 10), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    values = np.random.default_rng(seed).integers(-1000, 400, size[::-1]).astype(np.int16)
    image = sitk.GetImageFromArray(values)
    image.SetOrigin(origin)
    image.SetSpacing(LUNA_SPACING)
    sitk.WriteImage(image, str(path))
    return image


def _read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _luna_root(tmp_path):
    root = tmp_path / "luna"
    images = {"1.2.A": _mhd(root / "subset0" / "1.2.A.mhd", origin=(-10.0, 5.0, -50.0)),
              "1.2.B": _mhd(root / "subset1" / "1.2.B.mhd", origin=(0.0, 0.0, 0.0), seed=1)}
    annotations = tmp_path / "annotations.csv"
    annotations.write_text(
        "seriesuid,coordX,coordY,coordZ,diameter_mm\n"
        "1.2.A,-3.25,11.4,-42.0,5.0\n"      # voxel (9, 8, 4) of A
        "1.2.B,4.5,4.0,6.0,3.2\n"           # voxel (6, 5, 3) of B
        "1.2.B,10.0,9.0,12.0,4.0\n"
        "1.2.Z,0,0,0,6.0\n"                 # no such scan
    )
    return root, annotations, images


def _expected_sphere(image, centre_lps, diameter_mm):
    size = image.GetSize()
    mask = np.zeros(size, np.uint8)
    for index in np.ndindex(*size):
        point = np.array(image.TransformIndexToPhysicalPoint([int(v) for v in index]))
        mask[index] = np.linalg.norm(point - centre_lps) <= diameter_mm / 2
    return mask


def test_import_luna16_writes_ct_sphere_masks_and_ras_nodules(tmp_path):
    root, annotations, images = _luna_root(tmp_path)
    out = tmp_path / "dataset"
    result = import_luna16(input_dir=root, annotations=annotations, out_dir=out, workers=1)

    assert result["written"] == ["1.2.A", "1.2.B"] and result["failed"] == []
    assert [s["seriesuid"] for s in result["skipped_annotations"]] == ["1.2.Z"]
    assert any("1.2.Z" in line and "annotations.csv" in line for line in result["lines"])
    cases = discover_cases(out)
    assert [c.case_id for c in cases] == ["1.2.A", "1.2.B"]
    for case in cases:
        image = read_volume(case.image)
        check_pair(image, read_volume(case.label, kind="mask"))
        source = read_volume(root / ("subset0" if case.case_id == "1.2.A" else "subset1") / f"{case.case_id}.mhd")
        np.testing.assert_allclose(image.source_affine, source.source_affine, atol=1e-5)
        np.testing.assert_array_equal(image.array, source.array)
        assert nib.load(case.image).get_data_dtype() == np.int16
    label_a = np.asanyarray(nib.load(out / "labelsTr" / "1.2.A.nii.gz").dataobj)
    np.testing.assert_array_equal(label_a, _expected_sphere(images["1.2.A"], [-3.25, 11.4, -42.0], 5.0))
    label_b = np.asanyarray(nib.load(out / "labelsTr" / "1.2.B.nii.gz").dataobj)
    expected_b = _expected_sphere(images["1.2.B"], [4.5, 4.0, 6.0], 3.2) | \
        _expected_sphere(images["1.2.B"], [10.0, 9.0, 12.0], 4.0)
    np.testing.assert_array_equal(label_b, expected_b)
    rows = _read_csv(out / "nodules.csv")
    assert [(r["case_id"], r["nodule_id"]) for r in rows] == [("1.2.A", "1"), ("1.2.B", "1"), ("1.2.B", "2")]
    np.testing.assert_allclose([float(rows[0][f"centre_{a}_mm"]) for a in "xyz"], [3.25, -11.4, -42.0])
    assert int(rows[0]["n_voxels"]) == int(label_a.sum()) > 0
    assert "approximation" in (out / "README.md").read_text()
    assert json.loads((out / "import_report.json").read_text())["skipped_annotations"][0]["seriesuid"] == "1.2.Z"


def test_import_luna16_short_raw_is_reported_and_leaves_no_file(tmp_path):
    root, annotations, _ = _luna_root(tmp_path)
    with open(root / "subset1" / "1.2.B.raw", "r+b") as handle:
        handle.truncate(100)
    out = tmp_path / "dataset"
    result = import_luna16(input_dir=root, annotations=annotations, out_dir=out, workers=2)
    assert result["written"] == ["1.2.A"]
    assert result["failed"][0]["case_id"] == "1.2.B" and "1.2.B.raw" in result["failed"][0]["error"]
    assert sorted(p.name for p in out.rglob("*.nii.gz")) == ["1.2.A.nii.gz", "1.2.A.nii.gz"]
    assert [c.case_id for c in discover_cases(out)] == ["1.2.A"]
    assert [r["case_id"] for r in _read_csv(out / "nodules.csv")] == ["1.2.A"]


def test_import_luna16_without_masks_writes_test_images(tmp_path):
    root, annotations, _ = _luna_root(tmp_path)
    out = tmp_path / "dataset"
    import_luna16(input_dir=root, annotations=annotations, out_dir=out, mask="none", workers=1)
    assert [c.case_id for c in discover_cases(out, split="test")] == ["1.2.A", "1.2.B"]
    assert not (out / "labelsTr").exists()
    assert _read_csv(out / "nodules.csv")[0]["n_voxels"] == ""


def test_import_into_an_existing_dataset_needs_overwrite(tmp_path):
    root, annotations, _ = _luna_root(tmp_path)
    out = tmp_path / "dataset"
    import_luna16(input_dir=root, annotations=annotations, out_dir=out, workers=1)
    with pytest.raises(ValueError, match="--overwrite"):
        import_luna16(input_dir=root, annotations=annotations, out_dir=out, workers=1)
    import_luna16(input_dir=root, annotations=annotations, out_dir=out, workers=1, overwrite=True)


def test_cli_import_luna16_exit_status_and_lines(tmp_path, capsys):
    root, annotations, _ = _luna_root(tmp_path)
    status = main(["import", "luna16", "--input", str(root), "--annotations", str(annotations),
                   "--out", str(tmp_path / "dataset"), "--workers", "1"])
    assert status == 0
    assert "2 scan(s) written, 0 failed" in capsys.readouterr().out


def test_import_luna16_without_scans_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "a.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n")
    with pytest.raises(ValueError, match=r"\.mhd scans under --input"):
        import_luna16(input_dir=tmp_path / "empty", annotations=tmp_path / "a.csv", out_dir=tmp_path / "o")


# --------------------------------------------------------------------------- LIDC-IDRI


def _lidc_root(tmp_path):
    from lidc_fixtures import rect_corners, standard_sessions, write_series, write_xml

    root = tmp_path / "LIDC-IDRI"
    good = write_series(root / "LIDC-IDRI-0001" / "st" / "se", patient="LIDC-IDRI-0001")
    write_xml(root / "LIDC-IDRI-0001" / "st" / "se" / "069.xml", good["uid"], standard_sessions(good["sop"]))
    missing = write_series(root / "LIDC-IDRI-0002" / "st" / "se", patient="LIDC-IDRI-0002", skip=(3,))
    write_xml(root / "LIDC-IDRI-0002" / "st" / "se" / "070.xml", missing["uid"], [])
    doubled = write_series(root / "LIDC-IDRI-0003" / "st" / "se", patient="LIDC-IDRI-0003", duplicate=(2,))
    write_xml(root / "LIDC-IDRI-0003" / "st" / "se" / "071.xml", doubled["uid"], [])
    stray = write_series(root / "LIDC-IDRI-0004" / "st" / "se", patient="LIDC-IDRI-0004")
    write_xml(root / "LIDC-IDRI-0004" / "st" / "se" / "072.xml", stray["uid"], [
        {"reader": "9", "nodules": [{"id": "z", "rois": [(40, "1.2.nope", rect_corners(1, 3, 1, 3), True)]}]}])
    write_xml(root / "orphan" / "073.xml", "1.2.no.such.series", [])
    return root


@pytest.mark.parametrize("workers", [1, 2])
def test_import_lidc_writes_good_series_and_reports_each_bad_one(tmp_path, workers):
    from lidc_fixtures import expected_reader_masks, ras_of

    root = _lidc_root(tmp_path)
    out = tmp_path / "dataset"
    result = import_lidc(input_dir=root, out_dir=out, workers=workers)

    assert result["written"] == ["LIDC-IDRI-0001"]
    failed = {f["case_id"]: f["error"] for f in result["failed"]}
    assert "missing slice" in failed["LIDC-IDRI-0002"]
    assert "one slice per position" in failed["LIDC-IDRI-0003"]
    assert "072.xml" in failed["LIDC-IDRI-0004"] and "no such slice" in failed["LIDC-IDRI-0004"]
    assert any("073.xml" in line for line in result["lines"])
    assert sorted(p.name for p in out.rglob("*.nii.gz")) == ["LIDC-IDRI-0001.nii.gz"] * 2
    assert not list(out.rglob("*.tmp*"))

    [case] = discover_cases(out)
    image = read_volume(case.image)
    label = check_pair(image, read_volume(case.label, kind="mask"))
    hand = expected_reader_masks()
    expected = ((hand["A1"].astype(int) + hand["A2"] + hand["A3"]) >= 2) | hand["B1"]
    np.testing.assert_array_equal(np.asanyarray(nib.load(case.label).dataobj), expected.astype(np.uint8))
    assert label.array.sum() == expected.sum()
    np.testing.assert_allclose((image.source_affine @ [3, 2, 1, 1])[:3], ras_of([3, 2, 1]), atol=1e-5)
    rows = _read_csv(out / "nodules.csv")
    assert [(r["nodule_id"], r["n_readers"], r["in_mask"]) for r in rows] == [("1", "3", "1"), ("2", "1", "1")]
    centre = ras_of(np.argwhere((hand["A1"].astype(int) + hand["A2"] + hand["A3"]) >= 2).mean(axis=0))
    np.testing.assert_allclose([float(rows[0][f"centre_{a}_mm"]) for a in "xyz"], centre, atol=1e-3)
    points = _read_csv(out / "small_and_non_nodules.csv")
    assert [p["kind"] for p in points] == ["nodule<3mm", "non-nodule"]
    report = json.loads((out / "import_report.json").read_text())
    assert len(report["failed"]) == 3 and any("073.xml" in n for n in report["notes"])


def test_import_lidc_cases_and_consensus_options(tmp_path, capsys):
    from lidc_fixtures import expected_reader_masks

    root = _lidc_root(tmp_path)
    status = main(["import", "lidc", "--input", str(root), "--out", str(tmp_path / "d"), "--cases",
                   "LIDC-IDRI-0001", "--consensus", "1.0", "--min-readers", "2", "--workers", "1"])
    assert status == 0
    assert "1 scan(s) written, 0 failed" in capsys.readouterr().out
    hand = expected_reader_masks()
    expected = hand["A1"] & hand["A2"] & hand["A3"]  # B (one reader) left out by --min-readers 2
    label = np.asanyarray(nib.load(tmp_path / "d" / "labelsTr" / "LIDC-IDRI-0001.nii.gz").dataobj)
    np.testing.assert_array_equal(label, expected.astype(np.uint8))


def test_cli_import_lidc_with_failures_exits_1(tmp_path, capsys):
    root = _lidc_root(tmp_path)
    status = main(["import", "lidc", "--input", str(root), "--out", str(tmp_path / "d"), "--workers", "1"])
    assert status == 1
    assert "FAILED LIDC-IDRI-0002" in capsys.readouterr().out
