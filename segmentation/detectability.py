"""Detectability probe: which nodule sizes and contrasts a trained model can see.

A contrast-detail test, as CT quality assurance does with a contrast-detail phantom, but
run on the user's own scans: nodules of known kind, diameter and contrast are painted into
the lung parenchyma of real (or phantom) scans, the model segments the painted scans, and
each painted nodule is found or missed. The detection rate per cell (kind x diameter x
contrast) tells what lesion recall on a dataset cannot: whether a missed ground-glass
nodule was missed because it was faint, small, or of its kind, with every other property
of the scan held fixed.

This module is the NumPy core (the plan, the painting, the scoring and the table);
`pipelines.detectability` runs the model and writes the outputs.

* Painting: `segmentation.synthetic_nodules.insert_nodules` with the cell's kind and
  diameter, ellipsoid shape and one contrast: ``contrast_hu`` above the local parenchyma
  (median of the lung voxels below -500 HU around it). Solid: the nodule's voxels become
  parenchyma + contrast (plus noise of the local level); ground-glass: the contrast is
  *added* (vessels and noise under it stay); part-solid: added ground glass with a core of
  parenchyma + `PART_SOLID_CORE_HU`.
* Placement: each nodule goes into a box (twice its diameter plus 8 mm) around a random
  lung voxel that is at least half lung, at
  least ``gap_mm`` away from every truth lesion and every nodule painted before it, so that
  one nodule never helps or hides another, and into parenchyma only (no voxel it changes
  touches a vessel or the chest wall, i.e. anything at or above -500 HU): the probe
  measures isolated intraparenchymal nodules, and juxtavascular or juxtapleural ones are
  harder than its curve.
* Scoring: a painted nodule is detected when the model's mask (after its threshold and
  minimum size) overlaps it (the "overlap" match of ``lungseg evaluate``); its maximum
  probability is kept beside.

The painter is the one of ``augment.synthetic_nodules``: a model trained with it has seen
such nodules, so for it the curve is an upper bound of what it does on real lesions of the
same size and contrast.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from segmentation.phantom import NODULE_KINDS
from segmentation.synthetic_nodules import SyntheticNoduleSpec, insert_nodules
from segmentation.validation import check_float, check_int

__all__ = ["PART_SOLID_CORE_HU", "ProbeCell", "probe_cells", "assign_cells", "paint_probe_nodules",
           "score_probe", "summarise_probe", "wilson_interval", "PROBE_COLUMNS"]

PART_SOLID_CORE_HU = 850.0  # the core of a part-solid nodule, above the parenchyma
_PARENCHYMA_BELOW_HU = -500.0  # lung voxels below it are parenchyma (level and noise)
_MIN_LUNG_SHARE = 0.5  # a placement box must be at least this much lung
_ATTEMPTS_PER_NODULE = 100

PROBE_COLUMNS = ("case_id", "nodule_id", "kind", "diameter_mm", "contrast_hu", "painted",
                 "x_mm", "y_mm", "z_mm", "n_voxels", "parenchyma_hu", "mean_hu",
                 "max_probability", "detected")


@dataclasses.dataclass(frozen=True)
class ProbeCell:
    """One cell of the probe: a nodule kind, a nominal diameter and a contrast.

    Attributes:
        kind: One of ``NODULE_KINDS``.
        diameter_mm: Nominal diameter (sphere of equal volume), mm.
        contrast_hu: Intensity above the local parenchyma, HU (added for ground glass).
    """

    kind: str
    diameter_mm: float
    contrast_hu: float


def probe_cells(*, kinds: Sequence[str], diameters_mm: Sequence[float],
                contrasts_hu: Sequence[float]) -> list[ProbeCell]:
    """Every combination of ``kinds`` x ``diameters_mm`` x ``contrasts_hu``, checked.

    Raises:
        ValueError: An unknown kind, an empty list, a duplicate, a diameter outside
            (0, 100] mm or a contrast outside (0, 2000] HU (names the argument and value).
        TypeError: A diameter or contrast that is not a number.
    """
    kinds = list(kinds)
    if not kinds or any(k not in NODULE_KINDS for k in kinds) or len(set(kinds)) != len(kinds):
        raise ValueError(f"Expected kinds to be distinct values of {list(NODULE_KINDS)}. "
                         f"Received: kinds={kinds!r}")
    values = {}
    for name, seq, top in (("diameters_mm", diameters_mm, 100.0), ("contrasts_hu", contrasts_hu, 2000.0)):
        seq = [check_float(v, name=name, minimum=0.0, maximum=top, low_open=True) for v in seq]
        if not seq or len(set(seq)) != len(seq):
            raise ValueError(f"Expected {name} to be a non-empty list of distinct numbers. "
                             f"Received: {name}={seq!r}")
        values[name] = seq
    return [ProbeCell(k, d, c) for k in kinds for d in values["diameters_mm"] for c in values["contrasts_hu"]]


def assign_cells(cells: Sequence[ProbeCell], *, per_cell: int, n_scans: int,
                 rng: np.random.Generator) -> list[list[ProbeCell]]:
    """Spreads ``per_cell`` nodules of every cell over ``n_scans`` scans.

    The ``per_cell * len(cells)`` nodules are shuffled and dealt round-robin, so every scan
    gets about the same number and every cell lands in several scans.

    Returns:
        ``n_scans`` lists of cells (the nodules to paint into each scan, in order).
    """
    check_int(per_cell, name="per_cell", minimum=1)
    check_int(n_scans, name="n_scans", minimum=1)
    todo = [cell for cell in cells for _ in range(per_cell)]
    order = rng.permutation(len(todo))
    plan: list[list[ProbeCell]] = [[] for _ in range(n_scans)]
    for slot, index in enumerate(order):
        plan[slot % n_scans].append(todo[int(index)])
    return plan


def _spec(cell: ProbeCell) -> SyntheticNoduleSpec:
    weights = tuple(1.0 if k == cell.kind else 0.0 for k in NODULE_KINDS)
    solid = cell.contrast_hu if cell.kind == "solid" else PART_SOLID_CORE_HU
    return SyntheticNoduleSpec(enabled=True, probability=1.0, max_count=1,
                               diameter_mm=(cell.diameter_mm, cell.diameter_mm), kind_weights=weights,
                               shape_weights=(1.0, 0.0, 0.0), solid_delta_hu=(solid, solid),
                               ground_glass_delta_hu=(cell.contrast_hu, cell.contrast_hu))


def paint_probe_nodules(image_hu: np.ndarray, *, lung: np.ndarray, avoid: np.ndarray | None,
                        spacing_mm: Sequence[float], affine: np.ndarray, cells: Sequence[ProbeCell],
                        rng: np.random.Generator, case_id: str, box_mm: float | None = None,
                        gap_mm: float = 10.0) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Paints one nodule per cell into a scan's lungs, each apart from the others.

    Args:
        image_hu: float ``(I, J, K)`` CT in HU, cranio-caudal axis last (not changed).
        lung: bool ``(I, J, K)`` lung region (`segmentation.lungmask.lung_region`).
        avoid: Optional ``(I, J, K)`` truth (> 0 is a lesion) to stay ``gap_mm`` away from.
        spacing_mm: Voxel spacing of the three axes, mm.
        affine: (4, 4) voxel -> world (mm) affine, for the centres in the table.
        cells: The nodules to paint, in order.
        rng: Generator for positions, shapes and noise.
        case_id: Written into every row.
        box_mm: Edge of the box a nodule is placed in (larger than the largest diameter);
            None: twice the largest diameter plus 8 mm.
        gap_mm: Minimum distance between painted nodules and from the truth.

    Returns:
        ``(image float32, labels int32, rows)``: the painted image, the painted nodules
        labelled ``1..n`` (0 elsewhere), and one row per cell (`PROBE_COLUMNS` up to
        ``mean_hu``; ``painted`` False with empty values where no place was found).

    Raises:
        ValueError: Arrays of different shapes, a non-3D image, or ``box_mm`` not above
            every cell's diameter (names the argument).
    """
    image = np.array(image_hu, dtype=np.float32)
    lung = np.asarray(lung, bool)
    if image.ndim != 3 or lung.shape != image.shape or (avoid is not None and np.shape(avoid) != image.shape):
        raise ValueError("Expected image_hu, lung and avoid of one 3D shape. Received: "
                         f"image_hu.shape={image.shape}, lung.shape={lung.shape}, "
                         f"avoid.shape={None if avoid is None else np.shape(avoid)}")
    spacing = np.asarray([check_float(s, name="spacing_mm", minimum=0.0, low_open=True) for s in spacing_mm])
    check_float(gap_mm, name="gap_mm", minimum=0.0)
    largest = max((c.diameter_mm for c in cells), default=0.0)
    box_mm = 2.0 * largest + 8.0 if box_mm is None else box_mm
    if not check_float(box_mm, name="box_mm", minimum=0.0) > largest + 2 * float(spacing.max()):
        raise ValueError(f"Expected box_mm above the largest diameter ({largest} mm) plus two voxels. "
                         f"Received: box_mm={box_mm}")
    half = np.maximum(np.ceil(box_mm / 2.0 / spacing).astype(int), 2)
    gap_vox = np.maximum(np.ceil(gap_mm / spacing).astype(int), 1)
    taken = np.zeros(image.shape, bool)
    if avoid is not None and np.any(avoid):
        lesions = np.asarray(avoid) > 0
        hull = ndi.find_objects(lesions.astype(np.uint8))[0]
        _grow_into(taken, hull, lesions[hull], gap_vox=gap_vox, gap_mm=gap_mm, spacing=spacing)
    labels = np.zeros(image.shape, np.int32)
    # box centres: lung voxels far enough from the scan border for a whole box, on a grid of
    # about 3 mm (a 512 x 512 x 300 scan's lungs would otherwise be millions of candidates)
    step = np.maximum(np.round(3.0 / spacing).astype(int), 1)
    grid = tuple(slice(h, n - h, t) for h, n, t in zip(half, image.shape, step))
    candidates = np.argwhere(lung[grid]) * step + np.array([g.start for g in grid])
    rows = []
    for cell in cells:
        row = {"case_id": case_id, "nodule_id": 0, "kind": cell.kind, "diameter_mm": cell.diameter_mm,
               "contrast_hu": cell.contrast_hu, "painted": False}
        placed = _place(image, lung, taken, candidates, half=half, cell=cell, rng=rng, spacing=spacing)
        if placed is not None:
            box, nodule, parenchyma = placed
            nodule_id = int(labels.max()) + 1
            labels[box][nodule] = nodule_id
            _grow_into(taken, box, nodule, gap_vox=gap_vox, gap_mm=gap_mm, spacing=spacing)
            centre = np.argwhere(nodule).mean(axis=0) + [b.start for b in box]
            world = np.asarray(affine, float)[:3, :3] @ centre + np.asarray(affine, float)[:3, 3]
            row.update(nodule_id=nodule_id, painted=True, x_mm=float(world[0]), y_mm=float(world[1]),
                       z_mm=float(world[2]), n_voxels=int(nodule.sum()), parenchyma_hu=parenchyma,
                       mean_hu=float(image[box][nodule].mean()))
        rows.append(row)
    return image, labels, rows


