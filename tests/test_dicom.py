"""Tests of segmentation/dicom.py: a small volume written as DICOM slices here, read back.

Each series is written with pydicom (CT Image Storage, explicit VR little endian), with the
files in shuffled order, so that sorting by position, the LPS -> RAS affine and the rescale
are all checked against values computed independently in the test.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from segmentation.dicom import (
    ignored_files,
    DicomError,
    check_uniform_spacing,
    dicom_affine,
    find_dicom_series,
    read_dicom_series,
    slice_order,
)
from segmentation.io import VolumeError

AXIAL = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))
CORONAL = ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0))
OBLIQUE = ((0.0, 1.0, 0.0), (0.6, 0.0, -0.8))  # sagittal-ish, tilted


def _stored_volume(rows: int = 6, cols: int = 5, n: int = 4, seed: int = 0) -> np.ndarray:
    """int16 stored values, shape (n_slices, rows, cols)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2000, size=(n, rows, cols)).astype(np.int16)


def _write_series(folder: Path, stored: np.ndarray, *, orientation=AXIAL, origin=(10.0, -20.0, 30.0),
                  pixel_spacing=(0.75, 0.5), slice_mm: float = 2.5, slope: float = 1.0,
                  intercept: float = -1024.0, series_uid: str | None = None, description: str = "lung",
                  number: int = 2, skip: tuple[int, ...] = (), seed: int = 1,
                  positions_mm: list | None = None, prefix: str = "IM") -> dict:
    """Writes ``stored[k]`` as slice k at ``origin + k * slice_mm * normal`` (LPS mm).

    Returns the geometry it used (row, col, normal, origin) for independent checks.
    """
    folder.mkdir(parents=True, exist_ok=True)
    row, col = (np.asarray(v, dtype=np.float64) for v in orientation)
    normal = np.cross(row, col)
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    order = np.random.default_rng(seed).permutation(stored.shape[0])  # shuffled file order
    for file_index, k in enumerate(order):
        if k in skip:
            continue
        position = (np.asarray(positions_mm[k]) if positions_mm is not None
                    else np.asarray(origin) + k * slice_mm * normal)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "CT"
        ds.PatientID = "TEST"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = number
        ds.SeriesDescription = description
        ds.InstanceNumber = int(k) + 1
        ds.ImagePositionPatient = [round(float(v), 4) for v in position]
        ds.ImageOrientationPatient = [float(v) for v in (*row, *col)]
        ds.PixelSpacing = list(pixel_spacing)
        ds.SliceThickness = slice_mm
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        ds.save_as(folder / f"{prefix}{file_index:04d}.dcm", enforce_file_format=True)
    return {"row": row, "col": col, "normal": normal, "origin": np.asarray(origin, dtype=np.float64)}


def _lps_position(geometry: dict, i: int, j: int, k: int, *, pixel_spacing=(0.75, 0.5),
                  slice_mm: float = 2.5) -> np.ndarray:
    """Patient position of column i, row j, slice k, from the DICOM definition."""
    row_spacing, col_spacing = pixel_spacing
    return (geometry["origin"] + i * col_spacing * geometry["row"] + j * row_spacing * geometry["col"]
            + k * slice_mm * geometry["normal"])


# --------------------------------------------------------------------------- reading


@pytest.mark.parametrize("orientation", [AXIAL, CORONAL, OBLIQUE], ids=["axial", "coronal", "oblique"])
def test_series_reads_back_array_spacing_and_lps_to_ras_affine(tmp_path, orientation):
    stored = _stored_volume()
    geometry = _write_series(tmp_path / "ct", stored, orientation=orientation, slope=2.0,
                             intercept=-1024.0)
    volume = read_dicom_series(tmp_path / "ct")

    # Source order is (column, row, slice) and values are slope * stored + intercept.
    expected = np.transpose(stored.astype(np.float32) * 2.0 - 1024.0, (2, 1, 0))
    assert volume.source_shape == (5, 6, 4)
    np.testing.assert_array_equal(volume.to_source(volume.array), expected)
    assert volume.array.dtype == np.float32
    np.testing.assert_allclose(sorted(volume.spacing_mm), sorted((0.5, 0.75, 2.5)), atol=1e-6)
    assert volume.path == tmp_path / "ct"

    for i, j, k in itertools.product((0, 4), (0, 5), (0, 3)):
        lps = _lps_position(geometry, i, j, k)
        ras = volume.source_affine @ np.array([i, j, k, 1.0])
        np.testing.assert_allclose(ras[:3], [-lps[0], -lps[1], lps[2]], atol=1e-4)


