"""One synthetic chest CT phantom, generated in memory: `generate_case` -> `PhantomCase`.

The size, spacing and field-of-view limits and their checks, the scanner setting (noise and
reconstruction kernel), the case record and its nodule records. What the case is built of, and
how it is drawn: `segmentation.phantom_anatomy` and `segmentation.phantom_nodules`. Writing cases
and MSD-layout datasets: `segmentation.phantom`, which re-exports the public names here.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from nibabel import orientations as nio
from scipy import ndimage

from segmentation.phantom_anatomy import (
    _draw_anatomy,
    _draw_axcodes,
    _draw_spacing,
    _draw_trees,
    _lung_texture,
    _render_anatomy,
)
from segmentation.phantom_nodules import _draw_nodule_specs, _paint_nodule, _Placer
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

_HU_MIN, _HU_MAX = -1024, 3071


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
