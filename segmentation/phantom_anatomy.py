"""The phantom's anatomy (`segmentation.phantom`): tissue classes, HU levels, the drawn
anatomy parameters, the implicit lung and mediastinum, vessel and airway trees, and their
rasterisation on the voxel grid.

All in anatomy-centred world millimetres (x right, y anterior, z superior, carina at 0); every
function is pure in its arguments and the generator it is given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

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


