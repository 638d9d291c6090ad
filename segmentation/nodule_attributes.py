"""Per-lesion attribute tables (nodule kind, location, texture, ...) joined to truth lesions.

A nodule attribute table lists one nodule per row: a case id, a world-mm centre and any categorical
attributes. Two formats are read:

* the phantom's ``nodules.json`` (``segmentation.phantom.write_phantom_dataset``): entries of
  its ``"nodules"`` list with ``case_id``, ``centre_mm`` (world RAS+ mm, the centroid of the
  voxelised nodule) and fields such as ``kind`` and ``location``. The attributes are the
  fields whose value is a string or a bool in every entry (numbers such as ``diameter_mm`` or
  ``mean_hu`` are not categories). Its ``"cases"`` dict declares the dataset's cases: a
  nodule of a declared case that is not evaluated (another split) is skipped;
* a CSV with a header row: ``case_id``, ``x_mm``, ``y_mm``, ``z_mm`` (a world-mm centre),
  an optional ``frame`` column (``ras`` or ``lps``, per row; an empty cell takes the
  ``frame`` argument, default ``ras``), and any other columns, each an attribute whose
  cells are categories (text; an empty cell means "no value").

LPS centres (DICOM / ITK) are turned into RAS (NIfTI / nibabel) by negating x and y.

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

import csv
import dataclasses
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segmentation.lesions import find_components
from segmentation.metrics import check_mask, check_options
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

FRAMES = ("ras", "lps")
CSV_CENTRE_COLUMNS = ("x_mm", "y_mm", "z_mm")
CSV_RESERVED_COLUMNS = ("case_id", *CSV_CENTRE_COLUMNS, "frame")
JSON_RESERVED_KEYS = ("case_id", "centre_mm", "centre_voxel", "frame")
MAX_ATTRIBUTE_VALUES = 20
"""An attribute with more distinct values (an id, a diameter) is carried into ``lesions.csv``
but left out of :func:`recall_by_attribute`."""


@dataclasses.dataclass(frozen=True)
class NoduleRow:
    """One nodule of a table.

    Attributes:
        index: 0-based position among the table's nodules.
        row: where it sits in the file, for messages: ``"row 5"`` (CSV, the header is row 1)
            or ``"row 4 (nodules[3])"`` (JSON).
        case_id: case identifier.
        centre_ras_mm: world centre (x, y, z) in RAS+ mm.
        attributes: attribute name -> value (text); an empty cell is left out.
    """

    index: int
    row: str
    case_id: str
    centre_ras_mm: tuple[float, float, float]
    attributes: dict


@dataclasses.dataclass(frozen=True)
class NoduleTable:
    """A parsed nodule table.

    Attributes:
        path: the file it was read from.
        format: ``"csv"`` or ``"nodules.json"``.
        rows: the nodules, in file order.
        attribute_names: attribute names, in column (or first-seen key) order.
        declared_cases: case ids the file declares (``nodules.json``'s ``"cases"``), or None.
    """

    path: str
    format: str
    rows: tuple
    attribute_names: tuple
    declared_cases: frozenset | None = None


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


# --------------------------------------------------------------------------- parsing
def _where(path: str, row: str, column: str) -> str:
    return f"nodule attribute table '{path}' {row}, column '{column}'"


def _check_frame(frame: Any, *, name: str = "frame") -> str:
    if not isinstance(frame, str) or frame.strip().lower() not in FRAMES:
        raise ValueError(f"Expected {name} in {FRAMES}. Received: {name}={frame!r}")
    return frame.strip().lower()


def _to_ras(centre: Sequence[float], frame: str) -> tuple[float, float, float]:
    x, y, z = (float(c) for c in centre)
    return (-x, -y, z) if frame == "lps" else (x, y, z)


def _number(text: Any, *, path: str, row: str, column: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = None
    if value is None or not math.isfinite(value) or isinstance(text, bool):
        raise ValueError(
            f"Expected a finite number (mm) in {_where(path, row, column)}. "
            f"Received: {column}={text!r}")
    return value


def parse_nodule_csv(text: str, *, path: str | os.PathLike = "<csv>",
                     frame: str | None = None) -> NoduleTable:
    """Parses a CSV nodule table (see the module docstring for the columns).

    Args:
        text: the file's content.
        path: the file name, for messages.
        frame: frame of rows without a ``frame`` cell, ``"ras"`` (None) or ``"lps"``.

    Returns:
        NoduleTable with ``format="csv"`` and centres in RAS mm.

    Raises:
        ValueError: an empty table, a missing or duplicate column, an empty ``case_id``, a
            row with too many or too few cells, a centre that is not a finite number, or a
            bad ``frame``; the message names the file, the row and the column.
    """
    path = str(path)
    default_frame = "ras" if frame is None else _check_frame(frame)
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise ValueError(
            f"Expected a header row with columns {list(CSV_RESERVED_COLUMNS[:4])} in nodule "
            f"attribute table '{path}'. Received: an empty file") from None
    header = [name.strip() for name in header]
    for column in dict.fromkeys(header):
        if header.count(column) > 1 or not column:
            raise ValueError(
                f"Expected unique, non-empty column names in {_where(path, 'row 1', column)}. "
                f"Received: header={header}")
    missing = [c for c in CSV_RESERVED_COLUMNS[:4] if c not in header]
    if missing:
        raise ValueError(
            f"Expected the columns {list(CSV_RESERVED_COLUMNS[:4])} in the header of "
            f"{_where(path, 'row 1', missing[0])}. Received: no such column (header={header})")
    attributes = tuple(c for c in header if c not in CSV_RESERVED_COLUMNS)
    rows = []
    for cells in reader:
        row = f"row {reader.line_num}"
        if not any(cell.strip() for cell in cells):
            continue  # a blank line (or only empty cells) holds no nodule
        if len(cells) != len(header):
            column = header[min(len(cells), len(header) - 1)]
            raise ValueError(
                f"Expected {len(header)} cells per row in {_where(path, row, column)}. "
                f"Received: {len(cells)} cells")
        record = {name: cell.strip() for name, cell in zip(header, cells)}
        if not record["case_id"]:
            raise ValueError(
                f"Expected a case id in {_where(path, row, 'case_id')}. Received: case_id=''")
        centre = [_number(record[c], path=path, row=row, column=c) for c in CSV_CENTRE_COLUMNS]
        row_frame = default_frame
        if record.get("frame"):
            try:
                row_frame = _check_frame(record["frame"])
            except ValueError:
                raise ValueError(
                    f"Expected frame in {FRAMES} in {_where(path, row, 'frame')}. "
                    f"Received: frame={record['frame']!r}") from None
        rows.append(NoduleRow(index=len(rows), row=row, case_id=record["case_id"],
                              centre_ras_mm=_to_ras(centre, row_frame),
                              attributes={a: record[a] for a in attributes if record[a]}))
    return NoduleTable(path=path, format="csv", rows=tuple(rows), attribute_names=attributes)


def _json_frame(doc: Mapping, frame: str | None, path: str) -> str:
    stated = str(doc.get("coordinate_system", "")).strip().upper()
    declared = "lps" if stated.startswith("LPS") else "ras" if stated.startswith("RAS") else None
    if frame is not None:
        frame = _check_frame(frame)
        if declared is not None and frame != declared:
            raise ValueError(
                "Expected frame to agree with the coordinate_system of nodule attribute table "
                f"'{path}'. Received: frame='{frame}', "
                f"coordinate_system={doc['coordinate_system']!r}")
        return frame
    return declared or "ras"


def _json_value(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value.strip()
    return None


def parse_nodules_json(doc: Any, *, path: str | os.PathLike = "<json>",
                       frame: str | None = None) -> NoduleTable:
    """Parses a phantom ``nodules.json`` document (see the module docstring).

    Args:
        doc: the decoded JSON: a dict with a ``"nodules"`` list (and optionally ``"cases"``
            and ``"coordinate_system"``).
        path: the file name, for messages.
        frame: None (the document's ``coordinate_system``, else RAS) or a frame that must
            agree with it.

    Returns:
        NoduleTable with ``format="nodules.json"``.

    Raises:
        ValueError: no ``"nodules"`` list, an entry without a case id or with a centre that
            is not 3 finite numbers, a case id missing from ``"cases"``; the message names
            the file, the row (``nodules[i]``) and the key.
    """
    path = str(path)
    if not isinstance(doc, Mapping) or not isinstance(doc.get("nodules"), list):
        raise ValueError(
            f"Expected a JSON object with a 'nodules' list in nodule attribute table '{path}'. "
            f"Received: {type(doc).__name__}"
            f"{' without a nodules list' if isinstance(doc, Mapping) else ''}")
    frame = _json_frame(doc, frame, path)
    cases = doc.get("cases")
    declared = frozenset(str(c) for c in cases) if isinstance(cases, Mapping) else None
    entries = doc["nodules"]
    names: dict[str, None] = {}
    for entry in entries:
        if isinstance(entry, Mapping):
            names.update((k, None) for k in entry if k not in JSON_RESERVED_KEYS)
    attributes = tuple(k for k in names if all(
        isinstance(e, Mapping) and _json_value(e.get(k)) is not None for e in entries))
    rows = []
    for i, entry in enumerate(entries):
        row = f"row {i + 1} (nodules[{i}])"
        if not isinstance(entry, Mapping):
            raise ValueError(f"Expected an object in nodule attribute table '{path}' {row}. "
                             f"Received: {type(entry).__name__}")
        case_id = entry.get("case_id")
        if not isinstance(case_id, str) or not case_id.strip():
            raise ValueError(
                f"Expected a case id in {_where(path, row, 'case_id')}. Received: "
                f"case_id={case_id!r}")
        if declared is not None and case_id not in declared:
            raise ValueError(
                f"Expected a case id listed in 'cases' in {_where(path, row, 'case_id')}. "
                f"Received: case_id='{case_id}' (unknown case id)")
        centre = entry.get("centre_mm")
        if not isinstance(centre, list) or len(centre) != 3:
            raise ValueError(
                f"Expected 3 numbers (world mm) in {_where(path, row, 'centre_mm')}. "
                f"Received: centre_mm={centre!r}")
        centre = [_number(c, path=path, row=row, column="centre_mm") for c in centre]
        values = {a: _json_value(entry[a]) for a in attributes}
        rows.append(NoduleRow(index=i, row=row, case_id=case_id.strip(),
                              centre_ras_mm=_to_ras(centre, frame),
                              attributes={a: v for a, v in values.items() if v}))
    return NoduleTable(path=path, format="nodules.json", rows=tuple(rows),
                       attribute_names=attributes, declared_cases=declared)


def read_nodule_table(path: str | os.PathLike, *, frame: str | None = None) -> NoduleTable:
    """Reads a nodule table: ``.json`` as a phantom ``nodules.json``, anything else as CSV.

    Args:
        path: the file.
        frame: ``"ras"`` or ``"lps"`` for CSV rows without a ``frame`` cell (None = RAS); for
            a JSON table it must agree with its ``coordinate_system``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable or malformed table (see the parsers); names the file.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"Expected an existing nodule attribute table file. Received: '{file}'")
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"Expected a UTF-8 text file. Received: nodule attribute table '{file}' "
                         f"({error})") from error
    if file.suffix.lower() == ".json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"Expected valid JSON in nodule attribute table '{file}'. Received: "
                             f"{error.msg} at line {error.lineno}") from error
        return parse_nodules_json(doc, path=file, frame=frame)
    return parse_nodule_csv(text, path=file, frame=frame)


