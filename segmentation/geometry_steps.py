"""The steps of a :class:`segmentation.alignment.Geometry`: Reorient, Crop, Resample, Pad.

Each step is a frozen record of one transform between the source scan and network space, with
``forward`` / ``inverse`` on arrays, the affine it produces, and a JSON-safe ``to_dict``.
`segmentation.alignment` re-exports them; resampling convention and masks:
`segmentation.resampling`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Union

import numpy as np
from nibabel.orientations import apply_orientation, inv_ornt_aff

from segmentation.array_axes import _check_pad_width, unpad
from segmentation.resampling import _shape3, resample_mask_to_shape, resample_to_shape

__all__ = [
    "Reorient",
    "Crop",
    "Resample",
    "Pad",
    "Step",
]


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
