"""LIDC-IDRI: reader XML, contour rasterisation, grouping of readers' marks, consensus.

The LIDC XML (``LidcReadMessage``, namespace ``http://www.nih.gov``) holds one
``readingSession`` per radiologist. Each ``unblindedReadNodule`` has ``characteristics``
(subtlety, internalStructure, calcification, sphericity, margin, lobulation, spiculation,
texture, malignancy; 1..5 or 1..6) and ``roi`` elements: one contour on one slice, named by
``imageSOP_UID`` and ``imageZposition``, with ``inclusion`` (TRUE: the outline of nodule
tissue; FALSE: the outline of a hole) and ``edgeMap`` points ``(xCoord, yCoord)`` = (column,
row) pixel indices. Nodules < 3 mm are marked by a single point (no outline, no
characteristics); ``nonNodule`` elements mark other findings by one ``locus`` point.

Rules used here (each in one function):

* Slice: the roi's ``imageSOP_UID`` when the series has it, else ``imageZposition`` (within
  ``Z_TOLERANCE_MM`` of a slice's z); neither is a `LidcError` naming the XML file.
* `fill_contour`: the polygon through the points, **boundary pixels included** (the LIDC
  outline is drawn on the nodule's edge); an exclusion (``inclusion=FALSE``) roi removes the
  pixels strictly inside its outline (its outline stays nodule).
* `group_marks`: marks of different readers are candidates for one physical nodule when
  their voxels overlap, else when their equivalent spheres (centred on the centroids)
  intersect: centroid distance <= the sum of the equivalent radii; links are taken strongest first (most shared voxels, then nearest) and never
  join two marks of the same reader.
* Consensus: a voxel belongs to a nodule's consensus mask when at least ``consensus`` of
  the readers who marked that nodule marked it (``count >= consensus * n_readers``).

Arrays are in the DICOM reader's source order ``(column i, row j, slice k)``
(`segmentation.dicom.read_dicom_series`), so a point ``(x, y)`` on slice ``k`` is voxel
``(x, y, k)``.
"""

from __future__ import annotations

import dataclasses
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from skimage.draw import line, polygon

from segmentation.metrics import equivalent_diameter_mm
from segmentation.validation import check_int

__all__ = [
    "CHARACTERISTICS",
    "NODULE_COLUMNS",
    "POINT_COLUMNS",
    "build_case",
    "read_series_uid",
    "LidcError",
    "LidcReading",
    "Mark",
    "NoduleMark",
    "PointMark",
    "Roi",
    "SliceIndex",
    "Z_TOLERANCE_MM",
    "consensus_mask",
    "fill_contour",
    "group_marks",
    "parse_lidc_xml",
    "rasterise",
]

CHARACTERISTICS = ("subtlety", "internalStructure", "calcification", "sphericity", "margin",
                   "lobulation", "spiculation", "texture", "malignancy")
Z_TOLERANCE_MM = 0.05


class LidcError(ValueError):
    """An LIDC XML file, or its match with the series, is unusable. Names the XML file."""


@dataclasses.dataclass(frozen=True)
class Roi:
    """One contour (or point) on one slice."""

    z_mm: float | None
    sop_uid: str
    inclusion: bool
    points_xy: np.ndarray  # int (P, 2): (xCoord = column, yCoord = row)


@dataclasses.dataclass(frozen=True)
class NoduleMark:
    """One reader's ``unblindedReadNodule``."""

    reader: str
    nodule_id: str
    characteristics: dict[str, float]
    rois: tuple[Roi, ...]

    @property
    def is_point(self) -> bool:
        """True for a nodule < 3 mm: every roi is a single point."""
        return all(r.points_xy.shape[0] <= 1 for r in self.rois)


@dataclasses.dataclass(frozen=True)
class PointMark:
    """A single-point finding: a nodule < 3 mm or a non-nodule."""

    reader: str
    kind: str  # "nodule<3mm" | "non-nodule"
    mark_id: str
    roi: Roi


