"""The explicit shape and geometry contract between scans, masks, networks and predictions.

Two halves:

* Array plumbing. :func:`unpad` (the undo of a :class:`Pad`), :func:`add_channel_axis`
  (the one place a channel axis is added: a training sample, a batch of sliding windows)
  with :func:`to_model_input` (a single case: batch and channel axes) and
  :func:`from_model_output` (the one place they are removed).
* :class:`Geometry`: the record of every step between the source scan on disk and network
  space (:class:`Reorient`, :class:`Crop`, :class:`Resample`, :class:`Pad`). ``forward``
  applies the steps; ``inverse`` undoes them in reverse order so that a network-space
  prediction comes back with exactly the source shape, to be written with the source affine.

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
nearest its centre. Probabilities go back through ``inverse`` with linear
interpolation *before* thresholding; the caller thresholds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, Union

import numpy as np
from nibabel.orientations import apply_orientation, inv_ornt_aff
from scipy import ndimage, sparse

from segmentation.validation import check_affine, check_float, check_int, check_spacing

__all__ = [
    "ShapeMismatchError",
    "Reorient",
    "Crop",
    "Resample",
    "Pad",
    "Step",
    "Geometry",
    "unpad",
    "add_channel_axis",
    "to_model_input",
    "from_model_output",
    "body_bbox",
    "target_shape",
    "separate_slice_axis",
    "resample_to_shape",
    "resample_mask_to_shape",
    "spacing_from_affine",
]

_GEOMETRY_VERSION = 1
_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


class ShapeMismatchError(ValueError):
    """Two arrays that must share a spatial shape do not; the message names both shapes."""


# --------------------------------------------------------------------------------------------
# Small validation helpers
# --------------------------------------------------------------------------------------------


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


def _int_triple(value: Any, *, name: str) -> tuple[int, int, int]:
    """Validates 3 ints (any sign) and returns them as a tuple."""
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(f"Expected {name} to be 3 ints. Received: {name}={value!r}") from None
    if len(items) != 3:
        raise ValueError(f"Expected {name} to be 3 ints. Received: {name}={value!r}")
    out = []
    for v in items:
        if isinstance(v, (float, np.floating)) and float(v).is_integer():
            v = int(v)
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"Expected {name} to be 3 ints. Received: {name}={value!r}")
        out.append(int(v))
    return tuple(out)  # type: ignore[return-value]


def _check_spatial(array: np.ndarray, shape: tuple[int, ...], *, name: str) -> None:
    """Raises ShapeMismatchError when ``array`` does not have exactly ``shape``."""
    if array.ndim != 3 or tuple(array.shape) != tuple(shape):
        raise ShapeMismatchError(
            f"Expected {name} of shape {tuple(shape)}. Received: {name}.shape={tuple(array.shape)}"
        )


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel spacing (mm) per voxel axis: the column norms of ``affine[:3, :3]``.

    Args:
        affine: (4, 4) voxel -> world affine.

    Returns:
        Three floats, in voxel-axis order.
    """
    return tuple(float(s) for s in np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0))  # type: ignore[return-value]


def _translation(offset: Sequence[float]) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, 3] = offset
    return matrix


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


