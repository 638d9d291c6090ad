"""The report files of ``lungseg evaluate``: ``cases.csv``, ``lesions.csv``, ``froc.png``,
``recall_by_size.png`` and ``report.md``.

Pure text (CSV and Markdown) from the per-case results and the summary, and the two plots
(matplotlib's Agg canvas, no pyplot state); every file is written atomically. Called by
`pipelines.evaluate.evaluate`, which writes ``summary.json`` last.
"""

from __future__ import annotations

import csv
import io as _stdio
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segmentation import metrics
from segmentation import nodule_attributes
from segmentation.io import atomic_write


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
