"""Tests of segmentation/plausibility.py: spacing, memory, Hounsfield units, degenerate shapes."""

from __future__ import annotations

import logging
import time

import nibabel as nib
import numpy as np
import pytest

from segmentation.io import volume_from_array
from segmentation.phantom import generate_case
from segmentation.plausibility import (
    PlausibilityError,
    ScanLimits,
    check_header,
    check_hounsfield,
    check_memory,
    check_scan,
    check_spacing_mm,
    degenerate_warnings,
    estimate_evaluation_bytes,
    estimate_inference_bytes,
    format_bytes,
    window_bytes,
)


def _ct(shape=(20, 20, 20)) -> np.ndarray:
    """Air (-1000) around a soft-tissue block (40 HU)."""
    image = np.full(shape, -1000.0, np.float32)
    image[4:-4, 4:-4, 4:-4] = 40.0
    return image


# --------------------------------------------------------------------------- spacing


@pytest.mark.parametrize("spacing", [(0.1, 0.1, 0.1), (0.7, 0.7, 1.25), (20.0, 20.0, 20.0), (5.0, 0.5, 2.0)])
def test_spacing_in_range_is_accepted(spacing):
    check_spacing_mm(spacing, limits=ScanLimits(), where="x")


@pytest.mark.parametrize("spacing", [(1000.0, 1000.0, 1000.0), (0.001, 0.001, 0.001), (0.7, 0.7, 25.0),
                                     (0.09, 1.0, 1.0), (1.0, float("nan"), 1.0)])
def test_spacing_out_of_range_names_the_file_and_the_spacing(spacing):
    with pytest.raises(PlausibilityError, match=r"between 0.1 and 20 mm.*'scan.nii'.*spacing_mm="):
        check_spacing_mm(spacing, limits=ScanLimits(), where="file 'scan.nii'")


def test_spacing_range_is_configurable():
    limits = ScanLimits(spacing_range_mm=(0.001, 2000.0))
    check_spacing_mm((1000.0, 1000.0, 1000.0), limits=limits, where="x")
    with pytest.raises(PlausibilityError, match="between 1 and 2 mm"):
        check_spacing_mm((0.5, 1.0, 1.0), limits=ScanLimits(spacing_range_mm=(1, 2)), where="x")


@pytest.mark.parametrize("kwargs, match", [
    ({"spacing_range_mm": (2.0, 1.0)}, "spacing_range_mm"),
    ({"spacing_range_mm": (0.0, 1.0)}, "spacing_range_mm"),
    ({"spacing_range_mm": "ab"}, "spacing_range_mm"),
    ({"max_memory_gb": 0}, "max_memory_gb"),
    ({"max_memory_gb": float("inf")}, "max_memory_gb"),
])
def test_bad_limits_are_named(kwargs, match):
    with pytest.raises(PlausibilityError, match=match):
        ScanLimits(**kwargs)


# --------------------------------------------------------------------------- memory


def test_estimate_known_values_without_resampling():
    # 10^3 voxels, window 4^3, one window a batch, one filter level of 1 channel.
    parts = estimate_inference_bytes((10, 10, 10), (1.0, 1.0, 1.0), target_spacing_mm=None,
                                     window=(4, 4, 4), batch_size=1, channels=1, filters=(1,),
                                     source_itemsize=2)
    assert parts["scan"] == 1000 * (2 + 4 + 4 + 2)
    assert parts["network"] == 1000 * 3 * 4
    assert parts["sliding_window"] == 1000 * 3 * 4
    assert parts["model"] == 4 * 64 * (1 + 1 + 6)  # input, output, 3 tensors x 2 sides
    assert parts["total"] == parts["scan"] + parts["network"] + parts["sliding_window"] + parts["model"]
    assert parts["network_voxels"] == 1000


def test_estimate_counts_the_resampled_grid_and_the_padded_window():
    parts = estimate_inference_bytes((10, 10, 10), (2.0, 2.0, 2.0), target_spacing_mm=(1.0, 1.0, 1.0),
                                     window=(32, 32, 32), batch_size=1, filters=(1,))
    assert parts["network_voxels"] == 20 ** 3
    assert parts["sliding_window"] == 32 ** 3 * 3 * 4  # the 20^3 grid padded to the window


def test_2d_window_counts_one_slice():
    assert window_bytes((8, 8), batch_size=2, channels=3, filters=(1,)) == 4 * 2 * 64 * (3 + 1 + 6)


def test_1000_mm_spacing_estimate_is_petabytes():
    parts = estimate_inference_bytes((64, 64, 64), (1000.0,) * 3, target_spacing_mm=(1.0, 1.0, 1.0),
                                     window=(64, 64, 64))
    assert parts["total"] > 1e15


def test_memory_over_budget_is_refused_with_the_numbers():
    with pytest.raises(PlausibilityError, match=r"budget of 1 GB.*estimated 2 GB.*shape \[1\]"):
        check_memory(2 * 10**9, limits=ScanLimits(max_memory_gb=1), what="it", details="shape [1]")
    check_memory(10**9, limits=ScanLimits(max_memory_gb=1), what="it")


