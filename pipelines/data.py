"""tf.data input pipeline of training patches.

``make_patch_dataset`` turns a ``PatchSampler`` (and optionally an augmenter) into
an infinite, batched, prefetched ``tf.data.Dataset``. Element ``i`` of the stream
is ``augment(*sampler.sample(i), augmentation_seed(seed, i))``: a pure function of
the sampler's seed, ``seed`` and ``i``, computed in parallel but delivered in
index order (``deterministic=True``). A run resumed at sample index
``start_index = epoch * steps_per_epoch * batch_size`` therefore yields exactly the
batches the uninterrupted run would have yielded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from segmentation.validation import check_int

__all__ = ["augmentation_seed", "make_patch_dataset", "measure_pipeline_throughput"]

_AUGMENT_STREAM = 0x41554731  # separates augmentation seeds from the sampler's streams


def augmentation_seed(seed: int, index: int) -> int:
    """Seed of the augmentation of sample ``index`` (pure function of ``(seed, index)``).

    Hashing ``(seed, index)`` through ``np.random.SeedSequence`` (rather than using
    ``seed + index``) keeps runs with nearby seeds from sharing augmentations.

    Returns:
        An int in [0, 2**63).
    """
    seq = np.random.SeedSequence([int(seed), int(index), _AUGMENT_STREAM])
    return int(seq.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def _shapes(sampler: Any, start_index: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    image_shape = getattr(sampler, "image_shape", None)
    mask_shape = getattr(sampler, "mask_shape", None)
    if image_shape is None or mask_shape is None:  # any object with .sample(i): probe once
        image, mask = sampler.sample(start_index)
        image_shape, mask_shape = np.shape(image), np.shape(mask)
    return tuple(int(s) for s in image_shape), tuple(int(s) for s in mask_shape)


def make_patch_dataset(
    sampler: Any,
    augmenter: Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]] | None = None,
    *,
    batch_size: int,
    seed: int,
    start_index: int = 0,
    num_parallel_calls: int = tf.data.AUTOTUNE,
    deterministic: bool = True,
    prefetch: int = tf.data.AUTOTUNE,
) -> tf.data.Dataset:
    """Builds the infinite dataset of training batches.

    Args:
        sampler: A ``segmentation.sampling.PatchSampler`` (or any object with
            ``sample(index) -> (image, mask)``; ``image_shape`` / ``mask_shape``
            are used when present, else sample ``start_index`` is probed once).
        augmenter: ``augment(image, mask, seed)`` from
            ``segmentation.augmentation.build_augmenter``, or None.
        batch_size: Patches per batch (the last partial batch never exists: the
            stream is infinite and batching drops remainders).
        seed: Augmentation seed; sample ``i`` is augmented with
            ``augmentation_seed(seed, i)``.
        start_index: First sample index (resume at ``step * batch_size``).
        num_parallel_calls: Parallel sample+augment calls (``tf.data.AUTOTUNE``).
        deterministic: Keep index order under parallelism (needed for exact resume).
        prefetch: Batches to prefetch (``tf.data.AUTOTUNE``).

    Returns:
        Dataset of ``(image (B, *patch, C) float32, mask (B, *patch, 1) float32)``
        with static shapes.
    """
    batch_size = check_int(batch_size, name="batch_size", minimum=1)
    seed = check_int(seed, name="seed", minimum=0)
    start_index = check_int(start_index, name="start_index", minimum=0)
    if not callable(getattr(sampler, "sample", None)):
        raise TypeError(f"Expected sampler to have a sample(index) method. Received: sampler={sampler!r}")
    if augmenter is not None and not callable(augmenter):
        raise TypeError(f"Expected augmenter to be callable or None. Received: augmenter={augmenter!r}")
    image_shape, mask_shape = _shapes(sampler, start_index)

    def load(index: np.int64) -> tuple[np.ndarray, np.ndarray]:
        i = int(index)
        image, mask = sampler.sample(i)
        if augmenter is not None:
            image, mask = augmenter(image, mask, augmentation_seed(seed, i))
        if np.shape(image) != image_shape or np.shape(mask) != mask_shape:
            raise ValueError(
                f"Expected sample {i} to have image shape {image_shape} and mask shape {mask_shape}. "
                f"Received: image.shape={np.shape(image)}, mask.shape={np.shape(mask)}"
            )
        return np.asarray(image, dtype=np.float32), np.asarray(mask, dtype=np.float32)

    def load_tf(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image, mask = tf.numpy_function(load, [index], [tf.float32, tf.float32], stateful=False)
        image.set_shape(image_shape)
        mask.set_shape(mask_shape)
        return image, mask

    dataset = tf.data.Dataset.counter(start=start_index, step=1, dtype=tf.int64)
    dataset = dataset.map(load_tf, num_parallel_calls=num_parallel_calls, deterministic=deterministic)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    return dataset.prefetch(prefetch)


def measure_pipeline_throughput(dataset: tf.data.Dataset, *, n_batches: int, warmup_batches: int = 1) -> float:
    """Patches per second the pipeline delivers on its own (no training step).

    Args:
        dataset: A batched dataset of ``(image, mask)`` (e.g. from ``make_patch_dataset``).
        n_batches: Batches timed after the warm-up.
        warmup_batches: Batches consumed first and not timed (thread pools, caches).

    Returns:
        Patches (first dimension of the image batches) per second.
    """
    n_batches = check_int(n_batches, name="n_batches", minimum=1)
    warmup_batches = check_int(warmup_batches, name="warmup_batches", minimum=0)
    iterator = iter(dataset)
    patches, start = 0, time.perf_counter()
    for n in range(warmup_batches + n_batches):
        if n == warmup_batches:
            start = time.perf_counter()
        try:
            image = next(iterator)[0]
        except StopIteration:
            raise ValueError(
                f"Expected the dataset to yield warmup_batches + n_batches = {warmup_batches + n_batches} "
                f"batches. Received: a dataset that ended after {n} batches"
            ) from None
        if n >= warmup_batches:
            patches += int(image.shape[0])
    elapsed = time.perf_counter() - start
    return patches / max(elapsed, 1e-9)
