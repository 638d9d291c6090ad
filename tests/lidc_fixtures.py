"""Small LIDC-style data written in code: a DICOM CT series (pydicom) and a reader XML.

Geometry of `write_series`: axial slices, ``PixelSpacing = (0.8, 0.7)`` (row spacing, column
spacing), 1.5 mm apart, first slice at LPS ``(-50, -40, -100)``. Voxel ``(i, j, k)`` =
(column, row, slice) lies at LPS ``(-50 + 0.7 i, -40 + 0.8 j, -100 + 1.5 k)``, i.e. RAS
``(50 - 0.7 i, 40 - 0.8 j, -100 + 1.5 k)`` (`ras_of`).
"""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

SHAPE = (16, 16, 6)  # columns, rows, slices
ORIGIN_LPS = np.array([-50.0, -40.0, -100.0])
PIXEL_SPACING = (0.8, 0.7)  # row spacing (between rows = along j), column spacing (along i)
SLICE_MM = 1.5


def ras_of(voxels: np.ndarray) -> np.ndarray:
    """RAS mm of ``(..., 3)`` voxel coordinates of the test series (independent of lungseg)."""
    voxels = np.asarray(voxels, dtype=np.float64)
    lps = ORIGIN_LPS + voxels * [PIXEL_SPACING[1], PIXEL_SPACING[0], SLICE_MM]
    return lps * [-1.0, -1.0, 1.0]


def z_of(k: int) -> float:
    return float(ORIGIN_LPS[2] + SLICE_MM * k)


