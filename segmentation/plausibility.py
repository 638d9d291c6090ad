"""Plausibility checks where a scan enters a command, shared by every command.

A scan that is not a chest CT in Hounsfield units, or whose geometry is absurd, should stop
a command at once with a message that says what was expected, not end in a ``MemoryError``
an hour later or in an empty mask. The checks, in the order a command meets them:

1. `check_spacing_mm`: every voxel spacing within ``ScanLimits.spacing_range_mm``
   (default 0.1-20 mm per axis). 1000 mm or 0.001 mm is a unit error in the header.
2. `estimate_inference_bytes` / `check_memory`: the memory a scan will take *before* any
   array of that size exists: the scan, its resampled (network) grid, the sliding-window
   buffers and the model's activations on one batch of windows. Refused with the numbers
   when above ``ScanLimits.max_memory_gb`` (default: 80 % of the machine's memory,
   `default_memory_budget_gb`). `window_bytes` alone is checked before a model is loaded.
3. `check_hounsfield`: the voxel values look like CT in HU: some air (at least
   ``MIN_AIR_FRACTION`` of the voxels at or below ``AIR_LEVEL_HU``) and every value within
   ``HU_RANGE``. An 8-bit image (uint8 0-255, int8), a label mask passed as the scan, a
   normalised image or an MR series fails; ``allow_non_hu=True`` (``--allow-non-hu``)
   lets a user who knows better through.
4. `degenerate_warnings`: a volume with one slice, or fewer than ``MIN_AXIS_VOXELS``
   voxels along an axis (an 8^3 block), is accepted with a warning (it is probably not a
   whole scan).

`check_header` runs checks 1 and 2 on a NIfTI header alone, so a 1.4 PiB resample is refused
before the voxel data are read. Everything here is NumPy and nibabel only: no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

__all__ = [
    "AIR_LEVEL_HU",
    "DEFAULT_SPACING_RANGE_MM",
    "HU_RANGE",
    "MIN_AIR_FRACTION",
    "MIN_AXIS_VOXELS",
    "PlausibilityError",
    "ScanLimits",
    "check_header",
    "check_hounsfield",
    "check_memory",
    "check_scan",
    "check_spacing_mm",
    "default_memory_budget_gb",
    "degenerate_warnings",
    "estimate_evaluation_bytes",
    "estimate_inference_bytes",
    "format_bytes",
    "machine_memory_bytes",
    "window_bytes",
]

logger = logging.getLogger(__name__)

DEFAULT_SPACING_RANGE_MM = (0.1, 20.0)
"""Smallest and largest accepted voxel spacing, per axis, in mm."""
AIR_LEVEL_HU = -500.0
"""Air and lung lie below this level in a CT in Hounsfield units (air is about -1000)."""
MIN_AIR_FRACTION = 1e-3
"""A CT holds at least this share of voxels at or below `AIR_LEVEL_HU`."""
HU_RANGE = (-4096.0, 32767.0)
"""Values outside this range are not Hounsfield units (padding reaches -3024, metal 30000+)."""
MIN_AXIS_VOXELS = 16
"""A volume with fewer voxels than this along an axis (or one slice) gets a warning."""
_BUDGET_SHARE = 0.8
_FLOAT32 = 4


class PlausibilityError(ValueError):
    """A scan or an option is implausible; the message names the file or option and the numbers."""


@dataclasses.dataclass(frozen=True)
class ScanLimits:
    """What a command accepts as a scan (``--max-memory-gb``, ``--allow-non-hu``, ...).

    Attributes:
        spacing_range_mm: ``(low, high)`` accepted voxel spacing per axis, in mm.
        max_memory_gb: Memory budget in GB (10**9 bytes) of one scan's processing; None:
            `default_memory_budget_gb`.
        allow_non_hu: Skip the Hounsfield-unit check.
    """

    spacing_range_mm: tuple[float, float] = DEFAULT_SPACING_RANGE_MM
    max_memory_gb: float | None = None
    allow_non_hu: bool = False

    def __post_init__(self) -> None:
        low, high = _pair(self.spacing_range_mm, name="spacing_range_mm")
        if not 0 < low <= high:
            raise PlausibilityError(
                "Expected spacing_range_mm = (low, high) with 0 < low <= high. "
                f"Received: spacing_range_mm={list(self.spacing_range_mm)}"
            )
        object.__setattr__(self, "spacing_range_mm", (low, high))
        if self.max_memory_gb is not None:
            value = self.max_memory_gb
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    math.isfinite(value) and value > 0):
                raise PlausibilityError(
                    f"Expected max_memory_gb to be a number > 0. Received: max_memory_gb={value!r}"
                )
        if not isinstance(self.allow_non_hu, bool):
            raise TypeError(f"Expected allow_non_hu to be a bool. Received: allow_non_hu={self.allow_non_hu!r}")

    @property
    def budget_bytes(self) -> int:
        """The memory budget in bytes."""
        gb = default_memory_budget_gb() if self.max_memory_gb is None else self.max_memory_gb
        return int(gb * 1e9)


def _pair(values: Any, *, name: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in values)
    except (TypeError, ValueError):
        raise PlausibilityError(f"Expected {name} to be two numbers. Received: {name}={values!r}") from None
    return low, high


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------


def machine_memory_bytes() -> int | None:
    """Physical memory of this machine in bytes (``/proc/meminfo`` or sysconf), or None."""
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def default_memory_budget_gb() -> float:
    """80 % of the machine's memory in GB (16 GB when it cannot be read)."""
    total = machine_memory_bytes()
    return 16.0 if not total else round(_BUDGET_SHARE * total / 1e9, 1)


