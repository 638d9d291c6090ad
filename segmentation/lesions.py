"""The lesion table: connected components of a mask and their properties, defined once.

Evaluation (`segmentation.metrics`: lesion matching, sizes, FROC scores), the training
sampler's lesion list (`segmentation.preprocessing.lesion_records`, in the cache record), the
attribute join (`segmentation.nodule_attributes`) and the nodule CSV of ``lungseg predict``
(`pipelines.infer.nodule_table`) all read their lesions from here:
:func:`find_components` labels a mask, :func:`lesion_table` measures the components
(``skimage.measure.regionprops``).

Definitions (tested in ``tests/test_lesions.py``):

* A component is a connected set of foreground voxels, with 6 (faces), 18 (faces and edges)
  or 26 (faces, edges and corners) connectivity. Foreground is True, or > 0 for numbers.
* Components are numbered 1..n in raster (C) order of their first voxel. Labelling runs on the
  mask's bounding box only: the numbering is the same in any box that holds every voxel, so a
  full-size label array is never needed.
* ``voxel_count``; ``volume_mm3 = voxel_count * prod(spacing_mm)``; ``diameter_mm`` is the
  equivalent diameter, that of the sphere of the same volume, ``(6 V / pi) ** (1/3)``.
* ``centroid_vox``: the mean voxel index (full-array indices); ``centroid_mm``: the affine
  applied to it (world mm), or ``centroid_vox * spacing_mm`` without an affine.
* ``bbox``: one ``slice(start, stop)`` per axis in the full array, ``stop`` exclusive.
* With an intensity image (probabilities): ``intensity_mean`` (float64 accumulation) and
  ``intensity_max`` over the component's voxels.
* An empty mask has no components and an empty table.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.measure import regionprops

from segmentation import validation

__all__ = [
    "CONNECTIVITIES",
    "BBox",
    "Components",
    "Lesion",
    "bounding_box",
    "check_affine",
    "check_spacing",
    "connectivity_structure",
    "equivalent_diameter_mm",
    "find_components",
    "lesion_table",
]

CONNECTIVITIES = (6, 18, 26)
BBox = tuple[slice, slice, slice]


# --------------------------------------------------------------------------- validation
def check_spacing(spacing_mm: Any, *, ndim: int = 3) -> tuple[float, ...]:
    """Returns ``spacing_mm`` as a tuple of positive floats.

    Raises:
        ValueError: wrong length, non-finite or non-positive values.
    """
    try:
        values = tuple(float(s) for s in spacing_mm)
    except TypeError as error:
        raise ValueError(
            f"Expected spacing_mm to be a sequence of {ndim} floats. "
            f"Received: spacing_mm={spacing_mm!r}"
        ) from error
    if len(values) != ndim or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(
            f"Expected spacing_mm to be {ndim} positive finite floats. "
            f"Received: spacing_mm={spacing_mm!r}"
        )
    return values


def check_affine(affine: Any, *, spacing_mm: Sequence[float]) -> np.ndarray:
    """Returns a (4, 4) float64 voxel -> world matrix whose column norms equal ``spacing_mm``.

    Args:
        affine: (4, 4) matrix, or None for ``diag(*spacing_mm, 1)`` (origin at voxel 0).
        spacing_mm: the checked voxel size (mm), same axis order.

    Raises:
        ValueError: not a finite invertible (4, 4) affine (`segmentation.validation.check_affine`),
            or column norms other than ``spacing_mm``.
    """
    if affine is None:
        return np.diag([*spacing_mm, 1.0])
    matrix = validation.check_affine(affine, name="affine")
    norms = np.linalg.norm(matrix[:3, :3], axis=0)
    if not np.allclose(norms, spacing_mm, rtol=1e-3, atol=1e-5):
        raise ValueError(
            "Expected affine column norms to equal spacing_mm. "
            f"Received: spacing_mm={tuple(spacing_mm)}, affine column norms={tuple(norms.round(6))}"
        )
    return matrix


def connectivity_structure(connectivity: int) -> np.ndarray:
    """The 3x3x3 bool neighbourhood of a connectivity (6, 18 or 26).

    Raises:
        ValueError: any other value.
    """
    if isinstance(connectivity, bool) or connectivity not in CONNECTIVITIES:
        raise ValueError(
            f"Expected connectivity in {CONNECTIVITIES}. Received: connectivity={connectivity!r}")
    return ndimage.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[connectivity])


# --------------------------------------------------------------------------- components
def bounding_box(mask: np.ndarray) -> BBox | None:
    """Bounding box of the True (non-zero) voxels.

    Args:
        mask: ndarray (I, J, K).

    Returns:
        3 slices ``[start, stop)``, or None when the mask is empty.
    """
    rows = mask.reshape(mask.shape[0], -1).any(axis=1)
    if not rows.any():
        return None
    i0, i1 = np.flatnonzero(rows)[[0, -1]]
    sub = mask[i0:i1 + 1]
    cols = sub.any(axis=(0, 2))
    deps = sub.any(axis=(0, 1))
    j0, j1 = np.flatnonzero(cols)[[0, -1]]
    k0, k1 = np.flatnonzero(deps)[[0, -1]]
    return slice(int(i0), int(i1) + 1), slice(int(j0), int(j1) + 1), slice(int(k0), int(k1) + 1)


@dataclasses.dataclass(frozen=True, eq=False)
class Components:
    """Connected components labelled inside the mask's bounding box.

    Attributes:
        labels: int32 ndarray of the box's shape: 0 background, 1..count components in
            raster order; shape (0, 0, 0) when there is none.
        box: where ``labels`` lies in the full array (3 slices); None when there is none.
        count: number of components.
        shape: shape of the full mask.
    """

    labels: np.ndarray
    box: BBox | None
    count: int
    shape: tuple[int, int, int]

    @property
    def offset(self) -> tuple[int, int, int]:
        """Full-array index of ``labels[0, 0, 0]`` ((0, 0, 0) when there is no component)."""
        return (0, 0, 0) if self.box is None else tuple(int(s.start) for s in self.box)

    def full(self) -> np.ndarray:
        """The int32 label image of the full mask's shape."""
        out = np.zeros(self.shape, dtype=np.int32)
        if self.box is not None:
            out[self.box] = self.labels
        return out

    def crop(self, array: np.ndarray) -> np.ndarray:
        """``array`` (full shape) cut to the box of ``labels``."""
        return array[self.box] if self.box is not None else array[:0, :0, :0]