def _grow_into(taken: np.ndarray, box: tuple[slice, ...], nodule: np.ndarray, *, gap_vox: np.ndarray,
               gap_mm: float, spacing: np.ndarray) -> None:
    """Marks every voxel within ``gap_mm`` of ``nodule`` (given inside ``box``) in ``taken``."""
    outer = tuple(slice(max(b.start - g, 0), min(b.stop + g, n))
                  for b, g, n in zip(box, gap_vox, taken.shape))
    local = np.zeros(tuple(o.stop - o.start for o in outer), bool)
    local[tuple(slice(b.start - o.start, b.stop - o.start) for b, o in zip(box, outer))] = nodule
    taken[outer] |= ndi.distance_transform_edt(~local, sampling=spacing) <= gap_mm


def _place(image: np.ndarray, lung: np.ndarray, taken: np.ndarray, candidates: np.ndarray, *,
           half: np.ndarray, cell: ProbeCell, rng: np.random.Generator,
           spacing: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray, float] | None:
    """Paints ``cell`` into ``image`` in place; the box, the nodule mask in it and the level."""
    if len(candidates) == 0:
        return None
    spec = _spec(cell)
    for _ in range(_ATTEMPTS_PER_NODULE):
        centre = candidates[int(rng.integers(len(candidates)))]
        box = tuple(slice(int(c - h), int(c + h)) for c, h in zip(centre, half))
        lung_box = lung[box]
        if lung_box.mean() < _MIN_LUNG_SHARE:
            continue
        crop = image[box]
        # not on or beside a vessel or the wall: the contrast is then the nodule's alone
        forbidden = taken[box] | ndi.binary_dilation(crop >= _PARENCHYMA_BELOW_HU)
        parenchyma = lung_box & ~forbidden & (crop < _PARENCHYMA_BELOW_HU)
        if not parenchyma.any():
            continue
        new, mask, n_painted = insert_nodules(crop, forbidden.astype(np.uint8), lung_box, spec=spec, rng=rng,
                                              spacing_mm=spacing, units_per_hu=1.0,
                                              parenchyma_level=_PARENCHYMA_BELOW_HU)
        nodule = (mask > 0) & ~forbidden
        if n_painted != 1 or not nodule.any():
            continue
        image[box] = new
        return box, nodule, float(np.median(crop[parenchyma]))
    return None


