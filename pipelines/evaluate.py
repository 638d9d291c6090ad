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

import csv
import io as _stdio
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from segmentation import metrics
from segmentation import nodule_attributes
from segmentation.io import NIFTI_SUFFIXES, Volume, atomic_write, read_volume
from segmentation.preflight import check_output_dir

__all__ = ["EvaluationError", "evaluate", "find_pairs", "align_to_truth", "REPORT_FILES"]

logger = logging.getLogger(__name__)

REPORT_FILES = ("cases.csv", "lesions.csv", "froc.png", "recall_by_size.png", "report.md",
                "summary.json")
_SAME_GRID_ATOL_MM = 1e-3
_PRED_SUFFIXES = ("_mask",)
_PROBS_SUFFIXES = ("_probs", "_prob")


class EvaluationError(ValueError):
    """Bad evaluation input; the message names the folder, file or case."""


# --------------------------------------------------------------------------- file pairing
def _nifti_stem(path: Path) -> str | None:
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def _list_nifti(folder: Path, *, name: str) -> list[tuple[str, Path]]:
    if not folder.is_dir():
        raise EvaluationError(
            f"Expected {name} to be an existing folder. Received: {name}='{folder}'")
    found = sorted((stem, path) for path in folder.iterdir()
                   if path.is_file() and not path.name.startswith(".")
                   and (stem := _nifti_stem(path)) is not None)
    if not found:
        raise EvaluationError(
            f"Expected NIfTI files (.nii, .nii.gz) in {name}. Received: {name}='{folder}' "
            "(no NIfTI file found)")
    return found


def _truth_id(stem: str) -> str:
    return stem[:-5] if stem.endswith("_0000") and len(stem) > 5 else stem


def _match_id(stem: str, truth_ids: set[str], suffixes: Sequence[str]) -> str | None:
    if stem in truth_ids:
        return stem
    for suffix in suffixes:
        if stem.endswith(suffix) and stem[: -len(suffix)] in truth_ids:
            return stem[: -len(suffix)]
    return None


def _index(entries: list[tuple[str, Path]], *, name: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for case_id, path in entries:
        if case_id in out:
            raise EvaluationError(
                f"Expected one file per case id in {name}. Received: duplicate case id "
                f"'{case_id}' in '{out[case_id]}' and '{path}'")
        out[case_id] = path
    return out


def find_pairs(*, pred_dir: str | os.PathLike, truth_dir: str | os.PathLike,
               probs_dir: str | os.PathLike | None = None) -> list[dict]:
    """Pairs truth, prediction and probability files by case id.

    Args:
        pred_dir: folder of predicted masks.
        truth_dir: folder of ground-truth masks.
        probs_dir: optional folder of probability maps.

    Returns:
        list (sorted by case id) of ``{"case_id", "truth", "pred", "probs"}``; ``pred`` is None
        for a case without a prediction (evaluated as an empty prediction), ``probs`` None
        without ``probs_dir``.

    Raises:
        EvaluationError: missing or empty folder, duplicate case ids, a prediction or
            probability map with no truth, or (with probs_dir) a prediction without a
            probability map.
    """
    truth = _index([(_truth_id(stem), path) for stem, path in
                    _list_nifti(Path(truth_dir), name="truth_dir")], name="truth_dir")
    truth_ids = set(truth)

    pred_files = [(stem, path) for stem, path in _list_nifti(Path(pred_dir), name="pred_dir")
                  if not stem.endswith(_PROBS_SUFFIXES)]
    if not pred_files:
        raise EvaluationError(
            "Expected predicted masks in pred_dir (only probability maps were found). "
            f"Received: pred_dir='{pred_dir}'")
    preds = _index(_assign(pred_files, truth_ids, _PRED_SUFFIXES, name="pred_dir",
                           what="prediction"), name="pred_dir")
    probs: dict[str, Path] = {}
    if probs_dir is not None:
        prob_files = _list_nifti(Path(probs_dir), name="probs_dir")
        if any(stem.endswith(_PROBS_SUFFIXES) for stem, _ in prob_files):
            # A folder written by `lungseg predict --probs` holds masks beside the maps.
            prob_files = [(stem, path) for stem, path in prob_files if stem.endswith(_PROBS_SUFFIXES)]
        probs = _index(_assign(prob_files, truth_ids, _PROBS_SUFFIXES, name="probs_dir",
                               what="probability map"), name="probs_dir")
        lacking = sorted(set(preds) - set(probs))
        if lacking:
            raise EvaluationError(
                "Expected a probability map in probs_dir for every prediction (FROC needs all). "
                f"Received: no probability map for case(s) {lacking} in probs_dir='{probs_dir}'")
    return [{"case_id": case_id, "truth": truth[case_id], "pred": preds.get(case_id),
             "probs": probs.get(case_id)} for case_id in sorted(truth)]


def _assign(files: list[tuple[str, Path]], truth_ids: set[str], suffixes: Sequence[str], *,
            name: str, what: str) -> list[tuple[str, Path]]:
    out = []
    for stem, path in files:
        case_id = _match_id(stem, truth_ids, suffixes)
        if case_id is None:
            raise EvaluationError(
                f"Expected every {what} in {name} to have a ground-truth mask. "
                f"Received: '{path}' (case id '{stem}') has no truth file")
        out.append((case_id, path))
    return out


# --------------------------------------------------------------------------- geometry
def _describe(volume: Volume) -> str:
    return (f"'{volume.path}' shape={tuple(volume.array.shape)} "
            f"spacing_mm={tuple(round(s, 6) for s in volume.spacing_mm)} "
            f"affine={np.round(volume.affine, 4).tolist()}")


def _corner_points(shape: Sequence[int], *, extent: bool) -> np.ndarray:
    """(4, 8) homogeneous voxel coordinates: voxel centres or grid extent (+-0.5) corners."""
    pad = 0.5 if extent else 0.0
    axes = [np.array([-pad, n - 1 + pad]) for n in shape]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=0).reshape(3, -1)
    return np.vstack([grid, np.ones((1, 8))])


