"""Synthetic chest CT phantoms with lung-nodule masks, written as an MSD-layout dataset.

A phantom case is built in world millimetres, in canonical RAS+ voxel order, layer by layer:
air outside the body, subcutaneous fat, chest-wall muscle, ribs, sternum and spine, the
mediastinum (fat, heart, aorta, oesophagus, trachea), the abdomen below the diaphragm, two
textured lungs, branching pulmonary vessel trees (about 10 mm tapering to 1 mm) and bronchial
trees, and 0 to 5 nodules (solid, part-solid or ground-glass; round to lobulated; some touching
the pleura or a vessel). CT-like correlated noise and a mild point-spread blur come last. The
array is then stored in a randomly drawn source orientation (RAS, LPS, flipped and permuted
axes) with the matching affine, so reading it back with nibabel canonicalisation gives the
anatomy upright.

Everything is a pure function of the seed. The anatomy is drawn in units of the in-plane field
of view, so the same seed at another size or spacing gives the same chest, scaled; vessel and
nodule sizes are absolute millimetres.

Coordinates: ``size`` and ``spacing_mm`` are given in canonical order ``(I, J, K)`` =
(right-left, anterior-posterior, cranio-caudal); the slice axis ``K`` is the coarse one. World
coordinates in ``nodules.json`` are RAS+ millimetres (NIfTI / nibabel convention; negate x and y
for LPS / ITK coordinates).
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import nibabel as nib
import numpy as np
from nibabel import orientations as nio
from scipy import ndimage

from segmentation.dataset import INCOMPLETE_MARKER
from segmentation.io import atomic_write
from segmentation.validation import check_float, check_int

logger = logging.getLogger(__name__)

DEFAULT_SIZE: tuple[int, int, int] = (256, 256, 160)
MIN_SIZE = 16
MAX_SIZE = 1024
MIN_SPACING_MM = 0.1
MAX_SPACING_MM = 10.0
MIN_FOV_INPLANE_MM = 100.0
MAX_FOV_INPLANE_MM = 700.0
MIN_FOV_SLICE_MM = 30.0
MAX_NODULES = 10
KERNELS = {"standard": 1.0, "sharp": 0.5, "smooth": 1.6}
"""Reconstruction kernels of `generate_case`: factor on the point-spread function's width."""
MIN_NODULE_VOXELS = 4
NODULE_KINDS: tuple[str, ...] = ("solid", "part_solid", "ground_glass")
NODULE_LOCATIONS: tuple[str, ...] = ("intraparenchymal", "juxtapleural", "juxtavascular")

# Tissue classes of `PhantomCase.tissue` (ground truth for tests and debugging, not written).
AIR, FAT, SOFT_TISSUE, BONE, LUNG, VESSEL, AIRWAY_LUMEN, AIRWAY_WALL = 0, 1, 2, 3, 4, 5, 6, 7
NODULE_SOLID, NODULE_SUBSOLID = 8, 9
TISSUE_LABELS: dict[int, str] = {
    AIR: "air", FAT: "fat", SOFT_TISSUE: "soft_tissue", BONE: "bone", LUNG: "lung",
    VESSEL: "vessel", AIRWAY_LUMEN: "airway_lumen", AIRWAY_WALL: "airway_wall",
    NODULE_SOLID: "nodule_solid", NODULE_SUBSOLID: "nodule_subsolid",
}

_REF_SIZE_INPLANE = 256
_REF_FOV_MM = 350.0            # adult reference field of view the anatomy constants are drawn for
_HU_AIR, _HU_FAT, _HU_SOFT, _HU_LIVER = -1000.0, -100.0, 40.0, 55.0
_HU_LUNG, _HU_VESSEL, _HU_AIRWAY_WALL, _HU_DISC = -860.0, 40.0, 30.0, 80.0
_HU_CORTEX, _HU_MARROW = 900.0, 450.0
_HU_MIN, _HU_MAX = -1024, 3071
_CASE_PATTERN = re.compile(r"^phantom_(test_)?\d+\.nii\.gz$")
_SPLIT_CODES = {"train": 0, "test": 1}
GENERATOR_VERSION = "1"


@dataclass(frozen=True)
class PhantomCase:
    """One synthetic chest CT.

    Attributes:
        image_hu: int16 ndarray of shape `source_shape`, HU, in the source orientation.
        mask: uint8 ndarray, same shape, 1 inside nodules, 0 elsewhere.
        affine: float64 ndarray of shape (4, 4), source voxel -> world RAS+ mm.
        nodules: one dict per nodule (keys documented in `generate_case`).
        tissue: uint8 ndarray, same shape, tissue class per voxel (see `TISSUE_LABELS`).
        spacing_mm: voxel size in canonical (I, J, K) order.
        axcodes: source orientation, e.g. ("L", "P", "S").
        seed: the seed the case was generated from.
    """

    image_hu: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    nodules: list[dict[str, Any]]
    tissue: np.ndarray
    spacing_mm: tuple[float, float, float]
    axcodes: tuple[str, str, str]
    seed: int


@dataclass(frozen=True)
class _Anatomy:
    """Anatomy parameters in anatomy-centred mm (x right, y anterior, z superior, carina at 0)."""

    scale: float
    body_ax: float
    body_ay: float
    fat_mm: float
    muscle_mm: float
    pleura_ax: float
    pleura_ay: float
    rib_pitch: float
    rib_top: float
    rib_drop: float
    rib_half_h: float
    rib_half_t: float
    rib_offset: float
    cartilage_x: float
    spine_y: float
    spine_r: float
    med_ant: float
    med_mid: float
    med_sup: float
    heart_c: tuple[float, float, float]
    heart_r: tuple[float, float, float]
    aorta_r: float
    aorta_asc: tuple[float, float]
    aorta_desc: tuple[float, float]
    aorta_z_arch: float
    eso: tuple[float, float, float]
    trachea: tuple[float, float, float]
    dome_z: tuple[float, float]
    dome_depth: float
    apex_z: float
    taper_z: float
    lung_hu: float
    noise_hu: float

    @property
    def lung_z_range(self) -> tuple[float, float]:
        low = min(self.dome_z) - 1.2 * self.dome_depth
        return low, self.apex_z


# --------------------------------------------------------------------------- validation


def _check_size(size: Sequence[int] | None) -> tuple[int, int, int]:
    if size is None:
        return DEFAULT_SIZE
    message = (f"Expected size to be 3 ints (I, J, K) in [{MIN_SIZE}, {MAX_SIZE}]. "
               f"Received: size={size!r}")
    if isinstance(size, (str, bytes)) or not isinstance(size, Sequence) or len(size) != 3:
        raise ValueError(message)
    if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) for s in size):
        raise ValueError(message)
    if any(not MIN_SIZE <= int(s) <= MAX_SIZE for s in size):
        raise ValueError(message)
    return int(size[0]), int(size[1]), int(size[2])


def _check_spacing(spacing_mm: Sequence[float] | None) -> tuple[float, float, float] | None:
    if spacing_mm is None:
        return None
    message = (f"Expected spacing_mm to be 3 finite numbers in [{MIN_SPACING_MM}, "
               f"{MAX_SPACING_MM}] mm. Received: spacing_mm={spacing_mm!r}")
    if (isinstance(spacing_mm, (str, bytes)) or not isinstance(spacing_mm, Sequence)
            or len(spacing_mm) != 3):
        raise ValueError(message)
    try:
        values = tuple(float(s) for s in spacing_mm)
    except (TypeError, ValueError):
        raise ValueError(message) from None
    if any(isinstance(s, bool) for s in spacing_mm) or not all(
            math.isfinite(v) and MIN_SPACING_MM <= v <= MAX_SPACING_MM for v in values):
        raise ValueError(message)
    return values  # type: ignore[return-value]


