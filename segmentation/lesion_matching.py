"""Lesion-level matching: connected components, their properties, overlaps and the matching.

The lesion rules (criteria, splits and merges, false positives) are in the docstring of
`segmentation.metrics`, which re-exports these names.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from scipy.optimize import linear_sum_assignment

from segmentation.lesions import (
    Components,
    Lesion,
    connectivity_structure,
    find_components,
    lesion_table,
)
from segmentation.voxel_metrics import check_mask

__all__ = [
    "Criterion",
    "check_options",
    "label_components",
    "lesion_properties",
    "overlap_matrix",
    "match_lesions",
]

Criterion = Literal["overlap", "iou"]


# --------------------------------------------------------------------------- lesion level
def label_components(mask: Any, *, connectivity: int = 26) -> tuple[np.ndarray, int]:
    """Labels connected components (`segmentation.lesions.find_components`) at full size.

    Args:
        mask: bool ndarray (I, J, K).
        connectivity: 6 (faces), 18 (faces + edges) or 26 (faces + edges + corners).

    Returns:
        ``(labels, n)``: int32 ndarray (I, J, K) with 0 background and 1..n components, and n.
    """
    array = check_mask(mask, name="mask")
    components = find_components(array, connectivity=connectivity)
    return components.full(), components.count


def lesion_properties(labels: np.ndarray, n: int, *, spacing_mm: Sequence[float],
                      affine: Any = None, offset: Sequence[int] = (0, 0, 0)) -> list[dict]:
    """Volume, equivalent diameter and world centroid of labelled components.

    The rows of `segmentation.lesions.lesion_table`, as the dicts of ``CaseResult.lesions``.

    Args:
        labels: int ndarray (I, J, K) from :func:`label_components` (or a crop of it).
        n: number of components.
        spacing_mm: voxel size.
        affine: (4, 4) voxel -> world (mm) matrix; None means ``diag(spacing_mm)`` (origin at
            voxel 0).
        offset: voxel index of ``labels[0, 0, 0]`` in the full array (for crops).

    Returns:
        list of n dicts ``{"id", "volume_mm3", "diameter_mm", "centroid_mm", "n_voxels"}``,
        ``id`` from 1, ``centroid_mm`` a list of 3 world coordinates.
    """
    labels = np.asarray(labels)
    start = [int(o) for o in offset]
    box = tuple(slice(o, o + size) for o, size in zip(start, labels.shape))
    components = Components(labels, box if n else None, int(n),
                            tuple(o + size for o, size in zip(start, labels.shape)))
    return [_properties(lesion) for lesion in
            lesion_table(components, spacing_mm=spacing_mm, affine=affine)]


def _properties(lesion: Lesion) -> dict:
    """A lesion-table row as the dict of ``CaseResult.lesions`` / ``components``."""
    return {
        "id": lesion.label,
        "n_voxels": lesion.voxel_count,
        "volume_mm3": lesion.volume_mm3,
        "diameter_mm": lesion.diameter_mm,
        "centroid_mm": list(lesion.centroid_mm),
    }


def overlap_matrix(labels_true: np.ndarray, n_true: int, labels_pred: np.ndarray,
                   n_pred: int) -> np.ndarray:
    """Voxel overlap counts between labelled truth lesions and predicted components.

    Returns:
        int64 ndarray (n_true, n_pred); entry (i, j) = |lesion i+1 & component j+1|.
    """
    both = (labels_true > 0) & (labels_pred > 0)
    pairs = (labels_true[both].astype(np.int64) - 1) * n_pred + (labels_pred[both] - 1)
    counts = np.bincount(pairs, minlength=n_true * n_pred)
    return counts.reshape(n_true, n_pred)


def _criterion_ok(overlap: np.ndarray, size_true: np.ndarray, size_pred: np.ndarray, *,
                  criterion: str, iou_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(pair IoU matrix, pairs that meet the matching criterion)."""
    union = size_true[:, None] + size_pred[None, :] - overlap
    pair_iou = np.divide(overlap, union, out=np.zeros(overlap.shape), where=union > 0)
    if criterion == "overlap":
        return pair_iou, overlap > 0
    return pair_iou, (overlap > 0) & (pair_iou >= iou_threshold - 1e-12)


