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

The steps live in `segmentation.geometry_steps`, the array plumbing in
`segmentation.array_axes`; both are re-exported here. Resampling convention and masks:
`segmentation.resampling`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from segmentation.array_axes import (  # the array plumbing: re-exported
    add_channel_axis,
    from_model_output,
    to_model_input,
    unpad,
)
from segmentation.geometry_steps import (  # the steps: re-exported
    _STEP_TYPES,
    Crop,
    Pad,
    Reorient,
    Resample,
    Step,
    _step_from_dict,
)
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
