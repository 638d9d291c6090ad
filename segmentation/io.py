"""NIfTI input/output with exact geometry.

Reading returns a :class:`Volume`: the voxel array in canonical (RAS+) voxel order, the
spacing in the same order, and everything needed to write a result back in the source
orientation (source affine, source shape, a copy of the source header). Writing applies the
exact inverse reorientation, keeps the source affine and header codes, is atomic (temporary
file in the same directory, then ``os.replace``) and re-reads the written header to check
that shape and affine equal the source's.

Canonical order follows ``nibabel.as_closest_canonical``: with
``ornt = ornt_transform(io_orientation(A), axcodes2ornt("RAS"))`` the canonical array is
``apply_orientation(source_array, ornt)`` and the canonical affine is
``A @ inv_ornt_aff(ornt, source_shape)``.

The Volume type and its checks live in `segmentation.io_volume`, atomic writing and
`write_volume` in `segmentation.io_write`; this module reads files and checks image/mask
pairs, and re-exports both helpers' public names (import them from here).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

from segmentation.io_volume import (
    METAIMAGE_SUFFIXES,
    NIFTI_SUFFIXES,
    Volume,
    VolumeError,
    _as_path,
    _build_volume,
    _check_affine,
    _check_kind,
    _mask_to_uint8,
    _nifti_suffix,
    _scan_suffix,
    _squeeze_to_3d,
    _where,
    case_id_from_path,
)
from segmentation.io_write import atomic_write, write_volume
from segmentation.validation import check_float

__all__ = [
    "METAIMAGE_SUFFIXES",
    "NIFTI_SUFFIXES",
    "Volume",
    "VolumeError",
    "atomic_write",
    "case_id_from_path",
    "check_pair",
    "read_volume",
    "volume_from_array",
    "write_volume",
]

_KINDS_READ = ("image", "mask")


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _raw_pixdim(path: Path, header_class: type) -> np.ndarray:
    """pixdim as stored in the file (nib.load silently replaces bad values by their abs)."""
    with nib.openers.ImageOpener(path) as fileobj:
        raw_header = header_class.from_fileobj(fileobj, check=False)
    return np.asarray(raw_header["pixdim"], dtype=np.float64)


def read_volume(
    path: str | os.PathLike,
    *,
    kind: Literal["image", "mask"] = "image",
    binarize: bool = False,
) -> Volume:
    """Reads a NIfTI CT or mask into canonical (RAS+) voxel order.

    A MetaImage file (``.mhd``/``.mha``) is read by `segmentation.metaimage.read_metaimage`
    (same Volume, header built from the ITK geometry).

    Args:
        path: A ``.nii`` or ``.nii.gz`` file (or ``.mhd``/``.mha``).
        kind: ``"image"`` gives float32 values with scl_slope/scl_inter applied; ``"mask"``
            gives uint8 after checking that every value is 0 or 1.
        binarize: For masks, map every integral label > 0 to 1 instead of raising.

    Returns:
        A Volume with ``array`` of shape (I, J, K) in canonical order.

    Raises:
        VolumeError: Missing, unreadable, corrupt or truncated file; not 3D (4D with more
            than one volume); non-finite voxels; zero/negative pixdim or a singular affine;
            mask values outside {0, 1}. The message names the file.
        TypeError: If ``path`` is not a str or PathLike.
    """
    _check_kind(kind, _KINDS_READ)
    path = _as_path(path)
    if _scan_suffix(path) is not None and _nifti_suffix(path) is None:
        from segmentation.metaimage import read_metaimage  # metaimage builds on io: a cycle at top

        return read_metaimage(path, kind=kind, binarize=binarize)
    if _nifti_suffix(path) is None:
        raise VolumeError(
            f"Expected a NIfTI file ending in .nii or .nii.gz. Received: path='{path}'"
        )
    if not path.exists():
        raise VolumeError(f"Expected an existing NIfTI file. Received: path='{path}' (not found)")
    if not path.is_file():
        raise VolumeError(f"Expected a regular NIfTI file. Received: path='{path}' (not a file)")
    try:
        img = nib.load(path)
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise VolumeError(
                f"Expected a single-file NIfTI-1/2 image. Received: path='{path}' "
                f"(loaded as {type(img).__name__})"
            )
        raw = np.asanyarray(img.dataobj)
    except VolumeError:
        raise
    except Exception as err:  # nibabel, gzip/zlib, EOFError, OSError on truncated files
        raise VolumeError(
            f"Expected a readable, uncorrupted NIfTI file. Received: path='{path}' "
            f"({type(err).__name__}: {err})"
        ) from err
    header = img.header.copy()
    n_spatial = min(3, len(img.shape))
    pixdim = _raw_pixdim(path, type(img.header))[1 : 1 + n_spatial]
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim <= 0):
        raise VolumeError(
            f"Expected positive voxel sizes (pixdim) in file '{path}'. "
            f"Received: pixdim={pixdim.tolist()}"
        )
    return _build_volume(
        np.asarray(raw), img.affine, header, path, kind=kind, binarize=binarize
    )


def volume_from_array(
    array_source_order: np.ndarray,
    affine: np.ndarray,
    *,
    kind: Literal["image", "mask"] = "image",
    path: str | os.PathLike | None = None,
    binarize: bool = False,
) -> Volume:
    """Builds a Volume from an in-memory array, as if it had been read from a file.

    The header gets qform and sform set to ``affine`` with code 1 (scanner).

    Args:
        array_source_order: ndarray of shape (I, J, K) (or (I, J, K, 1)) in the voxel order
            that ``affine`` describes.
        affine: (4, 4) voxel -> world (RAS mm) affine of that array.
        kind: ``"image"`` (float32) or ``"mask"`` (uint8, values checked to be in {0, 1}).
        path: Optional path recorded in the Volume (used for case ids and messages).
        binarize: For masks, map labels > 0 to 1 instead of raising.

    Returns:
        A Volume in canonical order.

    Raises:
        VolumeError: Same checks as :func:`read_volume`.
    """
    _check_kind(kind, _KINDS_READ)
    path = None if path is None else _as_path(path)
    array = np.asarray(array_source_order)
    source_affine = _check_affine(affine, path)
    shape = _squeeze_to_3d(array.shape, path)
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32 if kind == "image" else np.uint8)
    header.set_qform(source_affine, code=1)
    header.set_sform(source_affine, code=1)
    header.set_xyzt_units(xyz="mm", t="sec")
    return _build_volume(array, source_affine, header, path, kind=kind, binarize=binarize)


# --------------------------------------------------------------------------------------------
# Pairs
# --------------------------------------------------------------------------------------------


def _corners(shape: tuple[int, ...]) -> np.ndarray:
    """(4, 8) homogeneous voxel coordinates of the 8 corner voxel centres."""
    i, j, k = (np.array([0, s - 1]) for s in shape[:3])
    grid = np.stack(np.meshgrid(i, j, k, indexing="ij"), axis=0).reshape(3, -1)
    return np.vstack([grid, np.ones((1, grid.shape[1]))])


def check_pair(
    image: Volume, mask: Volume, *, atol_mm: float = 1e-3, binarize: bool = False
) -> Volume:
    """Checks that a mask lies on its image's voxel grid and holds labels in {0, 1}.

    The comparison is done in canonical order and world space: shapes must be equal and the
    world positions of the 8 corner voxel centres must agree within ``atol_mm`` (so a mask
    stored in another orientation of the same grid is accepted).

    Args:
        image: The CT Volume.
        mask: The label Volume.
        atol_mm: Largest allowed corner displacement, in mm.
        binarize: Map integral labels > 1 to 1 instead of raising.

    Returns:
        The mask Volume, with ``array`` as uint8 in {0, 1} (a new Volume when converted).

    Raises:
        TypeError: If image or mask is not a Volume.
        VolumeError: Shape or affine mismatch, or bad labels; names both files.
    """
    for name, value in (("image", image), ("mask", mask)):
        if not isinstance(value, Volume):
            raise TypeError(
                f"Expected {name} to be a Volume. Received: {name}={type(value).__name__}"
            )
    check_float(atol_mm, name="atol_mm", minimum=0)
    pair = f"image {_where(image.path)} and mask {_where(mask.path)}"
    if image.array.shape != mask.array.shape:
        raise VolumeError(
            f"Expected {pair} to have the same shape. Received: image shape={image.array.shape} "
            f"(source {image.source_shape}), mask shape={mask.array.shape} "
            f"(source {mask.source_shape})"
        )
    corners = _corners(image.array.shape)
    offset_mm = float(
        np.max(np.linalg.norm((image.affine @ corners - mask.affine @ corners)[:3], axis=0))
    )
    if offset_mm > atol_mm:
        raise VolumeError(
            f"Expected {pair} to share the same affine within atol_mm={atol_mm}. "
            f"Received: corners differ by up to {offset_mm:.6g} mm; image source "
            f"affine={np.round(image.source_affine, 6).tolist()}, mask source "
            f"affine={np.round(mask.source_affine, 6).tolist()}"
        )
    try:
        labels = _mask_to_uint8(mask.array, mask.path, binarize=binarize)
    except VolumeError as err:
        raise VolumeError(f"{err} (pair with image {_where(image.path)})") from err
    if mask.array.dtype == np.uint8 and np.array_equal(labels, mask.array):
        return mask
    return dataclasses.replace(mask, array=labels)