def format_bytes(n_bytes: float) -> str:
    """``1.38 PB``-style text of a byte count (decimal units, as ``--max-memory-gb``)."""
    value = float(n_bytes)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(value) < 1000 or unit == "PB":
            return f"{int(value)} B" if unit == "B" else f"{value:.3g} {unit}"
        value /= 1000
    return f"{value:.3g} PB"  # pragma: no cover - loop always returns


def _voxels(shape: Sequence[int]) -> int:
    return math.prod(int(s) for s in shape)


def _network_shape(shape: Sequence[int], spacing_mm: Sequence[float],
                   target_spacing_mm: Sequence[float] | None) -> tuple[int, ...]:
    """The grid after resampling: ``round(shape * spacing / target)`` (at least 1)."""
    if target_spacing_mm is None:
        return tuple(int(s) for s in shape)
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing_mm, target_spacing_mm))


def window_bytes(window: Sequence[int], *, batch_size: int, channels: int = 1,
                 filters: Sequence[int] = (16,), tta: bool = False) -> int:
    """Memory of one batch of windows through the model (inputs, outputs, activations).

    The activation term counts three float32 tensors per level and encoder/decoder side
    (convolution, normalisation, activation), each ``filters[l]`` channels on a grid
    ``2**l`` times coarser per axis: a rough lower bound of what a framework allocates.

    Args:
        window: Window size in voxels, 2 or 3 values.
        batch_size: Windows per forward pass.
        channels: Input channels.
        filters: Filters per U-Net level.
        tta: Mirror test-time augmentation keeps a second batch of outputs.

    Returns:
        Bytes.
    """
    n = _voxels(window)
    rank = len(window)
    activations = sum(f / 2 ** (rank * level) for level, f in enumerate(filters)) * 3 * 2
    per_window = n * (channels + 1 + (1 if tta else 0) + activations)
    return int(_FLOAT32 * batch_size * per_window)


def estimate_inference_bytes(shape: Sequence[int], spacing_mm: Sequence[float], *,
                             target_spacing_mm: Sequence[float] | None, window: Sequence[int],
                             batch_size: int = 2, channels: int = 1,
                             filters: Sequence[int] = (16,), tta: bool = False,
                             source_itemsize: int = 2) -> dict[str, int]:
    """The memory of predicting one scan, by part, before anything is allocated.

    Args:
        shape: Scan shape (I, J, K) in voxels.
        spacing_mm: Its voxel spacing.
        target_spacing_mm: ``preprocess.target_spacing_mm`` (None: no resampling).
        window: Sliding window (3 values for a 3D model, 2 for a 2D one).
        batch_size: ``inference.batch_size``.
        channels: Model input channels (2.5D context).
        filters: ``model.filters``.
        tta: Mirror test-time augmentation.
        source_itemsize: Bytes per voxel on disk.

    Returns:
        ``{"scan", "network", "sliding_window", "model", "total"}`` in bytes, plus
        ``"network_voxels"`` (voxels of the resampled grid).
    """
    n_src = _voxels(shape)
    net = _network_shape(shape, spacing_mm, target_spacing_mm)
    n_net = _voxels(net)
    win = tuple(int(w) for w in window) + (1,) * (3 - len(window))
    padded = tuple(max(n, w) for n, w in zip(net, win))
    n_pad = _voxels(padded)
    parts = {
        # raw array, float32 canonical copy, probabilities and mask back on the source grid
        "scan": n_src * (int(source_itemsize) + _FLOAT32 + _FLOAT32 + 2),
        # resampled image, its normalised copy, network-space probabilities
        "network": n_net * 3 * _FLOAT32,
        # padded image (channels) plus the weighted sum and the weight sum
        "sliding_window": n_pad * (channels + 2) * _FLOAT32,
        "model": window_bytes(window, batch_size=batch_size, channels=channels,
                              filters=filters, tta=tta),
    }
    parts["total"] = sum(parts.values())
    parts["network_voxels"] = n_net
    return parts