def score_probe(rows: Sequence[dict], *, labels: np.ndarray, mask: np.ndarray,
                probs: np.ndarray) -> list[dict]:
    """Adds ``max_probability`` and ``detected`` to every painted row.

    Args:
        rows: The rows of `paint_probe_nodules` (``nodule_id`` indexes ``labels``).
        labels: int ``(I, J, K)`` painted nodules.
        mask: ``(I, J, K)`` the model's mask (> 0 is foreground), same grid.
        probs: float ``(I, J, K)`` the model's probabilities, same grid.

    Returns:
        New rows; unpainted rows get empty values.

    Raises:
        ValueError: Arrays of different shapes (names them).
    """
    labels, mask, probs = np.asarray(labels), np.asarray(mask) > 0, np.asarray(probs)
    if not labels.shape == mask.shape == probs.shape:
        raise ValueError("Expected labels, mask and probs of one shape. Received: "
                         f"labels.shape={labels.shape}, mask.shape={mask.shape}, probs.shape={probs.shape}")
    n = int(labels.max(initial=0))
    index = np.arange(1, n + 1)
    max_prob = ndi.maximum(probs, labels, index) if n else []
    hits = ndi.maximum(mask.astype(np.uint8), labels, index) if n else []
    out = []
    for row in rows:
        row = dict(row)
        if row.get("painted"):
            i = int(row["nodule_id"]) - 1
            row.update(max_probability=float(max_prob[i]), detected=bool(hits[i]))
        out.append(row)
    return out


