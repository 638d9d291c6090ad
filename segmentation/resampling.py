"""Resampling primitives, shared by `segmentation.alignment.Geometry` and
`segmentation.preprocessing`: the target shape of a spacing, the slice axis handled apart, and
the image and mask resamplers.

Resampling convention ("align_corners=False"): the resampled grid covers the same physical
extent as the input grid. With ``scale = in_shape / out_shape`` per axis, output voxel ``o``
samples input voxel coordinate ``(o + 0.5) * scale - 0.5``; the new spacing is
``spacing * scale`` and the affine of the new grid is exact. Forward and inverse use the same
mapping (with the reciprocal scale), so the inverse of a forward resample has exactly the
original shape.

Masks are resampled as float and thresholded at 0.5: linear on every axis that is
downsampled (nearest neighbour there can erase a small nodule), nearest source voxel on an
axis that is upsampled (nothing can be lost there, and the round trip back is exact instead
of eroding every convex corner); a connected component that would vanish keeps the voxel
nearest its centre. Probabilities go back through ``Geometry.inverse`` with linear
interpolation *before* thresholding; the caller thresholds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage, sparse

from segmentation.validation import check_float, check_int, check_spacing

__all__ = [
    "target_shape",
    "separate_slice_axis",
    "resample_to_shape",
    "resample_mask_to_shape",
]

_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


def _shape3(value: Any, *, name: str) -> tuple[int, int, int]:
    """Validates a 3D shape of positive ints and returns it as a tuple."""
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(f"Expected {name} to be 3 positive ints. Received: {name}={value!r}") from None
    if len(items) != 3 or any(isinstance(v, (bool, np.bool_)) for v in items):
        raise ValueError(f"Expected {name} to be 3 positive ints. Received: {name}={value!r}")
    out = []
    for v in items:
        if isinstance(v, (float, np.floating)) and float(v).is_integer():
            v = int(v)
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"Expected {name} to be 3 positive ints. Received: {name}={value!r}")
        out.append(int(v))
    return tuple(out)  # type: ignore[return-value]



# --------------------------------------------------------------------------------------------
# Resampling primitives (shared by Geometry and segmentation.preprocessing)
# --------------------------------------------------------------------------------------------


def target_shape(
    in_shape: Sequence[int], *, spacing_mm: Sequence[float], target_spacing_mm: Sequence[float]
) -> tuple[int, int, int]:
    """Shape that covers the same extent at the target spacing: ``round(n * s / t)``, at least 1.

    Args:
        in_shape: 3 positive ints.
        spacing_mm: 3 positive spacings of ``in_shape``'s grid.
        target_spacing_mm: 3 positive target spacings.

    Returns:
        3 positive ints.

    Raises:
        ValueError: For a bad shape or a non-positive / non-finite spacing.
    """
    shape = _shape3(in_shape, name="in_shape")
    spacing = check_spacing(spacing_mm, name="spacing_mm")
    target = check_spacing(target_spacing_mm, name="target_spacing_mm")
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target))  # type: ignore[return-value]


def separate_slice_axis(
    spacing_mm: Sequence[float],
    *,
    anisotropy_ratio: float = 3.0,
    target_spacing_mm: Sequence[float] | None = None,
) -> int | None:
    """The slice axis to resample on its own, or None.

    An axis is the slice axis when it is the only axis whose spacing is more than
    ``anisotropy_ratio`` times the finest spacing. The input spacing is checked first, then
    (if given) the target spacing, so a thick-slice grid is recognised in either direction.

    Args:
        spacing_mm: 3 positive spacings.
        anisotropy_ratio: Ratio (> 1) above which an axis counts as coarse.
        target_spacing_mm: Optional 3 positive spacings of the other grid.

    Returns:
        The axis index (0, 1 or 2) or None when the grid is not anisotropic in that way.

    Raises:
        ValueError: For bad spacings or ``anisotropy_ratio <= 1``.
    """
    check_float(anisotropy_ratio, name="anisotropy_ratio", minimum=1, low_open=True)
    candidates = [check_spacing(spacing_mm, name="spacing_mm")]
    if target_spacing_mm is not None:
        candidates.append(check_spacing(target_spacing_mm, name="target_spacing_mm"))
    for spacing in candidates:
        finest = min(spacing)
        coarse = [axis for axis, s in enumerate(spacing) if s > anisotropy_ratio * finest]
        if len(coarse) == 1:
            return coarse[0]
    return None


def _scale_and_offset(in_shape: Sequence[int], out_shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    scale = np.asarray(in_shape, dtype=np.float64) / np.asarray(out_shape, dtype=np.float64)
    return scale, 0.5 * scale - 0.5


def _zoom(array: np.ndarray, out_shape: Sequence[int], *, order: int) -> np.ndarray:
    """Axis-aligned resample of an N-d float array with the align_corners=False mapping."""
    if tuple(array.shape) == tuple(out_shape):
        return array.astype(np.float32, copy=True)
    scale, offset = _scale_and_offset(array.shape, out_shape)
    return ndimage.affine_transform(
        array,
        scale,
        offset=offset,
        output_shape=tuple(int(n) for n in out_shape),
        order=order,
        mode="nearest",
        output=np.float32,
        prefilter=order > 1,
    )


def resample_to_shape(
    array: np.ndarray,
    out_shape: Sequence[int],
    *,
    order: int = 1,
    slice_axis: int | None = None,
    anti_aliasing: bool = False,
) -> np.ndarray:
    """Resamples a 3D array to ``out_shape`` over the same physical extent.

    With ``slice_axis`` set, each slice is first resampled in-plane with ``order``, then the
    slice axis is resampled with linear interpolation. Spline interpolation (order 3) across
    thick slices rings: its overshoot mixes anatomy from slices several millimetres apart and
    invents intensities that exist in neither; linear interpolation stays between its two
    neighbours, so it never creates values outside the data and treats the coarse axis honestly.

    Args:
        array: ndarray of shape (I, J, K), any real dtype.
        out_shape: 3 positive ints.
        order: Spline order 0-5 (1 linear, 3 cubic).
        slice_axis: Axis resampled separately with order 1, or None.
        anti_aliasing: Gaussian pre-filter (sigma ``(scale - 1) / 2`` voxels) on the axes
            that are downsampled. Use for images only, never for masks or probabilities.

    Returns:
        float32 ndarray of shape ``out_shape``.

    Raises:
        ValueError: For a non-3D array, a bad shape, order or slice_axis.
    """
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"Expected array of shape (I, J, K). Received: array.shape={array.shape}")
    out_shape = _shape3(out_shape, name="out_shape")
    check_int(order, name="order", minimum=0, maximum=5)
    if slice_axis is not None and slice_axis not in (0, 1, 2):
        raise ValueError(f"Expected slice_axis in (0, 1, 2) or None. Received: slice_axis={slice_axis!r}")
    values = array.astype(np.float32, copy=False)
    if tuple(values.shape) == out_shape:
        return values.copy()
    if anti_aliasing:
        scale = np.asarray(values.shape, dtype=np.float64) / np.asarray(out_shape, dtype=np.float64)
        sigma = np.maximum(0.0, (scale - 1.0) / 2.0)
        if np.any(sigma > 0):
            values = ndimage.gaussian_filter(values, sigma=sigma, mode="nearest")
    if slice_axis is None or order == 1:
        # Trilinear is separable: in-plane linear then along-slice linear is the same thing.
        return _zoom(values, out_shape, order=order)
    # In-plane first (slice by slice, the chosen order), then the slice axis linearly.
    moved = np.moveaxis(values, slice_axis, 0)
    plane_shape = tuple(n for axis, n in enumerate(out_shape) if axis != slice_axis)
    planes = np.empty((moved.shape[0], *plane_shape), dtype=np.float32)
    for index in range(moved.shape[0]):
        planes[index] = _zoom(moved[index], plane_shape, order=order)
    stacked = np.moveaxis(planes, 0, slice_axis)
    return _zoom(stacked, out_shape, order=1)


def resample_mask_to_shape(
    mask: np.ndarray, out_shape: Sequence[int], *, keep_components: bool = True
) -> np.ndarray:
    """Resamples a binary mask as float, then thresholds at ``>= 0.5``.

    Per axis (the operator is separable): an axis that is downsampled (or kept) is
    interpolated linearly; an axis that is upsampled takes the nearest source voxel. Nearest
    is safe only there: on an upsampled axis every source voxel owns at least one new voxel,
    so nothing can be erased, and a round trip back through linear interpolation returns the
    source exactly, whereas trilinear + threshold on an upsample erodes every convex corner
    (a product of three weights of 0.6 is below 0.5). Nearest on a downsample could skip a
    small nodule, so it is never used there.

    Args:
        mask: ndarray of shape (I, J, K); any value > 0 is foreground.
        out_shape: 3 positive ints.
        keep_components: When True, every 26-connected component of ``mask`` that would have
            no voxel left keeps one: the output voxel nearest the component voxel closest to
            its centroid (a 3 mm nodule is never erased by a downsample).

    Returns:
        uint8 ndarray of shape ``out_shape`` with values in {0, 1}.

    Raises:
        ValueError: For a non-3D mask or a bad shape.
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"Expected mask of shape (I, J, K). Received: mask.shape={mask.shape}")
    out_shape = _shape3(out_shape, name="out_shape")
    binary = mask > 0
    if tuple(binary.shape) == out_shape:
        return binary.astype(np.uint8)
    weights = [_mask_axis_weights(n_in, n_out) for n_in, n_out in zip(binary.shape, out_shape)]
    out = (_apply_separable(binary.astype(np.float32), weights) >= 0.5).astype(np.uint8)
    if keep_components and binary.any():
        _restore_vanished(binary, out, weights)
    return out


