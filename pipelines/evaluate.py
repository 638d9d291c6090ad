"""``lungseg evaluate``: voxel- and lesion-level evaluation of predicted masks.

Pairs predicted masks with ground-truth masks by case id, aligns each pair's geometry
explicitly, runs :func:`segmentation.metrics.evaluate_case` per scan and
:func:`segmentation.metrics.summarize` over the scans, and writes a report folder:
``cases.csv``, ``lesions.csv``, ``summary.json``, ``froc.png``, ``recall_by_size.png`` and
``report.md``. Every file is written atomically; ``summary.json`` is written last, and a folder
that already holds one is never overwritten without ``overwrite=True``.

With a nodule attribute table (``nodules=``, ``lungseg evaluate --nodules``; see
:mod:`segmentation.nodule_attributes`) each truth lesion gets its row's attributes
(``lesions.csv`` columns ``nodule_row``, ``nodule_match``, ``nodule_distance_mm`` and
``attr_<name>``), ``summary.json`` gets ``recall_by_attribute`` and ``nodule_attributes`` (the
join's counts and every unmatched row), and ``report.md`` a table per attribute.

File naming:
    * truth: ``{case}.nii.gz`` / ``{case}.nii`` (a trailing ``_0000`` is dropped);
    * predictions: ``{case}_mask.nii.gz`` (``lungseg predict``) or ``{case}.nii.gz``; files named
      ``*_probs.nii[.gz]`` in the prediction folder are probability maps and are ignored there;
    * probabilities (``probs_dir``): ``{case}_probs.nii.gz`` or ``{case}.nii.gz``.

Geometry per pair (compared in canonical RAS+ order, as read by ``segmentation.io``):
    * same shape and affine (corners within 1e-3 mm): compared as is;
    * same world space on another grid (same axes up to permutation/flip, world bounding boxes
      of the two grids within half of the largest voxel size): the prediction is resampled onto
      the truth grid (nearest neighbour for masks, linear for probabilities) and the report
      says so (``alignment`` column = ``resampled``);
    * otherwise: an error naming the case and both geometries.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipelines.evaluate_pairs import EvaluationError, align_to_truth, find_pairs
from pipelines.evaluate_report import (
    _cases_csv,
    _lesions_csv,
    _plot_froc,
    _plot_recall_by_size,
    _report_md,
    _write_text,
)
from segmentation import metrics
from segmentation import nodule_attributes
from segmentation.io import Volume, read_volume
from segmentation.preflight import check_output_dir

__all__ = ["EvaluationError", "evaluate", "find_pairs", "align_to_truth", "REPORT_FILES"]

logger = logging.getLogger(__name__)

REPORT_FILES = ("cases.csv", "lesions.csv", "froc.png", "recall_by_size.png", "report.md",
                "summary.json")


# --------------------------------------------------------------------------- evaluation
def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise EvaluationError(
            f"Expected out_dir to be a folder. Received: out_dir='{out_dir}' (a file)")
    if (out_dir / "summary.json").exists() and not overwrite:
        raise EvaluationError(
            "Expected an out_dir without an earlier report (pass overwrite=True to replace "
            f"it). Received: out_dir='{out_dir}' holds summary.json")


def evaluate(*, pred_dir: str | os.PathLike, truth_dir: str | os.PathLike,
             probs_dir: str | os.PathLike | None = None, out_dir: str | os.PathLike,
             overwrite: bool = False, connectivity: int = 26, match: str = "overlap",
             iou_threshold: float = 0.1, small_lesion_mm: float = 10.0,
             size_bins_mm: Sequence[float] = metrics.DEFAULT_SIZE_BINS_MM,
             tolerance_mm: float = 1.0, nodules: str | os.PathLike | None = None,
             nodules_frame: str | None = None, binarize: bool = False) -> dict:
    """Evaluates a folder of predicted masks against ground truth and writes a report.

    Args:
        pred_dir: predicted masks (``{case}_mask.nii.gz`` or ``{case}.nii.gz``).
        truth_dir: ground-truth masks (``{case}.nii.gz``).
        probs_dir: optional probability maps (``{case}_probs.nii.gz`` or ``{case}.nii.gz``);
            enables FROC/CPM.
        out_dir: report folder (created).
        overwrite: replace an earlier report in ``out_dir``.
        connectivity: 6, 18 or 26 (lesions and components).
        match: lesion matching criterion, ``"overlap"`` (any shared voxel) or ``"iou"``.
        iou_threshold: pair IoU threshold of ``match="iou"``.
        small_lesion_mm: equivalent-diameter threshold of the small-lesion detection rate.
        size_bins_mm: increasing edges (mm) of ``recall_by_size``.
        tolerance_mm: surface Dice tolerance.
        nodules: optional nodule table (phantom ``nodules.json`` or a CSV with ``case_id``,
            ``x_mm``, ``y_mm``, ``z_mm`` and attribute columns) joined to the truth lesions.
        nodules_frame: ``"ras"`` or ``"lps"``: frame of CSV centres without a ``frame`` cell
            (None = RAS).
        binarize: map every integral label > 0 to 1 in truth and predicted masks (multi-label
            masks) instead of raising.

    Returns:
        The ``summary.json`` content (JSON-safe dict; see ``segmentation.metrics.summarize``),
        plus ``missing_predictions``, ``resampled_cases``, ``recall_by_attribute`` and
        ``nodule_attributes`` (None without ``nodules``), ``inputs`` and ``out_dir``.

    Raises:
        EvaluationError: bad folders, duplicate/unpaired files, incompatible geometry,
            bad probabilities, an existing report without ``overwrite``.
        ValueError: a bad nodule table (unknown case ids, missing columns, unparsable
            numbers; names the file, the row and the column).
        FileNotFoundError: ``nodules`` does not exist.
        segmentation.io.VolumeError: unreadable file or non-binary mask (names the file).
    """
    metrics.check_options(connectivity=connectivity, criterion=match,
                          iou_threshold=iou_threshold, tolerance_mm=tolerance_mm)
    metrics.size_bin_labels(size_bins_mm)
    if isinstance(small_lesion_mm, bool) or not (
            isinstance(small_lesion_mm, (int, float)) and small_lesion_mm > 0):
        raise EvaluationError(
            f"Expected small_lesion_mm > 0. Received: small_lesion_mm={small_lesion_mm!r}")
    out = Path(out_dir)
    _check_out_dir(out, overwrite)
    check_output_dir(out, option="out_dir", inputs=[("pred_dir", pred_dir), ("truth_dir", truth_dir),
                                                    ("probs_dir", probs_dir)])
    table = None if nodules is None else nodule_attributes.read_nodule_table(
        nodules, frame=nodules_frame)
    pairs = find_pairs(pred_dir=pred_dir, truth_dir=truth_dir, probs_dir=probs_dir)
    table_rows = None if table is None else nodule_attributes.rows_by_case(
        table, [pair["case_id"] for pair in pairs])

    options = {"connectivity": connectivity, "criterion": match, "iou_threshold": iou_threshold,
               "tolerance_mm": tolerance_mm}
    results, rows = [], []
    for pair in pairs:
        result, row = _evaluate_pair(
            pair, options, None if table_rows is None else table_rows[pair["case_id"]],
            binarize=bool(binarize))
        results.append(result)
        rows.append(row)
        logger.info("%s: dice=%s lesions %d/%d, %d FP", pair["case_id"],
                    result.voxel["dice"], result.n_detected, result.n_lesions,
                    result.n_false_positives)

    summary = metrics.summarize(results, small_lesion_mm=small_lesion_mm,
                                size_bins_mm=size_bins_mm)
    summary["missing_predictions"] = [r["case_id"] for r in rows if r["prediction_missing"]]
    summary["resampled_cases"] = [r["case_id"] for r in rows if r["alignment"] == "resampled"]
    summary["recall_by_attribute"], summary["nodule_attributes"] = _attribute_summary(
        table, rows, results)
    summary["inputs"] = {"pred_dir": str(pred_dir), "truth_dir": str(truth_dir),
                         "probs_dir": None if probs_dir is None else str(probs_dir),
                         "nodules": None if nodules is None else str(nodules)}

    _check_out_dir(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    _write_text(out / "cases.csv", _cases_csv(rows, results))
    _write_text(out / "lesions.csv", _lesions_csv(results, rows, table))
    _plot_froc(out / "froc.png", summary)
    _plot_recall_by_size(out / "recall_by_size.png", summary)
    _write_text(out / "report.md", _report_md(summary, rows, results))
    _write_text(out / "summary.json",
                json.dumps(summary, indent=2, allow_nan=False, sort_keys=False) + "\n")
    return {**summary, "out_dir": str(out)}


def _evaluate_pair(pair: dict, options: dict, nodule_rows: list | None = None, *,
                   binarize: bool = False) -> tuple[metrics.CaseResult, dict]:
    case_id = pair["case_id"]
    truth = read_volume(pair["truth"], kind="mask", binarize=binarize)
    alignment = "same grid"
    if pair["pred"] is None:
        logger.warning("case '%s': no prediction; evaluated as an empty prediction", case_id)
        pred = np.zeros(truth.array.shape, dtype=bool)
        alignment = "missing prediction"
    else:
        pred_volume = read_volume(pair["pred"], kind="mask", binarize=binarize)
        pred, alignment = align_to_truth(pred_volume, truth, order=0, case_id=case_id)
    probs = None
    if pair["probs"] is not None:
        probs_volume = read_volume(pair["probs"], kind="image")
        probs, _ = align_to_truth(probs_volume, truth, order=1, case_id=case_id)
    try:
        result = metrics.evaluate_case(
            truth.array.astype(bool), np.asarray(pred).astype(bool), spacing_mm=truth.spacing_mm,
            affine=truth.affine, probs=probs, case_id=case_id, **options)
    except ValueError as error:
        raise EvaluationError(
            f"{error} (case '{case_id}': truth '{pair['truth']}', prediction '{pair['pred']}', "
            f"probabilities '{pair['probs']}')") from error
    row = {"case_id": case_id, "truth_file": str(pair["truth"]),
           "pred_file": "" if pair["pred"] is None else str(pair["pred"]),
           "probs_file": "" if pair["probs"] is None else str(pair["probs"]),
           "prediction_missing": pair["pred"] is None, "alignment": alignment,
           "nodule_join": None}
    if nodule_rows is not None:
        row["nodule_join"] = _join_nodules(nodule_rows, truth, result, options["connectivity"])
    return result, row


def _join_nodules(nodule_rows: list, truth: Volume, result: metrics.CaseResult,
                  connectivity: int) -> nodule_attributes.CaseJoin:
    """Joins the case's table rows to its truth lesions, labelled as evaluate_case did."""
    join = nodule_attributes.join_mask(nodule_rows, mask_true=truth.array.astype(bool),
                                       lesions=result.lesions, affine=truth.affine,
                                       connectivity=connectivity)
    for entry in join.unmatched:
        logger.warning("case '%s': nodule attribute table %s (centre %s mm RAS) matches no "
                       "truth lesion: %s", result.case_id, entry["row"],
                       [round(c, 1) for c in entry["centre_ras_mm"]], entry["reason"])
    return join


def _attribute_summary(table: nodule_attributes.NoduleTable | None, rows: list[dict],
                       results: list[metrics.CaseResult]) -> tuple[dict | None, dict | None]:
    """(``recall_by_attribute``, ``nodule_attributes``) of summary.json; (None, None) without."""
    if table is None:
        return None, None
    by_attribute, info = nodule_attributes.summarize_joins(
        table, results, [row["nodule_join"] for row in rows])
    if info["n_unmatched"]:
        logger.warning("%d of %d nodule attribute table rows of the evaluated cases match no "
                       "truth lesion (summary.json: nodule_attributes.unmatched)",
                       info["n_unmatched"], info["n_rows_evaluated"])
    return by_attribute, info


