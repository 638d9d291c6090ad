"""Per-lesion attribute tables (nodule kind, location, texture, ...) joined to truth lesions.

The tables (a phantom ``nodules.json`` or a CSV: a case id, a world-mm centre and categorical
attributes per nodule) are read by `segmentation.nodule_table`, whose names this module
re-exports; its docstring gives the formats.

Join rule of one row to the truth lesions of its case (:func:`join_case`):

1. the world centre is mapped to a voxel (inverse affine, rounded to the nearest voxel); if
   that voxel lies in a truth lesion, the row belongs to that lesion (``"inside"``);
2. otherwise the row goes to the lesion whose centroid is nearest (world mm) among the
   lesions whose centroid lies within their equivalent radius plus half the voxel diagonal
   of the centre (``"near"``); a centre between two lesions thus goes to the one whose
   centroid is nearer;
3. otherwise the row is unmatched (reported with the nearest lesion and its distance).

A lesion claimed by several rows keeps the best row ("inside" before "near", then the
smaller centroid distance, then the earlier row); the other rows are reported as unmatched
(duplicates), never silently dropped.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from segmentation.lesions import find_components
from segmentation.metrics import check_mask, check_options
from segmentation.nodule_table import (
    FRAMES,
    NoduleRow,
    NoduleTable,
    find_dataset_nodule_table,
    parse_nodule_csv,
    parse_nodules_json,
    read_nodule_table,
    rows_by_case,
)
from segmentation.validation import check_affine, check_int

__all__ = [
    "FRAMES",
    "MAX_ATTRIBUTE_VALUES",
    "NoduleRow",
    "NoduleTable",
    "CaseJoin",
    "read_nodule_table",
    "parse_nodule_csv",
    "parse_nodules_json",
    "rows_by_case",
    "join_case",
    "join_mask",
    "recall_by_attribute",
    "summarize_joins",
    "find_dataset_nodule_table",
]

MAX_ATTRIBUTE_VALUES = 20
"""An attribute with more distinct values (an id, a diameter) is carried into ``lesions.csv``
but left out of :func:`recall_by_attribute`."""


@dataclasses.dataclass(frozen=True)
class CaseJoin:
    """Rows of one case joined to its truth lesions.

    Attributes:
        by_lesion: lesion id -> ``{"row": NoduleRow, "how": "inside" | "near",
            "distance_mm": centre-to-centroid distance}``.
        unmatched: one dict per row left without a lesion: ``{"row", "case_id",
            "centre_ras_mm", "reason"}`` (``row`` is the NoduleRow's ``row`` label).
    """

    by_lesion: dict
    unmatched: list


# --------------------------------------------------------------------------- joining
def join_case(rows: Sequence[NoduleRow], *, labels: Any, lesions: Sequence[Mapping],
              affine: Any, offset: Sequence[int] = (0, 0, 0),
              scan_shape: Sequence[int] | None = None) -> CaseJoin:
    """Joins one case's rows to its labelled truth lesions (rule in the module docstring).

    Args:
        rows: the case's NoduleRow objects.
        labels: int ndarray (I, J, K), 0 background and lesion ids 1..n, e.g. from
            ``segmentation.metrics.label_components`` with the evaluation's connectivity.
        lesions: one mapping per lesion with ``"id"`` (its label), ``"centroid_mm"`` (world
            RAS mm) and ``"diameter_mm"`` (equivalent diameter), e.g.
            ``CaseResult.lesions`` or ``segmentation.metrics.lesion_properties``.
        affine: (4, 4) voxel -> world (RAS mm) matrix of the scan.
        offset: voxel index in the scan of ``labels[0, 0, 0]`` (``labels`` may be a crop that
            holds every lesion voxel).
        scan_shape: shape of the scan; None means ``labels.shape`` (no crop). A centre outside
            the scan is said so in the unmatched reason (a hint of a wrong frame).

    Returns:
        CaseJoin.

    Raises:
        ValueError: labels not 3D integers, a bad affine, or lesion ids that do not match
            the labels.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"Expected labels to be an int ndarray (I, J, K). Received: "
                         f"labels of shape {labels.shape} and dtype {labels.dtype}")
    matrix = check_affine(affine, name="affine")
    start = np.asarray(offset, dtype=np.int64).reshape(3)
    shape = np.asarray(labels.shape if scan_shape is None else scan_shape,
                       dtype=np.int64).reshape(3)
    ids = [int(lesion["id"]) for lesion in lesions]
    if sorted(ids) != list(range(1, len(ids) + 1)) or (
            labels.size and int(labels.max()) != len(ids)):
        raise ValueError(f"Expected lesion ids 1..{int(labels.max()) if labels.size else 0} "
                         f"(the labels). Received: lesion ids {ids}")
    half_voxel_mm = 0.5 * float(np.linalg.norm(np.linalg.norm(matrix[:3, :3], axis=0)))
    centroids = np.array([lesion["centroid_mm"] for lesion in lesions], dtype=np.float64)
    radii = np.array([lesion["diameter_mm"] / 2.0 for lesion in lesions], dtype=np.float64)
    inverse = np.linalg.inv(matrix)

    claims: dict[int, list[tuple]] = {}
    unmatched = []
    for row in rows:
        centre = np.asarray(row.centre_ras_mm, dtype=np.float64)
        voxel = np.rint(inverse[:3, :3] @ centre + inverse[:3, 3]).astype(np.int64)
        inside = bool(np.all(voxel >= 0) and np.all(voxel < shape))
        local = voxel - start
        in_crop = bool(np.all(local >= 0) and np.all(local < labels.shape))
        hit = int(labels[tuple(local)]) if in_crop else 0
        distances = (np.linalg.norm(centroids - centre, axis=1) if len(ids)
                     else np.zeros(0))
        if hit:
            claims.setdefault(hit, []).append((0, float(distances[hit - 1]), row, "inside"))
            continue
        near = np.flatnonzero(distances <= radii + half_voxel_mm)
        if near.size:
            best = int(near[np.argmin(distances[near])])
            claims.setdefault(best + 1, []).append((1, float(distances[best]), row, "near"))
            continue
        if not ids:
            reason = "the case has no truth lesion"
        else:
            best = int(np.argmin(distances))
            reason = (f"no truth lesion contains the centre or has its centroid within its "
                      f"radius + half a voxel (nearest: lesion {best + 1} at "
                      f"{distances[best]:.1f} mm, radius {radii[best]:.1f} mm)")
        if not inside:
            reason = "centre outside the scan; " + reason
        unmatched.append(_unmatched(row, reason))

    by_lesion = {}
    for lesion_id, claimants in sorted(claims.items()):
        claimants.sort(key=lambda c: (c[0], c[1], c[2].index))
        _, distance, winner, how = claimants[0]
        by_lesion[lesion_id] = {"row": winner, "how": how, "distance_mm": distance}
        for _, _, loser, loser_how in claimants[1:]:
            unmatched.append(_unmatched(
                loser, f"lesion {lesion_id} ({loser_how}) already taken by "
                       f"{winner.row} (duplicate)"))
    unmatched.sort(key=lambda u: u["index"])
    for entry in unmatched:
        del entry["index"]
    return CaseJoin(by_lesion=by_lesion, unmatched=unmatched)


