"""Tests for segmentation.preprocessing: normalisation, preprocess_volume, cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

from segmentation.alignment import Crop, Resample, ShapeMismatchError
from segmentation.io import volume_from_array
from segmentation.preprocessing import (
    CacheError,
    CTStats,
    Preprocessed,
    PreprocessSpec,
    cache_case,
    compute_ct_stats,
    ct_zscore,
    hu_window,
    lesion_records,
    load_cached_case,
    preprocess_volume,
)

# ------------------------------------------------------------------ HU window


@pytest.mark.parametrize(
    "hu, expected",
    [(-2000.0, 0.0), (-1000.0, 0.0), (-300.0, 0.5), (400.0, 1.0), (3000.0, 1.0), (50.0, 0.75)],
)
def test_hu_window_default_table(hu, expected):
    out = hu_window(np.array([hu]))
    assert out.dtype == np.float32
    assert out[0] == pytest.approx(expected, abs=1e-6)


def test_hu_window_custom_window_and_int16_input():
    out = hu_window(np.array([[-160, 40, 240]], dtype=np.int16), window=(-160, 240))
    np.testing.assert_allclose(out, [[0.0, 0.5, 1.0]])


@pytest.mark.parametrize("window", [(400, -1000), (0, 0), (float("nan"), 1.0)])
def test_hu_window_rejects_bad_window(window):
    with pytest.raises(ValueError, match="window"):
        hu_window(np.zeros(3), window=window)


def test_hu_window_rejects_nan_image():
    with pytest.raises(ValueError, match="image_hu"):
        hu_window(np.array([0.0, np.nan]))


# ------------------------------------------------------------------ CT z-score


def test_ct_zscore_clips_then_standardises():
    stats = CTStats(lower_hu=-100.0, upper_hu=100.0, mean_hu=0.0, std_hu=50.0)
    np.testing.assert_allclose(ct_zscore(np.array([-500.0, -50.0, 25.0, 900.0]), stats=stats), [-2, -1, 0.5, 2])
    np.testing.assert_allclose(stats.apply(np.array([10.0])), [0.2])


def test_compute_ct_stats_known_values():
    image = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    mask = np.zeros_like(image, dtype=np.uint8)
    mask[:5] = 1  # foreground values 0..499
    stats = compute_ct_stats([(image, mask), (image + 500, mask)])  # together 0..999
    values = np.arange(1000.0)
    assert stats.mean_hu == pytest.approx(values.mean())
    assert stats.std_hu == pytest.approx(values.std())
    assert stats.lower_hu == pytest.approx(np.percentile(values, 0.5))
    assert stats.upper_hu == pytest.approx(np.percentile(values, 99.5))


def test_compute_ct_stats_subsample_is_deterministic():
    rng = np.random.default_rng(3)
    pairs = [(rng.normal(40, 30, (20, 20, 20)), np.ones((20, 20, 20))) for _ in range(2)]
    first = compute_ct_stats(pairs, max_voxels_per_case=500, seed=1)
    again = compute_ct_stats(pairs, max_voxels_per_case=500, seed=1)
    other = compute_ct_stats(pairs, max_voxels_per_case=500, seed=2)
    assert first == again and first != other
    assert first.mean_hu == pytest.approx(40, abs=4)


def test_compute_ct_stats_no_pairs():
    with pytest.raises(ValueError, match="pairs=\\[\\]"):
        compute_ct_stats([])


def test_compute_ct_stats_empty_foreground():
    with pytest.raises(ValueError, match="foreground"):
        compute_ct_stats([(np.zeros((3, 3, 3)), np.zeros((3, 3, 3)))])


def test_compute_ct_stats_shape_mismatch_names_the_pair():
    with pytest.raises(ShapeMismatchError, match=r"pairs\[1\].*mask.shape=\(3, 3, 2\)"):
        compute_ct_stats([(np.ones((3, 3, 3)), np.ones((3, 3, 3))), (np.ones((3, 3, 3)), np.ones((3, 3, 2)))])


def test_ct_stats_dict_round_trip_and_validation():
    stats = CTStats(-900.5, 300.25, 10.0, 120.0)
    assert CTStats.from_dict(json.loads(json.dumps(stats.to_dict()))) == stats
    with pytest.raises(ValueError, match="std_hu"):
        CTStats(-1.0, 1.0, 0.0, 0.0)


# ------------------------------------------------------------------ spec


def test_spec_ct_zscore_without_stats_is_rejected_when_normalising():
    spec = PreprocessSpec(normalisation="ct_zscore")  # a config may ask before training computes them
    with pytest.raises(ValueError, match="ct_stats"):
        spec.normalise(np.zeros((2, 2, 2), dtype=np.float32))


@pytest.mark.parametrize("spacing", [(1.0, 0.0, 1.0), (1.0, 1.0), (1.0, float("inf"), 1.0), (1.0, -2.0, 1.0)])
def test_spec_rejects_bad_target_spacing(spacing):
    with pytest.raises(ValueError, match="target_spacing_mm"):
        PreprocessSpec(target_spacing_mm=spacing)


def test_spec_rejects_bad_window():
    with pytest.raises(ValueError, match="hu_window"):
        PreprocessSpec(hu_window=(400.0, -1000.0))


def test_spec_dict_round_trip():
    spec = PreprocessSpec(
        normalisation="ct_zscore",
        target_spacing_mm=(0.8, 0.8, 1.25),
        image_order=3,
        ct_stats=CTStats(-900.0, 300.0, -50.0, 200.0),
        crop_to_body=True,
    )
    assert PreprocessSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


# ------------------------------------------------------------------ preprocess_volume


def _phantom(seed=0, shape=(9, 11, 13)):
    """Tiny CT in LPS-like source order (x flipped, axes permuted) with one nodule."""
    rng = np.random.default_rng(seed)
    image = np.full(shape, -1000.0, dtype=np.float32)
    image[1:-1, 2:-2, 1:-1] = rng.normal(-800, 20, (shape[0] - 2, shape[1] - 4, shape[2] - 2))
    mask = np.zeros(shape, dtype=np.uint8)
    mask[3:6, 4:7, 5:8] = 1
    image[mask > 0] = 40.0
    affine = np.array(
        [[0.0, -0.8, 0.0, 50.0], [0.0, 0.0, 0.8, -30.0], [2.5, 0.0, 0.0, 10.0], [0.0, 0.0, 0.0, 1.0]]
    )
    return image, mask, affine


def test_preprocess_volume_resamples_and_records_geometry():
    image, mask, affine = _phantom()
    volume = volume_from_array(image, affine)
    label = volume_from_array(mask, affine, kind="mask")
    spec = PreprocessSpec(target_spacing_mm=(1.0, 1.0, 1.0))
    pre = preprocess_volume(volume, spec=spec, mask=label)
    # Canonical (RAS) shape is (11, 13, 9) at (0.8, 0.8, 2.5) mm.
    assert volume.array.shape == (11, 13, 9)
    assert pre.image.shape == pre.mask.shape == pre.geometry.shape == (9, 10, 22)
    assert isinstance(pre.geometry.steps[-1], Resample)
    assert pre.geometry.steps[-1].slice_axis == 2
    np.testing.assert_allclose(pre.spacing_mm, (0.8 * 11 / 9, 0.8 * 13 / 10, 2.5 * 9 / 22))
    assert pre.image.dtype == np.float32 and 0.0 <= pre.image.min() and pre.image.max() <= 1.0
    assert pre.mask.dtype == np.uint8
    # Volume preserved to within the resampling of a 27-voxel nodule.
    source_mm3 = mask.sum() * 0.8 * 0.8 * 2.5
    assert pre.mask.sum() * np.prod(pre.spacing_mm) == pytest.approx(source_mm3, rel=0.35)
    back = pre.geometry.inverse(pre.mask.astype(np.float32)) >= 0.5
    assert back.shape == image.shape
    assert np.logical_and(back, mask > 0).sum() / mask.sum() > 0.7


def test_preprocess_volume_native_spacing_has_no_resample_step():
    image, _, affine = _phantom()
    pre = preprocess_volume(volume_from_array(image, affine), spec=PreprocessSpec())
    assert len(pre.geometry.steps) == 1 and pre.mask is None
    np.testing.assert_allclose(pre.image, hu_window(volume_from_array(image, affine).array))


def test_preprocess_volume_crop_to_body_keeps_mask():
    image, mask, affine = _phantom()
    image[(image > -1000) & (mask == 0)] = 20.0  # soft tissue: body is source [1:8, 2:9, 1:12]
    spec = PreprocessSpec(crop_to_body=True, body_margin_vox=0)
    pre = preprocess_volume(volume_from_array(image, affine), spec=spec, mask=volume_from_array(mask, affine, kind="mask"))
    assert isinstance(pre.geometry.steps[-1], Crop)
    assert pre.image.shape == (7, 11, 7)  # canonical order: (axis 1, axis 2, axis 0)
    assert pre.mask.sum() == mask.sum()
    np.testing.assert_array_equal(pre.geometry.inverse(pre.mask), mask)


def test_preprocess_volume_ct_zscore():
    image, mask, affine = _phantom()
    stats = CTStats(lower_hu=-900.0, upper_hu=100.0, mean_hu=-100.0, std_hu=200.0)
    pre = preprocess_volume(volume_from_array(image, affine), spec=PreprocessSpec(normalisation="ct_zscore", ct_stats=stats))
    assert pre.image.min() == pytest.approx(-4.0) and pre.image.max() == pytest.approx(0.7)


def test_preprocess_volume_mask_shape_mismatch_names_both():
    image, mask, affine = _phantom()
    other = volume_from_array(mask[:, :, :-1], affine, kind="mask")
    with pytest.raises(ShapeMismatchError, match=r"image.shape=\(11, 13, 9\), mask.shape=\(11, 12, 9\)"):
        preprocess_volume(volume_from_array(image, affine), spec=PreprocessSpec(), mask=other)


def test_preprocess_volume_rejects_a_non_spec():
    image, _, affine = _phantom()
    with pytest.raises(TypeError, match="spec"):
        preprocess_volume(volume_from_array(image, affine), spec={"normalisation": "hu_window"})


# ------------------------------------------------------------------ lesions and cache


def test_lesion_records_known_components():
    mask = np.zeros((6, 6, 6), dtype=np.uint8)
    mask[0:2, 0:2, 0] = 1
    mask[4, 4, 4] = 1
    mask[5, 5, 5] = 1  # diagonal neighbour: same 26-connected component
    records = lesion_records(mask, spacing_mm=(1.0, 2.0, 0.5))
    assert [r["voxel_count"] for r in records] == [4, 2]
    assert records[0]["bbox"] == [[0, 2], [0, 2], [0, 1]]
    assert records[1]["bbox"] == [[4, 6], [4, 6], [4, 6]]
    assert records[0]["volume_mm3"] == pytest.approx(4.0)
    assert records[1]["centroid_vox"] == [4.5, 4.5, 4.5]


def test_lesion_records_empty_mask():
    assert lesion_records(np.zeros((3, 3, 3)), spacing_mm=(1, 1, 1)) == []


def _preprocessed():
    image, mask, affine = _phantom()
    spec = PreprocessSpec(target_spacing_mm=(1.6, 1.6, 2.5))
    return preprocess_volume(volume_from_array(image, affine), spec=spec, mask=volume_from_array(mask, affine, kind="mask"))


def test_cache_round_trip_is_memory_mapped(tmp_path):
    pre = _preprocessed()
    json_path = cache_case(pre, cache_dir=tmp_path / "cache", case_id="lung_001")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        "lung_001.json",
        "lung_001_image.npy",
        "lung_001_mask.npy",
    ]
    cached = load_cached_case(tmp_path / "cache", "lung_001")
    assert isinstance(cached.image, np.memmap) and cached.image.mode == "r"
    assert isinstance(cached.mask, np.memmap) and cached.mask.dtype == np.uint8
    np.testing.assert_array_equal(cached.image, pre.image)
    np.testing.assert_array_equal(cached.mask, pre.mask)
    assert cached.geometry == pre.geometry
    assert cached.spacing_mm == pre.spacing_mm
    assert cached.spec == pre.spec
    record = json.loads(json_path.read_text())
    assert record["foreground_voxels"] == int(pre.mask.sum())
    assert cached.lesions == lesion_records(pre.mask, spacing_mm=pre.spacing_mm)
    assert len(cached.lesions) == 1 and cached.lesions[0]["voxel_count"] == int(pre.mask.sum())


def test_cache_without_mask(tmp_path):
    image, _, affine = _phantom()
    pre = preprocess_volume(volume_from_array(image, affine), spec=PreprocessSpec())
    cache_case(pre, cache_dir=tmp_path, case_id="c")
    cached = load_cached_case(tmp_path, "c")
    assert cached.mask is None and cached.lesions == []


def test_cache_corrupt_json_names_the_file(tmp_path):
    cache_case(_preprocessed(), cache_dir=tmp_path, case_id="c")
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(CacheError, match="c.json"):
        load_cached_case(tmp_path, "c")


def test_cache_stale_array_names_the_file(tmp_path):
    cache_case(_preprocessed(), cache_dir=tmp_path, case_id="c")
    np.save(tmp_path / "c_image.npy", np.zeros((2, 2, 2), dtype=np.float32))
    with pytest.raises(CacheError, match="c_image.npy.*stale"):
        load_cached_case(tmp_path, "c")


def test_cache_truncated_array_names_the_file(tmp_path):
    cache_case(_preprocessed(), cache_dir=tmp_path, case_id="c")
    (tmp_path / "c_mask.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(CacheError, match="c_mask.npy"):
        load_cached_case(tmp_path, "c")


def test_cache_record_missing_key(tmp_path):
    cache_case(_preprocessed(), cache_dir=tmp_path, case_id="c")
    record = json.loads((tmp_path / "c.json").read_text())
    del record["geometry"]
    (tmp_path / "c.json").write_text(json.dumps(record))
    with pytest.raises(CacheError, match="geometry"):
        load_cached_case(tmp_path, "c")


def test_cache_missing_record(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_cached_case(tmp_path, "nope")


@pytest.mark.parametrize("case_id", ["", "../x", ".hidden"])
def test_cache_rejects_unsafe_case_id(tmp_path, case_id):
    with pytest.raises(ValueError, match="case_id"):
        cache_case(_preprocessed(), cache_dir=tmp_path, case_id=case_id)


def test_cache_rejects_inconsistent_preprocessed(tmp_path):
    pre = _preprocessed()
    bad = Preprocessed(image=pre.image[:-1], mask=None, geometry=pre.geometry, spacing_mm=pre.spacing_mm)
    with pytest.raises(ShapeMismatchError, match="image.shape"):
        cache_case(bad, cache_dir=tmp_path, case_id="c")
