"""Nodule attribute tables: reading and checking their rows (case, world centre, attributes).

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

__all__ = [
    "FRAMES",
    "NoduleRow",
    "NoduleTable",
    "read_nodule_table",
    "parse_nodule_csv",
    "parse_nodules_json",
    "rows_by_case",
    "find_dataset_nodule_table",
]

FRAMES = ("ras", "lps")
CSV_CENTRE_COLUMNS = ("x_mm", "y_mm", "z_mm")
CSV_RESERVED_COLUMNS = ("case_id", *CSV_CENTRE_COLUMNS, "frame")
JSON_RESERVED_KEYS = ("case_id", "centre_mm", "centre_voxel", "frame")


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
