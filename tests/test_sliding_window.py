"""Tests for segmentation/sliding_window.py (MONAI-style analytic x + 1 test and known values)."""

import itertools
import math

import numpy as np
import pytest

from segmentation.sliding_window import (
    gaussian_importance_map,
    sliding_window_inference,
    window_positions,
)


def skip_below(image, threshold):
    """A skip_window callback: skips windows whose maximum is below ``threshold``."""
    return lambda slices: bool(np.max(image[slices]) < threshold)


def plus_one(batch):
    """The analytic predictor: first channel + 1, returned as (B, *window, 1)."""
    return batch[..., :1] + 1.0


def ramp(shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=shape).astype(np.float32)


# --------------------------------------------------------------------------- window_positions


@pytest.mark.parametrize(
    "size, window, overlap, expected_starts",
    [
        (10, 4, 0.5, [0, 2, 4, 6]),      # step 2, last start 6 is flush
        (11, 4, 0.5, [0, 2, 4, 6, 7]),   # flush window added at 7
        (8, 4, 0.0, [0, 4]),             # no overlap, exact tiling
        (9, 4, 0.0, [0, 4, 5]),
        (9, 4, 0.75, [0, 1, 2, 3, 4, 5]),  # step 1
        (5, 4, 0.9, [0, 1]),             # step would be 0.4: clamped to 1
        (4, 4, 0.5, [0]),                # window == size
        (7, 5, 0.25, [0, 2]),            # step floor(3.75) = 3 -> 0, then flush 2
    ],
)
def test_window_positions_known_starts(size, window, overlap, expected_starts):
    positions = window_positions((size, 3), (window, 3), overlap)
    starts = [sl[0].start for sl in positions]
    assert starts == expected_starts
    assert all(sl[0].stop - sl[0].start == window for sl in positions)
    assert all(sl[1] == slice(0, 3) for sl in positions)


@pytest.mark.parametrize(
    "shape, window", [((13, 7, 9), (4, 5, 3)), ((17, 6), (5, 6)), ((5, 5, 5), (5, 5, 5))]
)
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75])
def test_window_positions_cover_every_voxel_within_bounds(shape, window, overlap):
    coverage = np.zeros(shape, dtype=int)
    positions = window_positions(shape, window, overlap)
    for sl in positions:
        assert all(0 <= s.start and s.stop <= n for s, n in zip(sl, shape))
        coverage[sl] += 1
    assert coverage.min() >= 1
    corners = {tuple(s.start for s in sl) for sl in positions}
    assert len(corners) == len(positions)  # no duplicate windows
    # The product of per-axis counts.
    per_axis = [len({sl[a].start for sl in positions}) for a in range(len(shape))]
    assert math.prod(per_axis) == len(positions)


def test_window_positions_window_larger_than_shape_raises():
    with pytest.raises(ValueError, match="window"):
        window_positions((3, 8), (4, 4), 0.5)


# --------------------------------------------------------------------------- importance map


def test_gaussian_importance_map_known_values():
    weight = gaussian_importance_map((4, 5), sigma_scale=0.25)
    assert weight.shape == (4, 5) and weight.dtype == np.float32
    # Axis 0: size 4, centre 1.5, sigma 1; axis 1: size 5, centre 2, sigma 1.25.
    p0 = np.exp(-0.5 * (np.arange(4) - 1.5) ** 2)
    p1 = np.exp(-0.5 * ((np.arange(5) - 2.0) / 1.25) ** 2)
    expected = np.outer(p0, p1)
    np.testing.assert_allclose(weight, expected / expected.max(), rtol=1e-6)
    np.testing.assert_array_equal(weight, weight[::-1, ::-1])  # symmetric


def test_gaussian_importance_map_is_clipped_away_from_zero():
    weight = gaussian_importance_map((16, 16, 16), sigma_scale=0.125)
    assert weight.max() == pytest.approx(1.0)
    assert weight.min() == pytest.approx(1e-3)  # corner value exp(-24) is clipped
    assert weight[8, 8, 8] > weight[4, 8, 8] > weight[2, 8, 8] > weight[0, 0, 0]


def test_gaussian_importance_map_bad_sigma_raises():
    with pytest.raises(ValueError, match="sigma_scale"):
        gaussian_importance_map((4, 4), sigma_scale=0.0)


