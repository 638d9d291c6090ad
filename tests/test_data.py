"""Tests for pipelines.data (tiny volumes, a few batches)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf

from pipelines.data import augmentation_seed, make_patch_dataset, measure_pipeline_throughput
from segmentation.augmentation import AugmentSpec, build_augmenter
from segmentation.sampling import PatchSampler

BATCH = 2


def _sampler(patch_size=(8, 8, 4), context_slices=0, seed=0):
    rng = np.random.default_rng(0)
    image = rng.random((12, 12, 8)).astype(np.float32)
    mask = np.zeros((12, 12, 8), np.uint8)
    mask[2:4, 2:4, 1:3] = 1
    mask[7:11, 6:10, 4:8] = 1
    case = SimpleNamespace(case_id="c0", image=image, mask=mask)
    return PatchSampler([case], patch_size=patch_size, context_slices=context_slices, seed=seed)


def _augmenter(spatial_dims=3):
    return build_augmenter(AugmentSpec(p_affine=0.5, p_noise=0.5), spatial_dims=spatial_dims)


def _take(dataset, n):
    return [(x.numpy(), y.numpy()) for x, y in dataset.take(n)]


@pytest.mark.parametrize(
    "patch_size, context_slices, image_shape",
    [((8, 8, 4), 0, (8, 8, 4, 1)), ((8, 6), 0, (8, 6, 1)), ((8, 6), 1, (8, 6, 3))],
)
def test_dataset_yields_static_shapes_and_dtypes(patch_size, context_slices, image_shape):
    sampler = _sampler(patch_size, context_slices)
    ds = make_patch_dataset(sampler, _augmenter(len(patch_size)), batch_size=BATCH, seed=1)
    image_spec, mask_spec = ds.element_spec
    assert tuple(image_spec.shape) == (BATCH, *image_shape) and image_spec.dtype == tf.float32
    assert tuple(mask_spec.shape) == (BATCH, *patch_size, 1) and mask_spec.dtype == tf.float32
    x, y = _take(ds, 1)[0]
    assert x.shape == (BATCH, *image_shape) and y.shape == (BATCH, *patch_size, 1)
    assert set(np.unique(y)) <= {0.0, 1.0}


def test_batches_equal_direct_sampler_and_augmenter_calls():
    sampler, augment = _sampler(), _augmenter()
    batches = _take(make_patch_dataset(sampler, augment, batch_size=BATCH, seed=5, num_parallel_calls=3), 3)
    for b, (x, y) in enumerate(batches):
        for n in range(BATCH):
            i = b * BATCH + n
            image, mask = augment(*sampler.sample(i), augmentation_seed(5, i))
            np.testing.assert_array_equal(x[n], image)
            np.testing.assert_array_equal(y[n], mask.astype(np.float32))


def test_without_augmenter_batches_are_raw_samples():
    sampler = _sampler()
    (x, y), = _take(make_patch_dataset(sampler, None, batch_size=BATCH, seed=0), 1)
    for n in range(BATCH):
        np.testing.assert_array_equal(x[n], sampler.sample(n)[0])
        np.testing.assert_array_equal(y[n], sampler.sample(n)[1])


def test_same_seed_and_start_give_the_same_batches_twice():
    a = _take(make_patch_dataset(_sampler(), _augmenter(), batch_size=BATCH, seed=3, num_parallel_calls=4), 4)
    b = _take(make_patch_dataset(_sampler(), _augmenter(), batch_size=BATCH, seed=3, num_parallel_calls=4), 4)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_different_augmentation_seed_gives_different_batches():
    a = _take(make_patch_dataset(_sampler(), _augmenter(), batch_size=BATCH, seed=3), 3)
    b = _take(make_patch_dataset(_sampler(), _augmenter(), batch_size=BATCH, seed=4), 3)
    assert any(not np.array_equal(xa, xb) for (xa, _), (xb, _) in zip(a, b))


@pytest.mark.parametrize("k", [1, 3])
def test_resume_from_start_index_reproduces_the_stream(k):
    full = _take(make_patch_dataset(_sampler(), _augmenter(), batch_size=BATCH, seed=9, num_parallel_calls=4), k + 2)
    resumed = _take(
        make_patch_dataset(_sampler(), _augmenter(), batch_size=BATCH, seed=9, start_index=k * BATCH), 2
    )
    for (xa, ya), (xb, yb) in zip(full[k:], resumed):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_augmentation_seed_is_pure_and_separates_seed_and_index():
    assert augmentation_seed(0, 1) == augmentation_seed(0, 1)
    assert augmentation_seed(0, 1) != augmentation_seed(1, 0)  # unlike seed + index
    seeds = {augmentation_seed(s, i) for s in range(5) for i in range(50)}
    assert len(seeds) == 250 and all(0 <= s < 2**63 for s in seeds)


def test_measure_pipeline_throughput_counts_patches_per_second():
    ds = make_patch_dataset(_sampler(), _augmenter(), batch_size=BATCH, seed=0)
    rate = measure_pipeline_throughput(ds, n_batches=3)
    assert np.isfinite(rate) and rate > 0


def test_measure_pipeline_throughput_on_a_short_dataset_raises():
    ds = tf.data.Dataset.from_tensor_slices((np.zeros((4, 2, 2), np.float32), np.zeros((4, 2, 2), np.float32))).batch(2)
    with pytest.raises(ValueError, match="ended after 2 batches"):
        measure_pipeline_throughput(ds, n_batches=5)
    with pytest.raises(ValueError, match="n_batches=0"):
        measure_pipeline_throughput(ds, n_batches=0)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"batch_size": 0, "seed": 0}, ValueError, "batch_size=0"),
        ({"batch_size": 2, "seed": -1}, ValueError, "seed=-1"),
        ({"batch_size": 2, "seed": 0, "start_index": -2}, ValueError, "start_index=-2"),
        ({"batch_size": 2.0, "seed": 0}, TypeError, "batch_size"),
    ],
)
def test_bad_arguments_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        make_patch_dataset(_sampler(), None, **kwargs)


def test_bad_sampler_and_augmenter_raise():
    with pytest.raises(TypeError, match="sampler"):
        make_patch_dataset(object(), None, batch_size=2, seed=0)
    with pytest.raises(TypeError, match="augmenter"):
        make_patch_dataset(_sampler(), "flip", batch_size=2, seed=0)