def _check_fov(size: tuple[int, int, int], spacing_mm: tuple[float, float, float]) -> None:
    fov = [n * s for n, s in zip(size, spacing_mm)]
    inplane = min(fov[0], fov[1])
    if not MIN_FOV_INPLANE_MM <= inplane <= MAX_FOV_INPLANE_MM or fov[2] < MIN_FOV_SLICE_MM:
        raise ValueError(
            f"Expected a field of view size * spacing_mm of [{MIN_FOV_INPLANE_MM:g}, "
            f"{MAX_FOV_INPLANE_MM:g}] mm in-plane and >= {MIN_FOV_SLICE_MM:g} mm along the "
            f"slices. Received: size={size}, spacing_mm={spacing_mm} "
            f"(field of view {fov[0]:.0f} x {fov[1]:.0f} x {fov[2]:.0f} mm)")


# --------------------------------------------------------------------------- drawing


def _draw_spacing(rng: np.random.Generator, size: tuple[int, int, int]) -> tuple[float, ...]:
    """Draws a spacing that keeps the default in-plane field of view at any size.

    In-plane 0.6 to 0.9 mm and slices 1 to 2.5 mm at the default size; smaller sizes get
    proportionally coarser in-plane voxels and slices at least as coarse as the in-plane ones.
    """
    inplane = rng.uniform(0.6, 0.9)
    slice_mm = rng.uniform(1.0, 2.5)
    ratio = rng.uniform(1.0, 1.3)
    si = inplane * _REF_SIZE_INPLANE / size[0]
    sj = inplane * _REF_SIZE_INPLANE / size[1]
    sk = max(slice_mm, max(si, sj) * ratio)
    return round(si, 4), round(sj, 4), round(sk, 4)


def _draw_axcodes(rng: np.random.Generator) -> tuple[str, str, str]:
    """RAS or LPS half of the time; otherwise any flip, in-plane swap or slice-first order."""
    draw = rng.random()
    lr, ap = rng.choice(["R", "L"]), rng.choice(["A", "P"])
    si = rng.choice(["S", "I"], p=[0.7, 0.3])
    swap, slice_first = rng.random() < 0.25, rng.random() < 0.2
    if draw < 0.25:
        return "R", "A", "S"
    if draw < 0.5:
        return "L", "P", "S"
    inplane = [str(ap), str(lr)] if swap else [str(lr), str(ap)]
    codes = [str(si), *inplane] if slice_first else [*inplane, str(si)]
    return codes[0], codes[1], codes[2]


def _draw_anatomy(rng: np.random.Generator, fov_inplane_mm: float) -> _Anatomy:
    """Draws the chest; lengths are adult reference mm times `scale` (fits the field of view)."""
    s = fov_inplane_mm / _REF_FOV_MM
    u = rng.uniform
    body_ax = u(140, 155) * s
    body_ay = body_ax * u(0.66, 0.78)
    fat, muscle = u(6, 22) * s, u(8, 14) * s
    rib_band = 11 * s
    pleura_ax, pleura_ay = body_ax - fat - muscle - rib_band, body_ay - fat - muscle - rib_band
    spine_r = u(16, 19) * s
    spine_y = -pleura_ay + 0.35 * spine_r
    apex_z = u(95, 115) * s
    dome_r = -u(100, 120) * s
    dome_l = dome_r - u(10, 20) * s
    heart_r = (u(50, 62) * s, u(40, 50) * s, u(45, 55) * s)
    heart_c = (-u(15, 28) * s, u(0.1, 0.3) * pleura_ay, dome_l + 0.8 * heart_r[2])
    aorta_r = u(11, 14) * s
    aorta_asc = (u(8, 15) * s, heart_c[1] + 0.3 * heart_r[1])
    aorta_desc = (-(0.6 * spine_r + aorta_r + 2 * s), spine_y + 0.7 * spine_r)
    eso = (-4 * s, spine_y + spine_r + 9 * s, 6 * s)
    trachea_r = u(8, 10) * s
    trachea = (0.0, eso[1] + eso[2] + trachea_r + 3 * s, trachea_r)
    return _Anatomy(
        scale=s, body_ax=body_ax, body_ay=body_ay, fat_mm=fat, muscle_mm=muscle,
        pleura_ax=pleura_ax, pleura_ay=pleura_ay,
        rib_pitch=u(24, 28) * s, rib_top=apex_z - u(0.0, 0.3) * 26 * s,
        rib_drop=u(1.0, 1.4) * 26 * s, rib_half_h=u(5.0, 6.5) * s, rib_half_t=u(3.0, 4.0) * s,
        rib_offset=5.5 * s, cartilage_x=u(25, 40) * s,
        spine_y=spine_y, spine_r=spine_r,
        med_ant=u(6, 12) * s, med_mid=u(13, 17) * s, med_sup=u(8, 14) * s,
        heart_c=heart_c, heart_r=heart_r, aorta_r=aorta_r, aorta_asc=aorta_asc,
        aorta_desc=aorta_desc, aorta_z_arch=u(30, 45) * s, eso=eso, trachea=trachea,
        dome_z=(dome_r, dome_l), dome_depth=u(55, 75) * s,
        apex_z=apex_z, taper_z=apex_z - u(50, 70) * s,
        lung_hu=_HU_LUNG + u(-25, 25), noise_hu=u(12, 35),
    )


# --------------------------------------------------------------------------- implicit anatomy


