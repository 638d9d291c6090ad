"""LUNA16 tables: annotations, excluded findings, candidates, series lists, sphere masks.

LUNA16 gives world coordinates as ITK/MetaImage *physical points*: LPS patient millimetres
(``coordX`` grows to the patient's left, ``coordY`` to the posterior). lungseg's NIfTI
world is RAS, so ``x_ras = -coordX``, ``y_ras = -coordY``, ``z_ras = coordZ``
(`lps_to_ras`). Tables are kept per scan as float64 arrays:

* annotations / excluded findings: ``(N, 4)`` rows ``(coordX, coordY, coordZ, diameter_mm)``;
* candidates: ``(C, 4)`` rows ``(coordX, coordY, coordZ, probability)``.

Readers take the command-line option that named the file (``option``) so that a message
says which file of which option is to blame, with its line number.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from segmentation.dicom import LPS_TO_RAS

__all__ = [
    "ANNOTATION_COLUMNS",
    "CANDIDATE_COLUMNS",
    "Luna16Error",
    "candidates_csv_text",
    "lps_to_ras",
    "read_annotations",
    "read_candidates",
    "ras_nodules",
    "read_seriesuids",
    "scans_of",
    "sphere_mask",
]

ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
CANDIDATE_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "probability")
_LPS_RAS_SIGNS = np.diag(LPS_TO_RAS)[:3]


class Luna16Error(ValueError):
    """A LUNA16 table is unusable. The message names the option, the file and the line."""


def lps_to_ras(points_mm: np.ndarray) -> np.ndarray:
    """Converts ``(..., 3)`` LPS points to RAS (x and y negated; the map is its own inverse)."""
    return np.asarray(points_mm, dtype=np.float64) * _LPS_RAS_SIGNS


def _open_rows(path: str | os.PathLike, *, option: str,
               columns: Sequence[str]) -> tuple[Path, list[tuple[int, dict[str, str]]]]:
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes):
        raise TypeError(f"Expected {option} to be a path. Received: {option}={path!r}")
    path = Path(path)
    if not path.is_file():
        raise Luna16Error(
            f"Expected an existing CSV file for {option}. Received: {option}='{path}' "
            f"({'not a file' if path.exists() else 'not found'})"
        )
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in columns if c not in header]
        if missing:
            raise Luna16Error(
                f"Expected the columns {','.join(columns)} in the {option} file '{path}'. "
                f"Received: header={header} (missing {missing})"
            )
        reader.fieldnames = header
        rows = [(line, row) for line, row in enumerate(reader, start=2)
                if any((v or "").strip() for v in row.values() if isinstance(v, str))]
    return path, rows


def _numbers(row: dict[str, str], keys: Sequence[str], *, option: str, path: Path,
             line: int) -> list[float]:
    values = []
    for key in keys:
        raw = (row.get(key) or "").strip()
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise Luna16Error(
                f"Expected a finite number for {key} in the {option} file '{path}', line {line}. "
                f"Received: {key}={raw!r}"
            )
        values.append(value)
    return values


def _table(path: str | os.PathLike, *, option: str, columns: Sequence[str]) -> dict[str, np.ndarray]:
    path, rows = _open_rows(path, option=option, columns=columns)
    grouped: dict[str, list[list[float]]] = {}
    for line, row in rows:
        uid = (row.get("seriesuid") or "").strip()
        if not uid:
            raise Luna16Error(
                f"Expected a seriesuid in the {option} file '{path}', line {line}. Received: an empty one"
            )
        grouped.setdefault(uid, []).append(
            _numbers(row, columns[1:], option=option, path=path, line=line))
    return {uid: np.asarray(values, dtype=np.float64).reshape(-1, 4) for uid, values in grouped.items()}


def read_annotations(path: str | os.PathLike, *, option: str = "--luna16") -> dict[str, np.ndarray]:
    """Reads ``annotations.csv`` or ``annotations_excluded.csv``.

    Args:
        path: CSV with the columns `ANNOTATION_COLUMNS` (others ignored).
        option: The command-line option that named the file (for messages).

    Returns:
        ``{seriesuid: float64 (N, 4)}`` rows ``(coordX, coordY, coordZ, diameter_mm)``, LPS mm,
        in file order. ``diameter_mm`` may be -1 (excluded findings without a size).

    Raises:
        Luna16Error: Missing file or column, empty seriesuid, a non-finite number (names the
            line).
    """
    return _table(path, option=option, columns=ANNOTATION_COLUMNS)


def read_candidates(path: str | os.PathLike, *, option: str = "--candidates") -> dict[str, np.ndarray]:
    """Reads a LUNA16 candidates file (``seriesuid,coordX,coordY,coordZ,probability``).

    Returns:
        ``{seriesuid: float64 (C, 4)}`` rows ``(coordX, coordY, coordZ, probability)``.

    Raises:
        Luna16Error: As `read_annotations`.
    """
    return _table(path, option=option, columns=CANDIDATE_COLUMNS)


def read_seriesuids(path: str | os.PathLike, *, option: str = "--seriesuids") -> list[str]:
    """Reads a list of scans: a ``seriesuid`` column, or one UID per line without a header.

    Returns:
        The UIDs in file order, duplicates removed.
    """
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes):
        raise TypeError(f"Expected {option} to be a path. Received: {option}={path!r}")
    path = Path(path)
    if not path.is_file():
        raise Luna16Error(f"Expected an existing file for {option}. Received: {option}='{path}' (not found)")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = [row for row in csv.reader(handle) if row and row[0].strip()]
    if rows and "seriesuid" in [c.strip() for c in rows[0]]:
        column = [c.strip() for c in rows[0]].index("seriesuid")
        rows = rows[1:]
    else:
        column = 0
    uids = [row[column].strip() for row in rows if len(row) > column and row[column].strip()]
    if not uids:
        raise Luna16Error(f"Expected at least one seriesuid in the {option} file '{path}'. Received: none")
    return list(dict.fromkeys(uids))


def candidates_csv_text(rows: Iterable[Sequence]) -> str:
    """The text of a LUNA16 candidates file.

    Args:
        rows: ``(seriesuid, coordX, coordY, coordZ, probability)`` tuples.

    Returns:
        CSV text with the header `CANDIDATE_COLUMNS`; coordinates with 4 decimals and
        probabilities with 6.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CANDIDATE_COLUMNS)
    for uid, x, y, z, probability in rows:
        writer.writerow([uid, f"{float(x):.4f}", f"{float(y):.4f}", f"{float(z):.4f}",
                         f"{float(probability):.6f}"])
    return buffer.getvalue()


