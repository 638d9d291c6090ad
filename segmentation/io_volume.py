"""The canonical Volume of `segmentation.io`: its type, its checks and the reorientation.

A private helper of `segmentation.io` (which re-exports its public names): `Volume` and
`VolumeError`, the file-name rules (`case_id_from_path`, the NIfTI/MetaImage suffixes), the
validation of arrays and affines, and the build of a canonical (RAS+) Volume from a
source-order array (`_build_volume`), shared by reading and `segmentation.io_write`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import (
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)

from segmentation.alignment import Geometry, Reorient

__all__ = [
    "METAIMAGE_SUFFIXES",
    "NIFTI_SUFFIXES",
    "Volume",
    "VolumeError",
    "case_id_from_path",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
METAIMAGE_SUFFIXES = (".mhd", ".mha")  # read through segmentation.metaimage (SimpleITK)
_CHANNEL_SUFFIX = "_0000"
_MAX_LISTED_VALUES = 10


class VolumeError(ValueError):
    """A NIfTI file (or an array standing for one) is unusable. The message names the path."""


# --------------------------------------------------------------------------------------------
# Small pure helpers
# --------------------------------------------------------------------------------------------


def _where(path: Path | None) -> str:
    """Names the source of a volume for error messages."""
    return f"file '{path}'" if path is not None else "array (no file)"


def _as_path(path: str | os.PathLike, *, name: str = "path") -> Path:
    if isinstance(path, (str, os.PathLike)) and not isinstance(path, bytes):
        return Path(path)
    raise TypeError(
        f"Expected {name} to be a str or os.PathLike. Received: {name}={path!r} "
        f"(type {type(path).__name__})"
    )


def _nifti_suffix(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return path.name[-len(suffix) :]
    return None


def _scan_suffix(path: Path) -> str | None:
    """The NIfTI or MetaImage suffix of a file name, or None."""
    name = path.name.lower()
    for suffix in METAIMAGE_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return path.name[-len(suffix) :]
    return _nifti_suffix(path)


def case_id_from_path(path: str | os.PathLike) -> str:
    """Returns the case id of a NIfTI (or MetaImage) file name.

    The id is the file name without ``.nii.gz`` / ``.nii`` (``.mhd`` / ``.mha``) and without
    a trailing ``_0000`` channel suffix (nnU-Net naming): ``imagesTr/lung_001_0000.nii.gz``
    -> ``"lung_001"``.

    Args:
        path: A file path (only its name is used).

    Returns:
        The case id.

    Raises:
        ValueError: If the name does not end in ``.nii`` or ``.nii.gz``.
    """
    path = _as_path(path)
    suffix = _scan_suffix(path)
    if suffix is None:
        raise ValueError(
            "Expected a NIfTI file name ending in .nii or .nii.gz (or a MetaImage .mhd/.mha). "
            f"Received: path='{path}'"
        )
    stem = path.name[: -len(suffix)]
    if stem.endswith(_CHANNEL_SUFFIX) and len(stem) > len(_CHANNEL_SUFFIX):
        stem = stem[: -len(_CHANNEL_SUFFIX)]
    return stem


def _to_canonical_ornt(source_affine: np.ndarray) -> np.ndarray:
    """(3, 2) orientation that takes a source-order array to canonical RAS+ order."""
    return ornt_transform(io_orientation(source_affine), axcodes2ornt("RAS"))


def _to_source_ornt(source_affine: np.ndarray) -> np.ndarray:
    """(3, 2) orientation that takes a canonical RAS+ array back to source order."""
    return ornt_transform(axcodes2ornt("RAS"), io_orientation(source_affine))


def _check_affine(affine: np.ndarray, path: Path | None) -> np.ndarray:
    """Returns a float64 (4, 4) copy of ``affine``; raises VolumeError if unusable."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise VolumeError(
            f"Expected a (4, 4) voxel-to-world affine for {_where(path)}. "
            f"Received: affine.shape={affine.shape}"
        )
    if not np.all(np.isfinite(affine)):
        raise VolumeError(
            f"Expected a finite affine for {_where(path)}. Received: affine={affine.tolist()}"
        )
    rzs = affine[:3, :3]
    norms = np.linalg.norm(rzs, axis=0)
    det = abs(float(np.linalg.det(rzs)))
    if np.any(norms <= 0) or det <= 1e-6 * float(np.prod(norms)):
        raise VolumeError(
            f"Expected a non-singular affine (positive voxel spacing) for {_where(path)}. "
            f"Received: affine={affine.tolist()} (column norms {norms.tolist()})"
        )
    return affine.copy()