@dataclasses.dataclass(frozen=True)
class LidcReading:
    """The marks of one XML file."""

    path: Path
    series_uid: str
    nodules: tuple[NoduleMark, ...]
    points: tuple[PointMark, ...]
    n_readers: int


# --------------------------------------------------------------------------------------------
# XML
# --------------------------------------------------------------------------------------------


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in element if _local(child.tag) == name]


def _text(element: ET.Element, name: str, default: str = "") -> str:
    found = _children(element, name)
    return (found[0].text or "").strip() if found else default


def _roi(element: ET.Element, *, path: Path, points_tag: str = "edgeMap") -> Roi:
    points = []
    for edge in _children(element, points_tag):
        try:
            points.append((int(round(float(_text(edge, "xCoord")))),
                           int(round(float(_text(edge, "yCoord"))))))
        except ValueError as err:
            raise LidcError(f"Expected integer xCoord/yCoord in every {points_tag} of the LIDC XML "
                            f"'{path}'. Received: {err}") from err
    z_text = _text(element, "imageZposition")
    try:
        z_mm = float(z_text) if z_text else None
    except ValueError as err:
        raise LidcError(f"Expected a number in imageZposition of the LIDC XML '{path}'. "
                        f"Received: imageZposition={z_text!r}") from err
    return Roi(z_mm=z_mm, sop_uid=_text(element, "imageSOP_UID"),
               inclusion=_text(element, "inclusion", "TRUE").upper() != "FALSE",
               points_xy=np.asarray(points, dtype=np.int64).reshape(-1, 2))


def _characteristics(element: ET.Element) -> dict[str, float]:
    found = _children(element, "characteristics")
    values: dict[str, float] = {}
    if found:
        for name in CHARACTERISTICS:
            text = _text(found[0], name)
            try:
                values[name] = float(text)
            except ValueError:
                continue
    return values


