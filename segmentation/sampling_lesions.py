"""The lesions a `segmentation.sampling.PatchSampler` draws foreground patches around.

A `Lesion` is one 26-connected foreground component of one case, with the C-order indices of
its voxels inside its bounding box. Lesions come either from labelling the whole mask once
(`_lesions_from_labels`) or from the preprocessing cache's lesion list, reading only the mask
inside each cached bounding box (`_lesion_from_cache`). `segmentation.sampling` re-exports
`Lesion`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from segmentation.lesions import find_components

__all__ = ["Lesion"]


@dataclass(frozen=True, eq=False)
class Lesion:
    """One connected foreground component (26-connectivity) of one case.

    Attributes:
        case_index: Position of the case in the sampler's case list.
        case_id: Identifier of the case.
        voxel_count: Number of voxels in the lesion.
        bbox_start: (3,) first voxel of the bounding box, canonical order.
        bbox_stop: (3,) one past the last voxel of the bounding box.
        flat_indices: (voxel_count,) int64 C-order indices of the lesion's voxels
            inside the bounding box (shape ``bbox_stop - bbox_start``).
    """

    case_index: int
    case_id: str
    voxel_count: int
    bbox_start: tuple[int, int, int]
    bbox_stop: tuple[int, int, int]
    flat_indices: np.ndarray

    def voxel(self, n: int) -> tuple[int, int, int]:
        """Returns the canonical (i, j, k) index of the lesion's ``n``-th voxel."""
        shape = tuple(b - a for a, b in zip(self.bbox_start, self.bbox_stop))
        local = np.unravel_index(int(self.flat_indices[n]), shape)
        return tuple(int(a + b) for a, b in zip(self.bbox_start, local))



def _parse_bbox(bbox: Any, *, case_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads a cached bounding box as (start, stop) int arrays of length 3.

    Accepted forms: three ``(start, stop)`` pairs, a flat ``(i0, j0, k0, i1, j1, k1)``,
    or three ``slice`` objects. ``stop`` is exclusive (an inclusive stop is tolerated:
    the caller searches one voxel beyond the box).
    """
    try:
        if len(bbox) == 3 and all(isinstance(s, slice) for s in bbox):
            start = np.array([s.start for s in bbox], dtype=np.int64)
            stop = np.array([s.stop for s in bbox], dtype=np.int64)
        else:
            arr = np.asarray(bbox, dtype=np.int64)
            if arr.shape == (3, 2):
                start, stop = arr[:, 0], arr[:, 1]
            elif arr.shape == (6,):
                start, stop = arr[:3], arr[3:]
            else:
                raise ValueError
    except (TypeError, ValueError):
        raise ValueError(
            f"Expected a lesion bbox as 3 (start, stop) pairs or 6 ints in case {case_id!r}. "
            f"Received: bbox={bbox!r}"
        ) from None
    if np.any(start < 0) or np.any(stop < start):  # stop == start: a 1-voxel inclusive box
        raise ValueError(
            f"Expected a lesion bbox with 0 <= start <= stop in case {case_id!r}. "
            f"Received: bbox={bbox!r}"
        )
    return start, stop


def _components(mask: Any) -> list[tuple[tuple[int, ...], tuple[int, ...], np.ndarray]]:
    """``(bbox_start, bbox_stop, flat_indices)`` of each 26-connected component of ``mask > 0``.

    Components in raster order of their first voxel (`segmentation.lesions.find_components`);
    ``flat_indices`` are int64 C-order indices inside the component's bounding box.
    """
    found = find_components(mask, connectivity=26)
    if found.count == 0:
        return []
    out = []
    for label, sub in enumerate(ndimage.find_objects(found.labels), start=1):
        if sub is None:
            continue
        start = tuple(int(o + s.start) for o, s in zip(found.offset, sub))
        stop = tuple(int(o + s.stop) for o, s in zip(found.offset, sub))
        out.append((start, stop, np.flatnonzero(found.labels[sub] == label).astype(np.int64)))
    return out


def _lesions_from_labels(mask: np.ndarray, *, case_index: int, case_id: str) -> list[Lesion]:
    """Labels the whole mask once (26-connectivity) and returns its lesions."""
    return [Lesion(case_index=case_index, case_id=case_id, voxel_count=int(flat.size),
                   bbox_start=start, bbox_stop=stop, flat_indices=flat)  # type: ignore[arg-type]
            for start, stop, flat in _components(mask)]


def _lesion_from_cache(mask: np.ndarray, entry: Any, *, case_index: int, case_id: str) -> Lesion:
    """Finds one cached lesion's voxels, reading only the mask inside its bbox.

    The crop is taken one voxel beyond the bbox (so an inclusive stop works too),
    labelled at 26-connectivity, and the component whose bbox starts at the cached
    start and whose voxel count equals the cached ``voxel_count`` is the lesion.
    """
    try:
        bbox, voxel_count = entry["bbox"], int(entry["voxel_count"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"Expected each lesion of case {case_id!r} to be a dict with 'bbox' and 'voxel_count'. "
            f"Received: lesion={entry!r}"
        ) from None
    start, stop = _parse_bbox(bbox, case_id=case_id)
    shape = np.asarray(mask.shape, dtype=np.int64)
    if np.any(start >= shape):
        raise ValueError(
            f"Expected lesion bbox inside the mask of case {case_id!r} with shape {tuple(mask.shape)}. "
            f"Received: bbox={bbox!r}"
        )
    lo = np.maximum(start, 0)
    hi = np.minimum(stop + 1, shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    for sub_start, sub_stop, flat in _components(np.asarray(mask[box])):
        sub_start = tuple(int(a + b) for a, b in zip(lo, sub_start))
        if sub_start != tuple(int(v) for v in start) or flat.size != voxel_count:
            continue
        return Lesion(
            case_index=case_index,
            case_id=case_id,
            voxel_count=voxel_count,
            bbox_start=sub_start,
            bbox_stop=tuple(int(a + b) for a, b in zip(lo, sub_stop)),
            flat_indices=flat,
        )
    raise ValueError(
        f"Expected the cached lesion of case {case_id!r} to match a connected component of its "
        f"mask (stale preprocessing cache?). Received: bbox={bbox!r}, voxel_count={voxel_count}"
    )
