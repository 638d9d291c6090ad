"""The synthetic inputs of ``lungseg bench``: a random training batch and the size of the
pipeline phantom (``train``), a cheap synthetic chest CT (``infer``) and a truth/prediction
pair with lesions and a probability map (``evaluate``). Re-exported by `pipelines.bench`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from segmentation.validation import check_shape, check_spacing

__all__ = ["synthetic_chest_hu", "synthetic_lesion_pair"]


def _pipeline_phantom_geometry(config) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Size and spacing of the pipeline phantom: twice the patch at the target spacing.

    The phantom is drawn at the config's target spacing (1.5 mm when it keeps native spacing),
    large enough for twice the patch on each axis and for the phantom's minimum fields of view
    (100 mm in-plane, 30 mm along the slices), capped at 160 voxels per axis.
    """
    from segmentation.phantom import MIN_FOV_INPLANE_MM, MIN_FOV_SLICE_MM

    spacing = tuple(float(s) for s in (config.preprocess.target_spacing_mm or (1.5, 1.5, 1.5)))
    patch = tuple(config.train.patch_size)
    if len(patch) == 2:  # 2D models: in-plane patches of axial slices
        patch = (*patch, 1)
    fov = (MIN_FOV_INPLANE_MM, MIN_FOV_INPLANE_MM, MIN_FOV_SLICE_MM)
    size = tuple(
        min(160, max(2 * p, math.ceil(f / s) + 1, 16)) for p, f, s in zip(patch, fov, spacing)
    )
    spacing = tuple(max(s, f / n + 1e-6) for s, f, n in zip(spacing, fov, size))
    return size, spacing  # type: ignore[return-value]


def _random_batch(config, *, n_outputs: int, seed: int) -> tuple[np.ndarray, Any]:
    """A random training batch: image uniform in [0, 1], label with about 5% foreground."""
    rng = np.random.default_rng(seed)
    shape = (config.train.batch_size, *config.train.patch_size)
    channels = config.model.in_channels
    if config.model.spatial_dims == 2:
        channels = max(channels, 2 * config.model.context_slices + 1)
    x = rng.random((*shape, channels), dtype=np.float32)
    y = (rng.random((*shape, 1)) < 0.05).astype(np.float32)
    return x, (y if n_outputs == 1 else tuple([y] * n_outputs))


def _ellipse(shape_ij: tuple[int, int], centre_mm, radii_mm, spacing_ij) -> np.ndarray:
    """bool (I, J): inside the axis-aligned ellipse (mm)."""
    ii = (np.arange(shape_ij[0]) * spacing_ij[0] - centre_mm[0]) / radii_mm[0]
    jj = (np.arange(shape_ij[1]) * spacing_ij[1] - centre_mm[1]) / radii_mm[1]
    return ii[:, None] ** 2 + jj[None, :] ** 2 <= 1.0


def _ball_slices(centre_vox: np.ndarray, radius_mm: float, spacing_mm, shape) -> tuple[slice, ...]:
    reach = [math.ceil(radius_mm / s) + 1 for s in spacing_mm]
    return tuple(slice(max(0, int(c) - r), min(n, int(c) + r + 1))
                 for c, r, n in zip(centre_vox, reach, shape))


def _paint_ball(array: np.ndarray, centre_vox, radius_mm: float, spacing_mm, value) -> None:
    """Sets ``array`` to ``value`` inside a ball (mm), touching only its bounding box."""
    box = _ball_slices(np.asarray(centre_vox), radius_mm, spacing_mm, array.shape)
    grids = np.ogrid[box]
    dist2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre_vox, spacing_mm))
    array[box][dist2 <= radius_mm**2] = value


def synthetic_chest_hu(shape: Sequence[int], *, spacing_mm: Sequence[float], seed: int = 0) -> np.ndarray:
    """A cheap synthetic chest CT (for shapes the phantom generator does not take or is slow at).

    Air outside an elliptic body (40 HU), two elliptic lungs (-850 HU) with six solid nodules
    (30 HU, 4-20 mm), Gaussian noise (sd 20 HU). Built from 2D masks broadcast along the slices,
    so it costs little more than the output array.

    Args:
        shape: (I, J, K) voxels (canonical RAS order, K the slice axis).
        spacing_mm: (I, J, K) voxel size in mm.
        seed: Noise and nodule placement.

    Returns:
        float32 (I, J, K) Hounsfield units.
    """
    shape = check_shape(shape)
    spacing = check_spacing(spacing_mm)
    rng = np.random.default_rng(seed)
    extent = [n * s for n, s in zip(shape, spacing)]
    body = _ellipse(shape[:2], (extent[0] / 2, extent[1] / 2), (0.45 * extent[0], 0.38 * extent[1]),
                    spacing[:2])
    lungs = np.zeros(shape[:2], dtype=bool)
    for side in (0.3, 0.7):
        lungs |= _ellipse(shape[:2], (side * extent[0], 0.5 * extent[1]),
                          (0.14 * extent[0], 0.28 * extent[1]), spacing[:2])
    plane = np.where(lungs, -850.0, np.where(body, 40.0, -1000.0)).astype(np.float32)
    volume = rng.standard_normal(shape, dtype=np.float32)
    volume *= 20.0
    volume += plane[:, :, None]
    lung_ij = np.argwhere(lungs)
    for diameter_mm in (4.0, 6.0, 8.0, 10.0, 14.0, 20.0):
        if lung_ij.size == 0:
            break
        i, j = lung_ij[rng.integers(len(lung_ij))]
        k = rng.uniform(0.2, 0.8) * shape[2]
        _paint_ball(volume, (i, j, k), diameter_mm / 2, spacing, np.float32(30.0))
    return volume


def synthetic_lesion_pair(shape: Sequence[int], *, spacing_mm: Sequence[float], seed: int = 0
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A truth/prediction pair with lesions, and a probability map, for timing metrics.

    Seven truth lesions (3, 5, 8, 12, 16, 20, 25 mm) at random places; the prediction has
    each shifted by about 1 voxel and scaled by 0.8-1.2, except the 3 mm one (missed), plus two
    6 mm false positives. Probabilities: 0.9 in predicted voxels, 0.6 in missed truth voxels,
    0.02 elsewhere. Lesions are painted in their bounding boxes only.

    Args:
        shape: (I, J, K) voxels.
        spacing_mm: (I, J, K) voxel size in mm.
        seed: Placement seed.

    Returns:
        ``(truth bool (I, J, K), pred bool (I, J, K), probs float32 (I, J, K))``.
    """
    shape = check_shape(shape)
    spacing = check_spacing(spacing_mm)
    rng = np.random.default_rng(seed)
    truth = np.zeros(shape, dtype=bool)
    pred = np.zeros(shape, dtype=bool)
    dims = np.asarray(shape, dtype=float)
    for diameter_mm in (3.0, 5.0, 8.0, 12.0, 16.0, 20.0, 25.0):
        centre = rng.uniform(0.15, 0.85, size=3) * dims
        _paint_ball(truth, centre, diameter_mm / 2, spacing, True)
        if diameter_mm > 3.0:
            shifted = centre + rng.normal(0.0, 1.0, size=3)
            _paint_ball(pred, shifted, diameter_mm / 2 * rng.uniform(0.8, 1.2), spacing, True)
    for _ in range(2):
        _paint_ball(pred, rng.uniform(0.1, 0.9, size=3) * dims, 3.0, spacing, True)
    probs = np.full(shape, 0.02, dtype=np.float32)
    probs[truth] = 0.6
    probs[pred] = 0.9
    return truth, pred, probs