def _dome_z(a: _Anatomy, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Diaphragm height under each lung (right dome for x >= 0), deepest posterolaterally."""
    xd, yd = 0.45 * a.pleura_ax, 0.15 * a.pleura_ay
    q = ((np.abs(x) - xd) / (0.8 * a.pleura_ax)) ** 2 + ((y - yd) / a.pleura_ay) ** 2
    return np.where(x >= 0, a.dome_z[0], a.dome_z[1]) - a.dome_depth * q


def _mediastinum_halfwidth(a: _Anatomy, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    post = np.clip((0.5 * a.pleura_ay - y) / a.pleura_ay, 0.0, 1.0)
    sup = np.clip((z - 30 * a.scale) / (60 * a.scale), 0.0, 1.0)
    return a.med_ant + (a.med_mid - a.med_ant) * post + a.med_sup * sup


def _in_aorta(a: _Anatomy, x, y, z, margin_mm: float):
    r2 = (a.aorta_r + margin_mm) ** 2
    (x1, y1), (x2, y2) = a.aorta_asc, a.aorta_desc
    asc = (((x - x1) ** 2 + (y - y1) ** 2) < r2) & (z > a.heart_c[2]) & (z < a.aorta_z_arch)
    desc = (((x - x2) ** 2 + (y - y2) ** 2) < r2) & (z < a.aorta_z_arch)
    dx, dy = x2 - x1, y2 - y1
    t = np.clip(((x - x1) * dx + (y - y1) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    d2 = (x - x1 - t * dx) ** 2 + (y - y1 - t * dy) ** 2
    arch = (d2 + (z - a.aorta_z_arch) ** 2) < r2
    return asc | desc | arch


def _lung_region(a: _Anatomy, x, y, z) -> np.ndarray:
    """True inside either lung (pleural cavity), for broadcastable coordinate arrays in mm."""
    s = a.scale
    inside = ((x / a.pleura_ax) ** 2 + (y / a.pleura_ay) ** 2) < 1.0
    inside = inside & (z > _dome_z(a, x, y))
    tau = np.clip((z - a.taper_z) / (a.apex_z - a.taper_z), 0.0, None)
    half_w = 0.5 * (a.pleura_ax - a.med_ant) + 4 * s
    centre_x = 0.5 * (a.pleura_ax + a.med_ant)
    apex = (((np.abs(x) - centre_x) / half_w) ** 4
            + ((y + 0.1 * a.pleura_ay) / (a.pleura_ay + 4 * s)) ** 4)
    inside = inside & (apex < 1.0 - tau ** 2)
    inside = inside & (np.abs(x) > _mediastinum_halfwidth(a, y, z))
    hx, hy, hz = a.heart_c
    rx, ry, rz = (r + 3 * s for r in a.heart_r)
    inside = inside & ~((((x - hx) / rx) ** 2 + ((y - hy) / ry) ** 2 + ((z - hz) / rz) ** 2) < 1)
    inside = inside & ~((x ** 2 + (y - a.spine_y) ** 2) < (a.spine_r + 5 * s) ** 2)
    inside = inside & ~_in_aorta(a, x, y, z, 3 * s)
    ex, ey, er = a.eso
    inside = inside & ~(((x - ex) ** 2 + (y - ey) ** 2) < (er + 2 * s) ** 2)
    tx, ty, tr = a.trachea
    inside = inside & ~((((x - tx) ** 2 + (y - ty) ** 2) < (tr + 3 * s) ** 2) & (z > -5 * s))
    return inside


def _sample_in_lung(rng: np.random.Generator, a: _Anatomy, n: int, *, side: int) -> np.ndarray:
    """`n` points uniformly inside the right (side=+1) or left (side=-1) lung, (n, 3) mm."""
    low, high = a.lung_z_range
    points: list[np.ndarray] = []
    count = 0
    while count < n:
        cand = np.stack([side * rng.uniform(0, a.pleura_ax, 4 * n),
                         rng.uniform(-a.pleura_ay, a.pleura_ay, 4 * n),
                         rng.uniform(low, high, 4 * n)], axis=1)
        keep = cand[_lung_region(a, cand[:, 0], cand[:, 1], cand[:, 2])]
        points.append(keep)
        count += len(keep)
    return np.concatenate(points)[:n]


# --------------------------------------------------------------------------- trees


def _grow_tree(rng: np.random.Generator, root: np.ndarray, targets: np.ndarray, *,
               root_radius_mm: float, leaf_radius_mm: float) -> np.ndarray:
    """Grows a branching tree from `root` that reaches every target point.

    Each branch runs part of the way to the centroid of its territory, then the territory is
    split in two across its longest axis (asymmetrically); radii follow Murray's law,
    r = r_root * (n / N) ** (1/3) for a territory of n targets, and the terminal branches taper
    to `leaf_radius_mm`.

    Returns:
        float64 ndarray of shape (n_segments, 8): start xyz, end xyz, start and end radius (mm).
    """
    n_total = len(targets)
    segments: list[list[float]] = []
    stack = [(np.asarray(root, float), np.arange(n_total))]
    while stack:
        start, idx = stack.pop()
        radius = root_radius_mm * (len(idx) / n_total) ** (1.0 / 3.0)
        if len(idx) == 1:
            segments.append([*start, *targets[idx[0]], radius, min(radius, leaf_radius_mm)])
            continue
        pts = targets[idx]
        centre = pts.mean(axis=0)
        end = start + rng.uniform(0.3, 0.55) * (centre - start)
        segments.append([*start, *end, radius, 0.97 * radius])
        centred = pts - centre
        _, vecs = np.linalg.eigh(centred.T @ centred)
        order = np.argsort(centred @ vecs[:, -1])
        k = int(np.clip(round(len(idx) * rng.uniform(0.3, 0.7)), 1, len(idx) - 1))
        stack.append((end, idx[order[:k]]))
        stack.append((end, idx[order[k:]]))
    return np.asarray(segments, dtype=np.float64)


def _draw_trees(rng: np.random.Generator, a: _Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """Pulmonary vessel trees (two per lung) and bronchial trees with the trachea.

    Returns:
        (vessel_segments, airway_segments), each (n, 8) as in `_grow_tree`.
    """
    s = a.scale
    vessels, airways = [], []
    tx, ty, tr = a.trachea
    airways.append(np.array([[tx, ty, 0.0, tx, ty, 400.0, tr, tr]]))
    for side in (1, -1):
        medial = a.med_mid + 4 * s
        artery_root = np.array([side * medial, 0.05 * a.pleura_ay, -12 * s])
        vein_root = np.array([side * medial, 0.25 * a.pleura_ay, -45 * s])
        for root, radius in ((artery_root, rng.uniform(4.5, 5.5)),
                             (vein_root, rng.uniform(4.0, 5.0))):
            targets = _sample_in_lung(rng, a, int(rng.integers(150, 250)), side=side)
            vessels.append(_grow_tree(rng, root, targets, root_radius_mm=radius,
                                      leaf_radius_mm=0.5))
        hilum = np.array([side * (a.med_mid + (8 if side > 0 else 16) * s), ty + 4 * s,
                          -(12 if side > 0 else 24) * s])
        bronchus_r = 0.7 * tr
        airways.append(np.array([[tx, ty, 0.0, *hilum, bronchus_r, bronchus_r]]))
        targets = _sample_in_lung(rng, a, int(rng.integers(20, 32)), side=side)
        airways.append(_grow_tree(rng, hilum, targets, root_radius_mm=0.9 * bronchus_r,
                                  leaf_radius_mm=0.8))
    airway = np.concatenate(airways)
    airway[:, 6:] = np.maximum(airway[:, 6:], 0.8)
    return np.concatenate(vessels), airway


# --------------------------------------------------------------------------- rasterising


def _index_range(coords: np.ndarray, low: float, high: float) -> tuple[int, int]:
    return int(np.searchsorted(coords, low, "left")), int(np.searchsorted(coords, high, "right"))


def _rasterize_tubes(segments: np.ndarray, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray, *,
                     voxel_mm: float, out: np.ndarray | None = None,
                     radius_add_mm: float = 0.0, radius_scale: float = 1.0) -> np.ndarray:
    """Partial-volume occupancy in [0, 1] of tapered capsules, on bounding boxes only.

    Occupancy is 0.5 on the tube surface, ramps over one voxel and is scaled down by
    2 r / voxel_mm for tubes thinner than a voxel, so small vessels fade as on real CT.

    Args:
        segments: (n, 8) start xyz, end xyz, start radius, end radius in mm.
        xs, ys, zs: increasing grid coordinates (mm) of the three canonical axes.
        voxel_mm: edge length of the partial-volume ramp.
        out: float32 (I, J, K) array updated in place with the maximum; a new one if None.
        radius_add_mm, radius_scale: radii become r * radius_scale + radius_add_mm.

    Returns:
        float32 ndarray of shape (I, J, K).
    """
    if out is None:
        out = np.zeros((len(xs), len(ys), len(zs)), np.float32)
    for seg in segments:
        a, b = seg[0:3], seg[3:6]
        ra = seg[6] * radius_scale + radius_add_mm
        rb = seg[7] * radius_scale + radius_add_mm
        pad = max(ra, rb) + voxel_mm
        lo, hi = np.minimum(a, b) - pad, np.maximum(a, b) + pad
        i0, i1 = _index_range(xs, lo[0], hi[0])
        j0, j1 = _index_range(ys, lo[1], hi[1])
        k0, k1 = _index_range(zs, lo[2], hi[2])
        if i0 >= i1 or j0 >= j1 or k0 >= k1:
            continue
        px = (xs[i0:i1] - a[0])[:, None, None]
        py = (ys[j0:j1] - a[1])[None, :, None]
        pz = (zs[k0:k1] - a[2])[None, None, :]
        d = b - a
        length2 = float(d @ d)
        if length2 > 0:
            t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / length2, 0.0, 1.0)
        else:
            t = np.zeros((1, 1, 1))
        dist = np.sqrt((px - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (pz - t * d[2]) ** 2)
        radius = ra + t * (rb - ra)
        occ = np.clip(0.5 - (dist - radius) / voxel_mm, 0.0, 1.0)
        occ *= np.minimum(1.0, 2.0 * radius / voxel_mm)
        box = out[i0:i1, j0:j1, k0:k1]
        np.maximum(box, occ.astype(np.float32), out=box)
    return out


def _lattice_weights(coords: np.ndarray, start: float, step: float, n: int) -> np.ndarray:
    """(len(coords), n) linear-interpolation matrix onto a regular 1D lattice (clamped)."""
    pos = np.clip((coords - start) / step, 0.0, n - 1.0)
    i0 = np.minimum(np.floor(pos).astype(int), n - 2)
    frac = pos - i0
    weights = np.zeros((len(coords), n), np.float32)
    rows = np.arange(len(coords))
    weights[rows, i0] = 1.0 - frac
    weights[rows, i0 + 1] += frac
    return weights


def _lung_texture(rng: np.random.Generator, a: _Anatomy, xs, ys, zs) -> np.ndarray:
    """Smooth unit-variance random field (~5 mm scale) anchored to the anatomy, (I, J, K)."""
    step = 5.0 * a.scale
    low, high = a.lung_z_range
    starts = (-a.body_ax, -a.body_ay, low - 20 * a.scale)
    counts = (int(2 * a.body_ax / step) + 2, int(2 * a.body_ay / step) + 2,
              int((high - low + 40 * a.scale) / step) + 2)
    lattice = ndimage.gaussian_filter(rng.standard_normal(counts), 0.8).astype(np.float32)
    lattice /= lattice.std() + 1e-6
    wx = _lattice_weights(xs, starts[0], step, counts[0])
    wy = _lattice_weights(ys, starts[1], step, counts[1])
    wz = _lattice_weights(zs, starts[2], step, counts[2])
    field = (wx @ lattice.reshape(counts[0], -1)).reshape(len(xs), counts[1], counts[2])
    field = np.matmul(wy, field)                       # (I, J, Lz)
    return field @ wz.T                                # (I, J, K)


def _paint(img: np.ndarray, tissue: np.ndarray, occ: np.ndarray, hu: float, code: int,
           where: np.ndarray | None = None) -> None:
    """Blends `hu` into `img` with weight `occ`; labels voxels with occ >= 0.5 as `code`."""
    if where is not None:
        occ = occ * where
    img += occ * (hu - img)
    tissue[occ >= 0.5] = code


def _render_anatomy(a: _Anatomy, xs, ys, zs, *, voxel_mm: float, vessels: np.ndarray,
                    airways: np.ndarray, texture: np.ndarray):
    """Renders everything but nodules and noise. Returns (img float32, tissue uint8, lung bool)."""
    s = a.scale
    x2, y2 = xs[:, None], ys[None, :]
    x3, y3, z3 = xs[:, None, None], ys[None, :, None], zs[None, None, :]
    shape = (len(xs), len(ys), len(zs))
    # cross-section: air, fat, muscle, then the thoracic interior (mediastinal fat by default)
    body = (np.abs(x2 / a.body_ax) ** 2.3 + np.abs(y2 / a.body_ay) ** 2.3) < 1
    mus_ax, mus_ay = a.body_ax - a.fat_mm, a.body_ay - a.fat_mm
    muscle = ((x2 / mus_ax) ** 2 + (y2 / mus_ay) ** 2) < 1
    rho = np.sqrt((x2 / a.pleura_ax) ** 2 + (y2 / a.pleura_ay) ** 2)
    interior = rho < 1
    hu2 = np.full(body.shape, _HU_AIR, np.float32)
    code2 = np.full(body.shape, AIR, np.uint8)
    hu2[body], code2[body] = _HU_FAT, FAT
    hu2[muscle], code2[muscle] = _HU_SOFT, SOFT_TISSUE
    hu2[interior], code2[interior] = _HU_FAT, FAT
    img = np.repeat(hu2[:, :, None], shape[2], axis=2)
    tissue = np.repeat(code2[:, :, None], shape[2], axis=2)
    # abdomen below the diaphragm and soft tissue above the lung apices
    dome = _dome_z(a, x2, y2)
    below = interior[:, :, None] & ((z3 < dome[:, :, None] - 2 * s) | (z3 > a.apex_z + 5 * s))
    img[below], tissue[below] = _HU_LIVER, SOFT_TISSUE
    # heart, aorta, oesophagus (soft tissue)
    hx, hy, hz = a.heart_c
    rx, ry, rz = a.heart_r
    heart = (((x3 - hx) / rx) ** 2 + ((y3 - hy) / ry) ** 2 + ((z3 - hz) / rz) ** 2) < 1
    heart |= _in_aorta(a, x3, y3, z3, 0.0)
    ex, ey, er = a.eso
    heart |= (((x3 - ex) ** 2 + (y3 - ey) ** 2) < er ** 2) & (z3 > -1e9)
    img[heart], tissue[heart] = _HU_SOFT, SOFT_TISSUE
    del heart, below
    # lungs: parenchyma, denser posteriorly (dependent), with a smooth texture
    lung = _lung_region(a, x3, y3, z3)
    gradient = 35.0 * np.clip((0.5 - y2 / (2 * a.pleura_ay)), 0.0, 1.0).astype(np.float32)
    lung_hu = a.lung_hu + gradient[:, :, None] + 22.0 * texture
    img[lung] = lung_hu[lung]
    tissue[lung] = LUNG
    del lung_hu
    # vessels and airways, clipped to the thoracic interior
    interior3 = interior[:, :, None].astype(np.float32)
    occ = _rasterize_tubes(vessels, xs, ys, zs, voxel_mm=voxel_mm)
    _paint(img, tissue, occ, _HU_VESSEL, VESSEL, interior3)
    occ[:] = 0
    _rasterize_tubes(airways, xs, ys, zs, voxel_mm=voxel_mm, out=occ, radius_scale=1.25,
                     radius_add_mm=0.4)
    _paint(img, tissue, occ, _HU_AIRWAY_WALL, AIRWAY_WALL, interior3)
    occ[:] = 0
    _rasterize_tubes(airways, xs, ys, zs, voxel_mm=voxel_mm, out=occ)
    _paint(img, tissue, occ, _HU_AIR, AIRWAY_LUMEN, interior3)
    del occ, interior3
    _render_bones(a, img, tissue, xs, ys, zs, rho)
    return img, tissue, lung


def _render_bones(a: _Anatomy, img, tissue, xs, ys, zs, rho) -> None:
    """Ribs (periodic along z, descending anteriorly), sternum and spine, in place."""
    s = a.scale
    x2, y2 = xs[:, None], ys[None, :]
    radial = np.hypot(x2, y2) * (1.0 - 1.0 / np.maximum(rho, 1e-6))   # mm outside the pleura
    sin_t = y2 / np.maximum(np.hypot(x2, y2), 1e-6)
    dr = (radial - a.rib_offset) / a.rib_half_t
    band = np.abs(dr) < 1.0
    ribs2d = band & ((y2 < 0) & (np.abs(x2) > a.spine_r + 4 * s) | (y2 >= 0)
                     & (np.abs(x2) > a.cartilage_x))
    sternum2d = band & (y2 > 0) & (np.abs(x2) < 14 * s)
    ii, jj = np.nonzero(ribs2d)
    z = zs[None, :]
    phase = (a.rib_top - z - a.rib_drop * (1 + sin_t[ii, jj])[:, None] / 2) / a.rib_pitch
    k = np.round(phase)
    dz = (phase - k) * a.rib_pitch / a.rib_half_h
    ecc = dz ** 2 + dr[ii, jj][:, None] ** 2
    valid = (k >= 0) & (k <= 11)
    _paint_bone(img, tissue, ii, jj, ecc, valid)
    ii, jj = np.nonzero(sternum2d)
    ecc = np.broadcast_to((dr[ii, jj] ** 2 + (x2 + 0 * y2)[ii, jj] ** 2 / (14 * s) ** 2)[:, None]
                          * 0.999, (len(ii), len(zs)))
    valid = (z > a.dome_z[1] - 10 * s) & (z < a.apex_z - 15 * s)
    _paint_bone(img, tissue, ii, jj, ecc, np.broadcast_to(valid, ecc.shape))
    # spine: vertebral body with discs, arch around the canal, spinous process
    body_r = np.hypot(x2, y2 - a.spine_y) / a.spine_r
    canal_y = a.spine_y - a.spine_r - 8 * s
    canal_r = np.hypot(x2, y2 - canal_y)
    muscle = ((x2 / (a.body_ax - a.fat_mm)) ** 2 + (y2 / (a.body_ay - a.fat_mm)) ** 2) < 0.95
    arch = (canal_r > 7 * s) & (canal_r < 12 * s) & (y2 < canal_y + 3 * s)
    process = (np.abs(x2) < 3.5 * s) & (y2 < canal_y - 7 * s) & muscle
    ii, jj = np.nonzero(body_r < 1)
    disc = ((a.rib_top + a.rib_pitch / 2 - z) % a.rib_pitch) < 6 * s
    ecc = np.broadcast_to(body_r[ii, jj][:, None] ** 2, (len(ii), len(zs)))
    _paint_bone(img, tissue, ii, jj, ecc, np.broadcast_to(~disc, ecc.shape))
    img[ii[:, None], jj[:, None], np.nonzero(disc[0])[0][None, :]] = _HU_DISC
    tissue[ii[:, None], jj[:, None], np.nonzero(disc[0])[0][None, :]] = SOFT_TISSUE
    ii, jj = np.nonzero(canal_r < 7 * s)
    img[ii, jj, :], tissue[ii, jj, :] = 15.0, SOFT_TISSUE
    ii, jj = np.nonzero(arch | process)
    ecc = np.full((len(ii), len(zs)), 0.9)
    _paint_bone(img, tissue, ii, jj, ecc, np.broadcast_to(~disc, ecc.shape))


def _paint_bone(img, tissue, ii, jj, ecc, valid) -> None:
    """Bone where ecc < 1 (cortex for ecc > 0.5, marrow inside) on pixel columns (ii, jj)."""
    inside = valid & (ecc < 1.0)
    rows, cols = np.nonzero(inside)
    hu = np.where(ecc[rows, cols] > 0.5, _HU_CORTEX, _HU_MARROW).astype(np.float32)
    img[ii[rows], jj[rows], cols] = hu
    tissue[ii[rows], jj[rows], cols] = BONE


# --------------------------------------------------------------------------- nodules


def _draw_nodule_specs(rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
    """Size (mostly 3-10 mm), kind, intended location, shape and HU of `n` nodules."""
    specs = []
    for _ in range(n):
        small = rng.random() < 0.75
        diameter = math.exp(rng.uniform(math.log(3.0), math.log(10.0)) if small
                            else rng.uniform(math.log(10.0), math.log(30.0)))
        kind = str(rng.choice(NODULE_KINDS, p=[0.65, 0.12, 0.23]))
        if kind == "part_solid" and diameter < 8.0:
            kind = "ground_glass"
        location = str(rng.choice(NODULE_LOCATIONS, p=[0.55, 0.25, 0.20]))
        axes = rng.uniform(0.8, 1.0, 3)
        axes /= np.prod(axes) ** (1.0 / 3.0)
        rotation, _ = np.linalg.qr(rng.standard_normal((3, 3)))
        n_lobes = int(rng.choice([0, 0, 1, 2, 3, 4]))
        lobes = [(d / np.linalg.norm(d), rng.uniform(0.55, 0.85), rng.uniform(0.35, 0.6))
                 for d in rng.standard_normal((n_lobes, 3))]
        specs.append({
            "nominal_diameter_mm": diameter, "kind": kind, "location": location,
            "axes": axes, "rotation": rotation, "lobes": lobes,
            "solid_hu": rng.uniform(0.0, 80.0), "ggo_hu": rng.uniform(-700.0, -300.0),
            "core_fraction": rng.uniform(0.3, 0.6),
        })
    return specs


def _nodule_extent_mm(spec: dict[str, Any]) -> float:
    radius = spec["nominal_diameter_mm"] / 2
    lobe_reach = max([off + r for _, off, r in spec["lobes"]], default=0.0)
    return radius * max(float(spec["axes"].max()), lobe_reach)


def _nodule_field(spec: dict[str, Any], centre: np.ndarray, px, py, pz) -> np.ndarray:
    """Normalised distance (< 1 inside) of the lobulated ellipsoid, on broadcast coordinates."""
    radius = spec["nominal_diameter_mm"] / 2
    dx, dy, dz = px - centre[0], py - centre[1], pz - centre[2]
    rot = spec["rotation"]
    field = None
    for axis in range(3):
        local = dx * rot[0, axis] + dy * rot[1, axis] + dz * rot[2, axis]
        term = (local / (radius * spec["axes"][axis])) ** 2
        field = term if field is None else field + term
    field = np.sqrt(field)
    for direction, offset, lobe_r in spec["lobes"]:
        c = radius * offset * direction
        lobe = np.sqrt((dx - c[0]) ** 2 + (dy - c[1]) ** 2 + (dz - c[2]) ** 2) / (radius * lobe_r)
        field = np.minimum(field, lobe)
    return field


_STRUCT26 = np.ones((3, 3, 3), bool)


def _grow_minimum(field: np.ndarray, allowed: np.ndarray, n_voxels: int) -> np.ndarray:
    """The `n_voxels` 26-connected voxels of lowest `field` grown from its minimum in `allowed`."""
    values = np.where(allowed, field, np.inf)
    mask = np.zeros(field.shape, bool)
    mask.flat[int(np.argmin(values))] = True
    for _ in range(n_voxels - 1):
        ring = ndimage.binary_dilation(mask, _STRUCT26) & allowed & ~mask
        if not ring.any():
            break
        mask.flat[int(np.argmin(np.where(ring, values, np.inf)))] = True
    return mask


class _Placer:
    """Places nodules in the lungs without overlaps and records their voxelised masks."""

    def __init__(self, rng, a: _Anatomy, xs, ys, zs, lung, tissue, voxel_mm, vessels):
        self.rng, self.a, self.xs, self.ys, self.zs = rng, a, xs, ys, zs
        self.lung, self.tissue, self.voxel_mm, self.vessels = lung, tissue, voxel_mm, vessels
        self.nodule_mask = np.zeros(lung.shape, bool)
        # distance to the pleura on a coarse lattice of the lungs, independent of the grid
        low, high = a.lung_z_range
        self.lat_start = np.array([-a.pleura_ax, -a.pleura_ay, low])
        self.lat_step = np.array([2 * a.pleura_ax / 63, 2 * a.pleura_ay / 47, (high - low) / 79])
        lx, ly, lz = (self.lat_start[d] + self.lat_step[d] * np.arange(n)
                      for d, n in enumerate((64, 48, 80)))
        lat_lung = _lung_region(a, lx[:, None, None], ly[None, :, None], lz[None, None, :])
        self.lat_edt = ndimage.distance_transform_edt(lat_lung, sampling=self.lat_step)
        self.lat_coords = (lx, ly, lz)
        self.fov_low = np.array([xs[0], ys[0], zs[0]])
        self.fov_high = np.array([xs[-1], ys[-1], zs[-1]])

    def pleura_distance(self, point: np.ndarray) -> float:
        idx = np.round((point - self.lat_start) / self.lat_step).astype(int)
        if np.any(idx < 0) or np.any(idx >= self.lat_edt.shape):
            return 0.0
        return float(self.lat_edt[tuple(idx)])

    def _candidate(self, spec, extent_mm) -> np.ndarray | None:
        rng, radius = self.rng, spec["nominal_diameter_mm"] / 2
        margin = 0.5 * float(np.linalg.norm(self.lat_step))
        if spec["location"] == "juxtavascular":
            radii = 0.5 * (self.vessels[:, 6] + self.vessels[:, 7])
            usable = np.nonzero((radii > 0.7) & (radii < 3.5))[0]
            if len(usable) == 0:
                return None
            seg = self.vessels[rng.choice(usable)]
            point = seg[0:3] + rng.uniform(0.2, 0.8) * (seg[3:6] - seg[0:3])
            axis = seg[3:6] - seg[0:3]
            side = np.cross(axis, rng.standard_normal(3))
            side /= np.linalg.norm(side) + 1e-9
            vessel_r = 0.5 * (seg[6] + seg[7])
            centre = point + side * (vessel_r + radius * rng.uniform(0.6, 0.9))
            if self.pleura_distance(centre) < extent_mm + 1.5 + margin:
                return None
            return centre
        edt = self.lat_edt
        if spec["location"] == "juxtapleural":
            ok = (edt > 0.3 * radius + margin * 0.5) & (edt < 0.8 * radius + margin * 0.5)
        else:
            ok = edt >= extent_mm + 1.5 + margin
        cells = np.argwhere(ok)
        if len(cells) == 0:
            return None
        cell = cells[rng.integers(len(cells))]
        jitter = rng.uniform(-0.5, 0.5, 3) * self.lat_step
        return self.lat_start + cell * self.lat_step + jitter

    def try_place(self, spec: dict[str, Any], *, attempts: int = 40) -> dict[str, Any] | None:
        extent = _nodule_extent_mm(spec)
        pad = extent + 2 * self.voxel_mm
        for _ in range(attempts):
            centre = self._candidate(spec, extent)
            if centre is None:
                continue
            if np.any(centre - pad < self.fov_low) or np.any(centre + pad > self.fov_high):
                continue
            placed = self._rasterize(spec, centre, pad)
            if placed is not None:
                return placed
        return None

    def _rasterize(self, spec, centre, pad) -> dict[str, Any] | None:
        i0, i1 = _index_range(self.xs, centre[0] - pad, centre[0] + pad)
        j0, j1 = _index_range(self.ys, centre[1] - pad, centre[1] + pad)
        k0, k1 = _index_range(self.zs, centre[2] - pad, centre[2] + pad)
        box = (slice(i0, i1), slice(j0, j1), slice(k0, k1))
        field = _nodule_field(spec, centre, self.xs[box[0]][:, None, None],
                              self.ys[box[1]][None, :, None], self.zs[box[2]][None, None, :])
        lung = self.lung[box]
        mask = (field < 1.0) & lung
        if mask.sum() < MIN_NODULE_VOXELS:
            mask = _grow_minimum(field, lung, MIN_NODULE_VOXELS)
            if mask.sum() < MIN_NODULE_VOXELS:
                return None
        _, n_parts = ndimage.label(mask, _STRUCT26)
        grown = ndimage.binary_dilation(mask, _STRUCT26)
        if n_parts != 1 or (grown & self.nodule_mask[box]).any():
            return None
        if mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any() \
                or mask[:, :, 0].any() or mask[:, :, -1].any():
            return None
        touches_pleura = bool((grown & ~lung).any())
        touches_vessel = bool((grown & ~mask & (self.tissue[box] == VESSEL)).any())
        location = spec["location"]
        if location == "intraparenchymal" and touches_pleura:
            return None
        if location == "juxtapleural" and not touches_pleura:
            return None
        if location == "juxtavascular" and (not touches_vessel or touches_pleura):
            return None
        self.nodule_mask[box] |= mask
        return {"spec": spec, "centre": centre, "box": box, "field": field, "mask": mask,
                "touches_pleura": touches_pleura, "touches_vessel": touches_vessel}


def _paint_nodule(img, tissue, texture, placed: dict[str, Any], voxel_mm: float) -> None:
    spec, box, field, mask = placed["spec"], placed["box"], placed["field"], placed["mask"]
    radius = spec["nominal_diameter_mm"] / 2
    alpha = np.clip(0.5 + (1.0 - field) * radius / voxel_mm, 0.0, 1.0)
    alpha = np.maximum(alpha, mask) * ndimage.binary_dilation(mask, _STRUCT26)
    sub, sub_tissue, sub_tex = img[box], tissue[box], texture[box]
    if spec["kind"] == "solid":
        target = spec["solid_hu"] + 8.0 * sub_tex
        sub += alpha * (target - sub)
        sub_tissue[mask] = NODULE_SOLID
        return
    target = spec["ggo_hu"] + 40.0 * sub_tex
    np.maximum(sub, sub + alpha * (target - sub), out=sub)   # vessels stay visible in GGO
    sub_tissue[mask] = NODULE_SUBSOLID
    if spec["kind"] == "part_solid":
        core_r = spec["core_fraction"]
        core = np.clip(0.5 + (core_r - field) * radius / voxel_mm, 0.0, 1.0) * mask
        sub += core * (spec["solid_hu"] - sub)
        sub_tissue[core >= 0.5] = NODULE_SOLID


# --------------------------------------------------------------------------- public API


def _orient(arrays: Sequence[np.ndarray], canonical_affine: np.ndarray,
            axcodes: tuple[str, str, str]) -> tuple[list[np.ndarray], np.ndarray]:
    """Stores canonical RAS arrays in the `axcodes` orientation; returns arrays and affine."""
    transform = nio.ornt_transform(nio.axcodes2ornt(("R", "A", "S")), nio.axcodes2ornt(axcodes))
    shape = arrays[0].shape
    out = [np.ascontiguousarray(nio.apply_orientation(arr, transform)) for arr in arrays]
    affine = canonical_affine @ nio.inv_ornt_aff(transform, shape)
    return out, affine


def generate_case(*, seed: int, size: Sequence[int] | None = DEFAULT_SIZE,
                  spacing_mm: Sequence[float] | None = None,
                  n_nodules: int | None = None, noise_scale: float = 1.0,
                  kernel: str = "standard") -> PhantomCase:
    """Generates one synthetic chest CT with its nodule mask.

    Args:
        seed: int >= 0; the case is a pure function of (seed, size, spacing_mm, n_nodules).
        size: grid shape (I, J, K) in canonical RAS order, each in [16, 1024]; K is the slice
            axis. None means `DEFAULT_SIZE` (256, 256, 160).
        spacing_mm: voxel size (I, J, K) in mm; None draws in-plane 0.6-0.9 mm and slices
            1-2.5 mm at the default size (coarser for smaller sizes, same field of view).
        n_nodules: number of nodules to place (0 to 10); None draws 0 to 5. Placement is
            best effort: a nodule that cannot be placed after 40 tries is dropped (logged).
        noise_scale: factor on the drawn noise level, in [0, 4] (a second scanner setting:
            low-dose scans are noisier).
        kernel: reconstruction kernel, one of `KERNELS`: ``standard`` (the point-spread
            function below), ``sharp`` (half its width: crisp edges, grainier noise) or
            ``smooth`` (1.6 times its width).

    Returns:
        A `PhantomCase`. Each nodule dict has: "id" (1-based), "centre_mm" (centroid of its
        voxelised mask, world RAS+ mm), "centre_voxel" (same point, source voxel indices),
        "diameter_mm" (equivalent diameter (6 V / pi) ** (1/3) of the voxelised mask),
        "nominal_diameter_mm", "volume_mm3", "n_voxels", "kind" (solid, part_solid,
        ground_glass), "location" (intraparenchymal, juxtapleural, juxtavascular),
        "touches_pleura", "touches_vessel" and "mean_hu" (over the mask, final image).

    Raises:
        TypeError: if seed or n_nodules is not an int.
        ValueError: for a negative seed, a bad size or spacing_mm, a field of view outside
            [100, 700] mm in-plane or under 30 mm along the slices, or n_nodules out of range.
    """
    seed = check_int(seed, name="seed", minimum=0)
    size = _check_size(size)
    spacing = _check_spacing(spacing_mm)
    if n_nodules is not None:
        n_nodules = check_int(n_nodules, name="n_nodules", minimum=0, maximum=MAX_NODULES)
    psf_scale = _check_scanner(noise_scale, kernel)
    rng_geom, rng_anat, rng_tree, rng_nod, rng_tex, rng_noise = (
        np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(6))
    drawn_spacing = _draw_spacing(rng_geom, size)
    spacing = spacing if spacing is not None else drawn_spacing
    _check_fov(size, spacing)
    axcodes = _draw_axcodes(rng_geom)
    world_centre = rng_geom.uniform([-40, -220, -350], [40, -60, 50])
    shift = rng_geom.uniform(-0.03, 0.03, 2)
    z_shift = rng_geom.uniform(-0.08, 0.08)

    fov = np.array(size) * np.array(spacing)
    a = _draw_anatomy(rng_anat, float(min(fov[0], fov[1])))
    low, high = a.lung_z_range
    # grid coordinates in anatomy mm (centred), and the canonical affine into world mm
    anat_centre = np.array([shift[0] * fov[0], shift[1] * fov[1],
                            0.5 * (low + high) + z_shift * (high - low)])
    axes_mm = [anat_centre[d] + (np.arange(size[d]) - (size[d] - 1) / 2) * spacing[d]
               for d in range(3)]
    xs, ys, zs = (ax.astype(np.float64) for ax in axes_mm)
    canonical_affine = np.diag([*spacing, 1.0])
    canonical_affine[:3, 3] = world_centre - (np.array(size) - 1) / 2 * np.array(spacing)
    voxel_mm = float(np.prod(spacing) ** (1.0 / 3.0))

    vessels, airways = _draw_trees(rng_tree, a)
    texture = _lung_texture(rng_tex, a, xs, ys, zs)
    img, tissue, lung = _render_anatomy(a, xs, ys, zs, voxel_mm=voxel_mm, vessels=vessels,
                                        airways=airways, texture=texture)
    count = int(rng_nod.choice(6, p=[0.15, 0.25, 0.22, 0.16, 0.12, 0.10]))
    specs = _draw_nodule_specs(rng_nod, count if n_nodules is None else n_nodules)
    placer = _Placer(rng_nod, a, xs, ys, zs, lung, tissue, voxel_mm, vessels)
    placed = []
    for spec in specs:
        result = placer.try_place(spec)
        if result is None:
            logger.warning("seed %d: could not place a %.1f mm %s nodule; dropped", seed,
                           spec["nominal_diameter_mm"], spec["location"])
            continue
        placed.append(result)
    for result in placed:
        _paint_nodule(img, tissue, texture, result, voxel_mm)
    del texture
    _add_noise_and_blur(rng_noise, img, spacing, a.noise_hu * float(noise_scale),
                        psf_scale=psf_scale)
    image = np.clip(np.rint(img), _HU_MIN, _HU_MAX).astype(np.int16)
    del img
    mask = placer.nodule_mask.astype(np.uint8)
    nodules = [_nodule_record(n, r, image, canonical_affine, spacing)
               for n, r in enumerate(placed, start=1)]
    (image, mask, tissue), affine = _orient([image, mask, tissue], canonical_affine, axcodes)
    inverse = np.linalg.inv(affine)
    for record in nodules:
        voxel = inverse @ np.array([*record["centre_mm"], 1.0])
        record["centre_voxel"] = [round(float(v), 3) for v in voxel[:3]]
    return PhantomCase(image_hu=image, mask=mask, affine=affine, nodules=nodules, tissue=tissue,
                       spacing_mm=tuple(float(s) for s in spacing),  # type: ignore[arg-type]
                       axcodes=axcodes, seed=seed)


def _check_scanner(noise_scale: float, kernel: str) -> float:
    """Validates the scanner options; returns the kernel's point-spread width factor."""
    check_float(noise_scale, name="noise_scale", minimum=0, maximum=4)
    if kernel not in KERNELS:
        raise ValueError(f"Expected kernel in {tuple(KERNELS)}. Received: kernel={kernel!r}")
    return KERNELS[kernel]


def _add_noise_and_blur(rng: np.random.Generator, img: np.ndarray,
                        spacing_mm: Sequence[float], noise_hu: float, *,
                        psf_scale: float = 1.0) -> None:
    """CT-like noise and blur, in place.

    The point-spread function has sigma 0.45 mm in-plane and 0.35 of the slice spacing along
    the slices (at most 0.7 voxel), each times `psf_scale` (the kernel); white noise is
    blurred with the anatomy and pre-scaled so the blurred noise has standard deviation
    `noise_hu` at 0.75 x 0.75 x 1.5 mm voxels, less for larger voxels (1 / sqrt(voxel
    volume), clipped to [0.35, 1.5] times).
    """
    sigmas = [min(0.7, 0.45 / spacing_mm[0]), min(0.7, 0.45 / spacing_mm[1]), 0.35]
    sigmas = [sig * psf_scale for sig in sigmas]
    sigmas = [sig if sig >= 0.2 else 0.0 for sig in sigmas]
    gain = 1.0
    for sigma in sigmas:
        if sigma > 0:
            kernel = ndimage.gaussian_filter1d(np.eye(1, 9, 4).ravel(), sigma, truncate=3.0)
            gain *= float(np.sqrt(np.sum(kernel ** 2)))
    volume_factor = float(np.clip(np.sqrt(0.75 * 0.75 * 1.5 / np.prod(spacing_mm)), 0.35, 1.5))
    noise = rng.standard_normal(img.shape, dtype=np.float32)
    img += noise * np.float32(noise_hu * volume_factor / gain)
    del noise
    for axis, sigma in enumerate(sigmas):
        if sigma > 0:
            ndimage.gaussian_filter1d(img, sigma, axis=axis, output=img, truncate=3.0)


def _nodule_record(number: int, placed: dict[str, Any], image: np.ndarray,
                   canonical_affine: np.ndarray, spacing_mm) -> dict[str, Any]:
    box, mask, spec = placed["box"], placed["mask"], placed["spec"]
    idx = np.argwhere(mask) + np.array([box[0].start, box[1].start, box[2].start])
    n_voxels = len(idx)
    volume = n_voxels * float(np.prod(spacing_mm))
    centre = canonical_affine @ np.array([*idx.mean(axis=0), 1.0])
    mean_hu = float(image[idx[:, 0], idx[:, 1], idx[:, 2]].mean())
    return {
        "id": number,
        "centre_mm": [round(float(c), 3) for c in centre[:3]],
        "diameter_mm": round((6.0 * volume / math.pi) ** (1.0 / 3.0), 3),
        "nominal_diameter_mm": round(float(spec["nominal_diameter_mm"]), 3),
        "volume_mm3": round(volume, 3),
        "n_voxels": int(n_voxels),
        "kind": spec["kind"],
        "location": spec["location"],
        "touches_pleura": placed["touches_pleura"],
        "touches_vessel": placed["touches_vessel"],
        "mean_hu": round(mean_hu, 1),
    }


# --------------------------------------------------------------------------- writing


def _atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Writes `data` atomically through `segmentation.io.atomic_write` (temp file, fsync, rename)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def _nifti_bytes(array: np.ndarray, affine: np.ndarray, *, description: str) -> bytes:
    """Deterministic .nii.gz bytes (gzip mtime 0), qform = sform = affine (scanner code)."""
    image = nib.Nifti1Image(array, affine)
    header = image.header
    header.set_data_dtype(array.dtype)
    header.set_slope_inter(1.0, 0.0)
    header.set_xyzt_units("mm", "sec")
    header["descrip"] = description.encode()[:79]
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    raw = image.to_bytes()
    # nibabel stores "no scaling" as NaN; write an explicit slope 1, intercept 0
    stored = nib.Nifti1Header.from_fileobj(io.BytesIO(raw))
    stored["scl_slope"], stored["scl_inter"] = 1.0, 0.0
    block = stored.binaryblock
    return gzip.compress(block + raw[len(block):], compresslevel=1, mtime=0)


def write_case(case: PhantomCase, image_path: str | os.PathLike,
               label_path: str | os.PathLike) -> None:
    """Writes a case's int16 HU image and uint8 nodule mask as .nii.gz files, atomically."""
    description = f"lungseg phantom v{GENERATOR_VERSION} seed={case.seed}"
    _atomic_write_bytes(Path(image_path), _nifti_bytes(case.image_hu, case.affine,
                                                       description=description))
    _atomic_write_bytes(Path(label_path), _nifti_bytes(case.mask, case.affine,
                                                       description=description + " nodules"))


def case_seed(seed: int, *, split: str, index: int) -> int:
    """The per-case seed that `write_phantom_dataset` derives for case `index` of `split`."""
    sequence = np.random.SeedSequence(seed, spawn_key=(_SPLIT_CODES[split], index))
    return int(sequence.generate_state(1, dtype=np.uint32)[0])


INCOMPLETE_FILE = INCOMPLETE_MARKER
"""Written before the first case and removed after ``dataset.json``: a folder holding it is an
interrupted `write_phantom_dataset` (`segmentation.dataset.discover_cases` refuses it)."""
_BYTES_PER_VOXEL_ON_DISK = 1.4  # int16 phantom image gzip-compressed to about 0.62, plus label


def estimate_dataset_bytes(out_dir: str | os.PathLike, *, n_cases: int, n_test: int = 0,
                           size: Sequence[int] | None = None) -> dict:
    """Disk space a phantom dataset will take, and the free space where it goes.

    Measured: a 256 x 256 x 160 case takes about 12.6 MB compressed (image) plus 0.05 MB
    (label), i.e. about 1.4 bytes per voxel for the pair (an estimate, not a bound).

    Returns:
        ``{"bytes": estimated total, "free_bytes": free space, "checked": the folder whose
        file system was measured}``.
    """
    grid = DEFAULT_SIZE if size is None else tuple(int(s) for s in size)
    n_total = max(int(n_cases), 0) + max(int(n_test), 0)
    voxels = int(np.prod(grid, dtype=np.int64))
    checked = Path(out_dir).absolute()
    while not checked.exists() and checked != checked.parent:
        checked = checked.parent
    try:
        free = shutil.disk_usage(checked).free
    except OSError:
        free = 0
    return {"bytes": int(n_total * voxels * _BYTES_PER_VOXEL_ON_DISK), "free_bytes": int(free),
            "checked": str(checked)}


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"Expected out_dir to be a directory. Received: out_dir={out_dir}")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            state = ("an interrupted phantom dataset (it holds " + INCOMPLETE_FILE + ")"
                     if (out_dir / INCOMPLETE_FILE).exists() else "not empty")
            raise ValueError(
                "Expected out_dir to be empty or missing (pass overwrite=True to replace a "
                f"phantom dataset). Received: out_dir={out_dir} ({state})")
        (out_dir / "dataset.json").unlink(missing_ok=True)   # incomplete until rewritten
        (out_dir / "nodules.json").unlink(missing_ok=True)
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            folder = out_dir / sub
            if folder.is_dir():
                for path in folder.iterdir():
                    if _CASE_PATTERN.match(path.name):
                        path.unlink()


