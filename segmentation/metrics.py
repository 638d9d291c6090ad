"""Voxel- and lesion-level segmentation metrics, lesion matching and FROC/CPM.

All functions take boolean masks of shape ``(I, J, K)`` in the scan's own geometry and the
voxel size ``spacing_mm`` in the same axis order. Training-time validation and
``lungseg evaluate`` both call :func:`evaluate_case` per scan and :func:`summarize` over the
scans: there is one implementation.

The voxel metrics and input checks live in `segmentation.voxel_metrics`, the lesion labelling
and matching in `segmentation.lesion_matching`; this module combines them per scan
(:func:`evaluate_case`) and over scans (:func:`summarize`) and re-exports their public names.

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
from typing import Any

import numpy as np

from segmentation.froc import FROC_FP_RATES, froc
from segmentation.lesion_matching import (
    Criterion,
    _properties,
    check_options,
    label_components,
    lesion_properties,
    match_lesions,
    overlap_matrix,
)
from segmentation.lesions import (
    CONNECTIVITIES,
    check_affine,
    check_spacing,
    equivalent_diameter_mm,
    find_components,
    lesion_table,
)
from segmentation.validation import json_safe
from segmentation.voxel_metrics import (
    _check_pair,
    _counts,
    _hd95_from,
    _intersect,
    _ratio,
    _relative,
    _surface_dice_from,
    _surface_distances,
    _volume_stats,
    check_mask,
    check_probabilities,
    dice,
    hd95,
    iou,
    precision,
    sensitivity,
    surface_dice,
    surface_distances,
    volume_difference,
    volume_mm3,
)

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