def _unmatched(row: NoduleRow, reason: str) -> dict:
    return {"index": row.index, "row": row.row, "case_id": row.case_id,
            "centre_ras_mm": [float(c) for c in row.centre_ras_mm], "reason": reason}


def join_mask(rows: Sequence[NoduleRow], *, mask_true: Any, lesions: Sequence[Mapping],
              affine: Any, connectivity: int = 26) -> CaseJoin:
    """:func:`join_case` on a truth mask, labelled as ``segmentation.metrics.evaluate_case``
    labels it (same connectivity, so the lesion ids of its ``CaseResult.lesions`` apply).

    Args:
        rows: the case's NoduleRow objects.
        mask_true: bool ndarray (I, J, K), the truth mask given to ``evaluate_case``.
        lesions: ``CaseResult.lesions`` of that call.
        affine: the (4, 4) voxel -> world matrix given to ``evaluate_case``.
        connectivity: the connectivity given to ``evaluate_case``.

    Labelling runs on the mask's bounding box (`segmentation.lesions.find_components`), so a
    full-size label array is never allocated.
    """
    check_options(connectivity=connectivity)
    mask = check_mask(mask_true, name="mask_true")
    matrix = check_affine(affine, name="affine")
    found = find_components(mask, connectivity=connectivity)
    return join_case(rows, labels=found.labels, lesions=lesions, affine=matrix,
                     offset=found.offset, scan_shape=mask.shape)