def _same_grid(a: Volume, b: Volume) -> bool:
    if a.array.shape != b.array.shape:
        return False
    points = _corner_points(a.array.shape, extent=False)
    return float(np.max(np.abs(a.affine @ points - b.affine @ points))) <= _SAME_GRID_ATOL_MM


def _same_world_space(a: Volume, b: Volume) -> bool:
    rot_a = a.affine[:3, :3] / np.asarray(a.spacing_mm)
    rot_b = b.affine[:3, :3] / np.asarray(b.spacing_mm)
    cross = np.abs(rot_a.T @ rot_b)
    is_permutation = (np.allclose(np.sort(cross, axis=1)[:, -1], 1.0, atol=1e-3)
                      and np.allclose(cross.sum(axis=0), 1.0, atol=1e-2)
                      and np.allclose(cross.sum(axis=1), 1.0, atol=1e-2))
    if not is_permutation:
        return False
    world_a = (a.affine @ _corner_points(a.array.shape, extent=True))[:3]
    world_b = (b.affine @ _corner_points(b.array.shape, extent=True))[:3]
    tolerance = 0.5 * max(max(a.spacing_mm), max(b.spacing_mm))
    return bool(np.all(np.abs(world_a.min(axis=1) - world_b.min(axis=1)) <= tolerance)
                and np.all(np.abs(world_a.max(axis=1) - world_b.max(axis=1)) <= tolerance))


def align_to_truth(volume: Volume, truth: Volume, *, order: int, case_id: str) -> tuple[
        np.ndarray, str]:
    """Puts ``volume`` on the truth's voxel grid.

    Args:
        volume: prediction (or probability map) as read by ``segmentation.io.read_volume``.
        truth: ground-truth Volume of the same case.
        order: interpolation order when resampling (0 for masks, 1 for probabilities).
        case_id: case named in errors.

    Returns:
        ``(array, alignment)``: array of the truth's shape (I, J, K) and ``"same grid"`` or
        ``"resampled"``.

    Raises:
        EvaluationError: incompatible geometries; names the case and both geometries.
    """
    if _same_grid(volume, truth):
        return volume.array, "same grid"
    if not _same_world_space(volume, truth):
        raise EvaluationError(
            f"Expected case '{case_id}' to have the prediction on the truth's grid or on another "
            "grid of the same world space (same axes, world bounding box within half a voxel). "
            f"Received: truth {_describe(truth)}; prediction {_describe(volume)}")
    # output voxel o (truth grid) -> world -> input voxel of `volume`
    matrix = np.linalg.inv(volume.affine) @ truth.affine
    source = volume.array.astype(np.float32) if order > 0 else volume.array
    array = ndimage.affine_transform(source, matrix[:3, :3], offset=matrix[:3, 3],
                                     output_shape=truth.array.shape, order=order,
                                     mode="constant", cval=0.0, prefilter=False)
    if order > 0:
        array = np.clip(array, 0.0, 1.0)
    return array, "resampled"


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