def read_series_uid(path: str | os.PathLike) -> str | None:
    """The ``SeriesInstanceUid`` of an LIDC CT reading XML; None for other XML (chest X-ray
    ``IdriReadMessage``). Raises LidcError for a file that is not well-formed XML."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as err:
        raise LidcError(f"Expected a well-formed LIDC XML file. Received: '{path}' ({err})") from err
    if _local(root.tag) != "LidcReadMessage":
        return None
    for header in _children(root, "ResponseHeader"):
        for child in header:
            if _local(child.tag).lower() == "seriesinstanceuid" and (child.text or "").strip():
                return child.text.strip()
    raise LidcError(f"Expected a SeriesInstanceUid in the ResponseHeader of the LIDC XML '{path}'. "
                    "Received: none")


def parse_lidc_xml(path: str | os.PathLike) -> LidcReading:
    """Parses an LIDC CT reading XML.

    Returns:
        A `LidcReading`: contoured nodules (`NoduleMark`) and single points (nodules < 3 mm
        and non-nodules, `PointMark`), readers named by ``servicingRadiologistID`` (or
        ``reader{n}`` when absent).

    Raises:
        LidcError: Not well-formed, not a CT reading (``LidcReadMessage``), no series UID,
            bad numbers (names the file).
    """
    path = Path(path)
    uid = read_series_uid(path)
    if uid is None:
        raise LidcError(f"Expected an LIDC CT reading (LidcReadMessage). Received: '{path}'")
    root = ET.parse(path).getroot()
    nodules, points = [], []
    sessions = _children(root, "readingSession")
    for number, session in enumerate(sessions, start=1):
        reader = _text(session, "servicingRadiologistID") or f"reader{number}"
        reader = f"{number}:{reader}"  # ids may repeat or be blank: keep sessions apart
        for element in _children(session, "unblindedReadNodule"):
            mark = NoduleMark(reader=reader, nodule_id=_text(element, "noduleID"),
                              characteristics=_characteristics(element),
                              rois=tuple(_roi(r, path=path) for r in _children(element, "roi")))
            if not mark.rois:
                continue
            if mark.is_point:
                points.append(PointMark(reader, "nodule<3mm", mark.nodule_id, mark.rois[0]))
            else:
                nodules.append(mark)
        for element in _children(session, "nonNodule"):
            points.append(PointMark(reader, "non-nodule", _text(element, "nonNoduleID"),
                                    _roi(element, path=path, points_tag="locus")))
    return LidcReading(path=path, series_uid=uid, nodules=tuple(nodules), points=tuple(points),
                       n_readers=len(sessions))


# --------------------------------------------------------------------------------------------
# Slices and contours
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SliceIndex:
    """Where each slice of a series lies: SOPInstanceUID -> k, and the z (mm) of each k."""

    by_sop: Mapping[str, int]
    z_mm: np.ndarray  # float (K,)

    def locate(self, roi: Roi, *, xml: Path) -> int:
        """The slice index k of a roi (SOP UID first, else z); LidcError when neither fits."""
        if roi.sop_uid in self.by_sop:
            return self.by_sop[roi.sop_uid]
        if roi.z_mm is not None:
            distance = np.abs(self.z_mm - roi.z_mm)
            k = int(np.argmin(distance))
            if distance[k] <= Z_TOLERANCE_MM:
                return k
        raise LidcError(
            f"Expected every roi of the LIDC XML '{xml}' on a slice of its series. Received: "
            f"imageZposition={roi.z_mm}, imageSOP_UID={roi.sop_uid!r}: no such slice (slices "
            f"at z {float(self.z_mm.min()):.2f} .. {float(self.z_mm.max()):.2f} mm)"
        )


def fill_contour(points_xy: np.ndarray, shape: Sequence[int], *, boundary: bool = True) -> np.ndarray:
    """Rasterises a closed contour on one slice.

    Args:
        points_xy: int ``(P, 2)`` vertices ``(x, y)`` = (column i, row j), in order.
        shape: ``(I, J)`` of the slice (columns, rows).
        boundary: True: the polygon with its boundary pixels (the segments between
            consecutive vertices, closed); False: only the pixels strictly inside (not on
            the boundary).

    Returns:
        bool ``(I, J)``; pixels outside the slice are dropped.
    """
    points = np.asarray(points_xy, dtype=np.int64).reshape(-1, 2)
    out = np.zeros(tuple(int(s) for s in shape), dtype=bool)
    if points.shape[0] == 0:
        return out
    edge = np.zeros_like(out)
    closed = np.vstack([points, points[:1]])
    for (x0, y0), (x1, y1) in zip(closed[:-1], closed[1:]):
        ii, jj = line(int(x0), int(y0), int(x1), int(y1))
        keep = (ii >= 0) & (ii < out.shape[0]) & (jj >= 0) & (jj < out.shape[1])
        edge[ii[keep], jj[keep]] = True
    if points.shape[0] >= 3:
        ii, jj = polygon(points[:, 0], points[:, 1], shape=out.shape)
        out[ii, jj] = True
    return out | edge if boundary else out & ~edge


@dataclasses.dataclass(frozen=True)
class Mark:
    """A reader's nodule rasterised: a bool sub-volume at ``offset`` of the series grid."""

    reader: str
    nodule_id: str
    characteristics: dict[str, float]
    offset: tuple[int, int, int]
    mask: np.ndarray

    @property
    def n_voxels(self) -> int:
        return int(np.count_nonzero(self.mask))

    def centroid_vox(self) -> np.ndarray:
        return np.argwhere(self.mask).mean(axis=0) + np.asarray(self.offset)


def rasterise(mark: NoduleMark, index: SliceIndex, shape: Sequence[int], *, xml: Path) -> Mark | None:
    """A reader's nodule as voxels: inclusion rois filled with their boundary, exclusion
    rois' interiors removed (per slice). None when no voxel remains."""
    shape = tuple(int(s) for s in shape)
    slices: dict[int, np.ndarray] = {}
    holes: dict[int, np.ndarray] = {}
    for roi in mark.rois:
        k = index.locate(roi, xml=xml)
        target = slices if roi.inclusion else holes
        filled = fill_contour(roi.points_xy, shape[:2], boundary=roi.inclusion)
        target[k] = target.get(k, np.zeros(shape[:2], bool)) | filled
    for k, hole in holes.items():
        if k in slices:
            slices[k] &= ~hole
    slices = {k: v for k, v in slices.items() if v.any()}
    if not slices:
        return None
    ks = sorted(slices)
    stack = np.zeros((*shape[:2], ks[-1] - ks[0] + 1), dtype=bool)
    for k in ks:
        stack[:, :, k - ks[0]] = slices[k]
    ii, jj = np.nonzero(stack.any(axis=2))
    box = stack[ii.min():ii.max() + 1, jj.min():jj.max() + 1]
    return Mark(mark.reader, mark.nodule_id, dict(mark.characteristics),
                (int(ii.min()), int(jj.min()), ks[0]), box)


