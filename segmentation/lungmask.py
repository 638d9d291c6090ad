"""Lung region of a chest CT, and removal of predicted components that lie outside it.

Nodule CAD pipelines restrict candidates to the lungs: a predicted component in the
mediastinum, the heart or the chest wall is a false positive whatever its probability. The
region here is built from thresholds and morphology only, so it needs no model and no
download:

1. air-like voxels (below ``threshold``, -400 HU by default) that are not connected to the
   in-plane border of the volume (the air around the patient touches it, the lungs do not);
2. of those components, the ones at least ``min_share`` of the largest (both lungs and the
   airways, not small pockets of bowel gas);
3. holes filled slice by slice (vessels and nodules inside the lung are denser than air);
4. a closing of radius ``closing_mm``, done with two exact Euclidean distance transforms in
   millimetres, that takes back juxtapleural nodules and the indents they make in the lung
   boundary, then the slice-by-slice hole filling again.

The array must be in canonical order with the cranio-caudal axis last (``(I, J, K)``, as in
the network space after preprocessing): "in-plane border" means the faces of axes 0 and 1.
When no lung-sized air component is found (a scan without lungs, a tight crop), the whole
volume is returned, so that filtering with it removes nothing.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from segmentation.metrics import check_spacing, label_components
from segmentation.validation import check_float

__all__ = ["LUNG_AIR_HU", "lung_region", "drop_components_outside"]

LUNG_AIR_HU = -400.0  # lung parenchyma is about -850 HU; soft tissue and vessels are > -100 HU

logger = logging.getLogger(__name__)


def _fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    out = np.empty_like(mask)
    for k in range(mask.shape[2]):
        out[:, :, k] = ndi.binary_fill_holes(mask[:, :, k])
    return out


def _closing_mm(mask: np.ndarray, radius_mm: float, spacing_mm: tuple[float, ...]) -> np.ndarray:
    """Binary closing with a Euclidean ball of ``radius_mm`` (anisotropic voxels allowed)."""
    if radius_mm <= 0 or not mask.any():
        return mask
    pad = [int(math.ceil(radius_mm / s)) + 1 for s in spacing_mm]
    padded = np.pad(mask, [(p, p) for p in pad])
    dilated = ndi.distance_transform_edt(~padded, sampling=spacing_mm) <= radius_mm
    closed = ndi.distance_transform_edt(dilated, sampling=spacing_mm) > radius_mm
    return closed[tuple(slice(p, p + n) for p, n in zip(pad, mask.shape))] | mask


def lung_region(image: np.ndarray, *, spacing_mm: Sequence[float],
                threshold: float = LUNG_AIR_HU, closing_mm: float = 10.0,
                min_share: float = 0.1) -> np.ndarray:
    """The lungs (with their vessels, nodules and juxtapleural indents) of a chest CT.

    Args:
        image: float ``(I, J, K)`` CT, cranio-caudal axis last, in HU or in any monotonic
            transform of HU with ``threshold`` given in the same units.
        spacing_mm: Voxel spacing of ``image``'s axes (mm).
        threshold: Voxels below it are air-like (default -400 HU).
        closing_mm: Radius of the closing that takes back juxtapleural nodules (>= 0).
        min_share: Air components at least this share of the largest one are kept, in (0, 1].

    Returns:
        bool ``(I, J, K)``; all True when no lung-sized air component is found.

    Raises:
        ValueError: a non-3D image, bad spacing, ``closing_mm`` or ``min_share``.
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"Expected a 3D image (I, J, K). Received: image.shape={image.shape}")
    spacing = check_spacing(spacing_mm)
    check_float(closing_mm, name="closing_mm", minimum=0)
    if not 0 < min_share <= 1:
        raise ValueError(f"Expected 0 < min_share <= 1. Received: min_share={min_share!r}")
    labels, n = ndi.label(image < threshold)
    if n == 0:
        logger.warning("No air-like voxel below %s: the lung region is the whole volume.", threshold)
        return np.ones(image.shape, bool)
    border = np.unique(np.concatenate([labels[0].ravel(), labels[-1].ravel(),
                                       labels[:, 0].ravel(), labels[:, -1].ravel()]))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    sizes[border] = 0
    if sizes.max() == 0:
        logger.warning("Every air-like component touches the in-plane border: the lung region "
                       "is the whole volume.")
        return np.ones(image.shape, bool)
    keep = sizes >= min_share * sizes.max()
    keep[0] = False
    lungs = _fill_holes_per_slice(keep[labels])
    del labels
    return _fill_holes_per_slice(_closing_mm(lungs, float(closing_mm), spacing))


def drop_components_outside(mask: np.ndarray, region: np.ndarray, *, min_inside: float = 0.5,
                            connectivity: int = 26) -> np.ndarray:
    """Removes the connected components of ``mask`` that lie mostly outside ``region``.

    Args:
        mask: bool ``(I, J, K)`` predicted mask.
        region: bool ``(I, J, K)`` region (e.g. from :func:`lung_region`), same shape.
        min_inside: A component is kept when at least this share of its voxels is inside.
        connectivity: 6, 18 or 26.

    Returns:
        bool ``(I, J, K)``: ``mask`` without the components outside the region.

    Raises:
        ValueError: shapes differ, bad ``min_inside`` or ``connectivity``.
    """
    mask, region = np.asarray(mask, bool), np.asarray(region, bool)
    if mask.shape != region.shape:
        raise ValueError(
            "Expected mask and region of the same shape. "
            f"Received: mask.shape={mask.shape}, region.shape={region.shape}")
    if not 0 < min_inside <= 1:
        raise ValueError(f"Expected 0 < min_inside <= 1. Received: min_inside={min_inside!r}")
    labels, n = label_components(mask, connectivity=connectivity)
    if n == 0:
        return mask
    total = np.bincount(labels.ravel(), minlength=n + 1)
    inside = np.bincount(labels[region], minlength=n + 1)
    keep = inside >= min_inside * total
    keep[0] = False
    return keep[labels]