# --------------------------------------------------------------------------------------------
# Geometry steps
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Reorient:
    """Transpose/flip from one voxel order to another (nibabel orientation semantics).

    ``forward`` is ``nibabel.orientations.apply_orientation(array, ornt)`` and the affine of
    the result is ``affine_in @ inv_ornt_aff(ornt, in_shape)``, exactly as
    ``segmentation.io`` builds canonical volumes.

    Attributes:
        ornt: (3, 2) orientation: row ``i`` is ``(output axis, flip ±1)`` of input axis ``i``;
            stored as a tuple of int pairs (any (3, 2) array-like is accepted).
        in_shape: Shape of the array before the step.
    """

    ornt: Any
    in_shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        array = np.asarray(self.ornt, dtype=np.float64)
        if array.shape != (3, 2) or not np.all(np.isfinite(array)):
            raise ValueError(f"Expected ornt of shape (3, 2) without NaN. Received: ornt={array.tolist()}")
        axes = array[:, 0]
        flips = array[:, 1]
        if sorted(axes.tolist()) != [0.0, 1.0, 2.0] or not np.all(np.isin(flips, (-1.0, 1.0))):
            raise ValueError(
                "Expected ornt rows (axis, flip) with axes a permutation of 0, 1, 2 and flips ±1. "
                f"Received: ornt={array.tolist()}"
            )
        object.__setattr__(self, "ornt", tuple((int(a), int(f)) for a, f in array))
        object.__setattr__(self, "in_shape", _shape3(self.in_shape, name="Reorient.in_shape"))

    @property
    def ornt_array(self) -> np.ndarray:
        """The orientation as a (3, 2) float array for nibabel."""
        return np.asarray(self.ornt, dtype=np.float64)

    @property
    def inverse_ornt(self) -> np.ndarray:
        """The (3, 2) orientation that undoes this one."""
        inverse = np.zeros((3, 2))
        for axis, (target, flip) in enumerate(self.ornt):
            inverse[target] = (axis, flip)
        return inverse

    @property
    def out_shape(self) -> tuple[int, int, int]:
        shape = [0, 0, 0]
        for axis, (target, _) in enumerate(self.ornt):
            shape[target] = self.in_shape[axis]
        return tuple(shape)  # type: ignore[return-value]

    def out_affine(self, affine_in: np.ndarray) -> np.ndarray:
        return affine_in @ inv_ornt_aff(self.ornt_array, self.in_shape)

    def forward(self, array: np.ndarray, **_: Any) -> np.ndarray:
        return np.ascontiguousarray(apply_orientation(array, self.ornt_array))

    def inverse(self, array: np.ndarray, **_: Any) -> np.ndarray:
        return np.ascontiguousarray(apply_orientation(array, self.inverse_ornt))

    def to_dict(self) -> dict[str, Any]:
        return {"type": "reorient", "ornt": [list(row) for row in self.ornt], "in_shape": list(self.in_shape)}


@dataclasses.dataclass(frozen=True)
class Crop:
    """Crop to ``[start, stop)`` per axis; the inverse pads back with ``fill``.

    Attributes:
        start: 3 ints, ``0 <= start < stop``.
        stop: 3 ints, ``stop <= in_shape`` (exclusive).
        in_shape: Shape of the array before the step.
    """

    start: tuple[int, int, int]
    stop: tuple[int, int, int]
    in_shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        start = _int_triple(self.start, name="Crop.start")
        stop = _int_triple(self.stop, name="Crop.stop")
        shape = _shape3(self.in_shape, name="Crop.in_shape")
        if any(not 0 <= a < b <= n for a, b, n in zip(start, stop, shape)):
            raise ValueError(
                f"Expected 0 <= start < stop <= in_shape per axis. Received: start={start}, stop={stop}, "
                f"in_shape={shape}"
            )
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "stop", stop)
        object.__setattr__(self, "in_shape", shape)

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.start, self.stop))  # type: ignore[return-value]

    def out_affine(self, affine_in: np.ndarray) -> np.ndarray:
        return affine_in @ _translation(self.start)

    def _box(self) -> tuple[slice, ...]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))

    def forward(self, array: np.ndarray, **_: Any) -> np.ndarray:
        return np.ascontiguousarray(array[self._box()])

    def inverse(self, array: np.ndarray, *, fill: float = 0.0, **_: Any) -> np.ndarray:
        out = np.full(self.in_shape + tuple(array.shape[3:]), fill, dtype=array.dtype)
        out[self._box()] = array
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"type": "crop", "start": list(self.start), "stop": list(self.stop), "in_shape": list(self.in_shape)}


