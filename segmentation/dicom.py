"""Reading one CT series from a folder of DICOM slices (pydicom).

`read_dicom_series` turns a folder holding exactly one CT series of single-frame slices
into a :class:`segmentation.io.Volume`, so that the rest of the pipeline (preprocessing,
inference, writing the mask) treats it exactly like a NIfTI file.

Rules, each enforced with a `DicomError` that names the folder (and the file when one
file is to blame):

* Every file that pydicom parses and that carries pixel rows and columns is an image of
  the folder; other files (``DICOMDIR``, text files, non-DICOM files) are ignored. A file
  that starts like DICOM but cannot be parsed (corrupt, truncated) is an error.
* The images are grouped by ``SeriesInstanceUID``; more than one series is an error that
  lists each series (UID, number, description, file count).
* Slices are sorted by ``ImagePositionPatient`` projected on the slice normal
  ``cross(row, col)`` of ``ImageOrientationPatient``. Orientation, pixel spacing, rows and
  columns must agree between slices. Two slices at the same position, a missing slice or an
  uneven spacing (a gap differing from the median by more than 1 % + 0.01 mm) is an error
  naming the gap; so are positions that do not lie on one line.
* Stored values are mapped to Hounsfield units with each slice's ``RescaleSlope`` and
  ``RescaleIntercept`` (defaults 1 and 0).

Voxel order and affine. The array is ``(I, J, K) = (column, row, slice)``: ``I`` runs
along a row (``ImageOrientationPatient[:3]``), ``J`` down the columns
(``ImageOrientationPatient[3:]``) and ``K`` through the sorted slices. In DICOM patient
coordinates (LPS, mm) voxel ``(i, j, k)`` lies at
``P0 + i * dc * row + j * dr * col + k * step`` with ``(dr, dc) = PixelSpacing`` (row
spacing first), ``P0`` the first slice's position and ``step = (P_last - P0) / (K - 1)``
(``SliceThickness`` or ``SpacingBetweenSlices`` along the normal for a single slice). A
gantry tilt therefore gives a sheared, exact affine. The returned affine is NIfTI world
(RAS): the LPS affine with the signs of the x and y rows flipped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from segmentation.io import Volume, VolumeError, volume_from_array

__all__ = [
    "DicomError",
    "DicomSeries",
    "LPS_TO_RAS",
    "check_uniform_spacing",
    "dicom_affine",
    "find_dicom_series",
    "ignored_files",
    "read_dicom_series",
    "slice_order",
]

logger = logging.getLogger(__name__)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""Left-multiply a DICOM (LPS) voxel-to-patient affine by this to get NIfTI (RAS) world."""

_GAP_ATOL_MM = 0.01        # slice gaps may differ from the median by this much ...
_GAP_RTOL = 0.01           # ... plus this share of the median
_COSINE_ATOL = 1e-4        # orientation agreement between slices / orthogonality
_SPACING_ATOL_MM = 1e-4    # pixel spacing agreement between slices
_MAX_LISTED = 5


class DicomError(VolumeError):
    """A DICOM folder or file is unusable. The message names the folder (and the file)."""


@dataclass(frozen=True)
class DicomSeries:
    """One series found in a folder (header only).

    Attributes:
        uid: SeriesInstanceUID.
        number: SeriesNumber, or None when absent.
        description: SeriesDescription ("" when absent).
        files: The series' image files, sorted by name.
    """

    uid: str
    number: int | None
    description: str
    files: tuple[Path, ...]

    def describe(self) -> str:
        """One line: number, description, UID and file count."""
        number = "?" if self.number is None else str(self.number)
        description = self.description or "(no description)"
        return f"series {number} '{description}' ({len(self.files)} files, UID {self.uid})"


# --------------------------------------------------------------------------------------------
# Header pass
# --------------------------------------------------------------------------------------------