def _mask_axis_weights(n_in: int, n_out: int) -> sparse.csr_matrix:
    """(n_out, n_in) interpolation weights of one axis for masks (see resample_mask_to_shape)."""
    scale = n_in / n_out
    coords = np.clip((np.arange(n_out) + 0.5) * scale - 0.5, 0.0, n_in - 1.0)
    rows = np.arange(n_out)
    if scale < 1.0:  # upsampled axis: nearest source voxel
        index = np.minimum(np.floor(coords + 0.5).astype(np.int64), n_in - 1)
        return sparse.csr_matrix((np.ones(n_out, np.float32), (rows, index)), shape=(n_out, n_in))
    low = np.floor(coords).astype(np.int64)
    frac = coords - low
    high = np.minimum(low + 1, n_in - 1)
    data = np.concatenate([1.0 - frac, frac]).astype(np.float32)
    return sparse.csr_matrix(
        (data, (np.concatenate([rows, rows]), np.concatenate([low, high]))), shape=(n_out, n_in)
    )


def _apply_separable(array: np.ndarray, weights: Sequence[sparse.csr_matrix]) -> np.ndarray:
    """Applies one (n_out, n_in) weight matrix per axis; float32 result."""
    result = array.astype(np.float32, copy=False)
    for axis, matrix in enumerate(weights):
        moved = np.moveaxis(result, axis, 0)
        flat = moved.reshape(moved.shape[0], -1)
        product = np.asarray(matrix @ flat, dtype=np.float32).reshape((matrix.shape[0], *moved.shape[1:]))
        result = np.moveaxis(product, 0, axis)
    return np.ascontiguousarray(result)