def write_series(folder: Path, *, patient: str = "LIDC-IDRI-0001", series_uid: str | None = None,
                 skip: tuple[int, ...] = (), duplicate: tuple[int, ...] = ()) -> dict:
    """Writes the series; returns ``{"uid", "sop": [SOPInstanceUID of slice k]}``."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = series_uid or generate_uid()
    study = generate_uid()
    rng = np.random.default_rng(0)
    sops = [generate_uid() for _ in range(SHAPE[2])]
    copies = [(k, sops[k]) for k in range(SHAPE[2]) if k not in skip]
    copies += [(k, generate_uid()) for k in duplicate]
    for number, (k, sop) in enumerate(copies):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop
        ds.Modality = "CT"
        ds.PatientID = patient
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = uid
        ds.SeriesNumber = 3000
        ds.InstanceNumber = number + 1
        ds.ImagePositionPatient = [float(v) for v in ORIGIN_LPS + [0.0, 0.0, SLICE_MM * k]]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = list(PIXEL_SPACING)
        ds.SliceThickness = SLICE_MM
        ds.RescaleSlope = 1.0
        ds.RescaleIntercept = -1024.0
        ds.Rows, ds.Columns = SHAPE[1], SHAPE[0]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.PixelData = rng.integers(0, 1400, (SHAPE[1], SHAPE[0])).astype(np.int16).tobytes()
        ds.save_as(folder / f"{number:06d}.dcm", enforce_file_format=True)
    return {"uid": uid, "sop": sops}


def rect_corners(x0: int, x1: int, y0: int, y1: int) -> list[tuple[int, int]]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def rect_boundary(x0: int, x1: int, y0: int, y1: int) -> list[tuple[int, int]]:
    """Every boundary pixel in order, as the LIDC edge maps list them."""
    top = [(x, y0) for x in range(x0, x1 + 1)]
    right = [(x1, y) for y in range(y0 + 1, y1 + 1)]
    bottom = [(x, y1) for x in range(x1 - 1, x0 - 1, -1)]
    left = [(x0, y) for y in range(y1 - 1, y0, -1)]
    return top + right + bottom + left


def _roi(k: int, sop: str, points, *, inclusion: bool = True, tag: str = "roi",
         point_tag: str = "edgeMap") -> str:
    edges = "".join(f"<{point_tag}><xCoord>{x}</xCoord><yCoord>{y}</yCoord></{point_tag}>"
                    for x, y in points)
    inner = (f"<imageZposition>{z_of(k):.6f} </imageZposition><imageSOP_UID>{escape(sop)}</imageSOP_UID>"
             f"<inclusion>{'TRUE' if inclusion else 'FALSE'}</inclusion>{edges}")
    return f"<{tag}>{inner}</{tag}>" if tag else inner


def write_xml(path: Path, series_uid: str, sessions: list[dict]) -> Path:
    """Writes an LIDC XML. Each session: ``{"reader", "nodules": [{"id", "chars", "rois": [(k,
    sop, points, inclusion)]}], "non_nodules": [(id, k, sop, (x, y))]}``."""
    body = []
    for session in sessions:
        parts = [f"<annotationVersion>3.12</annotationVersion>"
                 f"<servicingRadiologistID>{session['reader']}</servicingRadiologistID>"]
        for nodule in session.get("nodules", []):
            chars = "".join(f"<{k}>{v}</{k}>" for k, v in nodule.get("chars", {}).items())
            rois = "".join(_roi(k, sop, pts, inclusion=inc) for k, sop, pts, inc in nodule["rois"])
            parts.append(f"<unblindedReadNodule><noduleID>{nodule['id']}</noduleID>"
                         + (f"<characteristics>{chars}</characteristics>" if chars else "")
                         + rois + "</unblindedReadNodule>")
        for mark_id, k, sop, point in session.get("non_nodules", []):
            parts.append(f"<nonNodule><nonNoduleID>{mark_id}</nonNoduleID>"
                         + _roi(k, sop, [point], tag="", point_tag="locus") + "</nonNodule>")
        body.append("<readingSession>" + "".join(parts) + "</readingSession>")
    text = ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<LidcReadMessage uid="1.3.6.1.4.1.14519.5.2.1.6279.6001.1" xmlns="http://www.nih.gov" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
            f"<ResponseHeader><Version>1.8.1</Version><SeriesInstanceUid>{series_uid}</SeriesInstanceUid>"
            "</ResponseHeader>" + "".join(body) + "</LidcReadMessage>\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def standard_sessions(sop: list[str]) -> list[dict]:
    """Three readers: nodule A (all three; reader 1 with a hole on slice 3; reader 3 named by
    z only), nodule B (reader 1 only), a < 3 mm point (reader 2), a non-nodule (reader 3)."""
    return [
        {"reader": "111", "nodules": [
            {"id": "A1", "chars": {"subtlety": 4, "malignancy": 3, "texture": 5},
             "rois": [(2, sop[2], rect_boundary(2, 8, 3, 7), True),
                      (3, sop[3], rect_boundary(2, 8, 3, 7), True),
                      (3, sop[3], rect_corners(3, 7, 4, 6), False)]},
            {"id": "B1", "chars": {"malignancy": 2},
             "rois": [(1, sop[1], rect_boundary(11, 13, 10, 12), True)]}]},
        {"reader": "222", "nodules": [
            {"id": "A2", "chars": {"subtlety": 5, "malignancy": 4, "texture": 5},
             "rois": [(2, sop[2], rect_corners(3, 9, 3, 7), True),
                      (3, sop[3], rect_corners(3, 9, 3, 7), True)]},
            {"id": "small", "rois": [(4, sop[4], [(12, 2)], True)]}]},
        {"reader": "333", "nodules": [
            {"id": "A3", "chars": {"subtlety": 3, "malignancy": 5, "texture": 4},
             "rois": [(3, "1.2.unknown.sop", rect_corners(2, 8, 3, 7), True)]}],
         "non_nodules": [("nn1", 0, sop[0], (5, 12))]},
    ]


def expected_reader_masks() -> dict[str, np.ndarray]:
    """The voxels of each reader's mark of nodule A and B, written by hand."""
    def rect(x0, x1, y0, y1, ks):
        m = np.zeros(SHAPE, bool)
        for k in ks:
            m[x0:x1 + 1, y0:y1 + 1, k] = True
        return m
    r1 = rect(2, 8, 3, 7, [2, 3])
    r1[4:7, 5, 3] = False  # strict interior of the exclusion outline (3..7, 4..6)
    return {"A1": r1, "A2": rect(3, 9, 3, 7, [2, 3]), "A3": rect(2, 8, 3, 7, [3]),
            "B1": rect(11, 13, 10, 12, [1])}