def estimate_evaluation_bytes(shape: Sequence[int]) -> int:
    """Memory of evaluating one mask pair of ``shape``: two masks, a probability map, the
    float64 temporaries of lesion labelling and distances (about 30 bytes per voxel)."""
    return 30 * _voxels(shape)


def check_memory(n_bytes: int, *, limits: ScanLimits, what: str, details: str = "") -> None:
    """Raises `PlausibilityError` when ``n_bytes`` exceeds the memory budget.

    Args:
        n_bytes: Estimated bytes.
        limits: The budget (``max_memory_gb``).
        what: What needs the memory (named in the message, e.g. "scan 'a.nii.gz'").
        details: The numbers behind the estimate (shapes, window).
    """
    budget = limits.budget_bytes
    if n_bytes > budget:
        raise PlausibilityError(
            f"Expected {what} to fit the memory budget of {format_bytes(budget)} "
            f"(--max-memory-gb). Received: an estimated {format_bytes(n_bytes)}"
            f"{' (' + details + ')' if details else ''}; refused before allocating"
        )


# --------------------------------------------------------------------------------------------
# Spacing, intensities, shape
# --------------------------------------------------------------------------------------------


def check_spacing_mm(spacing_mm: Sequence[float], *, limits: ScanLimits, where: str) -> None:
    """Raises `PlausibilityError` unless every spacing lies in ``limits.spacing_range_mm``."""
    low, high = limits.spacing_range_mm
    values = [float(s) for s in spacing_mm]
    bad = [s for s in values if not (math.isfinite(s) and low <= s <= high)]
    if bad:
        raise PlausibilityError(
            f"Expected a voxel spacing between {low:g} and {high:g} mm per axis in {where} "
            f"(--spacing-range-mm to change the range). Received: spacing_mm="
            f"{[round(s, 6) for s in values]}"
        )


