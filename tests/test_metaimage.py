"""Tests for segmentation.metaimage: ITK geometry kept exactly, RAS convention, bad files."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import SimpleITK as sitk  # a dependency: missing must fail, not skip

from segmentation.dataset import discover_cases  # noqa: E402
from segmentation.io import read_volume, write_volume  # noqa: E402
from segmentation.metaimage import MetaImageError, lps_affine, read_metaimage  # noqa: E402

SIZE_IJK = (3, 4, 5)
SPACING_MM = (0.7, 0.9, 2.5)
ORIGIN_MM = (-120.5, 33.25, -310.0)


def _rotation_z(degrees: float) -> np.ndarray:
    t = math.radians(degrees)
    return np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]])


DIRECTIONS = {
    "identity (LUNA16)": np.eye(3),
    "flipped x y": np.diag([-1.0, -1.0, 1.0]),
    "coronal permutation": np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]),
    "oblique 30 deg": _rotation_z(30.0),
    "oblique with a flip": _rotation_z(-20.0) @ np.diag([1.0, 1.0, -1.0]),
}


def _write_itk(path, direction: np.ndarray, *, dtype=np.int16) -> np.ndarray:
    """Writes a volume with distinct voxel values; returns the (i, j, k) array."""
    values = np.arange(np.prod(SIZE_IJK), dtype=dtype).reshape(SIZE_IJK) - 7
    image = sitk.GetImageFromArray(values.transpose(2, 1, 0))  # ITK arrays are (k, j, i)
    image.SetOrigin(ORIGIN_MM)
    image.SetSpacing(SPACING_MM)
    image.SetDirection(tuple(direction.reshape(-1)))
    sitk.WriteImage(image, str(path))
    return values


def _itk_point_ras(image, index) -> np.ndarray:
    lps = np.asarray(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in index]))
    return lps * np.array([-1.0, -1.0, 1.0])


def _voxel_corners() -> list[tuple[float, float, float]]:
    return list(itertools.product(*[(-0.5, n - 0.5) for n in SIZE_IJK]))


@pytest.mark.parametrize("suffix", [".mhd", ".mha"])
@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_round_trip_keeps_voxel_corner_positions(tmp_path, name, suffix):
    path = tmp_path / f"scan{suffix}"
    values = _write_itk(path, DIRECTIONS[name])
    image = sitk.ReadImage(str(path))
    volume = read_volume(path)
    assert volume.source_shape == SIZE_IJK
    for corner in _voxel_corners():
        ours = (volume.source_affine @ np.array([*corner, 1.0]))[:3]
        np.testing.assert_allclose(ours, _itk_point_ras(image, corner), atol=1e-6)
    np.testing.assert_array_equal(volume.to_source(volume.array), values.astype(np.float32))
    np.testing.assert_allclose(sorted(volume.spacing_mm), sorted(SPACING_MM), atol=1e-9)


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_canonical_voxels_sit_at_the_itk_position_of_their_value(tmp_path, name):
    path = tmp_path / "scan.mhd"
    _write_itk(path, DIRECTIONS[name])
    image = sitk.ReadImage(str(path))
    volume = read_volume(path)
    for index in itertools.product(*[range(n) for n in volume.array.shape]):
        world_ras = (volume.affine @ np.array([*index, 1.0]))[:3]
        lps = world_ras * np.array([-1.0, -1.0, 1.0])
        itk_index = image.TransformPhysicalPointToIndex(tuple(float(v) for v in lps))
        assert volume.array[index] == image.GetPixel(itk_index)


@pytest.mark.parametrize("name", ["identity (LUNA16)", "coronal permutation", "oblique 30 deg"])
def test_mask_written_as_nifti_lies_on_the_metaimage_grid_for_itk(tmp_path, name):
    """A NIfTI written with a MetaImage reference is read by ITK on the same physical grid."""
    path = tmp_path / "scan.mhd"
    _write_itk(path, DIRECTIONS[name])
    volume = read_volume(path)
    mask = np.zeros(volume.array.shape, dtype=np.uint8)
    mask[1, 2, 3] = 1
    out = write_volume(tmp_path / "mask.nii.gz", mask, reference=volume, kind="mask")
    source = sitk.ReadImage(str(path))
    written = sitk.ReadImage(str(out))
    assert written.GetSize() == source.GetSize()
    for corner in _voxel_corners():
        np.testing.assert_allclose(
            written.TransformContinuousIndexToPhysicalPoint(corner),
            source.TransformContinuousIndexToPhysicalPoint(corner), atol=1e-3)


def test_lps_affine_known_values():
    affine = lps_affine(origin_mm=(1, 2, 3), spacing_mm=(0.5, 2, 4),
                        direction=(0, 1, 0, 1, 0, 0, 0, 0, 1))
    np.testing.assert_allclose(affine @ [1, 1, 1, 1], [1 + 2, 2 + 0.5, 3 + 4, 1])


def test_mask_kind_reads_uint8_labels(tmp_path):
    image = sitk.GetImageFromArray(np.array([[[0, 1], [1, 0]]], dtype=np.uint8))
    sitk.WriteImage(image, str(tmp_path / "label.mha"))
    volume = read_volume(tmp_path / "label.mha", kind="mask")
    assert volume.array.dtype == np.uint8 and int(volume.array.sum()) == 2


def test_missing_raw_names_the_data_file(tmp_path):
    path = tmp_path / "scan.mhd"
    _write_itk(path, np.eye(3))
    (tmp_path / "scan.raw").unlink()
    with pytest.raises(MetaImageError, match=r"scan\.raw.*no such file"):
        read_volume(path)


def test_short_raw_names_the_data_file_and_sizes(tmp_path):
    path = tmp_path / "scan.mhd"
    _write_itk(path, np.eye(3))
    with open(tmp_path / "scan.raw", "r+b") as handle:
        handle.truncate(10)
    expected = int(np.prod(SIZE_IJK)) * 2
    with pytest.raises(MetaImageError, match=rf"Expected {expected} bytes.*scan\.raw.*Received: 10 bytes"):
        read_metaimage(path)


def test_missing_header(tmp_path):
    with pytest.raises(MetaImageError, match="not found"):
        read_volume(tmp_path / "absent.mhd")


def test_2d_metaimage_is_refused(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5), np.int16)), str(tmp_path / "slice.mha"))
    with pytest.raises(MetaImageError, match="3D single-component"):
        read_volume(tmp_path / "slice.mha")


def test_plain_dataset_pairs_metaimage_scans_with_nifti_labels(tmp_path):
    (tmp_path / "images").mkdir()
    _write_itk(tmp_path / "images" / "case_a.mhd", np.eye(3))
    volume = read_volume(tmp_path / "images" / "case_a.mhd")
    write_volume(tmp_path / "labels" / "case_a.nii.gz", np.zeros(volume.array.shape, np.uint8),
                 reference=volume, kind="mask")
    cases = discover_cases(tmp_path)
    assert [(c.case_id, c.image.name, c.label.name) for c in cases] == [
        ("case_a", "case_a.mhd", "case_a.nii.gz")]


def test_predict_inputs_list_metaimage_headers_not_raw_files(tmp_path):
    from pipelines.infer import find_inputs

    _write_itk(tmp_path / "1.2.3.mhd", np.eye(3))
    _write_itk(tmp_path / "1.2.4.mha", np.eye(3))
    cases = find_inputs(tmp_path)
    assert [(c.case_id, c.kind) for c in cases] == [("1.2.3", "metaimage"), ("1.2.4", "metaimage")]