def wilson_interval(successes: int, n: int, *, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion (95 % by default); (nan, nan) for n = 0."""
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def summarise_probe(rows: Sequence[dict], *, cells: Sequence[ProbeCell]) -> dict[str, Any]:
    """Detection rate per cell and per kind, and the faintest contrast seen per size.

    Returns:
        ``{"cells": [{"kind", "diameter_mm", "contrast_hu", "planned", "painted",
        "detected", "detection_rate", "interval_95"}...], "by_kind": {kind: {"painted",
        "detected", "detection_rate"}}, "contrast_50_hu": {kind: {diameter: the lowest
        contrast whose rate is >= 0.5 and stays so at every higher contrast, or None}},
        "planned", "painted", "detected"}``. Rates are None for a cell with nothing painted.
    """
    table = []
    for cell in cells:
        mine = [r for r in rows if (r["kind"], r["diameter_mm"], r["contrast_hu"]) ==
                (cell.kind, cell.diameter_mm, cell.contrast_hu)]
        painted = [r for r in mine if r.get("painted")]
        hits = sum(bool(r.get("detected")) for r in painted)
        low, high = wilson_interval(hits, len(painted))
        table.append({"kind": cell.kind, "diameter_mm": cell.diameter_mm, "contrast_hu": cell.contrast_hu,
                      "planned": len(mine), "painted": len(painted), "detected": hits,
                      "detection_rate": hits / len(painted) if painted else None,
                      "interval_95": [low, high] if painted else None})
    by_kind, contrast_50 = {}, {}
    for kind in dict.fromkeys(c.kind for c in cells):
        mine = [t for t in table if t["kind"] == kind]
        painted, hits = sum(t["painted"] for t in mine), sum(t["detected"] for t in mine)
        by_kind[kind] = {"painted": painted, "detected": hits,
                         "detection_rate": hits / painted if painted else None}
        contrast_50[kind] = {}
        for diameter in dict.fromkeys(t["diameter_mm"] for t in mine):
            curve = sorted((t for t in mine if t["diameter_mm"] == diameter), key=lambda t: t["contrast_hu"])
            found = None
            for t in reversed(curve):
                if t["detection_rate"] is None or t["detection_rate"] < 0.5:
                    break
                found = t["contrast_hu"]
            contrast_50[kind][str(diameter)] = found
    return {"cells": table, "by_kind": by_kind, "contrast_50_hu": contrast_50,
            "planned": len(rows), "painted": sum(bool(r.get("painted")) for r in rows),
            "detected": sum(bool(r.get("detected")) for r in rows)}