def sphere_mask(shape: Sequence[int], affine: np.ndarray, nodules_ras: np.ndarray) -> np.ndarray:
    """Marks the voxels whose centres lie within each nodule's radius (an approximation).

    Args:
        shape: ``(I, J, K)`` voxel grid.
        affine: ``(4, 4)`` voxel -> RAS world affine of that grid.
        nodules_ras: ``(N, 4)`` rows ``(x, y, z, diameter_mm)``, centres in RAS mm.

    Returns:
        uint8 ``(I, J, K)`` mask in {0, 1}: 1 where ``|p - centre| <= diameter / 2`` for some
        nodule (``p`` the voxel centre). Nodules with a diameter <= 0 mark nothing.

    Raises:
        ValueError: Bad shape or table.
    """
    shape = tuple(int(s) for s in shape)
    nodules = np.asarray(nodules_ras, dtype=np.float64).reshape(-1, 4)
    affine = np.asarray(affine, dtype=np.float64)
    if len(shape) != 3 or min(shape) < 1 or affine.shape != (4, 4):
        raise ValueError(f"Expected a 3D shape and a (4, 4) affine. Received: shape={shape}, "
                         f"affine.shape={affine.shape}")
    mask = np.zeros(shape, dtype=np.uint8)
    inverse = np.linalg.inv(affine)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    for x, y, z, diameter in nodules:
        radius = diameter / 2.0
        if radius <= 0:
            continue
        centre_vox = (inverse @ [x, y, z, 1.0])[:3]
        reach = np.ceil(radius / spacing.min()) + 1  # voxels; covers any rotation
        low = np.maximum(np.floor(centre_vox - reach), 0).astype(int)
        high = np.minimum(np.ceil(centre_vox + reach) + 1, shape).astype(int)
        if np.any(high <= low):
            continue
        grid = np.stack(np.meshgrid(*[np.arange(lo, hi) for lo, hi in zip(low, high)],
                                    indexing="ij"), axis=-1).astype(np.float64)
        world = grid @ affine[:3, :3].T + affine[:3, 3]
        inside = np.sum((world - [x, y, z]) ** 2, axis=-1) <= radius ** 2
        box = tuple(slice(lo, hi) for lo, hi in zip(low, high))
        mask[box] |= inside.astype(np.uint8)
    return mask


def ras_nodules(annotations_lps: np.ndarray) -> np.ndarray:
    """``(N, 4)`` LPS ``(coordX, coordY, coordZ, d)`` rows -> RAS ``(x, y, z, d)`` rows."""
    table = np.asarray(annotations_lps, dtype=np.float64).reshape(-1, 4).copy()
    table[:, :3] = lps_to_ras(table[:, :3])
    return table


def scans_of(*tables: Mapping[str, np.ndarray]) -> list[str]:
    """Sorted union of the seriesuids of several tables."""
    return sorted(set().union(*[set(t) for t in tables]))