def test_default_budget_comes_from_the_machine():
    assert ScanLimits().budget_bytes > 10**8


def test_evaluation_estimate_grows_with_the_voxels():
    assert estimate_evaluation_bytes((10, 10, 10)) == 30 * 1000


@pytest.mark.parametrize("n_bytes, text", [(999, "999 B"), (1500, "1.5 kB"), (2.5e9, "2.5 GB"),
                                           (1.38e15, "1.38 PB")])
def test_format_bytes(n_bytes, text):
    assert format_bytes(n_bytes) == text


# --------------------------------------------------------------------------- Hounsfield units


def test_ct_in_hu_is_accepted():
    check_hounsfield(_ct(), where="x")


def test_the_phantom_passes_the_hu_check():
    case = generate_case(seed=0, size=(32, 32, 24))
    check_hounsfield(case.image_hu, where="phantom", source_dtype=case.image_hu.dtype)


@pytest.mark.parametrize("make, dtype, match", [
    (lambda: np.random.default_rng(0).integers(0, 256, (20, 20, 20)), np.uint8, "8-bit image"),
    (lambda: np.random.default_rng(0).integers(-128, 128, (20, 20, 20)), np.int8, "8-bit image"),
    (lambda: (_ct() > -1000).astype(np.uint8), np.uint8, "label mask"),
    (lambda: (_ct() > -1000).astype(np.uint8) * 3, np.int16, "label mask"),
    (lambda: np.random.default_rng(0).uniform(0, 1200, (20, 20, 20)), np.float32, "no air below 0"),
    (lambda: np.random.default_rng(0).normal(0, 1, (20, 20, 20)), np.float32, "normalised"),
    (lambda: np.where(_ct() > 0, -300.0, 200.0), np.int16, "too little air"),
])
def test_images_that_are_not_hu_are_refused_with_the_reason(make, dtype, match):
    with pytest.raises(PlausibilityError, match=match) as info:
        check_hounsfield(make().astype(np.float32), where="file 'a.nii'", source_dtype=dtype)
    assert "'a.nii'" in str(info.value) and "--allow-non-hu" in str(info.value)


def test_values_beyond_the_hu_range_are_refused():
    image = _ct()
    image[0, 0, 0] = -30000.0
    with pytest.raises(PlausibilityError, match="-4096 to 32767"):
        check_hounsfield(image, where="x")


def test_allow_non_hu_skips_the_check():
    check_hounsfield(np.zeros((4, 4, 4)), where="x", allow_non_hu=True)


def test_empty_array_passes_the_hu_check():
    check_hounsfield(np.zeros((0, 4, 4)), where="x")


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("shape, match", [((64, 64, 1), "single slice"), ((8, 8, 8), "fewer than 16"),
                                          ((1, 1, 1), "single slice")])
def test_degenerate_volumes_are_warned(shape, match):
    (warning,) = degenerate_warnings(shape, where="file 'a'")
    assert match in warning and "'a'" in warning


def test_normal_volume_has_no_warning():
    assert degenerate_warnings((16, 16, 16), where="x") == []


def test_check_scan_logs_the_warning_and_checks_hu(caplog):
    volume = volume_from_array(_ct((8, 8, 8)), np.eye(4), path="tiny.nii.gz")
    with caplog.at_level(logging.WARNING):
        warnings = check_scan(volume, limits=ScanLimits())
    assert warnings and "tiny.nii.gz" in caplog.text
    mask_as_scan = volume_from_array((_ct() > 0).astype(np.float32), np.eye(4), path="m.nii.gz")
    with pytest.raises(PlausibilityError, match="label mask"):
        check_scan(mask_as_scan, limits=ScanLimits())
    check_scan(mask_as_scan, limits=ScanLimits(allow_non_hu=True))


# --------------------------------------------------------------------------- header


def test_header_with_1000_mm_spacing_fails_fast(tmp_path):
    path = tmp_path / "big.nii.gz"
    nib.save(nib.Nifti1Image(_ct((16, 16, 16)).astype(np.int16), np.diag([1000.0, 1000.0, 1000.0, 1.0])),
             path)
    start = time.perf_counter()
    with pytest.raises(PlausibilityError, match=r"big\.nii\.gz.*1000\.0"):
        check_header(path, limits=ScanLimits())
    assert time.perf_counter() - start < 1.0


def test_header_memory_estimate_is_checked(tmp_path):
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(_ct((16, 16, 16)).astype(np.int16), np.eye(4)), path)
    estimate = lambda shape, spacing, itemsize: {"total": 10**12, "network_voxels": 1}  # noqa: E731
    with pytest.raises(PlausibilityError, match=r"scan\.nii\.gz.*1 TB"):
        check_header(path, limits=ScanLimits(max_memory_gb=1), estimate=estimate)
    assert check_header(path, limits=ScanLimits()) == ((16, 16, 16), (1.0, 1.0, 1.0))


def test_unreadable_header_is_left_to_the_reader(tmp_path):
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(b"not nifti")
    assert check_header(path, limits=ScanLimits()) is None
