"""The preprocessed-case cache: the case records and their ``.npy``/JSON files.

A helper of `segmentation.preprocessing`, which re-exports its public names (import them
from there): `Preprocessed` (a case in network space, what :func:`cache_case` writes),
`CachedCase` (what :func:`load_cached_case` reads back) and `lesion_records`.

Cache layout in ``cache_dir``: ``{case}_image.npy`` (float32), ``{case}_mask.npy`` (uint8,
when there is a mask) and ``{case}.json`` (geometry, spacing, shape, spec, foreground voxel
count and one entry per 26-connected lesion). The JSON is written last and is the record of
truth; :func:`load_cached_case` opens the arrays memory-mapped and checks them against it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segmentation.alignment import Geometry, ShapeMismatchError
from segmentation.lesions import find_components, lesion_table
from segmentation.normalisation import PreprocessSpec
from segmentation.validation import check_spacing

__all__ = [
    "CacheError",
    "Preprocessed",
    "CachedCase",
    "lesion_records",
    "cache_case",
    "load_cached_case",
]

_CACHE_VERSION = 1


class CacheError(ValueError):
    """A cached case is missing a file, corrupt or stale; the message names the file."""


@dataclasses.dataclass(frozen=True, eq=False)
class Preprocessed:
    """A case in network space.

    Attributes:
        image: float32 ndarray (I, J, K), normalised.
        mask: uint8 ndarray (I, J, K) in {0, 1}, or None.
        geometry: Geometry from the source file to this grid.
        spacing_mm: Actual spacing of this grid (from ``geometry.affine``).
        spec: The PreprocessSpec that produced it (written into the cache record).
    """

    image: np.ndarray
    mask: np.ndarray | None
    geometry: Geometry
    spacing_mm: tuple[float, float, float]
    spec: PreprocessSpec | None = None


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class CachedCase:
    """A preprocessed case read back from the cache.

    Attributes:
        case_id: The case id.
        image: float32 read-only memmap (I, J, K).
        mask: uint8 read-only memmap (I, J, K), or None.
        geometry: Geometry from the source file to this grid.
        spacing_mm: Spacing of this grid.
        lesions: One dict per 26-connected component: ``label``, ``voxel_count``, ``bbox``
            (3 ``[start, stop)`` pairs), ``centroid_vox``, ``volume_mm3``.
        spec: The PreprocessSpec recorded with the case (None if it was not recorded).
    """

    case_id: str
    image: np.ndarray
    mask: np.ndarray | None
    geometry: Geometry
    spacing_mm: tuple[float, float, float]
    lesions: list[dict[str, Any]]
    spec: PreprocessSpec | None = None


def lesion_records(mask: np.ndarray, *, spacing_mm: Sequence[float]) -> list[dict[str, Any]]:
    """One record per 26-connected component of ``mask`` (ordered by first voxel, C order).

    The rows of the lesion table (`segmentation.lesions.lesion_table`) as the cache record
    stores them, and the training sampler reads them.

    Args:
        mask: ndarray (I, J, K); > 0 is foreground.
        spacing_mm: Spacing in mm.

    Returns:
        List of dicts: ``label`` (1-based), ``voxel_count``, ``bbox`` (3 ``[start, stop)``
        pairs), ``centroid_vox`` (3 floats), ``volume_mm3``. Empty for an empty mask.
    """
    spacing = check_spacing(spacing_mm, name="spacing_mm")
    table = lesion_table(find_components(mask, connectivity=26), spacing_mm=spacing)
    return [
        {
            "label": lesion.label,
            "voxel_count": lesion.voxel_count,
            "bbox": [[s.start, s.stop] for s in lesion.bbox],
            "centroid_vox": list(lesion.centroid_vox),
            "volume_mm3": lesion.volume_mm3,
        }
        for lesion in table
    ]


def _check_case_id(case_id: Any) -> str:
    if not isinstance(case_id, str) or not case_id or case_id.startswith(".") or any(c in case_id for c in "/\\\0"):
        raise ValueError(f"Expected case_id to be a non-empty file-name-safe string. Received: case_id={case_id!r}")
    return case_id


def _cache_paths(cache_dir: Path, case_id: str) -> tuple[Path, Path, Path]:
    return cache_dir / f"{case_id}_image.npy", cache_dir / f"{case_id}_mask.npy", cache_dir / f"{case_id}.json"


def cache_case(pre: Preprocessed, *, cache_dir: str | Path, case_id: str) -> Path:
    """Writes a preprocessed case: ``{case}_image.npy``, ``{case}_mask.npy``, ``{case}.json``.

    Every file is written atomically; the JSON is written last, so a reader never sees a
    record whose arrays are not complete.

    Args:
        pre: The Preprocessed case.
        cache_dir: Directory (created if missing).
        case_id: File-name-safe case id.

    Returns:
        Path of the JSON record.

    Raises:
        TypeError: If ``pre`` is not a Preprocessed.
        ShapeMismatchError: If the image, mask and geometry shapes disagree.
    """
    from segmentation.io import atomic_write  # the project's one atomic-write helper

    if not isinstance(pre, Preprocessed):
        raise TypeError(f"Expected pre to be a Preprocessed. Received: {type(pre).__name__}")
    case_id = _check_case_id(case_id)
    cache_dir = Path(cache_dir)
    image = np.ascontiguousarray(pre.image, dtype=np.float32)
    if image.ndim != 3 or image.shape != pre.geometry.shape:
        raise ShapeMismatchError(
            f"Expected the image of case {case_id!r} to have its geometry's shape {pre.geometry.shape}. "
            f"Received: image.shape={image.shape}"
        )
    image_path, mask_path, json_path = _cache_paths(cache_dir, case_id)
    atomic_write(image_path, lambda tmp: np.save(tmp, image, allow_pickle=False))
    lesions: list[dict[str, Any]] = []
    foreground = 0
    if pre.mask is not None:
        mask = np.ascontiguousarray(np.asarray(pre.mask) > 0, dtype=np.uint8)
        if mask.shape != image.shape:
            raise ShapeMismatchError(
                f"Expected the mask of case {case_id!r} with the image shape. "
                f"Received: image.shape={image.shape}, mask.shape={mask.shape}"
            )
        atomic_write(mask_path, lambda tmp: np.save(tmp, mask, allow_pickle=False))
        lesions = lesion_records(mask, spacing_mm=pre.spacing_mm)
        foreground = int(mask.sum(dtype=np.int64))
    record = {
        "cache_version": _CACHE_VERSION,
        "case_id": case_id,
        "shape": list(image.shape),
        "spacing_mm": [float(s) for s in pre.spacing_mm],
        "image_dtype": "float32",
        "has_mask": pre.mask is not None,
        "mask_dtype": "uint8",
        "foreground_voxels": foreground,
        "lesions": lesions,
        "geometry": pre.geometry.to_dict(),
        "spec": None if pre.spec is None else pre.spec.to_dict(),
    }
    text = json.dumps(record, indent=1)
    return atomic_write(json_path, lambda tmp: Path(tmp).write_text(text))


def _open_npy(path: Path, *, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    if not path.is_file():
        raise CacheError(f"Expected the cached array file '{path}'. Received: no such file (stale cache?)")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise CacheError(f"Expected a readable .npy file at '{path}'. Received: {error}") from None
    if array.shape != shape or array.dtype != np.dtype(dtype):
        raise CacheError(
            f"Expected '{path}' with shape {shape} and dtype {dtype} as its JSON record says (stale cache?). "
            f"Received: shape={array.shape}, dtype={array.dtype}"
        )
    return array


def load_cached_case(cache_dir: str | Path, case_id: str) -> CachedCase:
    """Opens a cached case memory-mapped (``mmap_mode="r"``) and checks it against its record.

    Args:
        cache_dir: The cache directory.
        case_id: The case id given to :func:`cache_case`.

    Returns:
        CachedCase with read-only memmaps.

    Raises:
        FileNotFoundError: If the JSON record does not exist (names the file).
        CacheError: If the record is not valid JSON, lacks a key, has an unknown version, or
            an array file is missing, unreadable or of another shape/dtype (names the file).
    """
    case_id = _check_case_id(case_id)
    image_path, mask_path, json_path = _cache_paths(Path(cache_dir), case_id)
    if not json_path.is_file():
        raise FileNotFoundError(f"Expected a cache record at '{json_path}'. Received: no such file")
    try:
        record = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CacheError(f"Expected valid JSON in '{json_path}'. Received: {error}") from None
    try:
        if not isinstance(record, dict):
            raise ValueError(f"a {type(record).__name__}, not an object")
        if record.get("cache_version") != _CACHE_VERSION:
            raise ValueError(f"cache_version={record.get('cache_version')!r}, expected {_CACHE_VERSION}")
        shape = tuple(int(n) for n in record["shape"])
        geometry = Geometry.from_dict(record["geometry"])
        if geometry.shape != shape:
            raise ValueError(f"geometry shape {geometry.shape} != shape {shape}")
        spacing = check_spacing(record["spacing_mm"], name="spacing_mm")
        lesions = record["lesions"]
        if not isinstance(lesions, list) or not all(isinstance(x, dict) for x in lesions):
            raise ValueError("lesions is not a list of objects")
        spec = None if record["spec"] is None else PreprocessSpec.from_dict(record["spec"])
        has_mask = record["has_mask"]
        if not isinstance(has_mask, bool):
            raise ValueError(f"has_mask={has_mask!r}")
    except (KeyError, TypeError, ValueError) as error:
        detail = f"missing key {error}" if isinstance(error, KeyError) else str(error)
        raise CacheError(f"Expected a complete, current cache record in '{json_path}'. Received: {detail}") from None
    image = _open_npy(image_path, shape=shape, dtype="float32")
    mask = _open_npy(mask_path, shape=shape, dtype="uint8") if has_mask else None
    return CachedCase(
        case_id=case_id,
        image=image,
        mask=mask,
        geometry=geometry,
        spacing_mm=spacing,
        lesions=lesions,
        spec=spec,
    )