@dataclasses.dataclass(frozen=True)
class Resample:
    """Resample to ``out_shape`` over the same physical extent (align_corners=False).

    Attributes:
        in_shape: Shape before the step.
        out_shape: Shape after the step.
        slice_axis: Axis resampled separately (in-plane first with the chosen order, then this
            axis linearly), or None; see :func:`separate_slice_axis`.
    """

    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    slice_axis: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "in_shape", _shape3(self.in_shape, name="Resample.in_shape"))
        object.__setattr__(self, "out_shape", _shape3(self.out_shape, name="Resample.out_shape"))
        if self.slice_axis is not None:
            if isinstance(self.slice_axis, bool) or self.slice_axis not in (0, 1, 2):
                raise ValueError(
                    f"Expected Resample.slice_axis in (0, 1, 2) or None. Received: slice_axis={self.slice_axis!r}"
                )
            object.__setattr__(self, "slice_axis", int(self.slice_axis))

    @property
    def scale(self) -> np.ndarray:
        """Input voxels per output voxel, per axis (``in_shape / out_shape``)."""
        return np.asarray(self.in_shape, dtype=np.float64) / np.asarray(self.out_shape, dtype=np.float64)

    def out_affine(self, affine_in: np.ndarray) -> np.ndarray:
        scale = self.scale
        matrix = np.diag([*scale, 1.0])
        matrix[:3, 3] = 0.5 * scale - 0.5
        return affine_in @ matrix

    def forward(self, array: np.ndarray, *, order: int = 1, mask: bool = False, **_: Any) -> np.ndarray:
        if mask:
            return resample_mask_to_shape(array, self.out_shape)
        return resample_to_shape(
            array, self.out_shape, order=order, slice_axis=self.slice_axis, anti_aliasing=True
        )

    def inverse(self, array: np.ndarray, *, order: int = 1, **_: Any) -> np.ndarray:
        if order == 0:
            result = resample_to_shape(array, self.in_shape, order=0)
            return result.astype(array.dtype, copy=False)
        return resample_to_shape(array, self.in_shape, order=order, slice_axis=self.slice_axis)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "resample",
            "in_shape": list(self.in_shape),
            "out_shape": list(self.out_shape),
            "slice_axis": self.slice_axis,
        }


@dataclasses.dataclass(frozen=True)
class Pad:
    """Pad by ``pad_width`` ((before, after) per axis), e.g. up to a multiple of ``2**depth``.

    Attributes:
        pad_width: 3 (before, after) pairs of non-negative ints.
        in_shape: Shape before the step.
    """

    pad_width: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    in_shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "pad_width", _check_pad_width(self.pad_width, ndim=3, name="Pad.pad_width"))
        object.__setattr__(self, "in_shape", _shape3(self.in_shape, name="Pad.in_shape"))

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return tuple(n + a + b for n, (a, b) in zip(self.in_shape, self.pad_width))  # type: ignore[return-value]

    def out_affine(self, affine_in: np.ndarray) -> np.ndarray:
        return affine_in @ _translation([-a for a, _ in self.pad_width])

    def forward(self, array: np.ndarray, *, fill: float = 0.0, mask: bool = False, **_: Any) -> np.ndarray:
        width = list(self.pad_width) + [(0, 0)] * (array.ndim - 3)
        return np.pad(array, width, mode="constant", constant_values=0 if mask else fill)

    def inverse(self, array: np.ndarray, **_: Any) -> np.ndarray:
        return np.ascontiguousarray(unpad(array, self.pad_width))

    def to_dict(self) -> dict[str, Any]:
        return {"type": "pad", "pad_width": [list(p) for p in self.pad_width], "in_shape": list(self.in_shape)}


Step = Union[Reorient, Crop, Resample, Pad]
_STEP_TYPES: dict[str, type] = {"reorient": Reorient, "crop": Crop, "resample": Resample, "pad": Pad}