# --------------------------------------------------------------------------------------------
# Grouping and consensus
# --------------------------------------------------------------------------------------------


def _overlap(a: Mark, b: Mark) -> int:
    low = np.maximum(a.offset, b.offset)
    high = np.minimum(np.add(a.offset, a.mask.shape), np.add(b.offset, b.mask.shape))
    if np.any(high <= low):
        return 0
    sa = tuple(slice(lo - o, hi - o) for lo, hi, o in zip(low, high, a.offset))
    sb = tuple(slice(lo - o, hi - o) for lo, hi, o in zip(low, high, b.offset))
    return int(np.count_nonzero(a.mask[sa] & b.mask[sb]))


def group_marks(marks: Sequence[Mark], affine: np.ndarray) -> list[list[int]]:
    """Groups readers' marks into physical nodules (rules in the module docstring).

    Args:
        marks: The rasterised marks of all readers of a series.
        affine: ``(4, 4)`` voxel -> world affine of the grid (for distances in mm).

    Returns:
        Lists of indices into ``marks``, each with at most one mark per reader, sorted by
        their first index.
    """
    affine = np.asarray(affine, dtype=np.float64)
    voxel_mm3 = abs(float(np.linalg.det(affine[:3, :3])))
    centres = [affine[:3, :3] @ m.centroid_vox() + affine[:3, 3] for m in marks]
    radii = [equivalent_diameter_mm(m.n_voxels * voxel_mm3) / 2 for m in marks]
    links = []
    for a in range(len(marks)):
        for b in range(a + 1, len(marks)):
            if marks[a].reader == marks[b].reader:
                continue
            shared = _overlap(marks[a], marks[b])
            distance = float(np.linalg.norm(centres[a] - centres[b]))
            if shared > 0 or distance <= radii[a] + radii[b]:
                links.append((-shared, distance, a, b))
    parent = list(range(len(marks)))
    readers = [{m.reader} for m in marks]

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for _, _, a, b in sorted(links):
        ra, rb = root(a), root(b)
        if ra != rb and not (readers[ra] & readers[rb]):
            parent[rb] = ra
            readers[ra] |= readers[rb]
    groups: dict[int, list[int]] = {}
    for i in range(len(marks)):
        groups.setdefault(root(i), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


def consensus_mask(marks: Sequence[Mark], *, consensus: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """Voxels marked by at least ``consensus`` of the given marks (one per reader).

    Returns:
        ``(offset, mask)``: bool mask over the marks' joint bounding box.
    """
    if not 0.0 < consensus <= 1.0:
        raise ValueError(f"Expected --consensus in (0, 1]. Received: --consensus={consensus}")
    low = np.min([m.offset for m in marks], axis=0)
    high = np.max([np.add(m.offset, m.mask.shape) for m in marks], axis=0)
    count = np.zeros(tuple(high - low), dtype=np.int32)
    for m in marks:
        start = np.subtract(m.offset, low)
        count[tuple(slice(s, s + n) for s, n in zip(start, m.mask.shape))] += m.mask
    needed = consensus * len(marks) - 1e-9
    return tuple(int(v) for v in low), count >= needed


# --------------------------------------------------------------------------------------------
# One series
# --------------------------------------------------------------------------------------------

NODULE_COLUMNS = ("case_id", "nodule_id", "centre_x_mm", "centre_y_mm", "centre_z_mm", "diameter_mm",
                  "volume_mm3", "n_readers", "readers", "in_mask", *CHARACTERISTICS)
"""Columns of ``nodules.csv`` (centre: RAS world mm of the consensus mask's centroid)."""

POINT_COLUMNS = ("case_id", "reader", "kind", "mark_id", "centre_x_mm", "centre_y_mm",
                 "centre_z_mm", "slice_k")
"""Columns of ``small_and_non_nodules.csv`` (nodules < 3 mm and non-nodules; never masked)."""


def _world(affine: np.ndarray, voxel: np.ndarray) -> list[float]:
    return [round(float(v), 4) for v in affine[:3, :3] @ voxel + affine[:3, 3]]


def build_case(reading: LidcReading, index: SliceIndex, *, shape: Sequence[int], affine: np.ndarray,
               case_id: str, consensus: float = 0.5, min_readers: int = 1) -> dict:
    """The label mask and tables of one series.

    Args:
        reading: The parsed XML.
        index: Where the series' slices are (`SliceIndex`).
        shape: Source shape ``(I, J, K)`` of the series (DICOM reader order).
        affine: Its ``(4, 4)`` source voxel -> RAS affine.
        case_id: Written in the tables.
        consensus: Fraction of a nodule's readers that must mark a voxel, in (0, 1].
        min_readers: Nodules marked by fewer readers stay out of the mask (``in_mask`` 0).

    Returns:
        ``{"mask": uint8 (I, J, K), "nodules": rows of NODULE_COLUMNS, "points": rows of
        POINT_COLUMNS}``; nodules in the order of their first mark in the XML.

    Raises:
        LidcError: A roi on a slice the series does not have (names the XML).
        ValueError: Bad ``consensus`` / ``min_readers``.
    """
    check_int(min_readers, name="--min-readers", minimum=1)
    if not 0.0 < consensus <= 1.0:
        raise ValueError(f"Expected --consensus in (0, 1]. Received: --consensus={consensus}")
    shape = tuple(int(s) for s in shape)
    affine = np.asarray(affine, dtype=np.float64)
    voxel_mm3 = abs(float(np.linalg.det(affine[:3, :3])))
    marks = [m for m in (rasterise(n, index, shape, xml=reading.path) for n in reading.nodules)
             if m is not None]
    points = [{"case_id": case_id, "reader": p.reader, "kind": p.kind, "mark_id": p.mark_id,
               **dict(zip(("centre_x_mm", "centre_y_mm", "centre_z_mm"),
                          _world(affine, np.array([*p.roi.points_xy[0], k], float)))),
               "slice_k": k}
              for p in reading.points if p.roi.points_xy.shape[0]
              for k in [index.locate(p.roi, xml=reading.path)]]
    mask = np.zeros(shape, dtype=np.uint8)
    rows = []
    for number, group in enumerate(group_marks(marks, affine), start=1):
        members = [marks[i] for i in group]
        offset, agreed = consensus_mask(members, consensus=consensus)
        in_mask = len(members) >= min_readers and agreed.any()
        if in_mask:
            box = tuple(slice(o, o + n) for o, n in zip(offset, agreed.shape))
            mask[box] |= agreed.astype(np.uint8)
        centre = np.argwhere(agreed).mean(axis=0) + offset if agreed.any() else \
            np.mean([m.centroid_vox() for m in members], axis=0)
        n_voxels = int(np.count_nonzero(agreed))
        medians = {name: float(np.median(values)) for name in CHARACTERISTICS
                   for values in [[m.characteristics[name] for m in members if name in m.characteristics]]
                   if values}
        rows.append({"case_id": case_id, "nodule_id": number,
                     **dict(zip(("centre_x_mm", "centre_y_mm", "centre_z_mm"), _world(affine, centre))),
                     "diameter_mm": round(equivalent_diameter_mm(n_voxels * voxel_mm3), 4),
                     "volume_mm3": round(n_voxels * voxel_mm3, 4), "n_readers": len(members),
                     "readers": ";".join(m.reader for m in members), "in_mask": int(in_mask),
                     **medians})
    return {"mask": mask, "nodules": rows, "points": points}