def _restore_vanished(binary: np.ndarray, out: np.ndarray, weights: Sequence[sparse.csr_matrix]) -> None:
    """Sets one voxel of ``out`` for each component of ``binary`` that resampling erased.

    The resample is linear, so a component's own contribution can be computed exactly from
    its bounding box alone (the columns of the weights it touches).
    """
    labels, _ = ndimage.label(binary, structure=_CONNECTIVITY_26)
    scale = np.asarray(binary.shape, dtype=np.float64) / np.asarray(out.shape, dtype=np.float64)
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        indicator = (labels[box] == label).astype(np.float32)
        sub = []
        for matrix, piece in zip(weights, box):
            columns = matrix[:, piece.start : piece.stop]
            sub.append(columns[np.unique(columns.nonzero()[0])])
        values = _apply_separable(indicator, sub)
        if values.size and values.max() >= 0.5:
            continue
        voxels = np.argwhere(indicator > 0) + np.array([s.start for s in box])
        centre = voxels[np.argmin(((voxels - voxels.mean(axis=0)) ** 2).sum(axis=1))]
        index = tuple(
            int(min(n - 1, max(0, math.floor((c + 0.5) / f - 0.5 + 0.5)))) for c, f, n in zip(centre, scale, out.shape)
        )
        out[index] = 1
