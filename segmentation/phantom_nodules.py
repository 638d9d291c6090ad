"""The phantom's nodules (`segmentation.phantom`): drawn specs, their implicit fields, the
placement inside the lungs (intraparenchymal, juxtapleural, juxtavascular) and the painting.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

from segmentation.phantom_anatomy import (
    NODULE_SOLID,
    NODULE_SUBSOLID,
    VESSEL,
    _Anatomy,
    _index_range,
    _lung_region,
)

MIN_NODULE_VOXELS = 4
NODULE_KINDS: tuple[str, ...] = ("solid", "part_solid", "ground_glass")
NODULE_LOCATIONS: tuple[str, ...] = ("intraparenchymal", "juxtapleural", "juxtavascular")


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