def _squeeze_to_3d(shape: tuple[int, ...], path: Path | None) -> tuple[int, int, int]:
    """Returns the 3D shape; trailing singleton axes (4D with one volume) are dropped."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 3 or any(s != 1 for s in shape[3:]):
        raise VolumeError(
            f"Expected a 3D volume (or 4D with a single volume) in {_where(path)}. "
            f"Received: shape={shape}"
        )
    if any(s < 1 for s in shape[:3]):
        raise VolumeError(
            f"Expected at least one voxel along each axis in {_where(path)}. "
            f"Received: shape={shape}"
        )
    return shape[:3]  # type: ignore[return-value]


def _check_finite(array: np.ndarray, path: Path | None) -> None:
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        if not finite.all():
            n_bad = int(array.size - np.count_nonzero(finite))
            raise VolumeError(
                f"Expected only finite voxel values in {_where(path)}. "
                f"Received: {n_bad} non-finite voxel(s) (NaN or inf) of {array.size}"
            )


def _mask_to_uint8(array: np.ndarray, path: Path | None, *, binarize: bool) -> np.ndarray:
    """Validates a label array and returns it as uint8 {0, 1} (same shape, same order)."""
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise VolumeError(
            f"Expected a numeric mask in {_where(path)}. Received: dtype={array.dtype}"
        )
    _check_finite(array, path)
    is_binary = (array == 0) | (array == 1)
    if is_binary.all():
        return array.astype(np.uint8)
    others = np.unique(array[~is_binary])
    listed = others[:_MAX_LISTED_VALUES].tolist()
    more = f" and {others.size - _MAX_LISTED_VALUES} more" if others.size > _MAX_LISTED_VALUES else ""
    non_integral = others[others != np.round(others)]
    if non_integral.size:
        raise VolumeError(
            f"Expected integral label values in {{0, 1}} in mask {_where(path)} (threshold "
            f"probabilities before using them as a mask). Received: values={listed}{more}"
        )
    if others.min() < 0:
        raise VolumeError(
            f"Expected non-negative label values in {{0, 1}} in mask {_where(path)}. "
            f"Received: values={listed}{more}"
        )
    if not binarize:
        raise VolumeError(
            f"Expected label values in {{0, 1}} in mask {_where(path)} (pass binarize=True to "
            f"map every label > 0 to 1). Received: values={listed}{more}"
        )
    return (array > 0).astype(np.uint8)


def _build_volume(
    raw: np.ndarray,
    source_affine: np.ndarray,
    header: nib.Nifti1Header,
    path: Path | None,
    *,
    kind: str,
    binarize: bool,
) -> Volume:
    """Validates a source-order array and reorients it to canonical order."""
    source_shape = _squeeze_to_3d(raw.shape, path)
    raw = raw.reshape(source_shape)
    source_affine = _check_affine(source_affine, path)
    if kind == "image":
        if not (np.issubdtype(raw.dtype, np.number) or raw.dtype == np.bool_) or np.iscomplexobj(
            raw
        ):
            raise VolumeError(
                f"Expected a real-valued image in {_where(path)}. Received: dtype={raw.dtype}"
            )
        _check_finite(raw, path)
        values = raw.astype(np.float32, copy=False)
        _check_finite(values, path)  # float64 values beyond float32 range become inf
    else:
        values = _mask_to_uint8(raw, path, binarize=binarize)
    ornt = _to_canonical_ornt(source_affine)
    canonical = np.ascontiguousarray(apply_orientation(values, ornt))
    affine = source_affine @ inv_ornt_aff(ornt, source_shape)
    spacing_mm = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    return Volume(
        array=canonical,
        spacing_mm=spacing_mm,  # type: ignore[arg-type]
        affine=affine,
        source_affine=source_affine,
        source_shape=source_shape,
        header=header,
        path=path,
    )


def _check_kind(kind: str, allowed: tuple[str, ...]) -> None:
    if kind not in allowed:
        raise ValueError(f"Expected kind to be one of {allowed}. Received: kind={kind!r}")


# --------------------------------------------------------------------------------------------
# Volume
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Volume:
    """A 3D scan or mask in canonical (RAS+) voxel order, plus what it takes to write back.

    Attributes:
        array: ndarray of shape (I, J, K) in canonical RAS+ voxel order; float32 for an image
            (scl_slope/scl_inter applied), uint8 in {0, 1} for a mask.
        spacing_mm: Voxel spacing along (I, J, K) in mm (affine column norms).
        affine: float64 (4, 4) canonical voxel -> world (RAS mm) affine.
        source_affine: float64 (4, 4) voxel -> world affine of the array as stored on disk.
        source_shape: Shape of the array as stored on disk (3D).
        header: Copy of the source NIfTI header (qform/sform codes, units, extensions).
        path: The file read, or None for a volume built from an array.
    """

    array: np.ndarray
    spacing_mm: tuple[float, float, float]
    affine: np.ndarray
    source_affine: np.ndarray
    source_shape: tuple[int, int, int]
    header: nib.Nifti1Header
    path: Path | None = None

    @property
    def ornt(self) -> np.ndarray:
        """(3, 2) nibabel orientation taking the source array to canonical order."""
        return _to_canonical_ornt(self.source_affine)

    @property
    def geometry(self) -> Geometry:
        """The alignment Geometry of this volume: a single Reorient step."""
        return Geometry(
            source_shape=self.source_shape,
            source_affine=self.source_affine.copy(),
            steps=(Reorient(ornt=self.ornt, in_shape=self.source_shape),),
        )

    @property
    def case_id(self) -> str:
        """File name without ``.nii``/``.nii.gz`` and without a trailing ``_0000``."""
        if self.path is None:
            raise ValueError(
                "Expected a Volume read from a file to derive a case id. Received: path=None"
            )
        return case_id_from_path(self.path)

    def to_source(self, array: np.ndarray) -> np.ndarray:
        """Reorients a canonical-order array of shape ``array.shape`` back to source order.

        Args:
            array: ndarray of shape (I, J, K) (or (I, J, K, ...)) in canonical order.

        Returns:
            ndarray of shape ``source_shape`` (plus trailing axes), same dtype.

        Raises:
            ValueError: If the spatial shape is not this volume's canonical shape.
        """
        array = np.asarray(array)
        if array.shape[:3] != self.array.shape:
            raise ValueError(
                f"Expected an array of canonical shape {self.array.shape} for "
                f"{_where(self.path)}. Received: array.shape={array.shape}"
            )
        return np.ascontiguousarray(apply_orientation(array, _to_source_ornt(self.source_affine)))
