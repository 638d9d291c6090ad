"""Synthetic nodule insertion: parametric nodules painted into lung parenchyma on the fly.

Independent of the phantom's scan generator (`segmentation.phantom`): the only thing shared
with it is what a nodule *is*, the kinds ``NODULE_KINDS`` (solid, part-solid,
ground-glass). Shapes, sizes and intensities are this module's own parameters, and every
intensity is drawn relative to the patch it is painted into, so the nodules look like the
scan they land in (phantom or real CT), not like the phantom.

A nodule (`draw_nodule`) has a nominal diameter drawn log-uniformly in ``diameter_mm``
(small nodules are the common and the hard ones), a kind and a shape:

* ``ellipsoid``: axes drawn in [0.75, 1] and scaled to the volume of the nominal sphere,
  randomly rotated;
* ``lobulated``: the ellipsoid with a radial perturbation ``1 + sum_l a_l P_l(u . v_l)``,
  zonal spherical harmonics (Legendre polynomials ``P_l`` of degree 2-5 about random axes
  ``v_l``) of small amplitude;
* ``spiculated``: a mildly lobulated body with 4-10 thin tapering spikes reaching 0.5-1.5
  radii beyond it (thinner than a voxel near their tips, so partly below the mask's 0.5
  partial-volume level: their faint streaks are in the image, not in the mask, as for a
  reader's outline).

`rasterize_nodule` samples it on the patch grid (``spacing_mm``, anisotropic allowed) as a
partial-volume coverage ``alpha`` in [0, 1]; the mask is ``alpha >= 0.5`` (the component of
the centre). `insert_nodules` paints 1..``max_count`` of them where their whole
``alpha > 0`` region lies in the patch's lung region, away from the patch border and from the
truth (dilated), relative to the patch's parenchyma: its median ``P`` and noise ``s``
(``1.4826 * MAD``) over lung voxels below -500 HU outside the truth. Solid: the covered
voxels become ``P + delta_solid`` plus noise of standard deviation ``s`` (white noise
smoothed like a CT kernel, rescaled to ``s``). Ground-glass: ``delta_ggo`` is *added*
(vessels and noise under it stay; the result is never darker than what was there).
Part-solid: ground glass with a solid core of 30-60 % of the radius. Added ground glass is
capped at the patch's brightest voxel, so a nodule over a vessel creates no value the scan
does not already have (a HU-windowed image stays in [0, 1]).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.polynomial import legendre
from scipy import ndimage as ndi

from segmentation.lesion_paste import find_position, patch_arrays
from segmentation.phantom import NODULE_KINDS
from segmentation.validation import check_float, check_int, check_range

__all__ = ["NODULE_SHAPES", "SyntheticNoduleSpec", "Nodule", "draw_nodule", "rasterize_nodule",
           "parenchyma_stats", "insert_nodules"]

NODULE_SHAPES: tuple[str, ...] = ("ellipsoid", "lobulated", "spiculated")
_NODULES_PER_SLOT = 3  # nodules drawn for one slot (a large one may not fit the patch)
_POSITIONS_PER_NODULE = 8
_MIN_PARENCHYMA_VOXELS = 64
_NOISE_SIGMA_VOX = 0.6  # smoothing of the painted noise (CT noise is correlated)
_STRUCT26 = np.ones((3, 3, 3), bool)


def _check_weights(value: Any, name: str, n: int) -> tuple[float, ...]:
    try:
        weights = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        weights = ()
    if len(weights) != n or any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"Expected {name} to be {n} non-negative weights with a positive sum. "
                         f"Received: {name}={value!r}")
    return weights


@dataclasses.dataclass(frozen=True)
class SyntheticNoduleSpec:
    """``augment.synthetic_nodules``: synthetic nodule settings (off by default).

    Attributes:
        enabled: Paint synthetic nodules into training patches (3D patches only).
        probability: Chance that a patch gets synthetic nodules.
        max_count: A painted patch gets 1..max_count nodules (fewer when they do not fit).
        diameter_mm: Nominal diameter range (drawn log-uniformly).
        kind_weights: Relative frequency of solid, part_solid, ground_glass.
        shape_weights: Relative frequency of ellipsoid, lobulated, spiculated.
        solid_delta_hu: Solid intensity above the parenchyma, HU range (-850 HU parenchyma
            plus 750-950 gives -100..+100 HU).
        ground_glass_delta_hu: Ground glass added to the parenchyma, HU range.
        edge_vox: Minimum distance to the patch border and to the truth, in voxels.
    """

    enabled: bool = False
    probability: float = 0.25
    max_count: int = 1
    diameter_mm: tuple[float, float] = (3.0, 30.0)
    kind_weights: tuple[float, float, float] = (0.4, 0.2, 0.4)
    shape_weights: tuple[float, float, float] = (0.4, 0.4, 0.2)
    solid_delta_hu: tuple[float, float] = (750.0, 950.0)
    ground_glass_delta_hu: tuple[float, float] = (150.0, 550.0)
    edge_vox: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError("Expected augment.synthetic_nodules.enabled to be a bool. "
                             f"Received: enabled={self.enabled!r}")
        check_float(self.probability, name="augment.synthetic_nodules.probability", minimum=0.0, maximum=1.0)
        check_int(self.max_count, name="augment.synthetic_nodules.max_count", minimum=1)
        check_int(self.edge_vox, name="augment.synthetic_nodules.edge_vox", minimum=1)
        key = "augment.synthetic_nodules."
        checked = {
            "diameter_mm": check_range(self.diameter_mm, name=key + "diameter_mm", positive=True),
            "solid_delta_hu": check_range(self.solid_delta_hu, name=key + "solid_delta_hu", minimum=0.0),
            "ground_glass_delta_hu": check_range(self.ground_glass_delta_hu, name=key + "ground_glass_delta_hu",
                                                 minimum=0.0),
            "kind_weights": _check_weights(self.kind_weights, key + "kind_weights", len(NODULE_KINDS)),
            "shape_weights": _check_weights(self.shape_weights, key + "shape_weights", len(NODULE_SHAPES)),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)  # frozen: store the normalised tuples


@dataclasses.dataclass(frozen=True, eq=False)
class Nodule:
    """A drawn nodule (millimetres; see the module docstring).

    Attributes:
        diameter_mm: Nominal diameter (the sphere of equal volume before perturbation).
        kind: One of ``NODULE_KINDS``.
        shape: One of ``NODULE_SHAPES``.
        axes: (3,) relative semi-axes (product 1).
        rotation: (3, 3) rotation of the axes.
        harmonics: ``(axis (3,), degree, amplitude)`` radial perturbations.
        spikes: ``(direction (3,), length_mm, width_mm)`` beyond the body.
        core_fraction: Solid core radius share (part-solid).
        offset_mm: (3,) sub-voxel shift of the centre.
    """

    diameter_mm: float
    kind: str
    shape: str
    axes: np.ndarray
    rotation: np.ndarray
    harmonics: tuple
    spikes: tuple
    core_fraction: float
    offset_mm: np.ndarray


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(3)
    return v / max(float(np.linalg.norm(v)), 1e-9)


def draw_nodule(rng: np.random.Generator, spec: SyntheticNoduleSpec, *,
                spacing_mm: Sequence[float]) -> Nodule:
    """Draws one nodule's parameters from ``spec`` (all randomness from ``rng``)."""
    lo, hi = spec.diameter_mm
    diameter = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    kind_p = np.asarray(spec.kind_weights) / sum(spec.kind_weights)
    shape_p = np.asarray(spec.shape_weights) / sum(spec.shape_weights)
    kind = NODULE_KINDS[int(rng.choice(len(NODULE_KINDS), p=kind_p))]
    shape = NODULE_SHAPES[int(rng.choice(len(NODULE_SHAPES), p=shape_p))]
    axes = rng.uniform(0.75, 1.0, 3)
    axes /= np.prod(axes) ** (1.0 / 3.0)
    rotation, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    harmonics: list = []
    if shape != "ellipsoid":
        n_terms = int(rng.integers(2, 5)) if shape == "lobulated" else 1
        scale = 0.22 if shape == "lobulated" else 0.1
        for _ in range(n_terms):
            harmonics.append((_unit(rng), int(rng.integers(2, 6)), float(rng.uniform(0.3, 1.0)) * scale / n_terms**0.5))
    spikes: list = []
    if shape == "spiculated":
        radius = diameter / 2
        for _ in range(int(rng.integers(4, 11))):
            spikes.append((_unit(rng), float(rng.uniform(0.5, 1.5)) * radius, float(rng.uniform(0.8, 2.0))))
    offset = (rng.random(3) - 0.5) * np.asarray(spacing_mm, float)
    return Nodule(diameter_mm=diameter, kind=kind, shape=shape, axes=axes, rotation=rotation,
                  harmonics=tuple(harmonics), spikes=tuple(spikes),
                  core_fraction=float(rng.uniform(0.3, 0.6)), offset_mm=offset)