# --------------------------------------------------------------------------- the analytic test

CASES_3D = [
    ((9, 11, 7), (4, 4, 4)),
    ((13, 5, 6), (5, 3, 4)),
    ((6, 6, 6), (6, 6, 6)),     # one window
    ((3, 7, 2), (4, 4, 4)),     # smaller than the window along two axes
]
CASES_2D = [
    ((11, 9), (4, 5)),
    ((7, 13), (3, 3)),
    ((2, 5), (4, 4)),           # smaller than the window
]


@pytest.mark.parametrize("shape, window", CASES_3D + CASES_2D)
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_plus_one_predictor_gives_input_plus_one(shape, window, overlap, batch_size):
    image = ramp(shape)
    result = sliding_window_inference(image, plus_one, window=window, overlap=overlap,
                                      batch_size=batch_size)
    assert result.shape == shape and result.dtype == np.float32
    np.testing.assert_allclose(result, image + 1.0, atol=1e-5)


@pytest.mark.parametrize("shape, window", [((9, 7, 6), (4, 4, 4)), ((9, 10), (4, 4))])
def test_plus_one_predictor_without_channel_axis_in_output(shape, window):
    image = ramp(shape, seed=1)
    result = sliding_window_inference(image, lambda b: b[..., 0] + 1.0, window=window)
    np.testing.assert_allclose(result, image + 1.0, atol=1e-5)


def test_plus_one_predictor_with_channels_uses_first_channel():
    image = ramp((7, 9, 5, 3), seed=2)
    seen = []

    def predict(batch):
        seen.append(batch.shape)
        return plus_one(batch)

    result = sliding_window_inference(image, predict, window=(4, 4, 4), overlap=0.5)
    np.testing.assert_allclose(result, image[..., 0] + 1.0, atol=1e-5)
    assert all(s[1:] == (4, 4, 4, 3) for s in seen)


def test_plus_one_predictor_2d_with_channels_2_5d():
    image = ramp((10, 9, 3), seed=3)  # (H, W, k) with k neighbouring slices
    result = sliding_window_inference(image, plus_one, window=(4, 4), overlap=0.25)
    assert result.shape == (10, 9)
    np.testing.assert_allclose(result, image[..., 0] + 1.0, atol=1e-5)


@pytest.mark.parametrize("mirror_axes", [(0,), (1, 2), (0, 1, 2)])
def test_plus_one_predictor_with_mirroring(mirror_axes):
    image = ramp((9, 7, 6), seed=4)
    calls = []

    def predict(batch):
        calls.append(batch.shape[0])
        return plus_one(batch)

    result = sliding_window_inference(image, predict, window=(4, 4, 4), overlap=0.5,
                                      batch_size=2, mirror_axes=mirror_axes)
    np.testing.assert_allclose(result, image + 1.0, atol=1e-5)
    n_windows = len(window_positions((9, 7, 6), (4, 4, 4), 0.5))
    assert sum(calls) == n_windows * 2 ** len(mirror_axes)


def test_mirroring_unflips_and_averages_known_values():
    # The predictor returns the local coordinate along axis 0, ignoring the input.
    # Identity: i. Flipped then un-flipped: (w - 1) - i. Average: (w - 1) / 2 everywhere.
    image = ramp((5, 4), seed=5)

    def coordinate(batch):
        out = np.broadcast_to(np.arange(5, dtype=np.float32)[:, None], batch.shape[1:3])
        return np.broadcast_to(out, batch.shape[:3]).copy()

    plain = sliding_window_inference(image, coordinate, window=(5, 4))
    np.testing.assert_allclose(plain, np.broadcast_to(np.arange(5.0)[:, None], (5, 4)))
    mirrored = sliding_window_inference(image, coordinate, window=(5, 4), mirror_axes=(0,))
    np.testing.assert_allclose(mirrored, np.full((5, 4), 2.0), atol=1e-6)
    mirrored_other = sliding_window_inference(image, coordinate, window=(5, 4), mirror_axes=(1,))
    np.testing.assert_allclose(mirrored_other, plain, atol=1e-6)  # flip along 1 leaves the ramp


# --------------------------------------------------------------------------- weighting, batching