def _folder(folder: str | os.PathLike) -> Path:
    if not isinstance(folder, (str, os.PathLike)) or isinstance(folder, bytes):
        raise TypeError(
            f"Expected folder to be a str or os.PathLike. Received: folder={folder!r}"
        )
    path = Path(folder)
    if not path.exists():
        raise DicomError(f"Expected an existing DICOM folder. Received: folder='{path}' (not found)")
    if not path.is_dir():
        raise DicomError(f"Expected a folder of DICOM files. Received: folder='{path}' (not a folder)")
    return path


def _read_header(path: Path) -> tuple[pydicom.Dataset | None, str]:
    """The header of an image file, or None and why the file is not an image."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        return None, "not a DICOM file"
    except Exception as err:  # truncated or corrupt DICOM: pydicom raises many types
        raise DicomError(
            f"Expected a readable DICOM file. Received: file='{path}' ({type(err).__name__}: {err})"
        ) from err
    if "Rows" not in ds or "Columns" not in ds:  # DICOMDIR, structured report, ...
        uid = ds.get("SOPClassUID", None)
        label = getattr(uid, "name", "") or str(uid or "")
        return None, "DICOM without an image (no Rows/Columns" + (f"; {label}" if label else "") + ")"
    return ds, ""


def ignored_files(folder: str | os.PathLike) -> list[tuple[Path, str]]:
    """The entries of a DICOM folder that are not read as slices, each with the reason.

    Hidden files, sub-folders (not searched), non-DICOM files and DICOM files without an
    image (``DICOMDIR``, reports). `read_dicom_series` logs each as a warning.
    """
    path = _folder(folder)
    ignored = []
    for entry in sorted(path.iterdir()):
        if entry.is_dir():
            ignored.append((entry, "a sub-folder (not searched)"))
        elif entry.name.startswith("."):
            ignored.append((entry, "a hidden file"))
        elif entry.is_file():
            ds, why = _read_header(entry)
            if ds is None:
                ignored.append((entry, why))
        else:
            ignored.append((entry, "not a regular file"))
    return ignored


def _series_number(ds: pydicom.Dataset) -> int | None:
    value = ds.get("SeriesNumber", None)
    try:
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def _scan_folder(folder: Path) -> dict[str, tuple[DicomSeries, list[pydicom.Dataset]]]:
    """Headers of every image file of ``folder`` grouped by SeriesInstanceUID."""
    groups: dict[str, list[tuple[Path, pydicom.Dataset]]] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        ds, _ = _read_header(path)
        if ds is None:
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if not uid:
            raise DicomError(
                f"Expected a SeriesInstanceUID in every DICOM image of folder '{folder}'. "
                f"Received: file='{path}' without one"
            )
        groups.setdefault(uid, []).append((path, ds))
    result = {}
    for uid, items in groups.items():
        first = items[0][1]
        series = DicomSeries(
            uid=uid,
            number=_series_number(first),
            description=str(first.get("SeriesDescription", "") or ""),
            files=tuple(p for p, _ in items),
        )
        result[uid] = (series, [ds for _, ds in items])
    return result


def find_dicom_series(folder: str | os.PathLike) -> list[DicomSeries]:
    """Lists the DICOM image series in a folder (headers only; files in the folder itself).

    Args:
        folder: A folder.

    Returns:
        One `DicomSeries` per SeriesInstanceUID, sorted by series number then UID; empty
        when the folder holds no DICOM image.

    Raises:
        DicomError: The folder is missing, or a DICOM file cannot be parsed (names it).
    """
    found = _scan_folder(_folder(folder))
    return sorted(
        (series for series, _ in found.values()),
        key=lambda s: (s.number if s.number is not None else 1 << 31, s.uid),
    )


# --------------------------------------------------------------------------------------------
# Geometry (pure functions)
# --------------------------------------------------------------------------------------------


def _floats(ds: pydicom.Dataset, keyword: str, n: int, *, path: Path) -> np.ndarray:
    value = ds.get(keyword, None)
    try:
        values = np.asarray([float(v) for v in value], dtype=np.float64) if value is not None else None
    except (TypeError, ValueError):
        values = None
    if values is None or values.shape != (n,) or not np.all(np.isfinite(values)):
        raise DicomError(
            f"Expected {keyword} with {n} numbers in DICOM file '{path}'. Received: {keyword}={value!r}"
        )
    return values


def _unit_cosines(orientation: np.ndarray, *, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Row and column direction cosines, normalised and checked to be orthogonal."""
    row, col = orientation[:3], orientation[3:]
    norms = np.array([np.linalg.norm(row), np.linalg.norm(col)])
    if np.any(np.abs(norms - 1.0) > 1e-2) or abs(float(row @ col)) > 1e-2:
        raise DicomError(
            "Expected ImageOrientationPatient to hold two orthogonal unit vectors in DICOM file "
            f"'{path}'. Received: ImageOrientationPatient={orientation.tolist()}"
        )
    return row / norms[0], col / norms[1]


