"""Voxel-level metrics of two binary masks: Dice, IoU, precision, sensitivity, volumes, HD95.

Also the mask and probability checks that every metric uses. Masks are bool arrays of shape
``(I, J, K)`` with ``spacing_mm`` in the same axis order; the empty-case policy is in the
docstring of `segmentation.metrics`, which re-exports these names.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from segmentation.lesions import BBox, bounding_box, check_spacing

__all__ = [
    "check_mask",
    "check_probabilities",
    "dice",
    "iou",
    "precision",
    "sensitivity",
    "volume_mm3",
    "volume_difference",
    "surface_distances",
    "hd95",
    "surface_dice",
]


# --------------------------------------------------------------------------- validation
def check_mask(mask: Any, *, name: str = "mask") -> np.ndarray:
    """Returns ``mask`` as a bool array after checking it is 3D and binary.

    Args:
        mask: array-like of shape ``(I, J, K)``; bool, or numeric with values in {0, 1}.
        name: argument or file name used in error messages.

    Returns:
        ndarray of shape ``(I, J, K)``, dtype bool (no copy when already bool).

    Raises:
        TypeError: not an array of bool or numbers.
        ValueError: not 3D, or values outside {0, 1} (including NaN).
    """
    array = np.asarray(mask)
    if array.ndim != 3:
        raise ValueError(
            f"Expected {name} to be a 3D array (I, J, K). Received: {name}.shape={array.shape}"
        )
    if array.dtype == bool:
        return array
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise TypeError(
            f"Expected {name} to be a bool or numeric array. Received: {name}.dtype={array.dtype}"
        )
    if array.size and (array.min() < 0 or array.max() > 1 or
                       (np.issubdtype(array.dtype, np.floating)
                        and not np.all((array == 0) | (array == 1)))):
        values = np.unique(array)
        shown = ", ".join(f"{v:g}" for v in values[:8]) + (", ..." if values.size > 8 else "")
        raise ValueError(
            f"Expected {name} to be a binary mask with values in {{0, 1}}. "
            f"Received: {name} with values [{shown}]"
        )
    return array.astype(bool)


def check_probabilities(probs: Any, *, shape: tuple[int, ...], name: str = "probs") -> np.ndarray:
    """Returns ``probs`` as a float array after checking shape, finiteness and range [0, 1].

    Args:
        probs: array-like of shape ``shape``.
        shape: expected shape (the mask's).
        name: argument or file name used in error messages.

    Returns:
        ndarray of shape ``shape``, floating dtype (float32 unless already floating).

    Raises:
        ValueError: wrong shape, NaN/inf values or values outside [0, 1].
    """
    array = np.asarray(probs)
    if not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
    if array.shape != tuple(shape):
        raise ValueError(
            f"Expected {name} to have the mask's shape {tuple(shape)}. "
            f"Received: {name}.shape={array.shape}"
        )
    n_bad = int(np.count_nonzero(~np.isfinite(array))) if array.size else 0
    if n_bad:
        raise ValueError(
            f"Expected {name} to hold finite probabilities. "
            f"Received: {name} with {n_bad} NaN/inf voxels"
        )
    if array.size and (array.min() < 0 or array.max() > 1):
        raise ValueError(
            f"Expected {name} to hold probabilities in [0, 1]. "
            f"Received: {name} with range [{float(array.min()):g}, {float(array.max()):g}]"
        )
    return array


def _check_pair(mask_true: Any, mask_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    true = check_mask(mask_true, name="mask_true")
    pred = check_mask(mask_pred, name="mask_pred")
    if true.shape != pred.shape:
        raise ValueError(
            "Expected mask_true and mask_pred to have the same shape. "
            f"Received: mask_true.shape={true.shape}, mask_pred.shape={pred.shape}"
        )
    return true, pred


# --------------------------------------------------------------------------- bounding boxes
def _intersect(a: BBox | None, b: BBox | None) -> BBox | None:
    if a is None or b is None:
        return None
    out = []
    for sa, sb in zip(a, b):
        start, stop = max(sa.start, sb.start), min(sa.stop, sb.stop)
        if start >= stop:
            return None
        out.append(slice(start, stop))
    return tuple(out)


def _relative(inner: BBox, outer: BBox) -> BBox:
    """``inner`` expressed in the coordinates of the crop ``outer`` (inner within outer)."""
    return tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer))


# --------------------------------------------------------------------------- voxel level
def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator > 0 else float("nan")


def _counts(true: np.ndarray, pred: np.ndarray) -> tuple[int, int, int]:
    """(|T|, |P|, |T and P|) counted on bounding boxes only."""
    box_t, box_p = bounding_box(true), bounding_box(pred)
    n_true = int(np.count_nonzero(true[box_t])) if box_t else 0
    n_pred = int(np.count_nonzero(pred[box_p])) if box_p else 0
    box = _intersect(box_t, box_p)
    n_both = int(np.count_nonzero(true[box] & pred[box])) if box else 0
    return n_true, n_pred, n_both


def dice(mask_true: Any, mask_pred: Any) -> float:
    """Dice coefficient ``2|T & P| / (|T| + |P|)``.

    Args:
        mask_true: bool ndarray of shape (I, J, K).
        mask_pred: bool ndarray of shape (I, J, K).

    Returns:
        float in [0, 1]; NaN when both masks are empty; 0 when exactly one is empty.
    """
    n_true, n_pred, n_both = _counts(*_check_pair(mask_true, mask_pred))
    return _ratio(2 * n_both, n_true + n_pred)


def iou(mask_true: Any, mask_pred: Any) -> float:
    """Intersection over union (Jaccard) ``|T & P| / |T | P|``; NaN when both are empty."""
    n_true, n_pred, n_both = _counts(*_check_pair(mask_true, mask_pred))
    return _ratio(n_both, n_true + n_pred - n_both)


def precision(mask_true: Any, mask_pred: Any) -> float:
    """Voxel precision ``|T & P| / |P|``; NaN when the prediction is empty."""
    n_true, n_pred, n_both = _counts(*_check_pair(mask_true, mask_pred))
    return _ratio(n_both, n_pred)


def sensitivity(mask_true: Any, mask_pred: Any) -> float:
    """Voxel sensitivity (recall) ``|T & P| / |T|``; NaN when the truth is empty."""
    n_true, n_pred, n_both = _counts(*_check_pair(mask_true, mask_pred))
    return _ratio(n_both, n_true)


def volume_mm3(mask: Any, *, spacing_mm: Sequence[float]) -> float:
    """Volume of a mask in mm3: voxel count times the voxel volume."""
    array = check_mask(mask, name="mask")
    spacing = check_spacing(spacing_mm)
    return float(np.count_nonzero(array)) * float(np.prod(spacing))


def volume_difference(mask_true: Any, mask_pred: Any, *,
                      spacing_mm: Sequence[float]) -> dict[str, float]:
    """Volumes and their differences.

    Returns:
        dict with ``volume_true_mm3``, ``volume_pred_mm3``, ``abs_volume_diff_mm3`` =
        ``|Vp - Vt|`` (mm3) and ``rel_volume_diff`` = ``(Vp - Vt) / Vt`` (signed, unitless; NaN
        when the truth is empty).
    """
    true, pred = _check_pair(mask_true, mask_pred)
    voxel_mm3 = float(np.prod(check_spacing(spacing_mm)))
    n_true, n_pred, _ = _counts(true, pred)
    return _volume_stats(n_true, n_pred, voxel_mm3)


def _volume_stats(n_true: int, n_pred: int, voxel_mm3: float) -> dict[str, float]:
    v_true, v_pred = n_true * voxel_mm3, n_pred * voxel_mm3
    return {
        "volume_true_mm3": v_true,
        "volume_pred_mm3": v_pred,
        "abs_volume_diff_mm3": abs(v_pred - v_true),
        "rel_volume_diff": _ratio(v_pred - v_true, v_true),
    }


def _surface_points_mm(mask: np.ndarray, spacing_mm: tuple[float, ...]) -> np.ndarray:
    """World-scaled (mm, voxel axes) coordinates of the surface voxels of ``mask``.

    A surface voxel is a mask voxel with at least one of its 6 face neighbours outside the mask
    (voxels on the array border count as surface). Returns ndarray (N, 3) float64.
    """
    box = bounding_box(mask)
    if box is None:
        return np.zeros((0, 3))
    crop = np.pad(mask[box], 1)
    interior = crop[1:-1, 1:-1, 1:-1].copy()
    for axis in range(3):
        for shift in (0, 2):
            index = [slice(1, -1)] * 3
            index[axis] = slice(shift, shift + crop.shape[axis] - 2)
            interior &= crop[tuple(index)]
    surface = crop[1:-1, 1:-1, 1:-1] & ~interior
    offset = np.array([s.start for s in box], dtype=np.float64)
    return (np.argwhere(surface) + offset) * np.asarray(spacing_mm, dtype=np.float64)


def surface_distances(mask_true: Any, mask_pred: Any, *,
                      spacing_mm: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of one mask to the nearest of the other.

    The single expensive step; :func:`hd95` and :func:`surface_dice` are cheap summaries of it.

    Args:
        mask_true: bool ndarray (I, J, K).
        mask_pred: bool ndarray (I, J, K).
        spacing_mm: voxel size in the same axis order.

    Returns:
        ``(true_to_pred, pred_to_true)``: float64 arrays of shape (N_true_surface,) and
        (N_pred_surface,). When the other mask is empty the distances are ``inf``.
    """
    true, pred = _check_pair(mask_true, mask_pred)
    return _surface_distances(true, pred, check_spacing(spacing_mm))


def _surface_distances(true: np.ndarray, pred: np.ndarray,
                       spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    points_true = _surface_points_mm(true, spacing)
    points_pred = _surface_points_mm(pred, spacing)
    if len(points_true) == 0 or len(points_pred) == 0:
        return np.full(len(points_true), np.inf), np.full(len(points_pred), np.inf)
    true_to_pred, _ = cKDTree(points_pred).query(points_true, k=1)
    pred_to_true, _ = cKDTree(points_true).query(points_pred, k=1)
    return np.asarray(true_to_pred, dtype=np.float64), np.asarray(pred_to_true, dtype=np.float64)


def _hd95_from(distances: tuple[np.ndarray, np.ndarray]) -> float:
    true_to_pred, pred_to_true = distances
    if len(true_to_pred) == 0 or len(pred_to_true) == 0:
        return float("nan")
    return float(max(np.percentile(true_to_pred, 95), np.percentile(pred_to_true, 95)))


def _surface_dice_from(distances: tuple[np.ndarray, np.ndarray], tolerance_mm: float) -> float:
    true_to_pred, pred_to_true = distances
    total = len(true_to_pred) + len(pred_to_true)
    if total == 0:
        return float("nan")
    within = np.count_nonzero(true_to_pred <= tolerance_mm) + np.count_nonzero(
        pred_to_true <= tolerance_mm)
    return float(within) / float(total)


def hd95(mask_true: Any, mask_pred: Any, *, spacing_mm: Sequence[float]) -> float:
    """Symmetric 95th-percentile Hausdorff distance in mm.

    ``max(P95(true -> pred), P95(pred -> true))`` over surface voxels (6-neighbour surface,
    nearest-surface-voxel Euclidean distance with ``spacing_mm``; NumPy's linear percentile).

    Returns:
        float (mm); NaN when either mask is empty.
    """
    return _hd95_from(surface_distances(mask_true, mask_pred, spacing_mm=spacing_mm))


def surface_dice(mask_true: Any, mask_pred: Any, *, spacing_mm: Sequence[float],
                 tolerance_mm: float = 1.0) -> float:
    """Normalised surface Dice at ``tolerance_mm`` (surface-voxel count version).

    ``(#{t: d(t, P) <= tol} + #{p: d(p, T) <= tol}) / (|S_T| + |S_P|)``.

    Returns:
        float in [0, 1]; NaN when both masks are empty; 0 when exactly one is empty.
    """
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ValueError(
            f"Expected tolerance_mm >= 0. Received: tolerance_mm={tolerance_mm!r}")
    return _surface_dice_from(surface_distances(mask_true, mask_pred, spacing_mm=spacing_mm),
                              tolerance_mm)