# --------------------------------------------------------------------------- recall
def recall_by_attribute(lesions: Sequence[Mapping], *, attribute_names: Sequence[str],
                        max_values: int = MAX_ATTRIBUTE_VALUES) -> dict:
    """Lesion recall per attribute value.

    Args:
        lesions: one mapping per truth lesion (pooled over scans) with ``"detected"`` (bool)
            and ``"attributes"`` (name -> value; a lesion without a row, or without a value
            for an attribute, is not counted under that attribute).
        attribute_names: the attributes, in output order.
        max_values: attributes with more distinct values are left out.

    Returns:
        attribute -> value (sorted) -> ``{"recall", "count", "detected"}``; only values that
        occur are listed, so ``count >= 1``. An attribute that no lesion has maps to ``{}``.
    """
    check_int(max_values, name="max_values", minimum=1)
    out: dict[str, dict] = {}
    for name in attribute_names:
        counts: dict[str, list[int]] = {}
        for lesion in lesions:
            value = (lesion.get("attributes") or {}).get(name)
            if value is None or value == "":
                continue
            entry = counts.setdefault(str(value), [0, 0])
            entry[0] += 1
            entry[1] += bool(lesion["detected"])
        if len(counts) > max_values:
            continue
        out[name] = {value: {"recall": detected / count, "count": count, "detected": detected}
                     for value, (count, detected) in sorted(counts.items())}
    return out


def summarize_joins(table: NoduleTable, results: Sequence[Any],
                    joins: Sequence[CaseJoin]) -> tuple[dict, dict]:
    """Pools the joins of the evaluated scans.

    Args:
        table: the nodule table.
        results: ``segmentation.metrics.CaseResult`` per scan (``lesions`` with ``id`` and
            ``detected``).
        joins: the CaseJoin of each scan, in the same order.

    Returns:
        ``(recall_by_attribute, info)``: see :func:`recall_by_attribute`; ``info`` holds
        ``file, format, attributes, skipped_attributes, n_rows, n_rows_evaluated,
        n_rows_other_cases, n_matched_inside, n_matched_near, n_unmatched,
        n_lesions_without_row`` and ``unmatched`` (every unmatched row, see CaseJoin).
    """
    if len(results) != len(joins):
        raise ValueError(f"Expected one join per result. Received: {len(results)} results "
                         f"and {len(joins)} joins")
    lesions, unmatched, how = [], [], []
    for result, join in zip(results, joins):
        for lesion in result.lesions:
            match = join.by_lesion.get(lesion["id"])
            how.append(None if match is None else match["how"])
            lesions.append({"detected": lesion["detected"],
                            "attributes": {} if match is None else match["row"].attributes})
        unmatched += join.unmatched
    by_attribute = recall_by_attribute(lesions, attribute_names=table.attribute_names)
    n_evaluated = sum(len(join.by_lesion) for join in joins) + len(unmatched)
    return by_attribute, {
        "file": table.path,
        "format": table.format,
        "attributes": list(table.attribute_names),
        "skipped_attributes": [a for a in table.attribute_names if a not in by_attribute],
        "n_rows": len(table.rows),
        "n_rows_evaluated": n_evaluated,
        "n_rows_other_cases": len(table.rows) - n_evaluated,
        "n_matched_inside": how.count("inside"),
        "n_matched_near": how.count("near"),
        "n_unmatched": len(unmatched),
        "n_lesions_without_row": how.count(None),
        "unmatched": unmatched,
    }
