"""Probabilities to a mask: threshold (or hysteresis), then a minimum component volume.

The one rule that training-time validation, ``lungseg predict`` and the run records share
(`pipelines.predictor.postprocess` applies it in the scan's own grid). Pure NumPy / SciPy:
`pipelines.infer` asks `effective_grow_threshold` before TensorFlow is loaded.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.ndimage as ndi

__all__ = ["effective_grow_threshold", "probabilities_to_mask"]


def probabilities_to_mask(probs: np.ndarray, *, threshold: float = 0.5,
                          spacing_mm: tuple[float, float, float] | None = None,
                          min_size_mm3: float = 0.0, connectivity: int = 26,
                          grow_threshold: float | None = None) -> np.ndarray:
    """Thresholds probabilities (``>= threshold``) and drops components below a volume.

    With ``grow_threshold`` below ``threshold`` the threshold is a hysteresis: a component is
    a connected region of ``probs >= grow_threshold`` that holds at least one voxel
    ``>= threshold``. The same lesions are found, each with its fainter rim (a model that
    under-segments gets its Dice back), and the volume filter sees the grown component.

    Args:
        probs: float ``(I, J, K)`` probabilities in the scan's own grid (after
            ``Geometry.inverse``).
        threshold: Voxels with ``probs >= threshold`` are foreground.
        spacing_mm: Voxel spacing in the order of ``probs``' axes (needed when
            ``min_size_mm3 > 0``).
        min_size_mm3: Connected components smaller than this volume are removed.
        connectivity: 6, 18 or 26.
        grow_threshold: None, or the lower threshold of the hysteresis in (0, 1); at or
            above ``threshold`` it changes nothing.

    Returns:
        bool ``(I, J, K)``.

    Raises:
        ValueError: bad threshold, grow_threshold, connectivity, or missing spacing.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"Expected threshold in (0, 1). Received: threshold={threshold}")
    if grow_threshold is not None and not 0.0 < grow_threshold < 1.0:
        raise ValueError(
            f"Expected grow_threshold in (0, 1) or None. Received: grow_threshold={grow_threshold}")
    if connectivity not in (6, 18, 26):
        raise ValueError(f"Expected connectivity in (6, 18, 26). Received: connectivity={connectivity}")
    probs = np.asarray(probs)
    structure = ndi.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[connectivity])
    if effective_grow_threshold(threshold, grow_threshold) is not None:
        mask = _hysteresis(probs, threshold=threshold, grow_threshold=grow_threshold,
                           structure=structure)
    else:
        mask = probs >= threshold
    if min_size_mm3 <= 0 or not mask.any():
        return mask
    if spacing_mm is None:
        raise ValueError("Expected spacing_mm when min_size_mm3 > 0. Received: spacing_mm=None")
    labels, n = ndi.label(mask, structure=structure)
    voxel_mm3 = float(math.prod(spacing_mm))
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    keep = counts * voxel_mm3 >= min_size_mm3
    keep[0] = False
    return keep[labels]


def effective_grow_threshold(threshold: float, grow_threshold: float | None) -> float | None:
    """The hysteresis threshold in effect: ``grow_threshold`` when it lies below ``threshold``.

    Args:
        threshold: The seeding threshold in (0, 1).
        grow_threshold: None, or the configured lower threshold (``inference.grow_threshold``).

    Returns:
        ``grow_threshold`` when it is set and below ``threshold``; else None (a plain threshold).
    """
    return grow_threshold if grow_threshold is not None and grow_threshold < threshold else None


def _hysteresis(probs: np.ndarray, *, threshold: float, grow_threshold: float,
                structure: np.ndarray) -> np.ndarray:
    """Connected regions of ``probs >= grow_threshold`` that reach ``threshold`` somewhere."""
    labels, n = ndi.label(probs >= grow_threshold, structure=structure)
    seeded = np.zeros(n + 1, dtype=bool)
    seeded[np.unique(labels[probs >= threshold])] = True
    seeded[0] = False
    return seeded[labels]