def _diagnosis(values: np.ndarray, source_dtype: np.dtype | None) -> str:
    """Why the values are not HU, in words."""
    low, high = float(values.min()), float(values.max())
    dtype = "" if source_dtype is None else f"stored as {np.dtype(source_dtype)}, "
    uniques = np.unique(values[:: max(1, values.size // 100_000)]) if values.size else values
    integral = bool(np.all(uniques == np.round(uniques)))
    if integral and uniques.size <= 16 and low >= 0 and high <= 255:
        kind = "a label mask, not a CT (pass the CT image, not its segmentation)"
    elif source_dtype is not None and np.dtype(source_dtype).itemsize == 1:
        kind = "an 8-bit image, which cannot hold HU from -1000 to +3000 (an exported picture?)"
    elif low >= -5 and high <= 5:
        kind = "an image already normalised (pass the scan in HU)"
    elif low >= 0:
        kind = "an image with no air below 0 (MR, PET or a CT stored without its rescale intercept?)"
    else:
        kind = "an image with too little air for a chest CT"
    return f"{dtype}values {low:g} to {high:g}: {kind}"


def check_hounsfield(array: np.ndarray, *, where: str, source_dtype: Any = None,
                     allow_non_hu: bool = False) -> None:
    """Raises `PlausibilityError` unless ``array`` looks like a CT in Hounsfield units.

    A CT in HU holds air (about -1000): at least `MIN_AIR_FRACTION` of the voxels at or
    below `AIR_LEVEL_HU`, and every value within `HU_RANGE`.

    Args:
        array: The image values (after the file's scl_slope/scl_inter), any shape.
        where: Names the file in the message.
        source_dtype: The on-disk dtype (named in the message).
        allow_non_hu: Skip the check.
    """
    if allow_non_hu:
        return
    values = np.asarray(array)
    if values.size == 0:
        return
    low, high = float(values.min()), float(values.max())
    air_fraction = np.count_nonzero(values <= AIR_LEVEL_HU) / values.size
    in_range = HU_RANGE[0] <= low and high <= HU_RANGE[1]
    if air_fraction >= MIN_AIR_FRACTION and in_range:
        return
    raise PlausibilityError(
        f"Expected a CT in Hounsfield units in {where} (air near -1000: at least "
        f"{MIN_AIR_FRACTION:.1%} of the voxels <= {AIR_LEVEL_HU:g} HU; values within "
        f"{HU_RANGE[0]:g} to {HU_RANGE[1]:g}). Received: {_diagnosis(values, source_dtype)}, "
        f"{air_fraction:.2%} voxels <= {AIR_LEVEL_HU:g}. Use --allow-non-hu if the scan is "
        "right as it is"
    )


def degenerate_warnings(shape: Sequence[int], *, where: str) -> list[str]:
    """Warnings for a volume that is probably not a whole scan (one slice, tiny axes)."""
    shape = tuple(int(s) for s in shape)
    warnings = []
    if any(s == 1 for s in shape):
        warnings.append(f"{where} has a single slice (shape {list(shape)}); is it a whole scan?")
    elif any(s < MIN_AXIS_VOXELS for s in shape):
        warnings.append(
            f"{where} has fewer than {MIN_AXIS_VOXELS} voxels along an axis (shape {list(shape)}); "
            "is it a whole scan?"
        )
    return warnings


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def check_header(path: str | os.PathLike, *, limits: ScanLimits,
                 estimate: Any = None) -> tuple[tuple[int, ...], tuple[float, ...]] | None:
    """Checks a NIfTI file's spacing (and memory, with ``estimate``) from its header alone.

    Args:
        path: A NIfTI file.
        limits: The accepted spacing and the memory budget.
        estimate: Optional ``estimate(shape, spacing_mm, itemsize) -> dict`` (as
            `estimate_inference_bytes`) whose ``"total"`` is checked against the budget.

    Returns:
        ``(shape, spacing_mm)`` of the first three axes, or None when the header cannot be
        read (the full reader then reports the file).

    Raises:
        PlausibilityError: Implausible spacing or a memory estimate over the budget.
    """
    try:
        image = nib.load(Path(path))
        shape = tuple(int(s) for s in image.shape[:3])
        spacing = tuple(float(s) for s in np.linalg.norm(np.asarray(image.affine)[:3, :3], axis=0))
        itemsize = int(image.header.get_data_dtype().itemsize)
    except Exception:  # unreadable: read_volume names the problem
        return None
    if len(shape) < 3 or min(shape) < 1 or not all(math.isfinite(s) and s > 0 for s in spacing):
        return None  # read_volume reports 2D files, empty axes and singular affines
    where = f"file '{path}'"
    check_spacing_mm(spacing, limits=limits, where=where)
    if estimate is not None:
        parts = estimate(shape, spacing, itemsize)
        check_memory(parts["total"], limits=limits, what=f"the prediction of {where}",
                     details=_details(shape, spacing, parts))
    return shape, spacing


def _details(shape: Sequence[int], spacing: Sequence[float], parts: dict) -> str:
    named = ", ".join(f"{k} {format_bytes(v)}" for k, v in parts.items()
                      if k not in ("total", "network_voxels"))
    return (f"shape {list(shape)}, spacing_mm {[round(s, 4) for s in spacing]}, "
            f"{parts.get('network_voxels', 0):.3g} voxels after resampling; {named}")


def check_scan(volume: Any, *, limits: ScanLimits, estimate: Any = None) -> list[str]:
    """All checks of a scan read as a `segmentation.io.Volume` (an image in HU).

    Args:
        volume: The Volume (``array`` float32 HU, ``spacing_mm``, ``source_shape``,
            ``header``, ``path``).
        limits: What is accepted.
        estimate: Optional ``estimate(shape, spacing_mm, itemsize) -> dict`` checked
            against the memory budget (see `check_header`).

    Returns:
        Warnings (degenerate shapes); each is also logged.

    Raises:
        PlausibilityError: Spacing, memory or intensities (names the file).
    """
    where = f"file '{volume.path}'" if volume.path is not None else "the scan (no file)"
    check_spacing_mm(volume.spacing_mm, limits=limits, where=where)
    header = getattr(volume, "header", None)
    source_dtype = header.get_data_dtype() if header is not None else None
    if estimate is not None:
        itemsize = np.dtype(source_dtype).itemsize if source_dtype is not None else 4
        parts = estimate(tuple(volume.array.shape), tuple(volume.spacing_mm), itemsize)
        check_memory(parts["total"], limits=limits, what=f"the processing of {where}",
                     details=_details(volume.array.shape, volume.spacing_mm, parts))
    check_hounsfield(volume.array, where=where, source_dtype=source_dtype,
                     allow_non_hu=limits.allow_non_hu)
    warnings = degenerate_warnings(volume.source_shape, where=where)
    for text in warnings:
        logger.warning(text)
    return warnings