def _step_from_dict(data: Any, *, index: int) -> Step:
    if not isinstance(data, Mapping) or data.get("type") not in _STEP_TYPES:
        raise ValueError(
            f"Expected steps[{index}] to be a mapping with type in {sorted(_STEP_TYPES)}. Received: {data!r}"
        )
    cls = _STEP_TYPES[data["type"]]
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in data.items() if k != "type"}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ValueError(f"Expected steps[{index}] keys in {sorted(fields)}. Received: unknown keys {unknown}")
    try:
        return cls(**kwargs)
    except TypeError as error:
        raise ValueError(f"Expected a complete steps[{index}] ({data['type']}). Received: {error}") from None


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Geometry:
    """Source scan geometry plus every step that leads to network space.

    Attributes:
        source_shape: (I, J, K) of the array as stored on disk.
        source_affine: (4, 4) float64 voxel -> world affine as stored on disk (read-only copy).
        steps: Steps applied in order; each step's ``in_shape`` equals the previous shape.

    Example:
        >>> geometry = Geometry((5, 6, 7), np.eye(4)).then(Pad(((0, 3), (1, 1), (0, 1)), (5, 6, 7)))
        >>> geometry.shape
        (8, 8, 8)
    """

    source_shape: tuple[int, int, int]
    source_affine: np.ndarray
    steps: tuple[Step, ...] = ()

    def __post_init__(self) -> None:
        shape = _shape3(self.source_shape, name="source_shape")
        object.__setattr__(self, "source_shape", shape)
        object.__setattr__(self, "source_affine", check_affine(self.source_affine, name="source_affine"))
        steps = tuple(self.steps)
        current = shape
        for index, step in enumerate(steps):
            if not isinstance(step, tuple(_STEP_TYPES.values())):
                raise TypeError(
                    f"Expected steps[{index}] to be Reorient, Crop, Resample or Pad. Received: {step!r}"
                )
            if step.in_shape != current:
                raise ShapeMismatchError(
                    f"Expected steps[{index}] ({type(step).__name__}) to start from shape {current}. "
                    f"Received: in_shape={step.in_shape}"
                )
            current = step.out_shape
        object.__setattr__(self, "steps", steps)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Geometry):
            return NotImplemented
        return (
            self.source_shape == other.source_shape
            and np.array_equal(self.source_affine, other.source_affine)
            and self.steps == other.steps
        )

    __hash__ = None  # type: ignore[assignment]

    def then(self, step: Step) -> Geometry:
        """Returns a new Geometry with ``step`` appended (its in_shape must equal ``shape``)."""
        return Geometry(self.source_shape, self.source_affine, self.steps + (step,))

    @property
    def shape(self) -> tuple[int, int, int]:
        """Network-space shape after all steps."""
        return self.steps[-1].out_shape if self.steps else self.source_shape

    @property
    def affine(self) -> np.ndarray:
        """(4, 4) network-space voxel -> world affine."""
        affine = np.array(self.source_affine)
        for step in self.steps:
            affine = step.out_affine(affine)
        return affine

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Network-space spacing per voxel axis (mm)."""
        return spacing_from_affine(self.affine)

    def forward(
        self, array_source: np.ndarray, *, order: int = 1, mask: bool = False, fill: float = 0.0
    ) -> np.ndarray:
        """Brings a source-order array to network space.

        Args:
            array_source: ndarray of shape ``source_shape``.
            order: Spline order for images (1 linear, 3 cubic); ignored when ``mask``.
            mask: Treat the array as a binary mask (> 0): linear float resample, ``>= 0.5``,
                vanished components keep their centre voxel; padding is 0.
            fill: Image value used by Pad steps.

        Returns:
            ndarray of shape ``self.shape``: uint8 when ``mask``, float32 after a Resample,
            otherwise the input dtype.

        Raises:
            ShapeMismatchError: If the array's shape is not ``source_shape``.
        """
        array = np.asarray(array_source)
        _check_spatial(array, self.source_shape, name="array_source")
        if mask:
            array = (array > 0).astype(np.uint8)
        for step in self.steps:
            array = step.forward(array, order=order, mask=mask, fill=fill)
        return array

    def inverse(self, array_net: np.ndarray, *, order: int = 1, fill: float = 0.0) -> np.ndarray:
        """Brings a network-space array back to the exact source shape and voxel order.

        Steps are undone in reverse order: unpad, resample back to the recorded in_shape,
        uncrop (filling with ``fill``), reorient back. Send probabilities (not labels) and
        threshold the result; write it with ``source_affine``.

        Args:
            array_net: ndarray of shape ``self.shape``.
            order: Interpolation order for Resample steps (1 for probabilities; 0 keeps labels
                and dtype).
            fill: Value outside a crop.

        Returns:
            ndarray of shape ``source_shape`` (float32 after an interpolating Resample).

        Raises:
            ShapeMismatchError: If the array's shape is not ``self.shape``.
        """
        array = np.asarray(array_net)
        _check_spatial(array, self.shape, name="array_net")
        for step in reversed(self.steps):
            array = step.inverse(array, order=order, fill=fill)
        return array

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record (floats round-trip exactly through ``json``)."""
        return {
            "version": _GEOMETRY_VERSION,
            "source_shape": list(self.source_shape),
            "source_affine": [[float(v) for v in row] for row in self.source_affine],
            "steps": [step.to_dict() for step in self.steps],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Geometry:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: For a missing key, an unknown version or step, or inconsistent shapes.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"Expected a geometry mapping. Received: {type(data).__name__}")
        missing = [k for k in ("source_shape", "source_affine", "steps") if k not in data]
        if missing:
            raise ValueError(f"Expected geometry keys source_shape, source_affine, steps. Received: missing {missing}")
        version = data.get("version", _GEOMETRY_VERSION)
        if version != _GEOMETRY_VERSION:
            raise ValueError(f"Expected geometry version {_GEOMETRY_VERSION}. Received: version={version!r}")
        steps = data["steps"]
        if not isinstance(steps, (list, tuple)):
            raise ValueError(f"Expected geometry steps to be a list. Received: steps={steps!r}")
        return cls(
            source_shape=data["source_shape"],
            source_affine=np.asarray(data["source_affine"], dtype=np.float64),
            steps=tuple(_step_from_dict(s, index=i) for i, s in enumerate(steps)),
        )


