"""CT intensity normalisation, resampling to a target spacing, and the preprocessed-case cache.

Training and inference share these functions (and the :class:`~segmentation.alignment.Geometry`
they record), so both see exactly the same preprocessing. Order of operations in
:func:`preprocess_volume`: optional crop to the body, resample (in Hounsfield units), then
normalise, so the normalised image always honours its range (a cubic overshoot in HU is
clipped by the window afterwards).

The normalisation, the named HU levels and `PreprocessSpec` live in
`segmentation.normalisation` (the one owner of the normalisation: every other module asks
`normalised_level`, `air_level` or `body_level` for the normalised value of a HU level); the
case records and the cache in `segmentation.preprocessing_cache`. This module re-exports
both helpers' public names: import them from here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from segmentation.alignment import (
    Crop,
    Geometry,
    Resample,
    ShapeMismatchError,
    body_bbox,
    separate_slice_axis,
    target_shape,
)
from segmentation.normalisation import (
    AIR_HU,
    BODY_ABOVE_HU,
    PARENCHYMA_BELOW_HU,
    SOFT_TISSUE_ABOVE_HU,
    CTStats,
    PreprocessSpec,
    _image_array,
    air_level,
    body_level,
    compute_ct_stats,
    ct_zscore,
    hu_window,
    normalised_level,
)
from segmentation.preprocessing_cache import (
    CachedCase,
    CacheError,
    Preprocessed,
    cache_case,
    lesion_records,
    load_cached_case,
)

__all__ = [
    "AIR_HU",
    "BODY_ABOVE_HU",
    "SOFT_TISSUE_ABOVE_HU",
    "PARENCHYMA_BELOW_HU",
    "CacheError",
    "CTStats",
    "PreprocessSpec",
    "Preprocessed",
    "CachedCase",
    "hu_window",
    "ct_zscore",
    "normalised_level",
    "air_level",
    "body_level",
    "compute_ct_stats",
    "preprocess_volume",
    "lesion_records",
    "cache_case",
    "load_cached_case",
]


# --------------------------------------------------------------------------------------------
# Whole-case preprocessing
# --------------------------------------------------------------------------------------------


def _describe(volume: Any) -> str:
    path = getattr(volume, "path", None)
    return f"'{path}'" if path is not None else "<in-memory volume>"


def preprocess_volume(image: Any, *, spec: PreprocessSpec, mask: Any | None = None) -> Preprocessed:
    """Crops (optional), resamples and normalises one case, recording every step.

    Args:
        image: A ``segmentation.io.Volume`` (canonical ``array`` in HU, ``affine``,
            ``geometry``); any object with those attributes works.
        spec: The PreprocessSpec.
        mask: Optional mask Volume on the same grid (any value > 0 is foreground).

    Returns:
        Preprocessed with ``geometry = image.geometry.then(...)`` for each step taken: Crop
        when ``spec.crop_to_body``, Resample when the target spacing changes the shape.

    Raises:
        TypeError: If ``spec`` is not a PreprocessSpec.
        ShapeMismatchError: If the mask grid differs from the image's (names both).
        ValueError: If the image array does not match its geometry or the affines differ.
    """
    if not isinstance(spec, PreprocessSpec):
        raise TypeError(f"Expected spec to be a PreprocessSpec. Received: spec={spec!r}")
    array = _image_array(image.array, name=f"image {_describe(image)}")
    geometry: Geometry = image.geometry
    if array.ndim != 3 or tuple(array.shape) != geometry.shape:
        raise ValueError(
            f"Expected the image array of {_describe(image)} to have its geometry's shape {geometry.shape}. "
            f"Received: array.shape={array.shape}"
        )
    mask_array = None
    if mask is not None:
        mask_array = np.asarray(mask.array)
        if mask_array.shape != array.shape:
            raise ShapeMismatchError(
                f"Expected mask {_describe(mask)} on the grid of image {_describe(image)}. "
                f"Received: image.shape={array.shape}, mask.shape={mask_array.shape}"
            )
        if not np.allclose(np.asarray(mask.affine), geometry.affine, atol=1e-3):
            raise ValueError(
                f"Expected mask {_describe(mask)} with the affine of image {_describe(image)}. "
                f"Received: image affine={np.round(geometry.affine, 4).tolist()}, "
                f"mask affine={np.round(np.asarray(mask.affine), 4).tolist()}"
            )
        mask_array = (mask_array > 0).astype(np.uint8)

    steps = []
    if spec.crop_to_body:
        start, stop = body_bbox(array, threshold_hu=spec.body_threshold_hu, margin_vox=int(spec.body_margin_vox))
        if mask_array is not None and mask_array.any():
            box = ndimage.find_objects(mask_array)[0]
            start = tuple(min(a, s.start) for a, s in zip(start, box))
            stop = tuple(max(b, s.stop) for b, s in zip(stop, box))
        if tuple(start) != (0, 0, 0) or tuple(stop) != geometry.shape:
            steps.append(Crop(start=start, stop=stop, in_shape=geometry.shape))
            geometry = geometry.then(steps[-1])
    if spec.target_spacing_mm is not None:
        spacing = geometry.spacing_mm
        out_shape = target_shape(geometry.shape, spacing_mm=spacing, target_spacing_mm=spec.target_spacing_mm)
        if out_shape != geometry.shape:
            axis = separate_slice_axis(
                spacing, anisotropy_ratio=spec.anisotropy_ratio, target_spacing_mm=spec.target_spacing_mm
            )
            steps.append(Resample(in_shape=geometry.shape, out_shape=out_shape, slice_axis=axis))
            geometry = geometry.then(steps[-1])

    values = array
    for step in steps:
        values = step.forward(values, order=int(spec.image_order), mask=False)
        if mask_array is not None:
            mask_array = step.forward(mask_array, mask=True)
    return Preprocessed(
        image=spec.normalise(values),
        mask=mask_array,
        geometry=geometry,
        spacing_mm=geometry.spacing_mm,
        spec=spec,
    )