# --------------------------------------------------------------------------- writing
def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buffer = _stdio.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(v) for v in row])
    return buffer.getvalue()


_VOXEL_KEYS = ("dice", "iou", "precision", "sensitivity", "hd95_mm", "surface_dice",
               "volume_true_mm3", "volume_pred_mm3", "abs_volume_diff_mm3", "rel_volume_diff")


def _cases_csv(rows: list[dict], results: list[metrics.CaseResult]) -> str:
    header = ["case_id", "truth_file", "pred_file", "probs_file", "prediction_missing",
              "alignment", "truth_empty", "pred_empty", "both_empty", "false_positive_scan",
              *_VOXEL_KEYS, "n_lesions", "n_detected", "n_components", "n_false_positives",
              "lesion_recall", "lesion_precision", "lesion_f1"]
    table = []
    for row, r in zip(rows, results):
        table.append([row["case_id"], row["truth_file"], row["pred_file"], row["probs_file"],
                      row["prediction_missing"], row["alignment"], r.truth_empty, r.pred_empty,
                      r.both_empty, r.false_positive_scan, *(r.voxel[k] for k in _VOXEL_KEYS),
                      r.n_lesions, r.n_detected, r.n_components, r.n_false_positives,
                      r.lesion_recall, r.lesion_precision, r.lesion_f1])
    return _csv_text(header, table)


def _lesions_csv(results: list[metrics.CaseResult], rows: list[dict] | None = None,
                 nodules: nodule_attributes.NoduleTable | None = None) -> str:
    header = ["case_id", "kind", "id", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
              "diameter_mm", "volume_mm3", "detected", "matched_id", "matched_iou",
              "matched_dice", "max_probability", "max_probability_in_lesion"]
    names = () if nodules is None else nodules.attribute_names
    if nodules is not None:
        header += ["nodule_row", "nodule_match", "nodule_distance_mm",
                   *(f"attr_{name}" for name in names)]
    table = []
    for i, r in enumerate(results):
        join = None if nodules is None else rows[i]["nodule_join"]
        for lesion in r.lesions:
            extra = []
            if join is not None:
                match = join.by_lesion.get(lesion["id"])
                extra = [None] * (3 + len(names)) if match is None else [
                    match["row"].row, match["how"], match["distance_mm"],
                    *(match["row"].attributes.get(name) for name in names)]
            table.append([r.case_id, "lesion", lesion["id"], *lesion["centroid_mm"],
                          lesion["diameter_mm"], lesion["volume_mm3"], lesion["detected"],
                          lesion["matched_component"], lesion["iou"], lesion["dice"],
                          lesion["max_probability"], lesion["max_probability_in_lesion"],
                          *extra])
        for comp in r.components:
            if comp["false_positive"]:
                table.append([r.case_id, "false_positive", comp["id"], *comp["centroid_mm"],
                              comp["diameter_mm"], comp["volume_mm3"], False, None, None, None,
                              comp["max_probability"], None,
                              *([None] * (0 if join is None else 3 + len(names)))])
    return _csv_text(header, table)


def _save_figure(figure: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))


def _new_figure() -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # heavy (~0.5 s), for plots only
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4.5))
    FigureCanvasAgg(figure)  # Agg canvas, no pyplot global state
    return figure, figure.add_subplot(1, 1, 1)