def rows_by_case(table: NoduleTable, case_ids: Sequence[str]) -> dict[str, list[NoduleRow]]:
    """Groups the rows of the evaluated cases; checks that every case id is known.

    A CSV row must name an evaluated case. A ``nodules.json`` row names a case it declares;
    rows of declared cases that are not evaluated (another split) are left out.

    Args:
        table: from :func:`read_nodule_table`.
        case_ids: the evaluated case ids.

    Returns:
        evaluated case id -> its rows (every evaluated case is a key, possibly with []).

    Raises:
        ValueError: a row with an unknown case id (names the file, the row and the column),
            or a ``nodules.json`` that declares none of the evaluated cases.
    """
    known = set(case_ids)
    out: dict[str, list[NoduleRow]] = {case_id: [] for case_id in case_ids}
    if table.declared_cases is not None and known and not known & table.declared_cases:
        raise ValueError(
            f"Expected nodule attribute table '{table.path}' to describe the evaluated cases. "
            f"Received: none of {sorted(known)[:5]}{' ...' if len(known) > 5 else ''} in its "
            "'cases'")
    for row in table.rows:
        if row.case_id in known:
            out[row.case_id].append(row)
        elif table.declared_cases is None:
            raise ValueError(
                f"Expected every case_id of the nodule attribute table to be an evaluated case, in "
                f"{_where(table.path, row.row, 'case_id')}. Received: case_id='{row.case_id}' "
                f"(unknown case id; evaluated: {sorted(known)[:5]}"
                f"{' ...' if len(known) > 5 else ''})")
    return out


def find_dataset_nodule_table(data_dir: str | os.PathLike) -> Path | None:
    """The nodule table of a dataset folder: ``dataset.json``'s ``"nodules"`` entry or a
    ``nodules.json`` beside it; None when there is none."""
    root = Path(data_dir)
    try:
        name = json.loads((root / "dataset.json").read_text()).get("nodules")
    except (OSError, ValueError, AttributeError):
        name = None
    for candidate in ([root / name] if isinstance(name, str) else []) + [root / "nodules.json"]:
        if candidate.is_file():
            return candidate
    return None


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
