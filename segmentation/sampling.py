"""Lesion-balanced patch sampling from cached cases (NumPy only).

A training run draws an endless stream of patches. Sample ``i`` of a run is a
pure function of ``(seed, i)``: every random choice for sample ``i`` comes
from its own generator seeded with ``SeedSequence([seed, i])``, so a resumed
run that starts at index ``epoch * steps_per_epoch * batch_size`` reproduces
the stream exactly, in any order and from any number of threads.

Foreground patches are **lesion-balanced**: first a lesion is picked
uniformly over all lesions of all cases, then a voxel uniformly inside that
lesion, so a 4 mm nodule is as likely to be seen as a 25 mm one. The patch is
centred on that voxel with an integer jitter of at most a quarter of the
patch size per axis, which always keeps the voxel inside the patch.
Background patches pick a case uniformly, then either a uniform position
(default) or, with ``background_threshold``, a centre inside the body: a voxel
whose image value exceeds the threshold (e.g. -900 HU, so lung parenchyma
counts as body and the air around the patient does not; the idea of MONAI's
positive/negative crop with an image threshold). On the phantom scans a
third to a half of uniform 32^3 patches lie mostly in that air.

Patches that reach past the scan are padded (image with ``pad_value``, mask
with 0), so a patch larger than the scan is fine. Volumes may be
``np.memmap``; only the patch region (or, at construction, a lesion's
bounding box) is ever read from them.

The lesion records and how they are found: `segmentation.sampling_lesions`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from segmentation.alignment import add_channel_axis
from segmentation.sampling_lesions import (  # Lesion: re-exported
    Lesion,
    _lesion_from_cache,
    _lesions_from_labels,
)
from segmentation.validation import check_int

logger = logging.getLogger(__name__)

__all__ = ["Lesion", "PatchLocation", "PatchSampler"]

_MAX_NAMES_IN_MESSAGE = 10
_BODY_GRID_STEP = 4  # body candidates are kept on a 4-voxel grid (1/64 of the voxels)


@dataclass(frozen=True)
class PatchLocation:
    """Where sample ``index`` is taken from; all of ``PatchSampler.sample``'s randomness.

    Attributes:
        index: Sample index in the run.
        case_index: Position of the source case.
        case_id: Identifier of the source case.
        foreground: True when the patch was centred on a lesion voxel.
        lesion_index: Index into ``PatchSampler.lesions`` (None for background).
        voxel: (i, j, k) lesion voxel the patch was built around (None for background).
        start: First voxel of the patch along the patch axes: (i, j, k) for 3D,
            (i, j) for 2D / 2.5D. May be negative or reach past the scan (padding).
        slice_index: Axial slice k of a 2D / 2.5D patch (None for 3D).
    """

    index: int
    case_index: int
    case_id: str
    foreground: bool
    lesion_index: int | None
    voxel: tuple[int, int, int] | None
    start: tuple[int, ...]
    slice_index: int | None


def _check_patch_size(patch_size: Any) -> tuple[int, ...]:
    try:
        sizes = tuple(patch_size)
    except TypeError:
        raise TypeError(
            f"Expected patch_size to be a sequence of 2 or 3 ints. Received: patch_size={patch_size!r}"
        ) from None
    if len(sizes) not in (2, 3):
        raise ValueError(
            f"Expected patch_size to have 2 (axial 2D) or 3 (3D) entries. "
            f"Received: patch_size={patch_size!r}"
        )
    for s in sizes:
        if isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)) or s < 1:
            raise ValueError(
                f"Expected patch_size entries to be positive ints. Received: patch_size={patch_size!r}"
            )
    return tuple(int(s) for s in sizes)


def _names(case_ids: Sequence[str]) -> str:
    shown = list(case_ids[:_MAX_NAMES_IN_MESSAGE])
    more = len(case_ids) - len(shown)
    return repr(shown) + (f" and {more} more" if more > 0 else "")


def _read_box(
    array: np.ndarray, start: Sequence[int], size: Sequence[int], *, fill: float, dtype: Any
) -> np.ndarray:
    """Reads ``array[start : start + size]``, filling the part outside the array.

    Args:
        array: (I, J, K) array or memmap; only the overlapping region is read.
        start: First index per axis (may be negative).
        size: Output size per axis.
        fill: Value outside the array.
        dtype: Output dtype.

    Returns:
        Array of shape ``size`` and ``dtype``.
    """
    out = np.full(tuple(size), fill, dtype=dtype)
    src, dst = [], []
    for a, n, dim in zip(start, size, array.shape):
        lo, hi = max(a, 0), min(a + n, dim)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - a, hi - a))
    out[tuple(dst)] = array[tuple(src)]
    return out


def _body_candidates(image: np.ndarray, threshold: float, step: int) -> np.ndarray:
    """Corners of the ``step``-voxel grid cells that hold a voxel above ``threshold``.

    The image is read one slab of ``step`` slices at a time (it may be a memmap).

    Returns:
        int32 ``(N, 3)`` first voxel (i, j, k) of each grid cell with a body voxel
        (``PatchSampler.locate`` then draws one of the cell's body voxels).
    """
    shape = image.shape
    cells = []
    for k0 in range(0, shape[2], step):
        slab = np.asarray(image[:, :, k0:k0 + step]) > threshold
        if not slab.any():
            continue
        pad = [(0, (-n) % step) for n in slab.shape[:2]] + [(0, step - slab.shape[2])]
        slab = np.pad(slab, pad)
        gi, gj = slab.shape[0] // step, slab.shape[1] // step
        hit = slab.reshape(gi, step, gj, step, step).any(axis=(1, 3, 4))
        ii, jj = np.nonzero(hit)
        cells.append(np.stack([ii * step, jj * step, np.full_like(ii, k0)], axis=1))
    if not cells:
        return np.zeros((0, 3), dtype=np.int32)
    return np.concatenate(cells).astype(np.int32)


class PatchSampler:
    """Deterministic, lesion-balanced patch sampler over cached cases.

    Args:
        cases: Sequence of objects with ``.case_id`` (str), ``.image`` (I, J, K)
            float32 array or memmap, ``.mask`` (I, J, K) uint8 (any value > 0 is
            foreground) and optionally ``.lesions``: the preprocessing cache's list of
            dicts with ``"bbox"`` (3 (start, stop) pairs, stop exclusive) and
            ``"voxel_count"``. Without ``.lesions`` (or when it is None) the
            components are computed once here with 26-connectivity.
        patch_size: 3 ints for 3D patches (I, J, K), or 2 ints for axial 2D patches
            (I, J) taken at a slice k of the last canonical axis.
        foreground_fraction: Probability that a patch is centred on a lesion voxel.
        seed: Non-negative int; with the sample index it fixes every random choice.
        context_slices: 2D only: ``c`` > 0 gives 2.5D patches with the ``2c + 1``
            neighbouring slices (k - c .. k + c) as channels; slices past the
            scan's ends replicate the edge slice. The mask is the centre slice.
        pad_value: Image value outside the scan (mask is 0 there). For HU-windowed
            data 0.0 is air; for z-scored data pass the z-score of air.
        background_threshold: None draws background patches uniformly over the scan.
            A number centres them on voxels whose image value exceeds it (the body);
            a case without such a voxel falls back to uniform positions (logged).

    Raises:
        ValueError: For bad arguments, an image/mask shape mismatch, a stale lesion
            list, or no label voxel in any case while ``foreground_fraction > 0``
            (the message names the cases).
        TypeError: For non-integer sizes, seeds or indices.
    """

    def __init__(
        self,
        cases: Sequence[Any],
        *,
        patch_size: Sequence[int],
        foreground_fraction: float = 1 / 3,
        seed: int = 0,
        context_slices: int = 0,
        pad_value: float = 0.0,
        background_threshold: float | None = None,
    ) -> None:
        self.patch_size = _check_patch_size(patch_size)
        self.seed = check_int(seed, name="seed", minimum=0)
        self.context_slices = check_int(context_slices, name="context_slices", minimum=0)
        if self.context_slices and len(self.patch_size) == 3:
            raise ValueError(
                "Expected context_slices=0 for 3D patches (2.5D context needs a 2-entry patch_size). "
                f"Received: context_slices={context_slices}, patch_size={self.patch_size}"
            )
        fraction = float(foreground_fraction)
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(
                f"Expected 0 <= foreground_fraction <= 1. Received: foreground_fraction={foreground_fraction!r}"
            )
        self.foreground_fraction = fraction
        pad = float(pad_value)
        if not np.isfinite(pad):
            raise ValueError(f"Expected a finite pad_value. Received: pad_value={pad_value!r}")
        self.pad_value = pad
        if background_threshold is not None:
            if isinstance(background_threshold, (bool, np.bool_)) or not isinstance(
                    background_threshold, (int, float, np.integer, np.floating)) or not np.isfinite(
                    background_threshold):
                raise ValueError(
                    "Expected background_threshold to be a finite number or None. "
                    f"Received: background_threshold={background_threshold!r}"
                )
            background_threshold = float(background_threshold)
        self.background_threshold = background_threshold

        self.cases = tuple(cases)
        if not self.cases:
            raise ValueError(f"Expected at least one case. Received: cases={cases!r}")
        lesions: list[Lesion] = []
        for n, case in enumerate(self.cases):
            lesions.extend(self._case_lesions(n, case))
        self.lesions: tuple[Lesion, ...] = tuple(lesions)

        with_fg = {lesion.case_index for lesion in self.lesions}
        self.foreground_cases: tuple[str, ...] = tuple(
            str(c.case_id) for n, c in enumerate(self.cases) if n in with_fg
        )
        self.background_only_cases: tuple[str, ...] = tuple(
            str(c.case_id) for n, c in enumerate(self.cases) if n not in with_fg
        )
        if self.background_only_cases:
            logger.info(
                "%d case(s) without any label voxel are used as background only: %s",
                len(self.background_only_cases),
                _names(self.background_only_cases),
            )
        self._body_cells: tuple[np.ndarray | None, ...] = tuple(
            self._case_body_cells(case) for case in self.cases)
        no_body = [str(c.case_id) for c, cells in zip(self.cases, self._body_cells)
                   if cells is not None and len(cells) == 0]
        if no_body:
            logger.warning(
                "%d case(s) have no voxel above background_threshold=%g; their background "
                "patches are drawn uniformly: %s", len(no_body), self.background_threshold,
                _names(no_body))
        if not self.lesions and self.foreground_fraction > 0:
            raise ValueError(
                "Expected at least one label (foreground) voxel in the cases when "
                f"foreground_fraction > 0. Received: foreground_fraction={self.foreground_fraction:g} "
                f"and no label voxel in cases {_names(self.background_only_cases)}"
            )

    # ------------------------------------------------------------------ setup
    @staticmethod
    def _case_lesions(case_index: int, case: Any) -> list[Lesion]:
        case_id = str(getattr(case, "case_id", f"#{case_index}"))
        image, mask = getattr(case, "image", None), getattr(case, "mask", None)
        for name, arr in (("image", image), ("mask", mask)):
            if arr is None or getattr(arr, "ndim", None) != 3:
                raise ValueError(
                    f"Expected case {case_id!r} to have a 3D (I, J, K) .{name}. "
                    f"Received: {name}.shape={getattr(arr, 'shape', None)}"
                )
        if tuple(image.shape) != tuple(mask.shape):
            raise ValueError(
                f"Expected image and mask of case {case_id!r} to have the same shape. "
                f"Received: image.shape={tuple(image.shape)}, mask.shape={tuple(mask.shape)}"
            )
        cached = getattr(case, "lesions", None)
        if cached is None:
            return _lesions_from_labels(mask, case_index=case_index, case_id=case_id)
        return [
            _lesion_from_cache(mask, entry, case_index=case_index, case_id=case_id)
            for entry in cached
        ]

    def _case_body_cells(self, case: Any) -> np.ndarray | None:
        if self.background_threshold is None or self.foreground_fraction >= 1.0:
            return None
        return _body_candidates(case.image, self.background_threshold, _BODY_GRID_STEP)

    # ------------------------------------------------------------- properties
    @property
    def n_cases(self) -> int:
        """Number of cases."""
        return len(self.cases)

    @property
    def n_lesions(self) -> int:
        """Number of lesions over all cases."""
        return len(self.lesions)

    @property
    def spatial_dims(self) -> int:
        """2 for 2D / 2.5D patches, 3 for 3D patches."""
        return len(self.patch_size)

    @property
    def n_channels(self) -> int:
        """Image channels: 1 for 2D and 3D, ``2 * context_slices + 1`` for 2.5D."""
        return 2 * self.context_slices + 1

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of a sampled image: ``(*patch_size, n_channels)``."""
        return (*self.patch_size, self.n_channels)

    @property
    def mask_shape(self) -> tuple[int, ...]:
        """Shape of a sampled mask: ``(*patch_size, 1)``."""
        return (*self.patch_size, 1)

    def summary(self) -> dict[str, Any]:
        """JSON-safe description for logs and run reports."""
        counts = [lesion.voxel_count for lesion in self.lesions]
        return {
            "n_cases": self.n_cases,
            "n_lesions": self.n_lesions,
            "n_foreground_cases": len(self.foreground_cases),
            "background_only_cases": list(self.background_only_cases),
            "lesion_voxel_count_min": int(min(counts)) if counts else None,
            "lesion_voxel_count_max": int(max(counts)) if counts else None,
            "patch_size": list(self.patch_size),
            "n_channels": self.n_channels,
            "foreground_fraction": self.foreground_fraction,
            "background_threshold": self.background_threshold,
            "seed": self.seed,
        }

    # --------------------------------------------------------------- sampling
    def locate(self, index: int) -> PatchLocation:
        """Draws where sample ``index`` comes from (pure function of ``(seed, index)``).

        Args:
            index: Non-negative sample index.

        Returns:
            The PatchLocation of the sample.
        """
        index = check_int(index, name="index", minimum=0)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, index]))
        foreground = bool(rng.random() < self.foreground_fraction)
        p = np.asarray(self.patch_size, dtype=np.int64)
        axes = len(self.patch_size)
        if foreground:
            lesion_index = int(rng.integers(self.n_lesions))
            lesion = self.lesions[lesion_index]
            voxel = lesion.voxel(int(rng.integers(lesion.voxel_count)))
            quarter = p // 4
            jitter = rng.integers(-quarter, quarter + 1)
            start = np.asarray(voxel[:axes], dtype=np.int64) - p // 2 + jitter
            case_index = lesion.case_index
            slice_index = voxel[2] if axes == 2 else None
        else:
            lesion_index, voxel = None, None
            case_index = int(rng.integers(self.n_cases))
            shape = np.asarray(self.cases[case_index].image.shape, dtype=np.int64)
            centre = self._body_centre(case_index, shape, rng)
            if centre is None:
                room = shape[:axes] - p
                start = rng.integers(np.minimum(room, 0), np.maximum(room, 0) + 1)
                slice_index = int(rng.integers(shape[2])) if axes == 2 else None
            else:
                start = centre[:axes] - p // 2
                slice_index = int(centre[2]) if axes == 2 else None
        return PatchLocation(
            index=index,
            case_index=case_index,
            case_id=str(self.cases[case_index].case_id),
            foreground=foreground,
            lesion_index=lesion_index,
            voxel=voxel,
            start=tuple(int(s) for s in start),
            slice_index=slice_index,
        )

    def _body_centre(self, case_index: int, shape: np.ndarray,
                     rng: np.random.Generator) -> np.ndarray | None:
        """A voxel above ``background_threshold``, or None (uniform sampling).

        A grid cell holding body voxels is drawn uniformly, then one of its body voxels
        uniformly (the cell, at most 4x4x4 voxels, is read from the image).
        """
        cells = self._body_cells[case_index]
        if cells is None or len(cells) == 0:
            return None
        corner = cells[int(rng.integers(len(cells)))].astype(np.int64)
        stop = np.minimum(corner + _BODY_GRID_STEP, shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(corner, stop))
        inside = np.argwhere(np.asarray(self.cases[case_index].image[box]) > self.background_threshold)
        return corner + inside[int(rng.integers(len(inside)))]

    def extract(self, location: PatchLocation) -> tuple[np.ndarray, np.ndarray]:
        """Reads the patch at ``location`` (padding outside the scan).

        Returns:
            image: float32 ``(*patch_size, n_channels)``.
            mask: uint8 ``(*patch_size, 1)`` with values in {0, 1}.
        """
        case = self.cases[location.case_index]
        if self.spatial_dims == 3:
            image = _read_box(case.image, location.start, self.patch_size, fill=self.pad_value, dtype=np.float32)
            mask = _read_box(case.mask, location.start, self.patch_size, fill=0, dtype=np.uint8)
            return add_channel_axis(image), add_channel_axis((mask > 0).astype(np.uint8))
        depth = case.image.shape[2]
        k = location.slice_index
        ks = np.clip(np.arange(k - self.context_slices, k + self.context_slices + 1), 0, depth - 1)
        k_lo, k_hi = int(ks.min()), int(ks.max()) + 1
        slab = _read_box(
            case.image,
            (*location.start, k_lo),
            (*self.patch_size, k_hi - k_lo),
            fill=self.pad_value,
            dtype=np.float32,
        )
        image = np.ascontiguousarray(slab[..., ks - k_lo])
        mask = _read_box(case.mask, (*location.start, k), (*self.patch_size, 1), fill=0, dtype=np.uint8)
        return image, (mask > 0).astype(np.uint8)

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns sample ``index``: a pure function of ``(seed, index)``.

        Args:
            index: Non-negative sample index.

        Returns:
            image: float32 ``(*patch_size, C)``, channels-last (C = 1 for 2D / 3D,
                ``2 * context_slices + 1`` for 2.5D).
            mask: uint8 ``(*patch_size, 1)`` with values in {0, 1}.
        """
        return self.extract(self.locate(index))