def _reach_mm(nodule: Nodule) -> float:
    radius = nodule.diameter_mm / 2
    body = radius * float(nodule.axes.max()) * (1.0 + sum(abs(a) for _, _, a in nodule.harmonics))
    spikes = max((radius + length for _, length, _ in nodule.spikes), default=0.0)
    return max(body, spikes)


def rasterize_nodule(nodule: Nodule, *, spacing_mm: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Samples a nodule on a grid of ``spacing_mm`` (canonical axes, mm).

    Returns:
        ``(alpha, mask, core)``: float32 coverage in [0, 1] (1 on the mask), bool mask
        (``alpha >= 0.5``, the centre's 26-connected component) and float32 solid-core
        coverage (zero unless part-solid), cropped to the ``alpha > 0`` box.
    """
    spacing = np.asarray(spacing_mm, float)
    voxel_mm = float(np.prod(spacing) ** (1.0 / 3.0))
    half = np.ceil((_reach_mm(nodule) + voxel_mm) / spacing).astype(int) + 1
    grids = [(np.arange(-h, h + 1) * s - o) for h, s, o in zip(half, spacing, nodule.offset_mm)]
    dx, dy, dz = np.meshgrid(*grids, indexing="ij", sparse=True)
    radius = nodule.diameter_mm / 2
    rot = nodule.rotation
    rho_sq = 0.0
    for axis in range(3):
        local = dx * rot[0, axis] + dy * rot[1, axis] + dz * rot[2, axis]
        rho_sq = rho_sq + (local / (radius * nodule.axes[axis])) ** 2
    rho = np.sqrt(rho_sq)
    norm = np.sqrt(dx**2 + dy**2 + dz**2)
    safe = np.maximum(norm, 1e-9)
    surface = np.ones(rho.shape)
    for direction, degree, amplitude in nodule.harmonics:
        cos = (dx * direction[0] + dy * direction[1] + dz * direction[2]) / safe
        surface = surface + amplitude * legendre.legval(cos, np.eye(degree + 1)[degree])
    alpha = np.clip(0.5 + (surface - rho) * radius / voxel_mm, 0.0, 1.0)
    for direction, length, width in nodule.spikes:
        t = dx * direction[0] + dy * direction[1] + dz * direction[2]
        perp = np.sqrt(np.maximum(norm**2 - t**2, 0.0))
        reach = radius + length
        half_width = 0.5 * width * np.clip(1.0 - t / reach, 0.0, 1.0)
        spike = np.clip(0.5 + (half_width - perp) / voxel_mm, 0.0, 1.0) * ((t >= 0) & (t <= reach))
        alpha = np.maximum(alpha, spike)
    core = np.zeros(alpha.shape)
    if nodule.kind == "part_solid":
        core = np.clip(0.5 + (nodule.core_fraction * surface - rho) * radius / voxel_mm, 0.0, 1.0)
    mask = alpha >= 0.5
    labels, _ = ndi.label(mask, structure=_STRUCT26)
    centre_label = labels[tuple(half)]
    if centre_label == 0:  # a nodule thinner than a voxel: its largest component
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        centre_label = int(np.argmax(sizes))
    mask = labels == centre_label if centre_label else mask
    alpha = np.where(mask, 1.0, np.minimum(alpha, 0.49))
    core = np.where(mask, core, 0.0)
    box = ndi.find_objects((alpha > 0).astype(np.uint8))[0] if np.any(alpha > 0) else ()
    return alpha[box].astype(np.float32), mask[box], core[box].astype(np.float32)


def parenchyma_stats(image: np.ndarray, region: np.ndarray) -> tuple[float, float] | None:
    """Median and robust noise (``1.4826 * MAD``) of ``image`` over ``region``; None if too small."""
    values = np.asarray(image)[np.asarray(region, bool)]
    if values.size < _MIN_PARENCHYMA_VOXELS:
        return None
    level = float(np.median(values))
    return level, 1.4826 * float(np.median(np.abs(values - level)))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    noise = ndi.gaussian_filter(rng.standard_normal(shape), _NOISE_SIGMA_VOX, mode="wrap")
    return noise / max(float(noise.std()), 1e-9)


def insert_nodules(image: np.ndarray, mask: np.ndarray, lung: np.ndarray, *, spec: SyntheticNoduleSpec,
                   rng: np.random.Generator, spacing_mm: Sequence[float], units_per_hu: float,
                   parenchyma_level: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Paints 1..``spec.max_count`` synthetic nodules into a patch's lungs.

    Args:
        image: float32 ``(I, J, K)`` patch (normalised units).
        mask: ``(I, J, K)`` truth (> 0 is lesion).
        lung: bool ``(I, J, K)`` lung region of the patch.
        spec: The settings (``probability`` is the caller's: this always paints).
        rng: The sample's generator.
        spacing_mm: Voxel spacing of the patch.
        units_per_hu: Normalised intensity units per HU.
        parenchyma_level: Normalised level below which lung voxels are parenchyma
            (`segmentation.preprocessing.PARENCHYMA_BELOW_HU`, -500 HU).

    Returns:
        ``(image float32, mask uint8, n_painted)``; new arrays. Nothing is painted into a
        patch with fewer than 64 parenchyma voxels.
    """
    image, mask, lung = patch_arrays(image, mask, lung)
    stats = parenchyma_stats(image, lung & ~mask & (image < parenchyma_level))
    painted = 0
    if stats is None:
        return image, mask.astype(np.uint8), painted
    level, noise_sd = stats
    ceiling = float(image.max())
    ball = ndi.generate_binary_structure(3, 1)
    for _ in range(int(rng.integers(1, spec.max_count + 1))):
        forbidden = ndi.binary_dilation(mask, ball, iterations=spec.edge_vox)
        for _ in range(_NODULES_PER_SLOT):
            nodule = draw_nodule(rng, spec, spacing_mm=spacing_mm)
            alpha, nodule_mask, core = rasterize_nodule(nodule, spacing_mm=spacing_mm)
            if not nodule_mask.any():
                continue
            start = find_position(lung, forbidden, inner=nodule_mask, outer=alpha > 0, border_vox=spec.edge_vox,
                                  rng=rng, attempts=_POSITIONS_PER_NODULE)
            if start is None:
                continue
            box = tuple(slice(a, a + n) for a, n in zip(start, alpha.shape))
            solid = level + float(rng.uniform(*spec.solid_delta_hu)) * units_per_hu
            ggo = float(rng.uniform(*spec.ground_glass_delta_hu)) * units_per_hu
            noise = noise_sd * _smooth_noise(rng, alpha.shape)
            under = image[box]
            if nodule.kind == "solid":
                out = under + alpha * (solid + noise - under)
            else:
                # added, but never above the patch's brightest voxel (no value the scan lacks)
                out = np.minimum(under + alpha * ggo, np.maximum(under, ceiling))
                out = out + core * (solid + noise - out)
            image[box] = out.astype(np.float32)
            mask[box] |= nodule_mask
            painted += 1
            break
    return image, mask.astype(np.uint8), painted