def _plot_froc(path: Path, summary: dict) -> None:
    figure, axes = _new_figure()
    curve = summary.get("froc_curve")
    if curve is not None and summary.get("cpm") is not None:
        fps = np.asarray(curve["fp_per_scan"], dtype=float)
        sens = np.asarray(curve["sensitivity"], dtype=float)
        grid = np.geomspace(0.125, 8.0, 200)  # the interpolated curve, as LUNA16 plots it
        axes.plot(grid, np.interp(grid, fps, sens), color="tab:blue", label="FROC")
        rates = [float(k) for k in summary["froc"]]
        axes.plot(rates, list(summary["froc"].values()), "o", color="tab:red",
                  label="LUNA16 operating points")
        axes.set_title(f"FROC, CPM = {summary['cpm']:.3f}")
    else:
        recall = summary.get("lesion_recall")
        if recall is not None:
            axes.plot([max(summary["fp_per_scan"], 0.125)], [recall], "s", color="tab:red",
                      label="binary masks (one operating point)")
        axes.set_title("FROC needs probability maps (--probs); one operating point shown")
    axes.set_xscale("log", base=2)
    axes.set_xlim(0.1, 10)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("false positives per scan")
    axes.set_ylabel("lesion sensitivity")
    axes.grid(True, which="both", alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="lower right")
    _save_figure(figure, path)