def slice_order(positions_mm: np.ndarray, normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorts slice positions along the slice normal.

    Args:
        positions_mm: float ``(N, 3)`` ImagePositionPatient of each slice (LPS mm).
        normal: float ``(3,)`` unit normal ``cross(row, col)``.

    Returns:
        ``(order, distances_mm)``: int ``(N,)`` indices that sort the slices by their
        distance along ``normal`` (ascending), and those sorted distances.
    """
    distances = np.asarray(positions_mm, dtype=np.float64) @ np.asarray(normal, dtype=np.float64)
    order = np.argsort(distances, kind="stable")
    return order, distances[order]


def check_uniform_spacing(distances_mm: np.ndarray, *, where: str) -> float:
    """Checks that sorted slice distances are evenly spaced; returns the spacing (mm).

    Args:
        distances_mm: float ``(N,)`` sorted positions along the normal, N >= 2.
        where: Names the folder in messages.

    Returns:
        The median gap in mm.

    Raises:
        DicomError: Duplicate positions, or a gap differing from the median by more than
            ``0.01 mm + 1 %`` (a missing slice or uneven spacing). Names the first bad gap.
    """
    gaps = np.diff(np.asarray(distances_mm, dtype=np.float64))
    duplicate = np.flatnonzero(gaps <= _GAP_ATOL_MM)
    if duplicate.size:
        index = int(duplicate[0])
        raise DicomError(
            f"Expected one slice per position in {where}. Received: slices {index} and "
            f"{index + 1} (sorted) both at {distances_mm[index]:.4f} mm along the slice normal"
        )
    spacing = float(np.median(gaps))
    bad = np.flatnonzero(np.abs(gaps - spacing) > _GAP_ATOL_MM + _GAP_RTOL * spacing)
    if bad.size:
        index = int(bad[0])
        kind = "a missing slice" if gaps[index] > 1.5 * spacing else "uneven slice spacing"
        raise DicomError(
            f"Expected evenly spaced slices ({spacing:.4f} mm apart) in {where}. Received: a gap "
            f"of {gaps[index]:.4f} mm between sorted slices {index} and {index + 1} (at "
            f"{distances_mm[index]:.4f} and {distances_mm[index + 1]:.4f} mm along the normal; "
            f"{kind}; {bad.size} bad gap(s) in all)"
        )
    return spacing


def dicom_affine(*, position_mm: np.ndarray, row: np.ndarray, col: np.ndarray,
                 pixel_spacing_mm: Sequence[float], step_mm: np.ndarray) -> np.ndarray:
    """The NIfTI (RAS) affine of an ``(column, row, slice)`` ordered DICOM volume.

    Args:
        position_mm: ``(3,)`` ImagePositionPatient of the first sorted slice (LPS).
        row: ``(3,)`` unit row direction cosine (``ImageOrientationPatient[:3]``).
        col: ``(3,)`` unit column direction cosine (``ImageOrientationPatient[3:]``).
        pixel_spacing_mm: PixelSpacing ``(row spacing, column spacing)``.
        step_mm: ``(3,)`` LPS vector from one slice's position to the next.

    Returns:
        float64 ``(4, 4)`` voxel ``(i, j, k)`` -> RAS world affine.
    """
    row_spacing, col_spacing = (float(v) for v in pixel_spacing_mm)
    lps = np.eye(4)
    lps[:3, 0] = np.asarray(row, dtype=np.float64) * col_spacing
    lps[:3, 1] = np.asarray(col, dtype=np.float64) * row_spacing
    lps[:3, 2] = np.asarray(step_mm, dtype=np.float64)
    lps[:3, 3] = np.asarray(position_mm, dtype=np.float64)
    return LPS_TO_RAS @ lps


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _select_series(folder: Path) -> tuple[DicomSeries, list[pydicom.Dataset]]:
    found = _scan_folder(folder)
    if not found:
        raise DicomError(
            f"Expected DICOM image files in folder '{folder}'. Received: none that pydicom reads "
            "as an image"
        )
    if len(found) > 1:
        listed = sorted((s for s, _ in found.values()), key=lambda s: (s.number or 0, s.uid))
        raise DicomError(
            f"Expected one DICOM series in folder '{folder}' (put each series in its own folder). "
            f"Received: {len(listed)} series: " + "; ".join(s.describe() for s in listed)
        )
    return next(iter(found.values()))


def _check_consistent(headers: list[pydicom.Dataset], files: Sequence[Path], folder: Path) -> tuple[
        np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    """Orientation, pixel spacing and size shared by all slices (checked)."""
    first_path = files[0]
    orientation = _floats(headers[0], "ImageOrientationPatient", 6, path=first_path)
    spacing = _floats(headers[0], "PixelSpacing", 2, path=first_path)
    if np.any(spacing <= 0):
        raise DicomError(
            f"Expected positive PixelSpacing in DICOM file '{first_path}'. Received: PixelSpacing={spacing.tolist()}"
        )
    size = (int(headers[0].Rows), int(headers[0].Columns))
    for ds, path in zip(headers, files):
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames != 1:
            raise DicomError(
                f"Expected single-frame DICOM slices in folder '{folder}' (multi-frame files are not "
                f"supported). Received: file='{path}' with NumberOfFrames={frames}"
            )
        if (int(ds.Rows), int(ds.Columns)) != size:
            raise DicomError(
                f"Expected every slice of folder '{folder}' to have {size[0]} rows and {size[1]} "
                f"columns. Received: file='{path}' with {int(ds.Rows)} x {int(ds.Columns)}"
            )
        other = _floats(ds, "ImageOrientationPatient", 6, path=path)
        if np.max(np.abs(other - orientation)) > _COSINE_ATOL:
            raise DicomError(
                f"Expected one ImageOrientationPatient for every slice of folder '{folder}'. "
                f"Received: {orientation.tolist()} in '{first_path}' and {other.tolist()} in '{path}'"
            )
        other = _floats(ds, "PixelSpacing", 2, path=path)
        if np.max(np.abs(other - spacing)) > _SPACING_ATOL_MM:
            raise DicomError(
                f"Expected one PixelSpacing for every slice of folder '{folder}'. "
                f"Received: {spacing.tolist()} in '{first_path}' and {other.tolist()} in '{path}'"
            )
    row, col = _unit_cosines(orientation, path=first_path)
    return row, col, spacing, size


def _single_slice_step(ds: pydicom.Dataset, normal: np.ndarray, path: Path) -> np.ndarray:
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = ds.get(keyword, None)
        try:
            thickness = float(value) if value not in (None, "") else None
        except (TypeError, ValueError):
            thickness = None
        if thickness is not None and np.isfinite(thickness) and thickness > 0:
            return normal * thickness
    raise DicomError(
        f"Expected SliceThickness or SpacingBetweenSlices in the single slice '{path}'. "
        "Received: neither"
    )


def _slice_step(positions: np.ndarray, distances: np.ndarray, folder: Path) -> np.ndarray:
    """The LPS vector between neighbouring slices; positions must lie on one line."""
    where = f"folder '{folder}'"
    check_uniform_spacing(distances, where=where)
    n = positions.shape[0]
    step = (positions[-1] - positions[0]) / (n - 1)
    expected = positions[0] + np.arange(n)[:, None] * step
    off_mm = np.linalg.norm(positions - expected, axis=1)
    worst = int(np.argmax(off_mm))
    if off_mm[worst] > _GAP_ATOL_MM + _GAP_RTOL * float(np.linalg.norm(step)):
        raise DicomError(
            f"Expected slice positions on one line in {where}. Received: sorted slice {worst} at "
            f"{positions[worst].tolist()} is {off_mm[worst]:.4f} mm off the line through the first "
            "and last slice"
        )
    return step


def _pixels_hu(path: Path, *, size: tuple[int, int]) -> np.ndarray:
    """float32 ``(Rows, Columns)`` Hounsfield units of one slice file."""
    try:
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array
    except Exception as err:  # truncated pixel data, missing decoder, ...
        raise DicomError(
            f"Expected readable pixel data in DICOM file '{path}'. Received: {type(err).__name__}: {err}"
        ) from err
    if stored.shape != size:
        raise DicomError(
            f"Expected pixel data of shape {size} in DICOM file '{path}'. Received: shape={stored.shape}"
        )
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric != "MONOCHROME2":
        raise DicomError(
            f"Expected a MONOCHROME2 (greyscale CT) image in DICOM file '{path}'. "
            f"Received: PhotometricInterpretation={photometric}"
        )
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    values = stored.astype(np.float32)
    if slope != 1.0:
        values *= np.float32(slope)
    if intercept != 0.0:
        values += np.float32(intercept)
    return values


def read_dicom_series(folder: str | os.PathLike) -> Volume:
    """Reads the one CT series of a folder of DICOM slices into a Volume.

    Args:
        folder: A folder whose DICOM image files form exactly one series (other files are
            ignored; sub-folders are not searched).

    Returns:
        A `Volume` (``kind="image"``, float32 Hounsfield units) built with
        `segmentation.io.volume_from_array` from the ``(column, row, slice)`` array and its
        RAS affine (see the module docstring), with ``path`` = ``folder``. Writing a mask
        with this Volume as reference gives a NIfTI file that lies on the DICOM scan.

    Raises:
        DicomError: No image, several series (lists them), a corrupt or truncated file,
            missing geometry tags, inconsistent slices, duplicate or missing slices,
            uneven spacing. The message names the folder and, where one file is to blame,
            the file.
        TypeError: ``folder`` is not path-like.
    """
    path = _folder(folder)
    series, headers = _select_series(path)
    for entry, why in ignored_files(path):
        logger.warning("Ignored '%s' in DICOM folder '%s': %s", entry.name, path, why)
    files = list(series.files)
    row, col, pixel_spacing, size = _check_consistent(headers, files, path)
    normal = np.cross(row, col)
    positions = np.stack([_floats(ds, "ImagePositionPatient", 3, path=f) for ds, f in zip(headers, files)])
    order, distances = slice_order(positions, normal)
    positions = positions[order]
    files = [files[i] for i in order]
    if len(files) == 1:
        step = _single_slice_step(headers[0], normal, files[0])
    else:
        step = _slice_step(positions, distances, path)
    affine = dicom_affine(position_mm=positions[0], row=row, col=col,
                          pixel_spacing_mm=pixel_spacing, step_mm=step)
    rows, cols = size
    array = np.empty((cols, rows, len(files)), dtype=np.float32)
    for k, file in enumerate(files):
        array[:, :, k] = _pixels_hu(file, size=size).T
    modality = str(headers[0].get("Modality", ""))
    if modality and modality != "CT":
        logger.warning("DICOM series in %s has Modality=%s, not CT", path, modality)
    logger.info("Read %s from %s: %s voxels", series.describe(), path, array.shape)
    return volume_from_array(array, affine, kind="image", path=path)
