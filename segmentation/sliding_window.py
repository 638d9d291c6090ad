"""Sliding-window inference with Gaussian importance weighting (pure NumPy).

A volume larger than the network patch is tiled with overlapping windows; each window's
prediction is weighted by a Gaussian that favours its centre (where the network saw the most
context), and the weighted predictions are averaged. Only two float32 arrays of the image size
(weighted sum and weight sum) and one batch of windows are held in memory, so the image may be
a read-only ``np.memmap``.

The analytic check: with ``predict_fn = lambda x: x[..., :1] + 1`` the result equals
``image + 1`` everywhere, for any window, overlap, batch size or mirroring.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from segmentation.alignment import add_channel_axis
from segmentation.validation import check_float, check_int

__all__ = [
    "gaussian_importance_map",
    "sliding_window_inference",
    "window_positions",
]

PredictFn = Callable[[np.ndarray], np.ndarray]
SkipFn = Callable[[tuple[slice, ...]], bool]
ProgressFn = Callable[[int, int], None]

_MIN_WEIGHT = 1e-3


# --------------------------------------------------------------------------- validation


def _check_window(window, *, rank: int | None = None) -> tuple[int, ...]:
    if isinstance(window, (str, bytes)) or not isinstance(window, Sequence):
        raise ValueError(
            "Expected window to be a sequence of positive ints, one per spatial axis. "
            f"Received: window={window!r}"
        )
    for size in window:
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(
                "Expected window to be a sequence of positive ints, one per spatial axis. "
                f"Received: window={window!r}"
            )
    if rank is not None and len(window) != rank:
        raise ValueError(
            f"Expected window to have one size per spatial axis ({rank}). "
            f"Received: window={window!r}"
        )
    return tuple(int(s) for s in window)


def _spatial_rank(image: np.ndarray, window) -> int:
    """Spatial rank from the window length: ``image`` is ``(*spatial)`` or ``(*spatial, C)``."""
    if isinstance(window, (str, bytes)) or not isinstance(window, Sequence):
        _check_window(window)
    if len(window) not in (2, 3) or image.ndim not in (len(window), len(window) + 1):
        raise ValueError(
            "Expected window to have the image's spatial rank (2 or 3), the image being "
            "(*spatial) or (*spatial, C). "
            f"Received: window={tuple(window)!r} for image.shape={image.shape}"
        )
    return len(window)


# --------------------------------------------------------------------------- pure helpers


def _axis_starts(size: int, window: int, step: int) -> list[int]:
    if size <= window:
        return [0]
    n_steps = math.ceil((size - window) / step) + 1
    return sorted({min(i * step, size - window) for i in range(n_steps)})


def window_positions(shape: Sequence[int], window: Sequence[int],
                     overlap: float = 0.5) -> list[tuple[slice, ...]]:
    """Windows that tile ``shape``, the last one on each axis flush with the border.

    Along each axis the start advances by ``step = floor(window * (1 - overlap))`` (at least
    1) and a last window ends exactly at the border, so every voxel is covered.

    Args:
        shape: Spatial shape to tile; every size must be >= the window size (pad first).
        window: Window size per spatial axis.
        overlap: Fraction of the window shared by neighbours, in ``[0, 1)``.

    Returns:
        A list of tuples of slices (C order: the last axis varies fastest), each of length
        ``len(shape)`` and selecting exactly ``window`` voxels.

    Raises:
        ValueError: Bad ``window`` or ``overlap``, or a window larger than ``shape``.
    """
    shape = tuple(int(s) for s in shape)
    window = _check_window(window, rank=len(shape))
    overlap = check_float(overlap, name="overlap", minimum=0.0, maximum=1.0, high_open=True)
    if any(w > s for w, s in zip(window, shape)):
        raise ValueError(
            f"Expected window <= shape on every axis (pad the image first). "
            f"Received: window={window!r}, shape={shape!r}"
        )
    starts = [
        _axis_starts(s, w, max(1, math.floor(w * (1.0 - overlap) + 1e-9)))
        for s, w in zip(shape, window)
    ]
    return [
        tuple(slice(a, a + w) for a, w in zip(corner, window))
        for corner in itertools.product(*starts)
    ]


def gaussian_importance_map(window: Sequence[int], *, sigma_scale: float | Sequence[float] = 0.125,
                            min_weight: float = _MIN_WEIGHT) -> np.ndarray:
    """Separable Gaussian weight of each voxel of a window.

    Args:
        window: Window size per spatial axis.
        sigma_scale: Standard deviation as a fraction of the window size (per axis or one
            value for all).
        min_weight: Floor of the map (after normalising the maximum to 1), so that border
            voxels covered by a single window still get a prediction.

    Returns:
        float32 ndarray of shape ``window``, maximum 1, minimum >= ``min_weight``.
    """
    window = _check_window(window)
    scales = np.broadcast_to(np.asarray(sigma_scale, dtype=np.float64), (len(window),))
    if not np.all(np.isfinite(scales)) or np.any(scales <= 0):
        raise ValueError(f"Expected sigma_scale > 0. Received: sigma_scale={sigma_scale!r}")
    if not 0.0 < min_weight <= 1.0:
        raise ValueError(f"Expected min_weight in (0, 1]. Received: min_weight={min_weight!r}")
    weight = np.ones((), dtype=np.float64)
    for size, scale in zip(window, scales):
        offset = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
        profile = np.exp(-0.5 * (offset / (scale * size)) ** 2)
        weight = np.multiply.outer(weight, profile)
    weight /= weight.max()
    return np.maximum(weight, min_weight).astype(np.float32)


def _pad_to_window(image: np.ndarray, window: tuple[int, ...], *, has_channels: bool,
                   pad_value: float | None) -> np.ndarray:
    """Pads spatial axes at their end up to ``window``; returns ``image`` itself if no padding."""
    spatial = image.shape[: len(window)]
    pad = [(0, max(0, w - s)) for s, w in zip(spatial, window)]
    if not any(after for _, after in pad):
        return image
    if has_channels:
        pad.append((0, 0))
    data = np.asarray(image, dtype=np.float32)
    if pad_value is not None:
        return np.pad(data, pad, mode="constant", constant_values=np.float32(pad_value))
    if not has_channels:
        return np.pad(data, pad, mode="constant", constant_values=data.min())
    # Each channel is padded with its own minimum (e.g. air in every input channel).
    return np.stack(
        [np.pad(data[..., c], pad[:-1], mode="constant", constant_values=data[..., c].min())
         for c in range(data.shape[-1])],
        axis=-1,
    )


def _mirror_subsets(mirror_axes, rank: int) -> list[tuple[int, ...]]:
    if mirror_axes is None:
        return [()]
    if isinstance(mirror_axes, (str, bytes)) or not isinstance(mirror_axes, Sequence):
        raise ValueError(
            f"Expected mirror_axes to be a sequence of spatial axes in [0, {rank}). "
            f"Received: mirror_axes={mirror_axes!r}"
        )
    axes = list(mirror_axes)
    if (any(isinstance(a, bool) or not isinstance(a, (int, np.integer)) or not 0 <= a < rank
            for a in axes) or len(set(axes)) != len(axes)):
        raise ValueError(
            f"Expected mirror_axes to be distinct spatial axes in [0, {rank}). "
            f"Received: mirror_axes={mirror_axes!r}"
        )
    return [c for n in range(len(axes) + 1) for c in itertools.combinations(sorted(axes), n)]


def _predict(predict_fn: PredictFn, batch: np.ndarray, window: tuple[int, ...]) -> np.ndarray:
    """Calls ``predict_fn`` and returns float32 ``(B, *window)``."""
    out = np.asarray(predict_fn(batch), dtype=np.float32)
    expected = (batch.shape[0], *window)
    if out.shape == expected + (1,):
        out = out[..., 0]
    if out.shape != expected:
        raise ValueError(
            f"Expected predict_fn to return shape {expected + (1,)} or {expected}. "
            f"Received: shape={out.shape}"
        )
    return out


def _predict_mirrored(predict_fn: PredictFn, batch: np.ndarray, window: tuple[int, ...],
                      subsets: list[tuple[int, ...]]) -> np.ndarray:
    """Averages predictions over flips along each subset of the spatial axes (batch axis 0)."""
    total = np.zeros((batch.shape[0], *window), dtype=np.float32)
    for subset in subsets:
        axes = tuple(a + 1 for a in subset)
        flipped = np.ascontiguousarray(np.flip(batch, axis=axes)) if axes else batch
        pred = _predict(predict_fn, flipped, window)
        total += np.flip(pred, axis=axes) if axes else pred
    return total / np.float32(len(subsets))


def _batches(items: list, batch_size: int) -> Iterator[list]:
    for start in range(0, len(items), batch_size):
        yield items[start:start + batch_size]


# --------------------------------------------------------------------------- the inferer


def sliding_window_inference(
    image: np.ndarray,
    predict_fn: PredictFn,
    *,
    window: Sequence[int],
    overlap: float = 0.5,
    batch_size: int = 4,
    sigma_scale: float | Sequence[float] = 0.125,
    skip_window: SkipFn | None = None,
    mirror_axes: Sequence[int] | None = None,
    progress: ProgressFn | None = None,
    pad_value: float | None = None,
    fill_value: float = 0.0,
) -> np.ndarray:
    """Predicts a whole image window by window and stitches a Gaussian-weighted average.

    Args:
        image: ndarray of shape ``(I, J, K)`` or ``(I, J, K, C)`` (2D: ``(H, W)`` or
            ``(H, W, C)``); the length of ``window`` tells which. Any real dtype; windows
            are passed as float32. A ``np.memmap`` is read window by window.
        predict_fn: Maps a float32 batch ``(B, *window, C)`` (``C = 1`` for an image
            without channel axis, ``B <= batch_size``) to ``(B, *window, 1)`` or
            ``(B, *window)`` (e.g. logits or probabilities; the average is linear).
        window: Window (patch) size per spatial axis.
        overlap: Fraction of the window shared by neighbouring windows, in ``[0, 1)``; the
            step is ``floor(window * (1 - overlap))`` (at least 1).
        batch_size: Windows per ``predict_fn`` call.
        sigma_scale: Gaussian sigma as a fraction of the window size.
        skip_window: ``skip_window(slices) -> bool``; ``True`` skips the window (not
            predicted). ``slices`` index the spatial axes of ``image`` (clipped to its
            extent), e.g. ``pipelines.predictor.skip_air_window_fn`` (air outside the body).
        mirror_axes: Spatial axes for test-time mirroring: every subset of them (``2**n``
            flips, the identity included) is predicted, un-flipped and averaged.
        progress: ``progress(done, total)`` called after each batch with the number of
            windows handled (predicted or skipped) so far and the total.
        pad_value: Value for padding an image smaller than the window; default: the image
            minimum (per channel).
        fill_value: Output for voxels covered only by skipped windows.

    Returns:
        float32 ndarray of the spatial shape of ``image`` (no channel axis).

    Raises:
        ValueError: Bad ``window`` (rank or sizes), ``overlap``, ``batch_size``,
            ``sigma_scale``, ``mirror_axes``, an empty image, or a ``predict_fn`` output of
            the wrong shape.
    """
    if not isinstance(image, np.ndarray):
        image = np.asarray(image)
    rank = _spatial_rank(image, window)
    window = _check_window(window, rank=rank)
    overlap = check_float(overlap, name="overlap", minimum=0.0, maximum=1.0, high_open=True)
    batch_size = check_int(batch_size, name="batch_size", minimum=1)
    if not callable(predict_fn):
        raise TypeError(f"Expected predict_fn to be callable. Received: predict_fn={predict_fn!r}")
    if image.dtype.kind not in "biuf":
        raise TypeError(f"Expected a real-valued image. Received: image.dtype={image.dtype}")
    has_channels = image.ndim == rank + 1
    spatial_shape = tuple(image.shape[:rank])
    if image.size == 0:
        raise ValueError(f"Expected a non-empty image. Received: image.shape={image.shape}")
    importance = gaussian_importance_map(window, sigma_scale=sigma_scale)
    subsets = _mirror_subsets(mirror_axes, rank)

    padded = _pad_to_window(image, window, has_channels=has_channels, pad_value=pad_value)
    padded_shape = tuple(padded.shape[:rank])
    all_positions = window_positions(padded_shape, window, overlap)
    positions = all_positions
    if skip_window is not None:
        # Padding is at the end of each axis, so a clipped window is never empty.
        positions = [
            sl for sl in all_positions
            if not skip_window(tuple(slice(s.start, min(s.stop, n))
                                     for s, n in zip(sl, spatial_shape)))
        ]
    n_total = len(all_positions)
    n_skipped = n_total - len(positions)

    weighted_sum = np.zeros(padded_shape, dtype=np.float32)
    weight_sum = np.zeros(padded_shape, dtype=np.float32)
    done = n_skipped
    if progress is not None and n_skipped:
        progress(done, n_total)
    for batch_slices in _batches(positions, batch_size):
        batch = np.stack([np.asarray(padded[sl], dtype=np.float32) for sl in batch_slices])
        if not has_channels:
            batch = add_channel_axis(batch)
        preds = _predict_mirrored(predict_fn, batch, window, subsets)
        for sl, pred in zip(batch_slices, preds):
            weighted_sum[sl] += pred * importance
            weight_sum[sl] += importance
        done += len(batch_slices)
        if progress is not None:
            progress(done, n_total)

    crop = tuple(slice(0, n) for n in spatial_shape)
    weighted_sum, weight_sum = weighted_sum[crop], weight_sum[crop]
    covered = weight_sum > 0
    result = np.full(spatial_shape, np.float32(fill_value), dtype=np.float32)
    np.divide(weighted_sum, weight_sum, out=result, where=covered)
    return result