def test_non_dicom_files_in_the_folder_are_ignored(tmp_path):
    stored = _stored_volume(n=3)
    _write_series(tmp_path / "ct", stored)
    (tmp_path / "ct" / "README.txt").write_text("not dicom")
    (tmp_path / "ct" / "notes.bin").write_bytes(b"\x00" * 300)
    volume = read_dicom_series(tmp_path / "ct")
    assert volume.source_shape == (5, 6, 3)


def test_every_ignored_file_is_logged_with_the_reason(tmp_path, caplog):
    stored = _stored_volume(n=3)
    _write_series(tmp_path / "ct", stored)
    (tmp_path / "ct" / "README.txt").write_text("not dicom")
    (tmp_path / "ct" / ".DS_Store").write_bytes(b"\x00")
    (tmp_path / "ct" / "older").mkdir()
    no_image = Dataset()
    no_image.file_meta = FileMetaDataset()
    no_image.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"  # Media Storage Directory
    no_image.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    no_image.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    no_image.SOPClassUID = "1.2.840.10008.1.3.10"
    no_image.save_as(tmp_path / "ct" / "DIRFILE", enforce_file_format=True)
    with caplog.at_level("WARNING", logger="segmentation.dicom"):
        read_dicom_series(tmp_path / "ct")
    expected = {"README.txt": "not a DICOM file", ".DS_Store": "a hidden file",
                "older": "a sub-folder", "DIRFILE": "DICOM without an image"}
    for name, why in expected.items():
        assert any(f"'{name}'" in r.message and why in r.message for r in caplog.records), name
    assert len(caplog.records) == len(expected)  # the slices are not reported


def test_ignored_files_lists_nothing_for_a_clean_series(tmp_path):
    _write_series(tmp_path / "ct", _stored_volume(n=3))
    assert ignored_files(tmp_path / "ct") == []


def test_single_slice_uses_slice_thickness_along_the_normal(tmp_path):
    stored = _stored_volume(n=1)
    _write_series(tmp_path / "ct", stored, slice_mm=3.0)
    volume = read_dicom_series(tmp_path / "ct")
    assert volume.source_shape == (5, 6, 1)
    np.testing.assert_allclose(volume.source_affine[:3, 2], [0.0, 0.0, 3.0], atol=1e-9)


def test_find_dicom_series_lists_each_series_with_its_files(tmp_path):
    _write_series(tmp_path / "ct", _stored_volume(n=3), description="lung", number=2)
    _write_series(tmp_path / "ct", _stored_volume(n=2), description="scout", number=1, seed=5,
                   prefix="SC")
    found = find_dicom_series(tmp_path / "ct")
    assert [(s.number, s.description, len(s.files)) for s in found] == [(1, "scout", 2), (2, "lung", 3)]