def _plot_recall_by_size(path: Path, summary: dict) -> None:
    figure, axes = _new_figure()
    labels = list(summary["recall_by_size"])
    values = [summary["recall_by_size"][k]["recall"] for k in labels]
    counts = [summary["recall_by_size"][k]["count"] for k in labels]
    bars = axes.bar(range(len(labels)), [0.0 if v is None else v for v in values],
                    color="tab:blue")
    for bar, value, count in zip(bars, values, counts):
        text = f"n={count}" if value is None else f"{value:.2f}\nn={count}"
        axes.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.02, text,
                  ha="center", va="bottom", fontsize=8)
    axes.set_xticks(range(len(labels)), [f"{k} mm" for k in labels])
    axes.set_ylim(0, 1.2)
    axes.set_xlabel("equivalent diameter of the truth lesion")
    axes.set_ylabel("lesion recall")
    axes.set_title(f"Lesion recall by size (small lesions < {summary['small_lesion_mm']:g} mm: "
                   f"{_fmt(summary['small_lesion_recall'])})")
    _save_figure(figure, path)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _report_md(summary: dict, rows: list[dict], results: list[metrics.CaseResult]) -> str:
    s = summary["settings"]
    criterion = ("any overlap (at least one shared voxel)" if s["criterion"] == "overlap"
                 else f"pair IoU >= {s['iou_threshold']:g}")
    lines = [
        "# lungseg evaluation report", "",
        f"- truth: `{summary['inputs']['truth_dir']}`",
        f"- predictions: `{summary['inputs']['pred_dir']}`",
        f"- probabilities: `{summary['inputs']['probs_dir'] or 'none (no FROC/CPM)'}`", "",
        "## Summary", "", "| metric | value |", "|---|---|",
    ]
    for key in ("n_cases", "n_lesions", "n_empty_cases", "n_fp_scans", "dice_mean", "iou_mean",
                "precision_mean", "sensitivity_mean", "hd95_mm_mean", "surface_dice_mean",
                "lesion_recall", "small_lesion_recall", "lesion_precision", "lesion_f1",
                "fp_per_scan", "cpm"):
        lines.append(f"| {key} | {_fmt(summary[key])} |")
    lines += ["", f"## Lesion recall by size (equivalent diameter, mm)", "",
              "| bin | recall | detected / count |", "|---|---|---|"]
    for label, entry in summary["recall_by_size"].items():
        lines.append(f"| {label} | {_fmt(entry['recall'])} | {entry['detected']} / "
                     f"{entry['count']} |")
    lines += _attribute_lines(summary)
    lines += ["", "## FROC (LUNA16 operating points)", ""]
    if summary["froc"] is None:
        lines.append("Not computed: no probability maps were given (`--probs`).")
    else:
        lines += ["| FP / scan | sensitivity |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in summary["froc"].items()]
        lines.append(f"\nCPM (mean of the seven) = {_fmt(summary['cpm'])}")
    lines += ["", "## Cases", "",
              "| case | alignment | Dice | IoU | HD95 mm | lesions found | FP |",
              "|---|---|---|---|---|---|---|"]
    for row, r in zip(rows, results):
        lines.append(f"| {row['case_id']} | {row['alignment']} | {_fmt(r.voxel['dice'])} | "
                     f"{_fmt(r.voxel['iou'])} | {_fmt(r.voxel['hd95_mm'], 2)} | "
                     f"{r.n_detected} / {r.n_lesions} | {r.n_false_positives} |")
    missing, resampled = summary["missing_predictions"], summary["resampled_cases"]
    lines += ["",
              f"Cases without a prediction (evaluated as empty predictions): "
              f"{', '.join(missing) if missing else 'none'}.",
              f"Predictions resampled onto the truth grid (nearest neighbour; probabilities "
              f"linear): {', '.join(resampled) if resampled else 'none'}.", "",
              "## Rules", "",
              f"- Lesions and predicted components: {s['connectivity']}-connected components; "
              "equivalent diameter = (6 V / pi)^(1/3); centroids in world (RAS) mm.",
              f"- Matching criterion: {criterion}. Truth lesions and components are matched "
              "one-to-one, maximising the total overlap (voxels) of matched pairs (Hungarian "
              "algorithm) among the pairs that meet the criterion.",
              "- A component touching two truth lesions is matched to one of them; the other "
              "lesion is missed unless another component is matched to it; the component is not "
              "a false positive.",
              "- A lesion split into several components counts once (one match); the other "
              "components meet the criterion with a truth lesion, so they are not false "
              "positives (and not true positives).",
              "- False positive: a component meeting the criterion with no truth lesion. Lesion "
              "recall = matched / truth lesions; precision = matched / (matched + FP); F1 from "
              "both; FP per scan = FP / scans. Counts are pooled over scans.",
              f"- Small-lesion recall: truth lesions with equivalent diameter < "
              f"{summary['small_lesion_mm']:g} mm. Size bins are half-open [lo, hi) mm.",
              "- Empty cases: both masks empty -> Dice and IoU are NaN, left out of the means "
              "and counted in n_empty_cases; empty truth with a non-empty prediction -> Dice = "
              "IoU = 0 and the scan is a false-positive scan (n_fp_scans); HD95 is NaN when "
              "either mask is empty; a missing prediction is an empty prediction.",
              f"- HD95 = max of the two directed 95th percentiles of surface-voxel distances "
              f"(mm); surface Dice at {s['tolerance_mm']:g} mm tolerance (surface-voxel counts).",
              "- FROC: each component scored by its maximum probability; matched components are "
              "true positives, false-positive components false positives, candidates pooled "
              "over scans; sensitivity (over all truth lesions) linearly interpolated at 1/8, "
              "1/4, 1/2, 1, 2, 4, 8 FP per scan; CPM = their mean (LUNA16).", ""]
    return "\n".join(lines)


def _attribute_lines(summary: dict) -> list[str]:
    """report.md section of the nodule table (none without one)."""
    info = summary.get("nodule_attributes")
    if info is None:
        return []
    lines = ["", "## Lesion recall by attribute (nodule attribute table)", "",
             f"Table `{info['file']}` ({info['format']}): {info['n_rows_evaluated']} rows of the "
             f"evaluated cases, {info['n_matched_inside']} joined inside a lesion, "
             f"{info['n_matched_near']} near one, {info['n_unmatched']} unmatched; "
             f"{info['n_lesions_without_row']} truth lesions without a row (not counted below).",
             ""]
    for name, values in summary["recall_by_attribute"].items():
        lines += [f"### {name}", "", "| value | recall | detected / count |", "|---|---|---|"]
        lines += [f"| {value} | {_fmt(e['recall'])} | {e['detected']} / {e['count']} |"
                  for value, e in values.items()]
        if not values:
            lines.append("| (no lesion has a value) | n/a | 0 / 0 |")
        lines.append("")
    if info["skipped_attributes"]:
        lines += [f"Left out (more than {nodule_attributes.MAX_ATTRIBUTE_VALUES} distinct "
                  f"values): {', '.join(info['skipped_attributes'])}.", ""]
    if info["unmatched"]:
        lines += ["Unmatched rows:", ""]
        lines += [f"- {u['case_id']}, {u['row']}: {u['reason']}" for u in info["unmatched"]]
        lines.append("")
    lines += ["Join rule: a row belongs to the truth lesion containing its centre voxel, else "
              "to the lesion with the nearest centroid among those whose centroid lies within "
              "their equivalent radius + half a voxel diagonal of the centre, else it is "
              "unmatched; a lesion claimed by several rows keeps the best (inside, then "
              "nearer), the others are reported as duplicates."]
    return lines
