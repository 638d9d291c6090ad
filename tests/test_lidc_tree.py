"""Tests for segmentation.lidc_tree: TCIA folder walk, XML-series pairing, slice index."""

from __future__ import annotations

import numpy as np
import pytest

from lidc_fixtures import SHAPE, standard_sessions, write_series, write_xml, z_of
from segmentation.dicom import read_dicom_series
from segmentation.lidc_tree import find_lidc_series, slice_index


def _patient(root, patient, *, xml_elsewhere=False):
    folder = root / patient / "1.3.6.study" / f"1.3.6.series.{patient[-1]}"
    series = write_series(folder, patient=patient)
    xml_dir = root / "xml" if xml_elsewhere else folder
    write_xml(xml_dir / f"{patient}.xml", series["uid"], standard_sessions(series["sop"]))
    return folder, series


def test_series_are_matched_to_xml_by_uid_not_by_folder(tmp_path):
    folder_1, series_1 = _patient(tmp_path, "LIDC-IDRI-0001")
    folder_2, series_2 = _patient(tmp_path, "LIDC-IDRI-0002", xml_elsewhere=True)
    found, notes = find_lidc_series(tmp_path)
    assert [(s.case_id, s.series_uid, s.folder) for s in found] == [
        ("LIDC-IDRI-0001", series_1["uid"], folder_1), ("LIDC-IDRI-0002", series_2["uid"], folder_2)]
    assert found[1].xml.parent.name == "xml" and notes == []


def test_xml_without_series_and_series_without_xml_are_reported(tmp_path):
    _patient(tmp_path, "LIDC-IDRI-0001")
    write_xml(tmp_path / "orphan.xml", "1.2.no.such.series", [])
    write_series(tmp_path / "LIDC-IDRI-0003" / "s" / "t", patient="LIDC-IDRI-0003")
    (tmp_path / "cxr.xml").write_text('<IdriReadMessage xmlns="http://www.nih.gov"/>')
    found, notes = find_lidc_series(tmp_path)
    assert [s.case_id for s in found] == ["LIDC-IDRI-0001"]
    assert any("orphan.xml" in n and "1.2.no.such.series" in n for n in notes)
    assert any("LIDC-IDRI-0003" in n and "no LIDC XML" in n for n in notes)
    assert any("not CT readings" in n for n in notes)


def test_two_series_of_one_patient_get_numbered_case_ids_and_cases_filters(tmp_path):
    for name in ("a", "b"):
        series = write_series(tmp_path / "P" / name, patient="LIDC-IDRI-0009")
        write_xml(tmp_path / "P" / name / "r.xml", series["uid"], [])
    found, _ = find_lidc_series(tmp_path)
    assert [s.case_id for s in found] == ["LIDC-IDRI-0009_1", "LIDC-IDRI-0009_2"]
    kept, notes = find_lidc_series(tmp_path, cases=["LIDC-IDRI-0009_2", "LIDC-IDRI-0404"])
    assert [s.case_id for s in kept] == ["LIDC-IDRI-0009_2"]
    assert any("--cases LIDC-IDRI-0404" in n for n in notes)


def test_nothing_to_import_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="Expected CT series with LIDC XML"):
        find_lidc_series(tmp_path)


def test_slice_index_maps_sop_uids_to_sorted_slices(tmp_path):
    series = write_series(tmp_path / "s")
    volume = read_dicom_series(tmp_path / "s")
    index = slice_index(tmp_path / "s", affine=volume.source_affine, shape=volume.source_shape)
    assert dict(index.by_sop) == {sop: k for k, sop in enumerate(series["sop"])}
    np.testing.assert_allclose(index.z_mm, [z_of(k) for k in range(SHAPE[2])])
