"""Voxel- and lesion-level segmentation metrics, lesion matching and FROC/CPM.

All functions take boolean masks of shape ``(I, J, K)`` in the scan's own geometry and the
voxel size ``spacing_mm`` in the same axis order. Training-time validation and
``lungseg evaluate`` both call :func:`evaluate_case` per scan and :func:`summarize` over the
scans: there is one implementation.

Empty-case policy (tested by name in ``tests/test_metrics.py``):

* Both masks empty: Dice, IoU, precision, sensitivity, HD95 and surface Dice are NaN. The scan
  is counted in ``n_empty_cases`` and left out of every mean.
* Empty truth, non-empty prediction: Dice = IoU = precision = 0, sensitivity NaN, and the scan
  counts as a false-positive scan (``false_positive_scan``; ``n_fp_scans`` in the summary).
* Non-empty truth, empty prediction: Dice = IoU = sensitivity = 0, precision NaN.
* HD95 is NaN whenever either mask is empty; surface Dice is 0 when exactly one is empty.
* Relative volume difference is NaN when the truth is empty.

Lesion rules:

* Lesions and predicted components are connected components (26-connectivity by default;
  6 and 18 selectable), measured by the lesion table of `segmentation.lesions` (voxel count,
  volume, equivalent diameter, world centroid, maximum probability).
* Truth lesions and predicted components are matched one-to-one so that the total overlap
  (voxels) of the matched pairs is maximal (Hungarian algorithm), among the pairs that meet the
  criterion: ``"overlap"`` (default, any shared voxel) or ``"iou"`` (pair IoU >= threshold).
* A component that touches two truth lesions is matched to one of them; the other lesion is
  missed unless another component is matched to it. That component is not a false positive.
* A lesion split into two components gives one match; the other component meets the criterion
  with a truth lesion, so it is NOT a false positive (and not a true positive either).
* A false positive is a predicted component that meets the criterion with no truth lesion.
* Lesion recall = matched / truth lesions; lesion precision = matched / (matched + false
  positives); F1 from those two.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from segmentation.froc import FROC_FP_RATES, froc
from segmentation.lesions import (
    CONNECTIVITIES,
    BBox,
    Components,
    Lesion,
    bounding_box,
    check_affine,
    check_spacing,
    connectivity_structure,
    equivalent_diameter_mm,
    find_components,
    lesion_table,
)
from segmentation.validation import json_safe

__all__ = [
    "CONNECTIVITIES",
    "DEFAULT_SIZE_BINS_MM",
    "FROC_FP_RATES",
    "CaseResult",
    "check_mask",
    "check_options",
    "check_probabilities",
    "check_spacing",
    "dice",
    "iou",
    "precision",
    "sensitivity",
    "volume_mm3",
    "volume_difference",
    "surface_distances",
    "hd95",
    "surface_dice",
    "label_components",
    "lesion_properties",
    "overlap_matrix",
    "match_lesions",
    "equivalent_diameter_mm",
    "froc",
    "evaluate_case",
    "summarize",
    "size_bin_labels",
]

DEFAULT_SIZE_BINS_MM = (3.0, 6.0, 10.0, 20.0)
Criterion = Literal["overlap", "iou"]


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


# --------------------------------------------------------------------------- per case
@dataclasses.dataclass(frozen=True)
class CaseResult:
    """Metrics of one scan; every field is a plain Python type (NaN allowed).

    Attributes:
        case_id: case identifier.
        voxel: ``dice, iou, precision, sensitivity, hd95_mm, surface_dice, volume_true_mm3,
            volume_pred_mm3, abs_volume_diff_mm3, rel_volume_diff``.
        truth_empty, pred_empty: whether the masks are empty.
        false_positive_scan: empty truth and non-empty prediction.
        lesions: one dict per truth lesion: ``id, centroid_mm, diameter_mm, volume_mm3,
            n_voxels, detected, matched_component, iou, dice, max_probability`` (of the
            matched component), ``max_probability_in_lesion``.
        components: one dict per predicted component: ``id, centroid_mm, diameter_mm,
            volume_mm3, n_voxels, matched_lesion, false_positive, max_probability``.
        n_lesions, n_detected, n_components, n_false_positives: counts.
        lesion_recall, lesion_precision, lesion_f1: per-scan values (NaN when undefined).
        has_probabilities: whether ``probs`` was given (component scores are set).
        settings: ``connectivity, criterion, iou_threshold, tolerance_mm``.
    """

    case_id: str
    voxel: dict
    truth_empty: bool
    pred_empty: bool
    false_positive_scan: bool
    lesions: list
    components: list
    n_lesions: int
    n_detected: int
    n_components: int
    n_false_positives: int
    lesion_recall: float
    lesion_precision: float
    lesion_f1: float
    has_probabilities: bool
    settings: dict

    @property
    def both_empty(self) -> bool:
        return self.truth_empty and self.pred_empty

    def to_dict(self) -> dict:
        """A JSON-ready copy (NaN kept; :func:`summarize` maps NaN to None)."""
        out = dataclasses.asdict(self)
        out["both_empty"] = self.both_empty
        return out


def _f1(p: float, r: float) -> float:
    if math.isnan(p) or math.isnan(r):
        return float("nan")
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def evaluate_case(mask_true: Any, mask_pred: Any, *, spacing_mm: Sequence[float],
                  affine: Any = None, probs: Any = None, case_id: str = "",
                  connectivity: int = 26, criterion: Criterion = "overlap",
                  iou_threshold: float = 0.1, tolerance_mm: float = 1.0) -> CaseResult:
    """All voxel and lesion metrics of one scan.

    Heavy steps (labelling, surfaces, overlaps) run on bounding boxes of the masks, so a
    512x512x300 scan with nodule-sized masks costs a few passes over the full array.

    Args:
        mask_true: bool (or {0, 1}) ndarray (I, J, K), ground truth in the scan's geometry.
        mask_pred: same shape, prediction.
        spacing_mm: voxel size (mm) in the same axis order.
        affine: optional (4, 4) voxel -> world matrix for world-mm centroids; its column norms
            must equal spacing_mm. None: centroids are ``index * spacing_mm``.
        probs: optional float ndarray (I, J, K) of probabilities in [0, 1]; each predicted
            component is scored by its maximum probability (for FROC).
        case_id: name carried into the result.
        connectivity: 6, 18 or 26.
        criterion: ``"overlap"`` or ``"iou"`` (with iou_threshold), see the module docstring.
        iou_threshold: IoU threshold for ``criterion="iou"``.
        tolerance_mm: surface Dice tolerance.

    Returns:
        CaseResult (see its docstring; empty-case policy in the module docstring).

    Raises:
        ValueError: non-binary masks, shape mismatch, bad spacing/affine/probabilities/options.
    """
    check_options(connectivity=connectivity, criterion=criterion, iou_threshold=iou_threshold,
                  tolerance_mm=tolerance_mm)
    true, pred = _check_pair(mask_true, mask_pred)
    spacing = check_spacing(spacing_mm)
    matrix = check_affine(affine, spacing_mm=spacing)
    values = None if probs is None else check_probabilities(probs, shape=true.shape)

    n_true_vox, n_pred_vox, n_both = _counts(true, pred)
    distances = _surface_distances(true, pred, spacing)
    voxel = {
        "dice": _ratio(2 * n_both, n_true_vox + n_pred_vox),
        "iou": _ratio(n_both, n_true_vox + n_pred_vox - n_both),
        "precision": _ratio(n_both, n_pred_vox),
        "sensitivity": _ratio(n_both, n_true_vox),
        "hd95_mm": _hd95_from(distances),
        "surface_dice": _surface_dice_from(distances, float(tolerance_mm)),
        **_volume_stats(n_true_vox, n_pred_vox, float(np.prod(spacing))),
    }

    found_t = find_components(true, connectivity=connectivity)
    found_p = find_components(pred, connectivity=connectivity)
    table_t = lesion_table(found_t, spacing_mm=spacing, affine=matrix, intensity=values)
    table_p = lesion_table(found_p, spacing_mm=spacing, affine=matrix, intensity=values)
    les_t = [_properties(lesion) for lesion in table_t]
    les_p = [_properties(lesion) for lesion in table_p]
    n_t, n_p = found_t.count, found_p.count

    overlap = np.zeros((n_t, n_p), dtype=np.int64)
    box = _intersect(found_t.box, found_p.box)
    if box is not None:
        overlap = overlap_matrix(found_t.labels[_relative(box, found_t.box)], n_t,
                                 found_p.labels[_relative(box, found_p.box)], n_p)
    match = match_lesions(overlap, [d["n_voxels"] for d in les_t],
                          [d["n_voxels"] for d in les_p], criterion=criterion,
                          iou_threshold=iou_threshold)

    # the maximum probability of each component (None without probabilities)
    scores = [lesion.intensity_max for lesion in table_p]
    in_lesion = [lesion.intensity_max for lesion in table_t]
    by_truth = {r: (c, i, d) for (r, c), i, d in zip(match["pairs"], match["iou"], match["dice"])}
    by_pred = {c: r for r, c in match["pairs"]}
    lesions = []
    for r, props in enumerate(les_t):
        c, pair_iou, pair_dice = by_truth.get(r, (None, float("nan"), float("nan")))
        lesions.append({
            **props,
            "detected": c is not None,
            "matched_component": None if c is None else c + 1,
            "iou": pair_iou,
            "dice": pair_dice,
            "max_probability": None if c is None else scores[c],
            "max_probability_in_lesion": in_lesion[r],
        })
    components = []
    for c, props in enumerate(les_p):
        r = by_pred.get(c)
        components.append({
            **props,
            "matched_lesion": None if r is None else r + 1,
            "false_positive": match["false_positive"][c],
            "max_probability": scores[c],
        })
    n_detected = len(match["pairs"])
    n_fp = int(sum(match["false_positive"]))
    recall = _ratio(n_detected, n_t)
    prec = _ratio(n_detected, n_detected + n_fp)
    return CaseResult(
        case_id=str(case_id),
        voxel=voxel,
        truth_empty=n_true_vox == 0,
        pred_empty=n_pred_vox == 0,
        false_positive_scan=n_true_vox == 0 and n_pred_vox > 0,
        lesions=lesions,
        components=components,
        n_lesions=n_t,
        n_detected=n_detected,
        n_components=n_p,
        n_false_positives=n_fp,
        lesion_recall=recall,
        lesion_precision=prec,
        lesion_f1=_f1(prec, recall),
        has_probabilities=values is not None,
        settings={"connectivity": int(connectivity), "criterion": criterion,
                  "iou_threshold": float(iou_threshold), "tolerance_mm": float(tolerance_mm)},
    )


# --------------------------------------------------------------------------- summary
def size_bin_labels(size_bins_mm: Sequence[float] = DEFAULT_SIZE_BINS_MM) -> list[str]:
    """Labels of the size bins: ``"<3", "3-6", "6-10", "10-20", ">=20"`` for the defaults.

    Bins are half-open ``[lo, hi)`` in equivalent diameter (mm); the first bin holds lesions
    below the first edge, the last is open above the last edge.
    """
    edges = _check_edges(size_bins_mm)
    fmt = [f"{e:g}" for e in edges]
    return [f"<{fmt[0]}"] + [f"{a}-{b}" for a, b in zip(fmt[:-1], fmt[1:])] + [f">={fmt[-1]}"]


def _check_edges(size_bins_mm: Sequence[float]) -> list[float]:
    try:
        edges = [float(e) for e in size_bins_mm]
    except TypeError as error:
        raise ValueError(
            f"Expected size_bins_mm to be increasing positive edges. "
            f"Received: size_bins_mm={size_bins_mm!r}") from error
    if not edges or any(not math.isfinite(e) or e <= 0 for e in edges) or any(
            b <= a for a, b in zip(edges[:-1], edges[1:])):
        raise ValueError(
            "Expected size_bins_mm to be increasing positive edges. "
            f"Received: size_bins_mm={size_bins_mm!r}")
    return edges


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def summarize(results: Sequence[CaseResult], *, small_lesion_mm: float = 10.0,
              size_bins_mm: Sequence[float] = DEFAULT_SIZE_BINS_MM,
              fp_rates: Sequence[float] = FROC_FP_RATES) -> dict:
    """Pools per-scan results into the ``summary.json`` of ``lungseg evaluate``.

    Means are over scans, NaN (both-empty) scans left out; lesion counts are pooled over scans
    (recall = detected / all truth lesions, precision = detected / (detected + FPs),
    fp_per_scan = FPs / scans). Small-lesion recall is over truth lesions with equivalent
    diameter < ``small_lesion_mm``. FROC/CPM only when every result with predicted components
    has probabilities (and at least one has).

    Args:
        results: CaseResult per scan (from :func:`evaluate_case`), at least one.
        small_lesion_mm: diameter threshold (mm) of the small-lesion detection rate.
        size_bins_mm: increasing bin edges (mm) of ``recall_by_size``.
        fp_rates: FROC operating points.

    Returns:
        JSON-safe dict (NaN -> None) with ``n_cases, n_lesions, n_empty_cases, dice_mean,
        iou_mean, lesion_recall, small_lesion_recall, lesion_precision, lesion_f1, fp_per_scan,
        recall_by_size`` (label -> ``{"recall", "count", "detected", "min_mm", "max_mm"}``),
        ``cpm`` and ``froc`` (FP rate as string -> sensitivity; both None without
        probabilities), plus ``n_fp_scans, n_detected, n_false_positives, precision_mean,
        sensitivity_mean, hd95_mm_mean, surface_dice_mean, abs_volume_diff_mm3_mean,
        small_lesion_mm, size_bins_mm, froc_curve, settings``.
    """
    if not results:
        raise ValueError("Expected at least one CaseResult. Received: results=[]")
    for r in results:
        if not isinstance(r, CaseResult):
            raise TypeError(
                f"Expected CaseResult items. Received: results item of type {type(r).__name__}")
    if not (isinstance(small_lesion_mm, (int, float)) and small_lesion_mm > 0):
        raise ValueError(
            f"Expected small_lesion_mm > 0. Received: small_lesion_mm={small_lesion_mm!r}")
    edges = _check_edges(size_bins_mm)
    labels = size_bin_labels(edges)

    lesions = [lesion for r in results for lesion in r.lesions]
    n_lesions = len(lesions)
    n_detected = sum(r.n_detected for r in results)
    n_fp = sum(r.n_false_positives for r in results)
    recall = _ratio(n_detected, n_lesions)
    prec = _ratio(n_detected, n_detected + n_fp)
    small = [lesion for lesion in lesions if lesion["diameter_mm"] < small_lesion_mm]

    bounds = [0.0] + edges + [float("inf")]
    by_size = {}
    for label, lo, hi in zip(labels, bounds[:-1], bounds[1:]):
        members = [lesion for lesion in lesions if lo <= lesion["diameter_mm"] < hi]
        hits = sum(lesion["detected"] for lesion in members)
        by_size[label] = {"recall": _ratio(hits, len(members)), "count": len(members),
                          "detected": hits, "min_mm": lo, "max_mm": hi}

    froc_result = None
    # scans without components (e.g. a missing prediction) add no candidates, so need no scores
    if any(r.has_probabilities for r in results) and all(
            r.has_probabilities or r.n_components == 0 for r in results):
        scores, is_tp = [], []
        for r in results:
            for comp in r.components:
                if comp["matched_lesion"] is not None or comp["false_positive"]:
                    scores.append(comp["max_probability"])
                    is_tp.append(comp["matched_lesion"] is not None)
        froc_result = froc(scores, is_tp, n_lesions=n_lesions, n_scans=len(results),
                           fp_rates=fp_rates)

    def mean_of(key: str) -> float:
        return _nanmean([r.voxel[key] for r in results])

    summary = {
        "n_cases": len(results),
        "n_lesions": n_lesions,
        "n_empty_cases": sum(r.both_empty for r in results),
        "dice_mean": mean_of("dice"),
        "iou_mean": mean_of("iou"),
        "lesion_recall": recall,
        "small_lesion_recall": _ratio(sum(lesion["detected"] for lesion in small), len(small)),
        "lesion_precision": prec,
        "lesion_f1": _f1(prec, recall),
        "fp_per_scan": n_fp / len(results),
        "recall_by_size": by_size,
        "cpm": None if froc_result is None else froc_result["cpm"],
        "froc": None if froc_result is None else {
            f"{f:g}": s for f, s in zip(froc_result["fp_rates"], froc_result["sensitivities"])},
        "n_fp_scans": sum(r.false_positive_scan for r in results),
        "n_detected": n_detected,
        "n_false_positives": n_fp,
        "n_small_lesions": len(small),
        "precision_mean": mean_of("precision"),
        "sensitivity_mean": mean_of("sensitivity"),
        "hd95_mm_mean": mean_of("hd95_mm"),
        "surface_dice_mean": mean_of("surface_dice"),
        "abs_volume_diff_mm3_mean": mean_of("abs_volume_diff_mm3"),
        "small_lesion_mm": float(small_lesion_mm),
        "size_bins_mm": edges,
        "froc_curve": None if froc_result is None else {
            "fp_per_scan": froc_result["curve_fp_per_scan"],
            "sensitivity": froc_result["curve_sensitivity"],
            "threshold": froc_result["curve_thresholds"]},
        "settings": dict(results[0].settings),
    }
    return json_safe(summary)
