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

Resampling convention and masks: `segmentation.resampling`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Union

import numpy as np
from nibabel.orientations import apply_orientation, inv_ornt_aff
from scipy import ndimage

from segmentation.resampling import (  # the four public resamplers: re-exported
    _CONNECTIVITY_26,
    _shape3,
    resample_mask_to_shape,
    resample_to_shape,
    separate_slice_axis,
    target_shape,
)
from segmentation.validation import check_affine

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


class ShapeMismatchError(ValueError):
    """Two arrays that must share a spatial shape do not; the message names both shapes."""


# --------------------------------------------------------------------------------------------
# Small validation helpers
# --------------------------------------------------------------------------------------------


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