def test_find_dicom_series_in_a_folder_without_dicom_is_empty(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    assert find_dicom_series(tmp_path) == []


# --------------------------------------------------------------------------- pure helpers


def test_slice_order_sorts_by_projection_on_the_normal():
    positions = np.array([[0.0, 0.0, 5.0], [9.0, 9.0, -1.0], [0.0, 0.0, 2.0]])
    order, distances = slice_order(positions, np.array([0.0, 0.0, 1.0]))
    assert order.tolist() == [1, 2, 0]
    np.testing.assert_allclose(distances, [-1.0, 2.0, 5.0])


def test_check_uniform_spacing_returns_the_gap():
    assert check_uniform_spacing(np.array([0.0, 1.25, 2.5, 3.75]), where="x") == pytest.approx(1.25)


def test_dicom_affine_known_values():
    affine = dicom_affine(position_mm=np.array([1.0, 2.0, 3.0]), row=np.array([1.0, 0, 0]),
                          col=np.array([0, 1.0, 0]), pixel_spacing_mm=(0.8, 0.6),
                          step_mm=np.array([0, 0, 2.0]))
    expected = np.array([[-0.6, 0, 0, -1.0], [0, -0.8, 0, -2.0], [0, 0, 2.0, 3.0], [0, 0, 0, 1]])
    np.testing.assert_allclose(affine, expected)


# --------------------------------------------------------------------------- bad input


def test_two_series_in_one_folder_is_an_error_listing_them(tmp_path):
    _write_series(tmp_path / "ct", _stored_volume(n=3), description="lung", number=2)
    _write_series(tmp_path / "ct", _stored_volume(n=2), description="scout", number=1, seed=5,
                   prefix="SC")
    with pytest.raises(DicomError, match=r"2 series.*'scout' \(2 files.*'lung' \(3 files") as info:
        read_dicom_series(tmp_path / "ct")
    assert str(tmp_path / "ct") in str(info.value)
    assert isinstance(info.value, VolumeError) and isinstance(info.value, ValueError)


def test_missing_slice_is_an_error_naming_the_folder_and_the_gap(tmp_path):
    _write_series(tmp_path / "ct", _stored_volume(n=5), skip=(2,))
    with pytest.raises(DicomError, match=r"evenly spaced slices \(2\.5000 mm.*gap of 5\.0000 mm.*missing slice") as info:
        read_dicom_series(tmp_path / "ct")
    assert str(tmp_path / "ct") in str(info.value)


def test_uneven_spacing_is_an_error(tmp_path):
    positions = [[0.0, 0.0, z] for z in (0.0, 2.0, 4.0, 7.0, 9.0)]
    _write_series(tmp_path / "ct", _stored_volume(n=5), positions_mm=positions)
    with pytest.raises(DicomError, match=r"gap of 3\.0000 mm between sorted slices 2 and 3.*uneven"):
        read_dicom_series(tmp_path / "ct")


def test_duplicate_slice_position_is_an_error(tmp_path):
    positions = [[0.0, 0.0, z] for z in (0.0, 2.0, 2.0, 4.0)]
    _write_series(tmp_path / "ct", _stored_volume(n=4), positions_mm=positions)
    with pytest.raises(DicomError, match="one slice per position"):
        read_dicom_series(tmp_path / "ct")


def test_truncated_slice_is_an_error_naming_the_file(tmp_path):
    _write_series(tmp_path / "ct", _stored_volume(n=3))
    victim = sorted((tmp_path / "ct").iterdir())[1]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 20])
    with pytest.raises(DicomError, match=victim.name):
        read_dicom_series(tmp_path / "ct")


def test_missing_orientation_is_an_error_naming_the_file(tmp_path):
    import pydicom

    _write_series(tmp_path / "ct", _stored_volume(n=3))
    victim = sorted((tmp_path / "ct").iterdir())[0]
    ds = pydicom.dcmread(victim)
    del ds.ImageOrientationPatient
    ds.save_as(victim)
    with pytest.raises(DicomError, match=f"ImageOrientationPatient.*{victim.name}"):
        read_dicom_series(tmp_path / "ct")


def test_folder_without_dicom_images_is_an_error(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(DicomError, match=f"DICOM image files in folder '{tmp_path}'"):
        read_dicom_series(tmp_path)


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(DicomError, match="not found"):
        read_dicom_series(tmp_path / "nope")


def test_folder_argument_of_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match="folder"):
        read_dicom_series(42)