def write_phantom_dataset(out_dir: str | os.PathLike, *, n_cases: int, seed: int,
                          size: Sequence[int] | None = None,
                          spacing_mm: Sequence[float] | None = None, n_test: int = 0,
                          overwrite: bool = False,
                          progress: Callable[[int, int], None] | None = None,
                          noise_scale: float = 1.0, kernel: str = "standard") -> Path:
    """Writes an MSD-layout phantom dataset.

    Layout: `dataset.json` (MSD keys; `training` and `test` lists, plus the extra key
    `test_labels` since MSD has no labelsTs), `imagesTr/phantom_000.nii.gz`,
    `labelsTr/phantom_000.nii.gz`, `imagesTs/phantom_test_000.nii.gz` and
    `labelsTs/phantom_test_000.nii.gz` (when n_test > 0), and `nodules.json` (every nodule,
    world RAS+ mm; see `generate_case`). Case `i` of a split is generated from
    `case_seed(seed, split=..., index=i)`, so it does not depend on n_cases or n_test.
    dataset.json is written last: a folder without it is incomplete, and `INCOMPLETE_FILE`
    (written before the first case, removed after dataset.json) says so in so many words.

    Args:
        out_dir: dataset folder; created if missing.
        n_cases: number of training cases, >= 1.
        seed: int >= 0.
        size: canonical grid shape (I, J, K); None is (256, 256, 160).
        spacing_mm: canonical voxel size; None draws one per case (see `generate_case`).
        n_test: number of held-out cases with labels, >= 0.
        overwrite: replace an existing phantom dataset in a non-empty out_dir (only
            dataset.json, nodules.json and phantom_*.nii.gz case files are removed).
        progress: called as progress(n_done, n_total) after each case.
        noise_scale, kernel: the scanner setting of every case (see `generate_case`).

    Returns:
        The dataset folder.

    Raises:
        TypeError, ValueError: for bad arguments (named), or a non-empty out_dir without
            overwrite.
    """
    n_cases = check_int(n_cases, name="n_cases", minimum=1)
    n_test = check_int(n_test, name="n_test", minimum=0)
    seed = check_int(seed, name="seed", minimum=0)
    size = _check_size(size)
    spacing = _check_spacing(spacing_mm)
    if spacing is not None:
        _check_fov(size, spacing)
    _check_scanner(noise_scale, kernel)
    if not isinstance(overwrite, bool):
        raise TypeError(f"Expected overwrite to be a bool. Received: overwrite={overwrite!r}")
    if progress is not None and not callable(progress):
        raise TypeError(f"Expected progress to be callable or None. Received: "
                        f"progress={progress!r}")
    out = Path(out_dir)
    _prepare_out_dir(out, overwrite)
    estimate = estimate_dataset_bytes(out, n_cases=n_cases, n_test=n_test, size=size)
    if estimate["bytes"] > estimate["free_bytes"] > 0:
        raise ValueError(
            f"Expected room for the dataset in out_dir={out}. Received: about "
            f"{estimate['bytes'] / 1e9:.3g} GB needed for {n_cases + n_test} case(s) of "
            f"{list(size)} voxels, {estimate['free_bytes'] / 1e9:.3g} GB free")
    out.mkdir(parents=True, exist_ok=True)
    marker = {"status": "incomplete: an interrupted lungseg phantom; rerun it with --overwrite",
              "n_cases": n_cases, "n_test": n_test, "seed": seed, "size": list(size),
              "spacing_mm": None if spacing is None else list(spacing)}
    _atomic_write_bytes(out / INCOMPLETE_FILE, json.dumps(marker, indent=1).encode())
    plan = [("train", i, f"phantom_{i:03d}", "imagesTr", "labelsTr") for i in range(n_cases)]
    plan += [("test", i, f"phantom_test_{i:03d}", "imagesTs", "labelsTs")
             for i in range(n_test)]
    cases, nodules, training, test, test_labels = {}, [], [], [], []
    for done, (split, index, case_id, image_dir, label_dir) in enumerate(plan, start=1):
        this_seed = case_seed(seed, split=split, index=index)
        case = generate_case(seed=this_seed, size=size, spacing_mm=spacing,
                             noise_scale=noise_scale, kernel=kernel)
        image_rel, label_rel = f"{image_dir}/{case_id}.nii.gz", f"{label_dir}/{case_id}.nii.gz"
        write_case(case, out / image_rel, out / label_rel)
        entry = {"image": f"./{image_rel}", "label": f"./{label_rel}"}
        if split == "train":
            training.append(entry)
        else:
            test.append(f"./{image_rel}")
            test_labels.append(entry)
        cases[case_id] = {
            "split": split, "seed": this_seed, "image": image_rel, "label": label_rel,
            "shape": list(case.image_hu.shape), "axcodes": "".join(case.axcodes),
            "spacing_mm": list(case.spacing_mm), "n_nodules": len(case.nodules),
        }
        nodules += [{"case_id": case_id, **record} for record in case.nodules]
        if progress is not None:
            progress(done, len(plan))
    generator = {"generator": "lungseg.segmentation.phantom", "version": GENERATOR_VERSION,
                 "seed": seed, "size": list(size),
                 "spacing_mm": None if spacing is None else list(spacing),
                 "noise_scale": float(noise_scale), "kernel": kernel}
    nodules_doc = {
        "coordinate_system": "RAS+ world mm (NIfTI/nibabel; negate x and y for LPS)",
        "diameter": "equivalent diameter (6 V / pi)^(1/3) of the voxelised mask component",
        **generator, "cases": cases, "nodules": nodules,
    }
    _atomic_write_bytes(out / "nodules.json", json.dumps(nodules_doc, indent=1).encode())
    dataset = {
        "name": "LungsegPhantom",
        "description": "Synthetic chest CT with lung nodules (lungseg phantom)",
        "reference": "lungseg segmentation/phantom.py",
        "licence": "CC0-1.0",
        "release": GENERATOR_VERSION,
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "nodule"},
        "numTraining": n_cases,
        "numTest": n_test,
        "training": training,
        "test": test,
        "test_labels": test_labels,
        "nodules": "nodules.json",
        "lungseg_phantom": generator,
    }
    _atomic_write_bytes(out / "dataset.json", json.dumps(dataset, indent=1).encode())
    (out / INCOMPLETE_FILE).unlink()
    return out