def test_gaussian_weighting_favours_the_closer_window_centre():
    # Two windows along axis 1: columns 0-3 predict 0, columns 2-5 predict 1.
    image = np.zeros((4, 6), dtype=np.float32)

    def window_index(batch):
        # Window B sees the marker placed in column 5 of the image.
        return np.stack([np.full(batch.shape[1:3], float(b[..., 0].max() > 0)) for b in batch])

    image[0, 5] = 1.0
    result = sliding_window_inference(image, window_index, window=(4, 4), overlap=0.5,
                                      sigma_scale=0.25)
    sigma = 1.0  # 0.25 * 4; every weight stays above the 1e-3 floor, so axis 0 cancels
    g = lambda d: math.exp(-0.5 * (d / sigma) ** 2)  # noqa: E731
    # Column 2: local index 2 in window A (distance 0.5), local index 0 in window B (1.5).
    expected_col2 = g(1.5) / (g(0.5) + g(1.5))
    expected_col3 = g(0.5) / (g(1.5) + g(0.5))
    np.testing.assert_allclose(result[:, 0:2], 0.0, atol=1e-7)
    np.testing.assert_allclose(result[:, 4:6], 1.0, atol=1e-7)
    np.testing.assert_allclose(result[:, 2], expected_col2, rtol=1e-5)
    np.testing.assert_allclose(result[:, 3], expected_col3, rtol=1e-5)


def test_windows_are_batched_and_passed_as_float32():
    image = np.arange(9 * 8, dtype=np.int16).reshape(9, 8)
    shapes, dtypes = [], []

    def predict(batch):
        shapes.append(batch.shape)
        dtypes.append(batch.dtype)
        return plus_one(batch)

    result = sliding_window_inference(image, predict, window=(4, 4), overlap=0.5, batch_size=4)
    n_windows = len(window_positions((9, 8), (4, 4), 0.5))  # 4 x 3 = 12
    assert n_windows == 12
    assert [s[0] for s in shapes] == [4, 4, 4]
    assert all(d == np.float32 for d in dtypes)
    np.testing.assert_allclose(result, image + 1.0, atol=1e-4)


def test_last_batch_may_be_smaller():
    sizes = []
    sliding_window_inference(ramp((10, 6)), lambda b: sizes.append(len(b)) or plus_one(b),
                             window=(4, 6), overlap=0.5, batch_size=3)
    assert sizes == [3, 1]  # starts 0, 2, 4, 6


def test_progress_reports_every_window():
    reports = []
    sliding_window_inference(ramp((10, 6)), plus_one, window=(4, 6), overlap=0.5, batch_size=3,
                             progress=lambda done, total: reports.append((done, total)))
    assert reports == [(3, 4), (4, 4)]


# --------------------------------------------------------------------------- padding


def test_image_smaller_than_window_is_padded_with_its_minimum():
    image = ramp((3, 2, 5), seed=6)
    seen = []

    def predict(batch):
        seen.append(batch.copy())
        return plus_one(batch)

    result = sliding_window_inference(image, predict, window=(4, 4, 4), overlap=0.5)
    assert result.shape == (3, 2, 5)
    np.testing.assert_allclose(result, image + 1.0, atol=1e-5)
    first = seen[0][0, ..., 0]
    np.testing.assert_array_equal(first[3, :, :], image.min())   # padded row
    np.testing.assert_array_equal(first[:, 2:, :], image.min())  # padded columns


def test_pad_value_option_and_per_channel_minimum():
    image = np.stack([np.full((2, 2), 5.0), np.full((2, 2), -7.0)], axis=-1).astype(np.float32)
    seen = []

    def predict(batch):
        seen.append(batch.copy())
        return plus_one(batch)

    sliding_window_inference(image, predict, window=(3, 3))
    np.testing.assert_array_equal(seen[0][0, 2, :, 0], 5.0)
    np.testing.assert_array_equal(seen[0][0, 2, :, 1], -7.0)
    seen.clear()
    sliding_window_inference(image, predict, window=(3, 3), pad_value=-1.0)
    np.testing.assert_array_equal(seen[0][0, 2, :, :], -1.0)


# --------------------------------------------------------------------------- skipping


