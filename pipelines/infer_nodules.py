"""The nodule table of ``lungseg predict`` (pure): one row per connected component of a mask.

`nodule_table` (rows with the keys `NODULE_COLUMNS`, largest first), `size_category` (the
Lung-RADS-like size bands), `slice_axis` and the CSV text of the rows; the columns are described
in `pipelines.infer`. Re-exported by `pipelines.infer`.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from segmentation.lesions import Lesion, find_components, lesion_table

__all__ = ["NODULE_COLUMNS", "nodule_table", "size_category", "slice_axis"]


NODULE_COLUMNS = (
    "id",
    "centroid_vox_i",
    "centroid_vox_j",
    "centroid_vox_k",
    "centroid_x_mm",
    "centroid_y_mm",
    "centroid_z_mm",
    "diameter_mm",
    "volume_mm3",
    "mean_prob",
    "max_prob",
    "slice_start",
    "slice_end",
    "size_category",
)
"""Columns of ``{case}_nodules.csv`` (and keys of each ``nodules`` entry of the JSON)."""

_SIZE_BANDS_MM = ((6.0, "<6mm"), (8.0, "6-8mm"), (15.0, "8-15mm"), (math.inf, ">=15mm"))
_DECIMALS = 4


# --------------------------------------------------------------------------------------------
# Nodule table (pure)
# --------------------------------------------------------------------------------------------


def size_category(diameter_mm: float) -> str:
    """Size band of an equivalent diameter: ``<6mm``, ``6-8mm``, ``8-15mm`` or ``>=15mm``.

    Bands are half-open: 6.0 mm is ``"6-8mm"``, 8.0 mm ``"8-15mm"``, 15.0 mm ``">=15mm"``.

    Raises:
        ValueError: ``diameter_mm`` is negative or not finite.
    """
    if not (isinstance(diameter_mm, (int, float, np.floating)) and math.isfinite(diameter_mm)
            and diameter_mm >= 0):
        raise ValueError(f"Expected a finite diameter_mm >= 0. Received: diameter_mm={diameter_mm!r}")
    for upper_mm, label in _SIZE_BANDS_MM:
        if diameter_mm < upper_mm:
            return label
    return _SIZE_BANDS_MM[-1][1]  # pragma: no cover - inf bound always matches


def slice_axis(affine: np.ndarray) -> int:
    """The slice axis of a voxel grid: the axis with the largest spacing.

    Ties (within 1e-6 relative) go to the axis whose direction is closest to the world
    superior-inferior (z) axis, so an isotropic axial scan reports its axial slices.

    Args:
        affine: float ``(4, 4)`` voxel -> world affine of the grid.

    Returns:
        0, 1 or 2.
    """
    columns = np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    largest = np.flatnonzero(spacing >= spacing.max() * (1 - 1e-6))
    if largest.size == 1:
        return int(largest[0])
    z_alignment = np.abs(columns[2, largest]) / spacing[largest]
    return int(largest[np.argmax(z_alignment)])


def nodule_table(mask: np.ndarray, probs: np.ndarray, *, affine: np.ndarray,
                 connectivity: int = 26) -> list[dict[str, Any]]:
    """One row per predicted nodule (connected component), largest first.

    The rows of the lesion table (`segmentation.lesions.lesion_table`: components, volumes,
    equivalent diameters, voxel and world centroids, probabilities; the same definitions as
    evaluation), computed in the mask's bounding box only.

    Args:
        mask: uint8/bool ``(I, J, K)`` in source voxel order.
        probs: float ``(I, J, K)`` probabilities on the same grid.
        affine: ``(4, 4)`` source voxel -> world (RAS mm) affine.
        connectivity: 6, 18 or 26.

    Returns:
        List of dicts with the keys `NODULE_COLUMNS` (floats rounded to 4 decimals;
        ``slice_start``/``slice_end`` inclusive along `slice_axis`); empty for an empty mask.

    Raises:
        ValueError: Shapes differ, or a bad mask, affine or connectivity.
    """
    mask = np.asarray(mask)
    probs = np.asarray(probs)
    if mask.shape != probs.shape or mask.ndim != 3:
        raise ValueError(
            f"Expected mask and probs of the same 3D shape. Received: mask.shape={mask.shape}, "
            f"probs.shape={probs.shape}"
        )
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"Expected a (4, 4) affine. Received: affine.shape={affine.shape}")
    components = find_components(mask, connectivity=connectivity)
    spacing_mm = np.linalg.norm(affine[:3, :3], axis=0)
    table = lesion_table(components, spacing_mm=spacing_mm, affine=affine, intensity=probs)
    axis = slice_axis(affine)
    rows = [_nodule_row(lesion, axis) for lesion in table]
    rows.sort(key=lambda r: (-r["_volume"], r["slice_start"]))
    return [{"id": i + 1, **{k: v for k, v in r.items() if k != "_volume"}} for i, r in enumerate(rows)]


def _nodule_row(lesion: Lesion, axis: int) -> dict[str, Any]:
    """A lesion-table row as a nodule row (``_volume``: the unrounded volume, for sorting)."""
    (vox_i, vox_j, vox_k), (x_mm, y_mm, z_mm) = lesion.centroid_vox, lesion.centroid_mm
    extent = lesion.bbox[axis]
    return {
        "centroid_vox_i": round(vox_i, _DECIMALS),
        "centroid_vox_j": round(vox_j, _DECIMALS),
        "centroid_vox_k": round(vox_k, _DECIMALS),
        "centroid_x_mm": round(x_mm, _DECIMALS),
        "centroid_y_mm": round(y_mm, _DECIMALS),
        "centroid_z_mm": round(z_mm, _DECIMALS),
        "diameter_mm": round(lesion.diameter_mm, _DECIMALS),
        "volume_mm3": round(lesion.volume_mm3, _DECIMALS),
        "mean_prob": round(lesion.intensity_mean, _DECIMALS),
        "max_prob": round(lesion.intensity_max, _DECIMALS),
        "slice_start": extent.start,
        "slice_end": extent.stop - 1,
        "size_category": size_category(lesion.diameter_mm),
        "_volume": lesion.volume_mm3,
    }


def _nodules_csv(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(NODULE_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
