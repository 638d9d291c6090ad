"""Tests for segmentation.augmentation (tiny patches)."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from segmentation.augmentation import AugmentSpec, build_augmenter

NO_INTENSITY = dict(p_intensity=0.0, p_gamma=0.0, p_noise=0.0, p_blur=0.0)
NO_GEOMETRY = dict(flip_axes=(), rot90=False, p_affine=0.0)
ALL_ON = dict(p_affine=1.0, p_intensity=1.0, p_gamma=1.0, p_noise=1.0, p_blur=1.0)


def _blob_3d(shape=(16, 16, 8)):
    mask = np.zeros(shape, np.uint8)
    mask[3:9, 5:12, 2:6] = 1
    mask[10:13, 2:4, 1:7] = 1
    return mask[..., None]


def _tube_3d(shape=(16, 16, 6)):
    """Identical axial slices (a tube along K)."""
    plane = np.zeros(shape[:2], np.uint8)
    plane[3:9, 5:12] = 1
    plane[10:13, 2:4] = 1
    return np.repeat(plane[:, :, None], shape[2], axis=2)[..., None]


# ------------------------------------------------------------------ identity / shapes
def test_disabled_spec_is_identity():
    aug = build_augmenter(AugmentSpec(enabled=False), spatial_dims=3)
    mask = _blob_3d()
    image = np.random.default_rng(0).random(mask.shape).astype(np.float32)
    out_image, out_mask = aug(image, mask, 3)
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_mask, mask)


@pytest.mark.parametrize(
    "spatial_dims, image_shape",
    [(3, (16, 16, 8, 1)), (3, (12, 16, 6, 1)), (2, (16, 16, 1)), (2, (16, 12, 5)), (2, (16, 16, 7))],
)
def test_shapes_and_dtypes_are_preserved(spatial_dims, image_shape):
    aug = build_augmenter(AugmentSpec(**ALL_ON), spatial_dims=spatial_dims)
    rng = np.random.default_rng(1)
    image = rng.random(image_shape)  # float64 in, float32 out
    mask = (rng.random((*image_shape[:-1], 1)) > 0.7).astype(np.uint8)
    for seed in range(5):
        out_image, out_mask = aug(image, mask, seed)
        assert out_image.shape == image_shape and out_image.dtype == np.float32
        assert out_mask.shape == mask.shape and out_mask.dtype == np.uint8
        assert set(np.unique(out_mask)) <= {0, 1}
        assert np.all(np.isfinite(out_image))


# ------------------------------------------------------------------ alignment
def test_flips_and_rot90_keep_image_equal_to_its_mask():
    aug = build_augmenter(AugmentSpec(p_affine=0.0, **NO_INTENSITY), spatial_dims=3)
    mask = _blob_3d()
    image = mask.astype(np.float32)
    changed = 0
    for seed in range(30):
        out_image, out_mask = aug(image, mask, seed)
        np.testing.assert_array_equal(out_image, out_mask.astype(np.float32))
        changed += not np.array_equal(out_mask, mask)
    assert changed >= 25  # the transforms did happen


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_affine_keeps_image_aligned_with_mask(spatial_dims):
    spec = AugmentSpec(p_affine=1.0, rotate_deg=15.0, scale=(0.85, 1.15), **NO_INTENSITY)
    aug = build_augmenter(spec, spatial_dims=spatial_dims)
    mask = _blob_3d() if spatial_dims == 3 else _blob_3d()[:, :, 3]
    image = mask.astype(np.float32)
    shifts = []
    for seed in range(20):
        out_image, out_mask = aug(image, mask, seed)
        mismatch = np.mean((out_image >= 0.5) != (out_mask == 1))
        assert mismatch < 0.03, (seed, mismatch)
        # linear image and nearest mask share the same transform: centroids agree
        idx = np.indices(out_mask.shape[:-1]).reshape(spatial_dims, -1)
        c_mask = (idx * out_mask.reshape(-1)).sum(1) / out_mask.sum()
        c_image = (idx * out_image.reshape(-1)).sum(1) / out_image.sum()
        np.testing.assert_allclose(c_mask, c_image, atol=1.0)
        shifts.append(c_mask - c_image)
    # no systematic offset between image and mask (e.g. a half-voxel nearest-neighbour bias)
    assert np.all(np.abs(np.mean(shifts, axis=0)) < 0.2)


def test_3d_affine_is_identical_on_every_axial_slice():
    spec = AugmentSpec(p_affine=1.0, flip_axes=(0, 1), **NO_INTENSITY)
    aug = build_augmenter(spec, spatial_dims=3)
    mask = _tube_3d()
    image = mask.astype(np.float32) * 0.8 + 0.1
    changed = 0
    for seed in range(10):
        out_image, out_mask = aug(image, mask, seed)
        changed += not np.array_equal(out_mask[:, :, 0], mask[:, :, 0])
        for k in range(1, mask.shape[2]):
            # OpenCV warps the slices as channels, some in SIMD lanes and some in its scalar
            # tail, so an interpolated voxel may differ by a rounding step (opencv 5.1: one
            # voxel of 256 by 3e-8, half an ulp at 0.5). Identity holds to 2 float32 ulps; the
            # nearest-neighbour mask is exact.
            np.testing.assert_array_max_ulp(out_image[:, :, k], out_image[:, :, 0], maxulp=2)
            np.testing.assert_array_equal(out_mask[:, :, k], out_mask[:, :, 0])
    assert changed >= 8


def test_flips_round_trip_with_the_same_seed():
    aug = build_augmenter(AugmentSpec(**NO_INTENSITY, flip_axes=(0, 1, 2), rot90=False, p_affine=0.0), spatial_dims=3)
    mask = _blob_3d()
    image = np.random.default_rng(0).random(mask.shape).astype(np.float32)
    for seed in range(10):
        once_image, once_mask = aug(image, mask, seed)
        twice_image, twice_mask = aug(once_image, once_mask, seed)
        np.testing.assert_array_equal(twice_image, image)
        np.testing.assert_array_equal(twice_mask, mask)


def test_rot90_on_non_square_plane_keeps_shape_and_uses_180_only():
    aug = build_augmenter(AugmentSpec(flip_axes=(), p_affine=0.0, **NO_INTENSITY), spatial_dims=3)
    mask = _blob_3d((12, 16, 4))
    image = mask.astype(np.float32)
    seen = set()
    for seed in range(20):
        _, out = aug(image, mask, seed)
        assert out.shape == mask.shape
        if np.array_equal(out, mask):
            seen.add(0)
        else:
            np.testing.assert_array_equal(out, np.rot90(mask, 2, axes=(0, 1)))
            seen.add(180)
    assert seen == {0, 180}


def test_default_spec_works_for_2d_ignoring_axis_2():
    aug = build_augmenter(AugmentSpec(), spatial_dims=2)
    image = np.random.default_rng(0).random((8, 8, 3)).astype(np.float32)
    out_image, out_mask = aug(image, np.zeros((8, 8, 1), np.uint8), 0)
    assert out_image.shape == (8, 8, 3) and out_mask.shape == (8, 8, 1)


# ------------------------------------------------------------------ determinism / threads
def test_same_seed_same_output_different_seed_different():
    aug = build_augmenter(AugmentSpec(**ALL_ON), spatial_dims=3)
    mask = _blob_3d()
    image = np.random.default_rng(0).random(mask.shape).astype(np.float32)
    a = aug(image, mask, 42)
    b = aug(image, mask, 42)
    c = aug(image, mask, 43)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_augmenter_is_thread_safe():
    aug = build_augmenter(AugmentSpec(**ALL_ON), spatial_dims=3)
    mask = _blob_3d()
    image = np.random.default_rng(0).random(mask.shape).astype(np.float32)
    sequential = [aug(image, mask, s) for s in range(24)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(lambda s: aug(image, mask, s), range(24)))
    for (xa, ma), (xb, mb) in zip(sequential, parallel):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ma, mb)


def test_input_arrays_are_not_modified():
    aug = build_augmenter(AugmentSpec(**ALL_ON), spatial_dims=3)
    mask = _blob_3d()
    image = np.random.default_rng(0).random(mask.shape).astype(np.float32)
    image_copy, mask_copy = image.copy(), mask.copy()
    aug(image, mask, 1)
    np.testing.assert_array_equal(image, image_copy)
    np.testing.assert_array_equal(mask, mask_copy)


# ------------------------------------------------------------------ probabilities
def test_affine_probability_is_honoured():
    aug = build_augmenter(AugmentSpec(p_affine=0.2, flip_axes=(), rot90=False, **NO_INTENSITY), spatial_dims=2)
    image = np.random.default_rng(0).random((12, 12, 1)).astype(np.float32)
    mask = np.zeros((12, 12, 1), np.uint8)
    applied = np.mean([not np.array_equal(aug(image, mask, s)[0], image) for s in range(400)])
    assert abs(applied - 0.2) < 0.07  # sd 0.02


def test_intensity_transforms_switch_on_independently():
    # albumentations' Compose.set_random_seed would give both transforms the same stream, so
    # both would be applied together half of the time; independent draws give 1/4.
    spec = AugmentSpec(**NO_GEOMETRY, brightness=0.1, contrast=0.0, p_intensity=0.5, noise_std=0.03,
                       p_noise=0.5, p_gamma=0.0, p_blur=0.0)
    aug = build_augmenter(spec, spatial_dims=2)
    image = np.full((32, 32, 1), 0.5, np.float32)
    mask = np.zeros((32, 32, 1), np.uint8)
    both = 0
    n = 300
    for s in range(n):
        diff = aug(image, mask, s)[0] - image
        noise = diff.std() > 0.01
        shift = abs(diff.mean()) > 0.005
        both += noise and shift
    assert 0.14 < both / n < 0.36


# ------------------------------------------------------------------ intensity values
def test_brightness_on_unit_range_is_a_constant_shift_within_limit():
    spec = AugmentSpec(
        **NO_GEOMETRY, brightness=0.1, contrast=0.0, p_intensity=1.0, p_gamma=0.0, p_noise=0.0, p_blur=0.0
    )
    aug = build_augmenter(spec, spatial_dims=3)
    image = np.random.default_rng(0).uniform(0.3, 0.6, (8, 8, 4, 1)).astype(np.float32)
    mask = np.zeros((8, 8, 4, 1), np.uint8)
    for seed in range(10):
        diff = aug(image, mask, seed)[0] - image
        np.testing.assert_allclose(diff, diff.flat[0], atol=1e-6)
        assert abs(diff.flat[0]) <= 0.1 + 1e-6


def test_3d_noise_has_the_requested_std_and_differs_between_slices():
    spec = AugmentSpec(**NO_GEOMETRY, p_intensity=0.0, p_gamma=0.0, noise_std=0.03, p_noise=1.0, p_blur=0.0)
    aug = build_augmenter(spec, spatial_dims=3)
    image = np.full((32, 32, 4, 1), 0.5, np.float32)
    noise = aug(image, np.zeros((32, 32, 4, 1), np.uint8), 0)[0] - image
    assert abs(noise.std() - 0.03) < 0.003
    assert not np.allclose(noise[:, :, 0], noise[:, :, 1])


def test_zscored_data_is_not_clipped_to_unit_range():
    aug = build_augmenter(AugmentSpec(**NO_GEOMETRY, p_intensity=1.0, p_gamma=1.0, p_noise=1.0, p_blur=1.0),
                          spatial_dims=3)
    ramp = np.linspace(-3.0, 4.0, 16, dtype=np.float32)  # smooth, so blur keeps the range
    image = np.broadcast_to(ramp[:, None, None, None], (16, 12, 4, 1)).copy()
    mask = np.zeros(image.shape, np.uint8)
    for seed in range(10):
        out = aug(image, mask, seed)[0]
        assert np.all(np.isfinite(out))
        assert out.min() < -2.0 and out.max() > 3.0
        assert out.min() >= image.min() - 1e-4 and out.max() <= image.max() + 1e-4


def test_unit_range_data_stays_in_unit_range():
    aug = build_augmenter(AugmentSpec(**ALL_ON), spatial_dims=3)
    image = np.random.default_rng(0).random((12, 12, 4, 1)).astype(np.float32)
    mask = _blob_3d((12, 12, 4))
    for seed in range(10):
        out = aug(image, mask, seed)[0]
        assert out.min() >= 0.0 and out.max() <= 1.0


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "changes, match",
    [
        ({"p_affine": 1.5}, "p_affine=1.5"),
        ({"p_noise": -0.1}, "p_noise"),
        ({"scale": (1.2, 0.8)}, "scale"),
        ({"scale": (0.0, 1.0)}, "scale"),
        ({"gamma": (0.0, 1.5)}, "gamma"),
        ({"blur_sigma": (1.0,)}, "blur_sigma"),
        ({"rotate_deg": -5.0}, "rotate_deg"),
        ({"noise_std": 2.0}, "noise_std"),
        ({"flip_axes": (3,)}, "flip_axes"),
        ({"flip_axes": (0, 0)}, "flip_axes"),
    ],
)
def test_bad_spec_raises(changes, match):
    with pytest.raises(ValueError, match=match):
        build_augmenter(dataclasses.replace(AugmentSpec(), **changes), spatial_dims=3)


def test_bad_spatial_dims_and_spec_type_raise():
    with pytest.raises(ValueError, match="spatial_dims=4"):
        build_augmenter(AugmentSpec(), spatial_dims=4)
    with pytest.raises(TypeError, match="AugmentSpec"):
        build_augmenter({"enabled": True}, spatial_dims=3)


def test_bad_call_inputs_raise():
    aug = build_augmenter(AugmentSpec(), spatial_dims=3)
    image = np.zeros((8, 8, 4, 1), np.float32)
    mask = np.zeros((8, 8, 4, 1), np.uint8)
    with pytest.raises(ValueError, match="image.shape"):
        aug(image[..., 0], mask, 0)
    with pytest.raises(ValueError, match="mask.shape"):
        aug(image, mask[:, :, :2], 0)
    with pytest.raises(ValueError, match="seed=-1"):
        aug(image, mask, -1)
    with pytest.raises(ValueError, match="image.dtype"):
        aug(image.astype(np.int16), mask, 0)


# ------------------------------------------------------------------ scanner effects
SCANNER_ONLY = dict(enabled=True, **NO_GEOMETRY, **NO_INTENSITY)


def test_slice_blur_smooths_along_k_only():
    # one bright axial slice: the blur spreads it to its neighbours along K, never in-plane
    image = np.zeros((8, 8, 9, 1), np.float32)
    image[2:6, 2:6, 4] = 1.0
    mask = np.zeros_like(image, dtype=np.uint8)
    aug = build_augmenter(AugmentSpec(**SCANNER_ONLY, p_slice_blur=1.0, slice_blur_sigma=(1.0, 1.0)),
                          spatial_dims=3)
    out, out_mask = aug(image, mask, 5)
    assert out[3, 3, 4, 0] < 1.0 and out[3, 3, 3, 0] > 0.1 and out[3, 3, 5, 0] > 0.1
    np.testing.assert_allclose(out[3, 3, :, 0].sum(), 1.0, atol=1e-5)  # mass kept along K
    assert np.all(out[0] == 0) and np.all(out[:, 7] == 0)  # nothing in-plane outside the square
    np.testing.assert_array_equal(out_mask, mask)


def test_sharpen_raises_edges_and_stays_in_the_patch_range():
    image = np.full((16, 16, 4, 1), 0.2, np.float32)
    image[3:13, 3:13] = 0.6
    image[0, 0, 0, 0], image[15, 15, 3, 0] = 0.0, 1.0  # the patch's range is [0, 1]
    aug = build_augmenter(AugmentSpec(**SCANNER_ONLY, p_sharpen=1.0, sharpen_amount=(1.0, 1.0)),
                          spatial_dims=3)
    out, _ = aug(image, np.zeros_like(image, dtype=np.uint8), 1)
    assert out[3, 8, 1, 0] > 0.6 and out[2, 8, 1, 0] < 0.2  # overshoot on both sides of the edge
    assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_allclose(out[8, 8, 1, 0], 0.6, atol=0.01)  # flat interior nearly unchanged


def test_scanner_effects_off_leave_other_draws_unchanged():
    # the scanner effects draw from their own stream: p = 0 gives the same sample as before
    rng = np.random.default_rng(3)
    image = rng.random((16, 16, 8, 1)).astype(np.float32)
    mask = _blob_3d()
    base = build_augmenter(AugmentSpec(**ALL_ON), spatial_dims=3)
    same = build_augmenter(AugmentSpec(**ALL_ON, p_slice_blur=0.0, p_sharpen=0.0, sharpen_amount=(2.0, 3.0)),
                           spatial_dims=3)
    for seed in (0, 7):
        a, b = base(image, mask, seed), same(image, mask, seed)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_scanner_effects_are_a_function_of_the_seed():
    image = np.random.default_rng(4).random((12, 12, 6, 1)).astype(np.float32)
    mask = np.zeros_like(image, dtype=np.uint8)
    spec = AugmentSpec(**SCANNER_ONLY, p_slice_blur=0.5, p_sharpen=0.5)
    aug = build_augmenter(spec, spatial_dims=3)
    outs = [aug(image, mask, s)[0] for s in range(8)]
    again = [build_augmenter(spec, spatial_dims=3)(image, mask, s)[0] for s in range(8)]
    for a, b in zip(outs, again):
        np.testing.assert_array_equal(a, b)
    assert len({o.tobytes() for o in outs}) > 1


def test_scanner_effects_do_not_apply_to_2d_patches():
    image = np.random.default_rng(5).random((12, 12, 3)).astype(np.float32)
    mask = np.zeros((12, 12, 1), np.uint8)
    aug = build_augmenter(AugmentSpec(**SCANNER_ONLY, p_slice_blur=1.0, p_sharpen=1.0), spatial_dims=2)
    np.testing.assert_array_equal(aug(image, mask, 0)[0], image)


@pytest.mark.parametrize("kwargs, match", [
    (dict(slice_blur_sigma=(1.5, 0.5)), "slice_blur_sigma"),
    (dict(sharpen_amount=(-1.0, 1.0)), "sharpen_amount"),
    (dict(p_sharpen=1.5), "p_sharpen"),
    (dict(p_sharpen=0.5, sharpen_sigma=0.0), "sharpen_sigma"),
    (dict(sharpen_sigma=-1.0), "sharpen_sigma"),
])
def test_scanner_effect_settings_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_augmenter(AugmentSpec(**kwargs), spatial_dims=3)