def test_skip_window_fills_voxels_covered_only_by_skipped_windows():
    image = np.full((12, 4), -1000.0, dtype=np.float32)
    image[:4] = 50.0  # "body" in rows 0-3 only
    result = sliding_window_inference(image, plus_one, window=(4, 4), overlap=0.0,
                                      skip_window=skip_below(image, -500.0),
                                      fill_value=-3.0)
    np.testing.assert_allclose(result[:4], 51.0, atol=1e-5)
    np.testing.assert_array_equal(result[4:], -3.0)


def test_skip_window_partially_skipped_voxels_use_remaining_windows():
    image = np.full((8, 4), -1000.0, dtype=np.float32)
    image[1, 0] = 0.0  # only the first window (rows 0-3) reaches it
    calls = []
    result = sliding_window_inference(
        image, lambda b: calls.append(len(b)) or plus_one(b), window=(4, 4), overlap=0.5,
        skip_window=skip_below(image, -500.0))
    # Windows start 0, 2, 4: only the first is predicted; rows 0-3 get input + 1.
    assert sum(calls) == 1
    np.testing.assert_allclose(result[:4], image[:4] + 1.0, atol=1e-3)
    np.testing.assert_array_equal(result[4:], 0.0)


def test_all_windows_skipped_gives_fill_value_everywhere():
    image = ramp((6, 5, 4))
    calls = []
    result = sliding_window_inference(image, lambda b: calls.append(1) or plus_one(b),
                                      window=(4, 4, 4), skip_window=lambda slices: True)
    assert calls == []
    np.testing.assert_array_equal(result, np.zeros((6, 5, 4), dtype=np.float32))


def test_skip_window_receives_slices_clipped_to_the_image():
    image = ramp((3, 6), seed=7)
    received = []
    sliding_window_inference(image, plus_one, window=(4, 4), overlap=0.5,
                             skip_window=lambda sl: received.append(sl) or False)
    assert received == [(slice(0, 3), slice(0, 4)), (slice(0, 3), slice(2, 6))]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(window=(4, 4)), "window"),              # rank 2 window for a (6, 6, 6, 6) image
        (dict(window=(4, 4, 4, 4)), "window"),
        (dict(window=(4, 0, 4)), "window"),
        (dict(window=(4, -2, 4)), "window"),
        (dict(window=4), "window"),
        (dict(window=(4, 4, 4), overlap=1.0), "overlap"),
        (dict(window=(4, 4, 4), overlap=-0.1), "overlap"),
        (dict(window=(4, 4, 4), batch_size=0), "batch_size"),
        (dict(window=(4, 4, 4), sigma_scale=-1.0), "sigma_scale"),
        (dict(window=(4, 4, 4), mirror_axes=(3,)), "mirror_axes"),
        (dict(window=(4, 4, 4), mirror_axes=(0, 0)), "mirror_axes"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs, match):
    image = np.zeros((6, 6, 6), dtype=np.float32)
    if kwargs["window"] == (4, 4):
        image = np.zeros((6, 6, 6, 6), dtype=np.float32)
    with pytest.raises(ValueError, match=match):
        sliding_window_inference(image, plus_one, **kwargs)


def test_bad_predict_fn_output_shape_raises():
    with pytest.raises(ValueError, match="predict_fn"):
        sliding_window_inference(np.zeros((6, 6), np.float32), lambda b: b[:, :2], window=(4, 4))


def test_empty_image_raises():
    with pytest.raises(ValueError, match="non-empty image"):
        sliding_window_inference(np.zeros((0, 6, 6), np.float32), plus_one, window=(4, 4, 4))


def test_memory_is_bounded_by_batch_size():
    # predict_fn never receives more than batch_size windows, whatever the image size.
    image = ramp((20, 20, 20), seed=8)
    largest = []
    sliding_window_inference(image, lambda b: largest.append(len(b)) or plus_one(b),
                             window=(4, 4, 4), overlap=0.5, batch_size=5)
    assert max(largest) <= 5


def test_window_positions_matches_itertools_product_order():
    positions = window_positions((6, 5), (4, 4), 0.5)
    starts = [(a.start, b.start) for a, b in positions]
    assert starts == list(itertools.product([0, 2], [0, 1]))


def test_module_does_not_import_tensorflow():
    import subprocess
    import sys

    code = ("import sys, segmentation.sliding_window; "
            "sys.exit(int('tensorflow' in sys.modules or 'keras' in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