def body_bbox(
    image_hu: np.ndarray, *, threshold_hu: float = -500.0, margin_vox: int | Sequence[int] = 2
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Bounding box of the body: the largest 26-connected component above ``threshold_hu``.

    Air around the patient (and small disconnected objects such as the table edge) falls
    outside. The box is grown by ``margin_vox`` and clipped to the array.

    Args:
        image_hu: ndarray of shape (I, J, K) in Hounsfield units.
        threshold_hu: Voxels above this value count as body. The pipeline passes
            `PreprocessSpec.body_threshold_hu` (default `segmentation.preprocessing.SOFT_TISSUE_ABOVE_HU`,
            also -500 HU); this module sits below preprocessing, so the default is a literal.
        margin_vox: Margin in voxels, one int or 3 ints.

    Returns:
        ``(start, stop)`` with ``stop`` exclusive; the whole array when nothing is above the
        threshold (empty case).

    Raises:
        ValueError: For a non-3D image or a negative margin.
    """
    image = np.asarray(image_hu)
    if image.ndim != 3:
        raise ValueError(f"Expected image_hu of shape (I, J, K). Received: image_hu.shape={image.shape}")
    margins = (margin_vox,) * 3 if isinstance(margin_vox, (int, np.integer)) else tuple(margin_vox)
    if len(margins) != 3 or any(isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 0 for m in margins):
        raise ValueError(f"Expected margin_vox to be a non-negative int or 3 of them. Received: margin_vox={margin_vox!r}")
    labels, count = ndimage.label(image > threshold_hu, structure=_CONNECTIVITY_26)
    if count == 0:
        return (0, 0, 0), tuple(int(n) for n in image.shape)  # type: ignore[return-value]
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    box = ndimage.find_objects(labels)[int(np.argmax(sizes)) - 1]
    start = tuple(max(0, s.start - m) for s, m in zip(box, margins))
    stop = tuple(min(n, s.stop + m) for s, m, n in zip(box, margins, image.shape))
    return start, stop  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Array plumbing: padding, batch/channel axes
# --------------------------------------------------------------------------------------------


def _check_pad_width(pad_width: Any, *, ndim: int | None, name: str = "pad_width") -> tuple[tuple[int, int], ...]:
    try:
        pairs = tuple(tuple(p) for p in pad_width)
    except TypeError:
        raise ValueError(f"Expected {name} as (before, after) pairs. Received: {name}={pad_width!r}") from None
    ok = all(
        len(p) == 2 and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0 for v in p)
        for p in pairs
    )
    if not ok or (ndim is not None and len(pairs) != ndim):
        expected = f"{ndim} " if ndim is not None else ""
        raise ValueError(
            f"Expected {name} as {expected}(before, after) pairs of non-negative ints. Received: {name}={pad_width!r}"
        )
    return tuple((int(a), int(b)) for a, b in pairs)


def unpad(array: np.ndarray, pad_width: Sequence[Sequence[int]]) -> np.ndarray:
    """Removes the padding of a :class:`Pad` step (leading axes; trailing axes untouched).

    Args:
        array: ndarray with at least ``len(pad_width)`` axes.
        pad_width: (before, after) pairs of non-negative ints.

    Returns:
        A view of ``array`` without the padding.

    Raises:
        ValueError: When the padding does not fit the array.
    """
    array = np.asarray(array)
    pairs = _check_pad_width(pad_width, ndim=None)
    if len(pairs) > array.ndim or any(a + b >= n for (a, b), n in zip(pairs, array.shape)):
        raise ValueError(
            f"Expected pad_width smaller than the array on every padded axis. "
            f"Received: pad_width={pairs}, array.shape={array.shape}"
        )
    return array[tuple(slice(a, n - b) for (a, b), n in zip(pairs, array.shape))]


def add_channel_axis(array: np.ndarray) -> np.ndarray:
    """Adds a trailing channel axis of size 1: ``(*shape)`` -> ``(*shape, 1)``.

    The one place a channel axis is added: a training sample ``(*patch_size)`` (tf.data adds
    the batch axis), a stack of sliding windows ``(B, *window)``, a single case in
    :func:`to_model_input`.

    Args:
        array: ndarray of any shape.

    Returns:
        A view of ``array`` with one more axis, same dtype.
    """
    return np.asarray(array)[..., np.newaxis]


def to_model_input(array: np.ndarray) -> np.ndarray:
    """Adds the batch (and channel) axes: (I, J, K) -> (1, I, J, K, 1); (I, J, K, C) -> (1, I, J, K, C).

    The batch axis of a single case; the channel axis through :func:`add_channel_axis`.

    Args:
        array: Real ndarray of shape (I, J, K) or (I, J, K, C).

    Returns:
        C-contiguous float32 ndarray of shape (1, I, J, K, C).

    Raises:
        ValueError: For any other number of axes.
    """
    array = np.asarray(array)
    if array.ndim == 3:
        array = add_channel_axis(array)
    elif array.ndim != 4:
        raise ValueError(f"Expected array of shape (I, J, K) or (I, J, K, C). Received: array.shape={array.shape}")
    return np.ascontiguousarray(array[np.newaxis], dtype=np.float32)


def from_model_output(array: np.ndarray) -> np.ndarray:
    """Removes the batch (and single channel) axes: (1, I, J, K, 1) -> (I, J, K).

    The one place where these axes are removed; (1, I, J, K, C) with C > 1 gives (I, J, K, C).

    Args:
        array: ndarray of shape (1, I, J, K, C) (a model output for one case).

    Returns:
        ndarray of shape (I, J, K) (or (I, J, K, C)), same dtype.

    Raises:
        ValueError: For another rank or a batch of more than one case.
    """
    array = np.asarray(array)
    if array.ndim != 5 or array.shape[0] != 1:
        raise ValueError(f"Expected array of shape (1, I, J, K, C). Received: array.shape={array.shape}")
    return array[0, ..., 0] if array.shape[-1] == 1 else array[0]