def find_components(mask: Any, *, connectivity: int = 26) -> Components:
    """Labels the connected components of a mask within its bounding box.

    Args:
        mask: ndarray (I, J, K); bool, or numbers with foreground > 0.
        connectivity: 6, 18 or 26.

    Returns:
        Components (numbered in raster order of their first voxel).

    Raises:
        ValueError: not 3D, or a bad connectivity.
    """
    structure = connectivity_structure(connectivity)
    array = np.asarray(mask)
    if array.ndim != 3:
        raise ValueError(
            f"Expected mask to be a 3D array (I, J, K). Received: mask.shape={array.shape}")
    if array.dtype.kind not in "bu":  # signed or float: only values > 0 are foreground
        array = array > 0
    box = bounding_box(array)  # bool and unsigned: non-zero is foreground, no full-size copy
    if box is None:
        return Components(np.zeros((0, 0, 0), np.int32), None, 0, array.shape)
    labels, count = ndimage.label(array[box], structure=structure)
    return Components(labels.astype(np.int32, copy=False), box, int(count), array.shape)


# --------------------------------------------------------------------------- the table
def equivalent_diameter_mm(volume: float) -> float:
    """Diameter of the sphere of the same volume: ``(6 V / pi) ** (1/3)`` (mm, V in mm3)."""
    return float((6.0 * volume / math.pi) ** (1.0 / 3.0))


@dataclasses.dataclass(frozen=True)
class Lesion:
    """One row of the lesion table (definitions in the module docstring).

    Attributes:
        label: the component's label (1-based).
        voxel_count: number of voxels.
        volume_mm3: voxel count times the voxel volume.
        diameter_mm: equivalent diameter.
        centroid_vox: mean voxel index (3 floats, full-array indices).
        centroid_mm: world centroid (3 floats, mm).
        bbox: 3 slices ``[start, stop)`` in the full array.
        intensity_mean: mean intensity over the voxels (None without an intensity image).
        intensity_max: maximum intensity over the voxels (None without an intensity image).
    """

    label: int
    voxel_count: int
    volume_mm3: float
    diameter_mm: float
    centroid_vox: tuple[float, float, float]
    centroid_mm: tuple[float, float, float]
    bbox: BBox
    intensity_mean: float | None = None
    intensity_max: float | None = None


def lesion_table(components: Components, *, spacing_mm: Sequence[float], affine: Any = None,
                 intensity: np.ndarray | None = None) -> list[Lesion]:
    """Measures each labelled component (``skimage.measure.regionprops``).

    Args:
        components: from :func:`find_components`, or any int label image in a Components
            (labels need not be consecutive: absent labels have no row).
        spacing_mm: voxel size (mm), same axis order.
        affine: (4, 4) voxel -> world (mm) matrix whose column norms equal ``spacing_mm``;
            None means ``diag(*spacing_mm, 1)``.
        intensity: optional ndarray of the full mask's shape (e.g. probabilities); gives
            ``intensity_mean`` and ``intensity_max``.

    Returns:
        One Lesion per label present, in label order; [] when there is none.

    Raises:
        ValueError: bad spacing or affine, or an intensity image of another shape.
    """
    spacing = check_spacing(spacing_mm)
    matrix = check_affine(affine, spacing_mm=spacing)
    if intensity is not None and np.shape(intensity) != tuple(components.shape):
        raise ValueError(
            f"Expected intensity of the mask's shape {tuple(components.shape)}. "
            f"Received: intensity.shape={np.shape(intensity)}")
    if components.box is None:
        return []
    offset = np.asarray(components.offset)
    values = None if intensity is None else components.crop(np.asarray(intensity))
    regions = regionprops(components.labels)  # no `offset=`: scikit-image 0.22 may lack it
    if not regions:
        return []
    # the mean full-array index: integer sums are exact, so any summation order agrees
    centres = np.array([(region.coords + offset).mean(axis=0) for region in regions],
                       dtype=np.float64).reshape(-1, 3)
    world = centres @ matrix[:3, :3].T + matrix[:3, 3]
    voxel_mm3 = float(np.prod(spacing))
    table = []
    for region, centre, centre_mm in zip(regions, centres, world):
        count = int(region.num_pixels)
        volume = float(count) * voxel_mm3
        inside = None if values is None else values[region.slice][region.image]
        table.append(Lesion(
            label=int(region.label),
            voxel_count=count,
            volume_mm3=volume,
            diameter_mm=equivalent_diameter_mm(volume),
            centroid_vox=tuple(float(c) for c in centre),
            centroid_mm=tuple(float(c) for c in centre_mm),
            bbox=tuple(slice(int(s.start) + int(o), int(s.stop) + int(o))
                       for s, o in zip(region.slice, offset)),
            intensity_mean=None if inside is None else float(inside.mean(dtype=np.float64)),
            intensity_max=None if inside is None else float(inside.max()),
        ))
    return table