def check_options(*, connectivity: int = 26, criterion: str = "overlap",
                  iou_threshold: float = 0.1, tolerance_mm: float = 1.0) -> None:
    """Validates the options of :func:`evaluate_case` (raises ValueError naming the option)."""
    connectivity_structure(connectivity)
    _check_criterion(criterion, iou_threshold)
    if isinstance(tolerance_mm, bool) or not (
            isinstance(tolerance_mm, (int, float)) and math.isfinite(tolerance_mm)
            and tolerance_mm >= 0):
        raise ValueError(f"Expected tolerance_mm >= 0. Received: tolerance_mm={tolerance_mm!r}")


def _check_criterion(criterion: str, iou_threshold: float) -> None:
    if criterion not in ("overlap", "iou"):
        raise ValueError(
            f"Expected criterion 'overlap' or 'iou'. Received: criterion={criterion!r}")
    if isinstance(iou_threshold, bool) or not (
            isinstance(iou_threshold, (int, float)) and 0 < iou_threshold <= 1):
        raise ValueError(
            f"Expected 0 < iou_threshold <= 1. Received: iou_threshold={iou_threshold!r}")


def match_lesions(overlap: np.ndarray, size_true: Sequence[int], size_pred: Sequence[int], *,
                  criterion: Criterion = "overlap", iou_threshold: float = 0.1) -> dict:
    """One-to-one matching of truth lesions to predicted components.

    The pairs that meet the criterion form a bipartite graph; the matching maximises the total
    overlap (voxels) of the matched pairs (``scipy.optimize.linear_sum_assignment``).

    Args:
        overlap: int ndarray (n_true, n_pred) from :func:`overlap_matrix`.
        size_true: voxel counts of the truth lesions, length n_true.
        size_pred: voxel counts of the predicted components, length n_pred.
        criterion: ``"overlap"`` (any shared voxel) or ``"iou"`` (pair IoU >= iou_threshold).
        iou_threshold: used with ``criterion="iou"``.

    Returns:
        dict with ``pairs`` (list of (truth_index, pred_index), 0-based), ``iou`` and ``dice``
        (lists aligned with pairs), ``false_positive`` (bool list over components: meets the
        criterion with no truth lesion) and ``pair_iou`` (ndarray (n_true, n_pred)).
    """
    _check_criterion(criterion, iou_threshold)
    overlap = np.asarray(overlap, dtype=np.int64)
    size_t = np.asarray(size_true, dtype=np.int64)
    size_p = np.asarray(size_pred, dtype=np.int64)
    if overlap.shape != (len(size_t), len(size_p)):
        raise ValueError(
            "Expected overlap of shape (len(size_true), len(size_pred)). "
            f"Received: overlap.shape={overlap.shape}, sizes=({len(size_t)}, {len(size_p)})")
    pair_iou, ok = _criterion_ok(overlap, size_t, size_p, criterion=criterion,
                                 iou_threshold=iou_threshold)
    pairs: list[tuple[int, int]] = []
    if ok.any():
        weight = np.where(ok, overlap, 0)
        rows, cols = linear_sum_assignment(weight, maximize=True)
        pairs = [(int(r), int(c)) for r, c in zip(rows, cols) if ok[r, c]]
    pairs.sort()
    return {
        "pairs": pairs,
        "iou": [float(pair_iou[r, c]) for r, c in pairs],
        "dice": [float(2 * overlap[r, c] / (size_t[r] + size_p[c])) for r, c in pairs],
        "false_positive": [bool(not ok[:, j].any()) for j in range(len(size_p))],
        "pair_iou": pair_iou,
    }
