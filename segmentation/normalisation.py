"""CT intensity normalisation, the named HU levels and the PreprocessSpec.

A helper of `segmentation.preprocessing`, which re-exports its public names (import them
from there).

Normalisations:

* ``hu_window``: clip to a HU window (default [-1000, 400]) and scale to [0, 1].
* ``ct_zscore`` (nnU-Net style): clip to the 0.5 / 99.5 percentiles of the foreground voxels
  of the training cases, then subtract their mean and divide by their std. The statistics
  (:class:`CTStats`) are computed once by :func:`compute_ct_stats` and stored with the run
  (in the spec, which is written into every cache record).

This module owns the normalisation: every other module asks :func:`normalised_level` (or
:func:`air_level`, :func:`body_level`) for the normalised value of a HU level, never scales HU
itself. The HU levels are named once, below (`AIR_HU`, `BODY_ABOVE_HU`, `SOFT_TISSUE_ABOVE_HU`,
`PARENCHYMA_BELOW_HU`; the lung region's -400 HU is `segmentation.lungmask.LUNG_AIR_HU`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from segmentation.alignment import ShapeMismatchError
from segmentation.validation import check_spacing

__all__ = [
    "AIR_HU",
    "BODY_ABOVE_HU",
    "SOFT_TISSUE_ABOVE_HU",
    "PARENCHYMA_BELOW_HU",
    "CTStats",
    "PreprocessSpec",
    "hu_window",
    "ct_zscore",
    "normalised_level",
    "air_level",
    "body_level",
    "compute_ct_stats",
]


def _finite_number(value: Any, *, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"Expected {name} to be a number. Received: {name}={value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"Expected {name} to be finite. Received: {name}={value!r}")
    return float(value)


def _check_window(window: Any, *, name: str = "window") -> tuple[float, float]:
    try:
        low, high = window
    except (TypeError, ValueError):
        raise ValueError(f"Expected {name} to be (low_hu, high_hu). Received: {name}={window!r}") from None
    low = _finite_number(low, name=f"{name}[0]")
    high = _finite_number(high, name=f"{name}[1]")
    if not low < high:
        raise ValueError(f"Expected {name} with low < high. Received: {name}=({low}, {high})")
    return low, high


# --------------------------------------------------------------------------------------------
# HU levels: each a separate fact, named once (ask normalised_level for its normalised value)
# --------------------------------------------------------------------------------------------

AIR_HU = -1000.0
"""Air. Patches, windows and padding take its normalised value (`air_level`)."""

BODY_ABOVE_HU = -900.0
"""A voxel denser than this is inside the body: lung parenchyma (about -850 HU) is, the air
around the patient (-1000 HU, with 10 to 40 HU of noise) is not. Inference skips windows with
fewer than 1 % such voxels and ``train.background: body`` draws background patches among them
(`body_level`)."""

SOFT_TISSUE_ABOVE_HU = -500.0
"""Soft tissue (about -100 HU and above) is denser than this, air and lung are not: the outline
of the body that ``crop_to_body`` crops to (the default `PreprocessSpec.body_threshold_hu`)."""

PARENCHYMA_BELOW_HU = -500.0
"""Lung voxels below this are parenchyma, not vessels or nodules: the background whose level
and noise synthetic nodules copy (`segmentation.nodule_insertion`)."""


# --------------------------------------------------------------------------------------------
# Intensity normalisation
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CTStats:
    """Foreground intensity statistics of the training cases (nnU-Net CT normalisation).

    Attributes:
        lower_hu: 0.5th percentile of the foreground voxels (clip floor).
        upper_hu: 99.5th percentile (clip ceiling).
        mean_hu: Mean of the foreground voxels.
        std_hu: Standard deviation of the foreground voxels (> 0).
    """

    lower_hu: float
    upper_hu: float
    mean_hu: float
    std_hu: float

    def __post_init__(self) -> None:
        for name in ("lower_hu", "upper_hu", "mean_hu", "std_hu"):
            object.__setattr__(self, name, _finite_number(getattr(self, name), name=f"CTStats.{name}"))
        if self.lower_hu > self.upper_hu:
            raise ValueError(
                f"Expected CTStats.lower_hu <= upper_hu. Received: lower_hu={self.lower_hu}, upper_hu={self.upper_hu}"
            )
        if self.std_hu <= 0:
            raise ValueError(f"Expected CTStats.std_hu > 0. Received: std_hu={self.std_hu}")

    def apply(self, image_hu: np.ndarray) -> np.ndarray:
        """Clip to [lower_hu, upper_hu], then ``(x - mean_hu) / std_hu``; float32."""
        return ct_zscore(image_hu, stats=self)

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CTStats:
        if not isinstance(data, Mapping):
            raise ValueError(f"Expected a CTStats mapping. Received: {data!r}")
        fields = ("lower_hu", "upper_hu", "mean_hu", "std_hu")
        if set(data) != set(fields):
            raise ValueError(f"Expected CTStats keys {list(fields)}. Received: {sorted(data)}")
        return cls(**{k: data[k] for k in fields})


def _image_array(image: Any, *, name: str) -> np.ndarray:
    array = np.asarray(image)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise TypeError(f"Expected {name} with a real numeric dtype. Received: {name}.dtype={array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise ValueError(f"Expected {name} without NaN or inf. Received: {name} with non-finite values")
    return array


def hu_window(image_hu: np.ndarray, *, window: Sequence[float] = (-1000.0, 400.0),
              dtype: Any = np.float32) -> np.ndarray:
    """Clips to a Hounsfield window and scales it to [0, 1].

    Args:
        image_hu: ndarray of any shape, in HU (int or float).
        window: ``(low_hu, high_hu)`` with ``low_hu < high_hu``; ``low_hu`` maps to 0 and
            ``high_hu`` to 1.
        dtype: float32 (images) or float64 (`normalised_level`).

    Returns:
        ndarray of ``dtype`` and the same shape with values in [0, 1].

    Raises:
        ValueError: For ``low_hu >= high_hu`` or non-finite values.
        TypeError: For a non-numeric image.
    """
    low, high = _check_window(window)
    array = _image_array(image_hu, name="image_hu").astype(dtype)
    np.clip(array, low, high, out=array)
    array -= array.dtype.type(low)
    array /= array.dtype.type(high - low)
    return np.clip(array, 0.0, 1.0, out=array)


def ct_zscore(image_hu: np.ndarray, *, stats: CTStats, dtype: Any = np.float32) -> np.ndarray:
    """nnU-Net CT normalisation: clip to the stats' percentiles, then z-score.

    Args:
        image_hu: ndarray of any shape, in HU.
        stats: The training-set statistics from :func:`compute_ct_stats`.
        dtype: float32 (images) or float64 (`normalised_level`).

    Returns:
        ndarray of ``dtype`` and the same shape.

    Raises:
        TypeError: If ``stats`` is not a CTStats.
    """
    if not isinstance(stats, CTStats):
        raise TypeError(f"Expected stats to be a CTStats. Received: stats={stats!r}")
    array = _image_array(image_hu, name="image_hu").astype(dtype)
    np.clip(array, stats.lower_hu, stats.upper_hu, out=array)
    array -= array.dtype.type(stats.mean_hu)
    array /= array.dtype.type(stats.std_hu)
    return array


def compute_ct_stats(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]], *, max_voxels_per_case: int = 10_000, seed: int = 0
) -> CTStats:
    """Percentiles (0.5, 99.5), mean and std of the foreground voxels of training cases.

    Each case contributes at most ``max_voxels_per_case`` foreground voxels, drawn without
    replacement by a generator seeded with ``(seed, case index)``, so the result does not
    depend on memory or timing and large cases do not dominate.

    Args:
        pairs: Iterable of ``(image_hu, mask)`` with equal shapes; mask > 0 is foreground.
        max_voxels_per_case: Positive int.
        seed: Non-negative int.

    Returns:
        The CTStats.

    Raises:
        ValueError: For no pairs, no foreground voxel at all, mismatched shapes (the message
            names the pair), or zero spread of the foreground intensities.
    """
    if isinstance(max_voxels_per_case, bool) or not isinstance(max_voxels_per_case, int) or max_voxels_per_case < 1:
        raise ValueError(f"Expected max_voxels_per_case >= 1. Received: max_voxels_per_case={max_voxels_per_case!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"Expected seed to be a non-negative int. Received: seed={seed!r}")
    samples = []
    count = 0
    for index, pair in enumerate(pairs):
        try:
            image, mask = pair
        except (TypeError, ValueError):
            raise ValueError(f"Expected pairs[{index}] to be (image_hu, mask). Received: {type(pair).__name__}") from None
        image = _image_array(image, name=f"pairs[{index}].image_hu")
        mask = np.asarray(mask)
        if image.shape != mask.shape:
            raise ShapeMismatchError(
                f"Expected image and mask of pairs[{index}] with equal shapes. "
                f"Received: image.shape={image.shape}, mask.shape={mask.shape}"
            )
        count += 1
        values = image[mask > 0].astype(np.float64)
        if values.size > max_voxels_per_case:
            rng = np.random.default_rng([seed, index])
            values = rng.choice(values, size=max_voxels_per_case, replace=False)
        samples.append(values)
    if count == 0:
        raise ValueError("Expected at least one (image_hu, mask) pair. Received: pairs=[]")
    values = np.concatenate(samples)
    if values.size == 0:
        raise ValueError(f"Expected foreground voxels in the training masks. Received: 0 voxels in {count} cases")
    std = float(values.std())
    if std <= 0:
        raise ValueError(f"Expected foreground intensities with a spread. Received: std_hu=0 over {values.size} voxels")
    lower, upper = np.percentile(values, [0.5, 99.5])
    return CTStats(lower_hu=float(lower), upper_hu=float(upper), mean_hu=float(values.mean()), std_hu=std)


# --------------------------------------------------------------------------------------------
# Spec
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PreprocessSpec:
    """How a case is brought to network space.

    Attributes:
        normalisation: ``"hu_window"`` or ``"ct_zscore"`` (needs ``ct_stats``).
        hu_window: ``(low_hu, high_hu)`` for ``hu_window``.
        target_spacing_mm: 3 spacings in canonical order, or None to keep the native grid.
            The new shape is ``round(shape * spacing / target)``; the actual spacing
            (``spacing * shape / new_shape``, same extent) can differ from the target by
            the rounding and is what the Preprocessed/cache records.
        image_order: Image interpolation order (1 linear, 3 cubic; 0-5 allowed).
        anisotropy_ratio: A single axis coarser than this times the finest is resampled on
            its own, linearly, after the in-plane resample.
        ct_stats: Training-set statistics for ``ct_zscore``.
        crop_to_body: Crop to the body bounding box (always containing the whole mask).
        body_threshold_hu: HU threshold of the body for ``crop_to_body``.
        body_margin_vox: Margin around the body box, in voxels.
    """

    normalisation: Literal["hu_window", "ct_zscore"] = "hu_window"
    hu_window: tuple[float, float] = (-1000.0, 400.0)
    target_spacing_mm: tuple[float, float, float] | None = None
    image_order: int = 1
    anisotropy_ratio: float = 3.0
    ct_stats: CTStats | None = None
    crop_to_body: bool = False
    body_threshold_hu: float = SOFT_TISSUE_ABOVE_HU
    body_margin_vox: int = 2

    def __post_init__(self) -> None:
        if self.normalisation not in ("hu_window", "ct_zscore"):
            raise ValueError(
                f"Expected normalisation 'hu_window' or 'ct_zscore'. Received: normalisation={self.normalisation!r}"
            )
        object.__setattr__(self, "hu_window", _check_window(self.hu_window, name="hu_window"))
        if self.target_spacing_mm is not None:
            object.__setattr__(
                self, "target_spacing_mm", check_spacing(self.target_spacing_mm, name="target_spacing_mm")
            )
        order = self.image_order
        if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or not 0 <= order <= 5:
            raise ValueError(f"Expected image_order to be an int in [0, 5]. Received: image_order={order!r}")
        ratio = _finite_number(self.anisotropy_ratio, name="anisotropy_ratio")
        if ratio <= 1:
            raise ValueError(f"Expected anisotropy_ratio > 1. Received: anisotropy_ratio={ratio}")
        object.__setattr__(self, "anisotropy_ratio", ratio)
        if isinstance(self.ct_stats, Mapping):
            object.__setattr__(self, "ct_stats", CTStats.from_dict(self.ct_stats))
        if self.ct_stats is not None and not isinstance(self.ct_stats, CTStats):
            raise TypeError(f"Expected ct_stats to be a CTStats or None. Received: ct_stats={self.ct_stats!r}")
        if not isinstance(self.crop_to_body, bool):
            raise TypeError(f"Expected crop_to_body to be a bool. Received: crop_to_body={self.crop_to_body!r}")
        object.__setattr__(self, "body_threshold_hu", _finite_number(self.body_threshold_hu, name="body_threshold_hu"))
        margin = self.body_margin_vox
        if isinstance(margin, bool) or not isinstance(margin, (int, np.integer)) or margin < 0:
            raise ValueError(f"Expected body_margin_vox to be a non-negative int. Received: body_margin_vox={margin!r}")

    def normalise(self, image_hu: np.ndarray) -> np.ndarray:
        """Applies this spec's normalisation; float32, same shape."""
        return _normalise(image_hu, self, dtype=np.float32)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples as lists, ct_stats as a dict)."""
        return {
            "normalisation": self.normalisation,
            "hu_window": list(self.hu_window),
            "target_spacing_mm": None if self.target_spacing_mm is None else list(self.target_spacing_mm),
            "image_order": int(self.image_order),
            "anisotropy_ratio": self.anisotropy_ratio,
            "ct_stats": None if self.ct_stats is None else self.ct_stats.to_dict(),
            "crop_to_body": self.crop_to_body,
            "body_threshold_hu": self.body_threshold_hu,
            "body_margin_vox": int(self.body_margin_vox),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessSpec:
        """Inverse of :meth:`to_dict`; unknown keys are errors."""
        if not isinstance(data, Mapping):
            raise ValueError(f"Expected a PreprocessSpec mapping. Received: {data!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"Expected PreprocessSpec keys in {sorted(fields)}. Received: unknown keys {unknown}")
        kwargs = dict(data)
        for key in ("hu_window", "target_spacing_mm"):
            if kwargs.get(key) is not None:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)


def _normalise(image_hu: np.ndarray, spec: Any, *, dtype: Any) -> np.ndarray:
    """The one normalisation map: ``spec.normalisation`` applied in ``dtype``."""
    if spec.normalisation == "hu_window":
        return hu_window(image_hu, window=spec.hu_window, dtype=dtype)
    if spec.ct_stats is None:
        # A config may ask for ct_zscore before training has computed the statistics;
        # normalising without them is the error.
        raise ValueError(
            "Expected preprocess.ct_stats (from compute_ct_stats on the training cases, stored in the "
            "run's config.yaml) for normalisation='ct_zscore'. Received: preprocess.ct_stats=None"
        )
    return ct_zscore(image_hu, stats=spec.ct_stats, dtype=dtype)


def normalised_level(value_hu: float, *, spec: PreprocessSpec, dtype: Any = np.float64) -> float:
    """The normalised value of one HU level under ``spec`` (the map of `PreprocessSpec.normalise`).

    Args:
        value_hu: A HU level (e.g. `AIR_HU`).
        spec: The PreprocessSpec (the config's ``preprocess`` section).
        dtype: float64 for the exact level; float32 for the value that a voxel of exactly
            ``value_hu`` holds in the normalised float32 image.

    Returns:
        The level as a Python float (clipped as the normalisation clips).

    Raises:
        ValueError: ``ct_zscore`` without ``ct_stats``.
    """
    return float(_normalise(np.asarray([value_hu], dtype=dtype), spec, dtype=dtype)[0])


def air_level(spec: PreprocessSpec) -> float:
    """The normalised value of air (`AIR_HU`): the pad value of patches and windows."""
    return normalised_level(AIR_HU, spec=spec)


def body_level(spec: PreprocessSpec) -> float:
    """The normalised level above which a voxel is body (denser than `BODY_ABOVE_HU`).

    When the normalisation clips above `BODY_ABOVE_HU`, the floor (air) is returned: only
    voxels above it count.
    """
    return max(normalised_level(BODY_ABOVE_HU, spec=spec), air_level(spec))
