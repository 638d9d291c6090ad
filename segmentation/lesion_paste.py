"""Lesion copy-paste augmentation (NumPy / SciPy only).

The idea is Simple Copy-Paste (Ghiasi et al., CVPR 2021), used for lesions by TumorCP
(Yang et al., MICCAI 2021) and CarveMix (Zhang et al., MICCAI 2021): a model that sees the
same 80 nodules 75 times learns *which* nodules exist; pasting each of them, transformed,
into many other places teaches it *what* a nodule is. This module is our own version:

1. **The bank** (`build_lesion_bank`, once at preparation time): every lesion (26-connected
   truth component) of the training cases is cut with its image inside the mask dilated by
   ``edge_vox`` voxels and a soft edge weight (1 on the mask, falling linearly to 0 at
   ``edge_vox + 1`` voxels from it), its mask and its source case id. Lesions whose cut box
   would reach the volume border, or holds another lesion's voxels, are skipped. A lesion
   whose mean intensity is below ``subsolid_level`` (``subsolid_below_hu`` brought through
   the preprocessing normalisation) is *subsolid*.
2. **The paste** (`paste_lesions`, per patch): 1..``max_count`` lesions of **other** cases,
   each randomly flipped along every axis, rotated by a multiple of 90 degrees in the axial
   plane (axes 0, 1), rescaled by a factor in ``scale`` (`scipy.ndimage.zoom`, linear for
   image, weight and mask, the mask then thresholded at 0.5 so that it stays aligned with
   the interpolated image) and shifted in intensity, are placed where their
   whole soft-edge region lies inside the patch's lung region, at least ``edge_vox`` voxels
   from the patch border and outside the existing truth mask dilated by ``edge_vox``.
   Solid lesions replace what they cover (``under + w * (lesion - under)``); subsolid ones
   keep the brighter of the two (``max(under, under + w * (lesion - under))``), so vessels
   under a ground-glass nodule stay visible. The patch mask gets the pasted mask (OR).

Every random choice comes from the ``rng`` passed in; `segmentation.nodule_insertion` seeds
it from ``(seed, sample index)``, as the patch sampler does, so sample ``i`` is the same in
every run and after a resume. Arrays are 3D ``(I, J, K)`` with K the slice axis.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from segmentation.validation import check_float, check_int, check_range

__all__ = [
    "LesionPasteSpec",
    "BankLesion",
    "soft_edge_weight",
    "build_lesion_bank",
    "transform_lesion",
    "find_position",
    "blend",
    "patch_arrays",
    "paste_lesions",
]

logger = logging.getLogger(__name__)

_LESIONS_PER_PASTE = 3  # lesions tried for one paste slot (a large one may not fit)
_POSITIONS_PER_LESION = 8  # positions tried for one lesion


@dataclasses.dataclass(frozen=True)
class LesionPasteSpec:
    """``augment.lesion_paste``: lesion copy-paste settings (off by default).

    Attributes:
        enabled: Paste lesions into training patches (3D patches only).
        probability: Chance that a patch gets pasted lesions.
        max_count: A pasted patch gets 1..max_count lesions (fewer when they do not fit).
        scale: Isotropic rescaling factor range of a pasted lesion.
        intensity_jitter_hu: A pasted lesion is shifted by a uniform [-j, j] HU.
        subsolid_below_hu: Lesions with a mean below this are blended so that what is
            under them stays visible (ground-glass); the others replace it.
        edge_vox: Width of the soft edge cut around a lesion, its minimum distance to the
            patch border and to the patch's other lesions, in voxels.
    """

    enabled: bool = False
    probability: float = 0.5
    max_count: int = 2
    scale: tuple[float, float] = (0.75, 1.25)
    intensity_jitter_hu: float = 40.0
    subsolid_below_hu: float = -300.0
    edge_vox: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"Expected augment.lesion_paste.enabled to be a bool. Received: enabled={self.enabled!r}")
        check_float(self.probability, name="augment.lesion_paste.probability", minimum=0.0, maximum=1.0)
        check_int(self.max_count, name="augment.lesion_paste.max_count", minimum=1)
        check_int(self.edge_vox, name="augment.lesion_paste.edge_vox", minimum=1)
        scale = check_range(self.scale, name="augment.lesion_paste.scale", positive=True)
        object.__setattr__(self, "scale", scale)
        jitter = self.intensity_jitter_hu
        if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0 <= jitter < math.inf:
            raise ValueError(
                f"Expected augment.lesion_paste.intensity_jitter_hu >= 0. Received: intensity_jitter_hu={jitter!r}")
        level = self.subsolid_below_hu
        if isinstance(level, bool) or not isinstance(level, (int, float)) or not math.isfinite(level):
            raise ValueError("Expected augment.lesion_paste.subsolid_below_hu to be a finite number. "
                             f"Received: subsolid_below_hu={level!r}")


@dataclasses.dataclass(frozen=True, eq=False)
class BankLesion:
    """One lesion cut from a training case.

    Attributes:
        case_id: The source case.
        image: float32 ``(a, b, c)`` image inside the cut box.
        mask: bool ``(a, b, c)`` the lesion (this component only).
        weight: float32 ``(a, b, c)`` soft edge: 1 on the mask, 0 beyond ``edge_vox``.
        subsolid: Mean intensity on the mask below the subsolid level.
    """

    case_id: str
    image: np.ndarray
    mask: np.ndarray
    weight: np.ndarray
    subsolid: bool


def soft_edge_weight(mask: np.ndarray, *, edge_vox: int) -> np.ndarray:
    """Blending weight: 1 on ``mask``, ``1 - d / (edge_vox + 1)`` at distance ``d`` voxels.

    Args:
        mask: bool ``(a, b, c)``.
        edge_vox: Width of the edge (voxels with ``d <= edge_vox`` get a weight > 0).

    Returns:
        float32 ``(a, b, c)`` in [0, 1].
    """
    mask = np.asarray(mask, bool)
    if not mask.any():
        return np.zeros(mask.shape, np.float32)
    distance = ndi.distance_transform_edt(~mask)
    return np.clip(1.0 - distance / (edge_vox + 1.0), 0.0, 1.0).astype(np.float32)


def _cut(case: Any, lesion: Any, *, edge_vox: int, subsolid_level: float) -> BankLesion | str:
    """Cuts one lesion (a `segmentation.sampling.Lesion`); a reason string when skipped."""
    shape = np.asarray(case.image.shape)
    start = np.asarray(lesion.bbox_start) - edge_vox
    stop = np.asarray(lesion.bbox_stop) + edge_vox
    if np.any(start < 0) or np.any(stop > shape):
        return "border"
    box = tuple(slice(int(a), int(b)) for a, b in zip(start, stop))
    image = np.asarray(case.image[box], dtype=np.float32)
    foreground = np.asarray(case.mask[box]) > 0
    inner = tuple(b - a for a, b in zip(lesion.bbox_start, lesion.bbox_stop))
    local = np.unravel_index(lesion.flat_indices, inner)
    mask = np.zeros(image.shape, bool)
    mask[tuple(idx + edge_vox for idx in local)] = True
    weight = soft_edge_weight(mask, edge_vox=edge_vox)
    if np.any(foreground & ~mask & (weight > 0)):
        return "neighbour"
    subsolid = bool(float(image[mask].mean()) < subsolid_level)
    return BankLesion(case_id=str(case.case_id), image=image, mask=mask, weight=weight, subsolid=subsolid)


def build_lesion_bank(cases: Sequence[Any], lesions: Sequence[Any], *, edge_vox: int,
                      subsolid_level: float) -> list[BankLesion]:
    """Cuts every usable lesion of the cases (see the module docstring).

    Args:
        cases: Objects with ``.case_id``, ``.image`` and ``.mask`` (I, J, K) (memmaps are
            read only inside each lesion's box).
        lesions: `segmentation.sampling.Lesion` records (``PatchSampler.lesions``) whose
            ``case_index`` points into ``cases``.
        edge_vox: Soft-edge width in voxels (>= 1).
        subsolid_level: Mean intensity (normalised units) below which a lesion is subsolid.

    Returns:
        The bank, in the order of ``lesions`` (skipped ones left out; the count is logged).
    """
    edge_vox = check_int(edge_vox, name="edge_vox", minimum=1)
    bank, skipped = [], {"border": 0, "neighbour": 0}
    for lesion in lesions:
        cut = _cut(cases[lesion.case_index], lesion, edge_vox=edge_vox, subsolid_level=float(subsolid_level))
        if isinstance(cut, str):
            skipped[cut] += 1
        else:
            bank.append(cut)
    if skipped["border"] or skipped["neighbour"]:
        logger.info("Lesion bank: %d lesions; skipped %d at the volume border and %d beside another lesion.",
                    len(bank), skipped["border"], skipped["neighbour"])
    return bank


def transform_lesion(lesion: BankLesion, rng: np.random.Generator, *, scale: tuple[float, float], shift: float,
                     value_range: tuple[float, float] = (-np.inf, np.inf),
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Flips, rotates (90-degree steps, axial plane), rescales and shifts a bank lesion.

    Args:
        lesion: From the bank.
        rng: The sample's generator.
        scale: Rescaling factor range.
        shift: Maximum absolute intensity shift (normalised units).
        value_range: ``(low, high)`` the shifted image is clipped to: the values the
            normalisation can produce.

    Returns:
        ``(image float32, mask bool, weight float32)`` of one shape, or None when the
        rescaled mask is empty. The weight is 1 on the mask.
    """
    image, mask, weight = lesion.image, lesion.mask, lesion.weight
    for axis in range(3):
        if rng.random() < 0.5:
            image, mask, weight = np.flip(image, axis), np.flip(mask, axis), np.flip(weight, axis)
    k = int(rng.integers(4))
    image, mask, weight = (np.rot90(a, k, axes=(0, 1)) for a in (image, mask, weight))
    factor = float(rng.uniform(*scale))
    delta = float(rng.uniform(-shift, shift)) if shift > 0 else 0.0
    if factor != 1.0:
        image = ndi.zoom(image, factor, order=1, mode="nearest")
        weight = ndi.zoom(weight, factor, order=1, mode="nearest")
        # linear then >= 0.5, not nearest: a mask voxel is one whose interpolated image is
        # mostly lesion, so the rim of the mask stays aligned with the rim of the image
        mask = ndi.zoom(mask.astype(np.float32), factor, order=1, mode="nearest") >= 0.5
    if not mask.any():
        return None
    weight = np.maximum(np.clip(weight, 0.0, 1.0), mask).astype(np.float32)
    shifted = np.clip(image + np.float32(delta), *value_range)  # a windowed image stays in [0, 1]
    return shifted.astype(np.float32), np.ascontiguousarray(mask), weight


def patch_arrays(image: Any, mask: Any, lung: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The arrays a lesion is inserted into: a float32 copy of ``image``, ``mask > 0``, ``lung``.

    The one check of `paste_lesions` and `segmentation.synthetic_nodules.insert_nodules`.

    Args:
        image: ``(I, J, K)`` patch (normalised units).
        mask: ``(I, J, K)`` truth (> 0 is lesion).
        lung: ``(I, J, K)`` lung region (truthy inside).

    Returns:
        ``(image float32 (a new array), mask bool, lung bool)``, all of shape (I, J, K).

    Raises:
        ValueError: the three are not of one 3D shape.
    """
    image = np.array(image, dtype=np.float32)
    mask = np.asarray(mask) > 0
    lung = np.asarray(lung, bool)
    if not (image.shape == mask.shape == lung.shape) or image.ndim != 3:
        raise ValueError(
            "Expected image, mask and lung of one 3D shape. "
            f"Received: image.shape={image.shape}, mask.shape={mask.shape}, lung.shape={lung.shape}")
    return image, mask, lung


def find_position(lung: np.ndarray, forbidden: np.ndarray, *, inner: np.ndarray, outer: np.ndarray,
                  border_vox: int, rng: np.random.Generator, attempts: int) -> tuple[int, ...] | None:
    """A box start where ``outer`` lies in ``lung`` and misses ``forbidden``, or None.

    Args:
        lung: bool ``(I, J, K)`` where the insert may go.
        forbidden: bool ``(I, J, K)`` voxels the insert's ``outer`` region must not touch.
        inner: bool ``(a, b, c)`` the insert's mask (its centre voxel starts the search).
        outer: bool ``(a, b, c)`` every voxel the insert changes (``inner`` and its edge).
        border_vox: Minimum distance of the box to the patch border.
        rng: The sample's generator.
        attempts: Candidate positions tried.

    Returns:
        The box start ``(i, j, k)`` or None.
    """
    size = np.asarray(outer.shape)
    low = np.full(3, border_vox)
    high = np.asarray(lung.shape) - size - border_vox  # inclusive
    if np.any(high < low):
        return None
    voxels = np.argwhere(inner)
    centre = voxels[len(voxels) // 2] if len(voxels) else size // 2
    window = tuple(slice(int(a + c), int(b + c) + 1) for a, b, c in zip(low, high, centre))
    free = lung[window] & ~forbidden[window]
    candidates = np.flatnonzero(free)
    if candidates.size == 0:
        return None
    for _ in range(attempts):
        start = np.asarray(np.unravel_index(int(candidates[rng.integers(candidates.size)]), free.shape)) + low
        box = tuple(slice(int(a), int(a + n)) for a, n in zip(start, size))
        if np.all(lung[box][outer]) and not np.any(forbidden[box][outer]):
            return tuple(int(s) for s in start)
    return None


def blend(under: np.ndarray, lesion: np.ndarray, weight: np.ndarray, *, subsolid: bool) -> np.ndarray:
    """Soft-edge blend of ``lesion`` over ``under``.

    Solid: ``under + weight * (lesion - under)``. Subsolid: the maximum of that and
    ``under``, so the brighter of the two (a vessel under ground glass) stays.

    Returns:
        float32 array of ``under``'s shape.
    """
    mixed = under + weight * (lesion - under)
    return (np.maximum(under, mixed) if subsolid else mixed).astype(np.float32)


def paste_lesions(image: np.ndarray, mask: np.ndarray, lung: np.ndarray, *, bank: Sequence[BankLesion],
                  case_id: str, spec: LesionPasteSpec, rng: np.random.Generator, units_per_hu: float,
                  value_range: tuple[float, float] = (-np.inf, np.inf)) -> tuple[np.ndarray, np.ndarray, int]:
    """Pastes 1..``spec.max_count`` lesions of other cases into a patch's lungs.

    Args:
        image: float32 ``(I, J, K)`` patch (normalised units).
        mask: ``(I, J, K)`` truth (> 0 is lesion).
        lung: bool ``(I, J, K)`` lung region of the patch.
        bank: From `build_lesion_bank`.
        case_id: The patch's case (its own lesions are never pasted into it).
        spec: The settings (``probability`` is the caller's: this always pastes).
        rng: The sample's generator.
        units_per_hu: Normalised intensity units per HU (for the jitter).
        value_range: Values the normalisation can produce; jittered lesions are clipped to it.

    Returns:
        ``(image float32, mask uint8, n_pasted)``; new arrays, the inputs are not changed.
    """
    image, mask, lung = patch_arrays(image, mask, lung)
    others = [lesion for lesion in bank if lesion.case_id != str(case_id)]
    pasted = 0
    if not others:
        return image, mask.astype(np.uint8), pasted
    ball = ndi.generate_binary_structure(3, 1)
    for _ in range(int(rng.integers(1, spec.max_count + 1))):
        forbidden = ndi.binary_dilation(mask, ball, iterations=spec.edge_vox)
        for _ in range(_LESIONS_PER_PASTE):
            lesion = others[int(rng.integers(len(others)))]
            moved = transform_lesion(lesion, rng, scale=spec.scale, shift=spec.intensity_jitter_hu * units_per_hu,
                                     value_range=value_range)
            if moved is None:
                continue
            lesion_image, lesion_mask, weight = moved
            start = find_position(lung, forbidden, inner=lesion_mask, outer=weight > 0, border_vox=spec.edge_vox,
                                  rng=rng, attempts=_POSITIONS_PER_LESION)
            if start is None:
                continue
            box = tuple(slice(a, a + n) for a, n in zip(start, lesion_mask.shape))
            image[box] = blend(image[box], lesion_image, weight, subsolid=lesion.subsolid)
            mask[box] |= lesion_mask
            pasted += 1
            break
    return image, mask.astype(np.uint8), pasted
