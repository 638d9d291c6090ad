"""Finding LIDC-IDRI series on disk: the TCIA folder tree and the slices of one series.

TCIA's LIDC-IDRI download is ``LIDC-IDRI/<patient>/<study>/<series>/`` with the series'
DICOM slices and, for CT series, one reader XML. Folders are matched to XML files by
``SeriesInstanceUID`` (the XML's ``ResponseHeader/SeriesInstanceUid``), not by location.
Discovery reads one DICOM header per folder; the full series is read later
(`segmentation.dicom.read_dicom_series`), which checks missing and duplicated slices.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from segmentation.dicom import LPS_TO_RAS
from segmentation.lidc import LidcError, SliceIndex, read_series_uid

__all__ = ["LidcSeries", "find_lidc_series", "slice_index"]

_HEADER_TRIES = 5


@dataclasses.dataclass(frozen=True)
class LidcSeries:
    """One CT series with its XML.

    Attributes:
        case_id: ``PatientID`` (``LIDC-IDRI-0001``), with ``_1``, ``_2`` ... (sorted by
            series UID) when a patient has several CT series with XML.
        patient_id: ``PatientID`` of the DICOM header.
        series_uid: SeriesInstanceUID.
        folder: The folder holding the slices.
        xml: The reader XML.
    """

    case_id: str
    patient_id: str
    series_uid: str
    folder: Path
    xml: Path


def _header(folder: Path, names: Sequence[str]) -> pydicom.Dataset | None:
    """The header of the first DICOM image among the first few files of a folder."""
    tries = 0
    for name in names:
        if name.startswith(".") or name.lower().endswith((".xml", ".txt", ".json", ".csv")):
            continue
        tries += 1
        try:
            ds = pydicom.dcmread(folder / name, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            ds = None
        if ds is not None and "SeriesInstanceUID" in ds:
            return ds
        if tries >= _HEADER_TRIES:
            break
    return None


def find_lidc_series(root: str | os.PathLike, *, cases: Sequence[str] | None = None
                     ) -> tuple[list[LidcSeries], list[str]]:
    """Walks a TCIA LIDC-IDRI tree and pairs each CT series with its XML.

    Args:
        root: ``--input`` folder.
        cases: Keep only series whose case id, PatientID or SeriesInstanceUID is listed
            (``--cases``); None keeps all.

    Returns:
        ``(series, notes)``: the pairs sorted by case id, and one line per skipped item
        (an XML without a matching series, a CT series without XML, a duplicate, an
        unreadable XML, a ``--cases`` entry that matches nothing), each naming the file.

    Raises:
        ValueError: ``root`` is not a folder, or nothing is left to import.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"Expected the LIDC-IDRI folder for --input. Received: --input='{root}' (not a folder)")
    notes: list[str] = []
    xml_by_uid: dict[str, list[Path]] = {}
    folders_by_uid: dict[str, list[tuple[Path, str]]] = {}
    n_other_xml = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        folder = Path(dirpath)
        names = sorted(filenames)
        for name in (n for n in names if n.lower().endswith(".xml") and not n.startswith(".")):
            try:
                uid = read_series_uid(folder / name)
            except LidcError as err:
                notes.append(f"skipped XML '{folder / name}': {err}")
                continue
            if uid is None:
                n_other_xml += 1
            else:
                xml_by_uid.setdefault(uid, []).append(folder / name)
        ds = _header(folder, names)
        if ds is not None and str(ds.get("Modality", "CT")) == "CT":
            uid = str(ds.SeriesInstanceUID)
            folders_by_uid.setdefault(uid, []).append((folder, str(ds.get("PatientID", "") or folder.name)))
    if n_other_xml:
        notes.append(f"ignored {n_other_xml} XML file(s) that are not CT readings (no LidcReadMessage)")
    found: list[tuple[str, str, Path, Path]] = []
    for uid, xmls in sorted(xml_by_uid.items()):
        folders = folders_by_uid.get(uid, [])
        if not folders:
            notes += [f"skipped XML '{x}': no DICOM series with SeriesInstanceUID {uid} under --input "
                      f"'{root}'" for x in xmls]
        elif len(xmls) > 1:
            notes.append(f"skipped series {uid}: several XML files name it: {[str(x) for x in xmls]}")
        elif len(folders) > 1:
            notes.append(f"skipped XML '{xmls[0]}': series {uid} lies in several folders: "
                         f"{[str(f) for f, _ in folders]}")
        else:
            found.append((folders[0][1], uid, folders[0][0], xmls[0]))
    for uid in sorted(set(folders_by_uid) - set(xml_by_uid)):
        notes += [f"skipped series folder '{f}': no LIDC XML with its SeriesInstanceUID {uid}"
                  for f, _ in folders_by_uid[uid]]
    per_patient: dict[str, int] = {}
    for patient, *_ in found:
        per_patient[patient] = per_patient.get(patient, 0) + 1
    series, seen = [], {}
    for patient, uid, folder, xml in sorted(found, key=lambda f: (f[0], f[1])):
        seen[patient] = seen.get(patient, 0) + 1
        case_id = patient if per_patient[patient] == 1 else f"{patient}_{seen[patient]}"
        series.append(LidcSeries(case_id, patient, uid, folder, xml))
    if cases:
        wanted = set(cases)
        kept = [s for s in series if {s.case_id, s.patient_id, s.series_uid} & wanted]
        matched = {v for s in kept for v in (s.case_id, s.patient_id, s.series_uid)}
        notes += [f"--cases {name}: no such case, patient or series under --input '{root}'"
                  for name in cases if name not in matched]
        series = kept
    if not series:
        raise ValueError(f"Expected CT series with LIDC XML under --input '{root}'. Received: none"
                         + (f" ({'; '.join(notes[:3])})" if notes else ""))
    return sorted(series, key=lambda s: s.case_id), notes


def slice_index(folder: str | os.PathLike, *, affine: np.ndarray, shape: Sequence[int]) -> SliceIndex:
    """Maps each SOPInstanceUID of a series folder to its slice k of the read volume.

    Args:
        folder: The series folder (as read by `read_dicom_series`).
        affine: The volume's ``(4, 4)`` source voxel -> RAS affine.
        shape: Its source shape ``(I, J, K)``.

    Returns:
        A `SliceIndex`; ``z_mm[k]`` is the world z of slice k (LPS z = RAS z).
    """
    folder = Path(folder)
    affine = np.asarray(affine, dtype=np.float64)
    inverse = np.linalg.inv(affine)
    by_sop: dict[str, int] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue
        if "SOPInstanceUID" not in ds or "ImagePositionPatient" not in ds:
            continue
        lps = np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)
        voxel = inverse @ LPS_TO_RAS @ np.r_[lps, 1.0]
        k = int(round(float(voxel[2])))
        if 0 <= k < int(shape[2]) and abs(voxel[2] - k) < 0.05:
            by_sop[str(ds.SOPInstanceUID)] = k
    ks = np.arange(int(shape[2]), dtype=np.float64)
    z_mm = affine[2, 2] * ks + affine[2, 3]
    return SliceIndex(by_sop=by_sop, z_mm=z_mm)
