"""Reading MetaImage scans (``.mhd`` header + ``.raw`` data, or single-file ``.mha``).

SimpleITK (ITK's MetaIO) reads the file; this module only checks that the data file is
there and long enough before reading (ITK's own message for a missing or short ``.raw``
names the header, not the data file), and turns the ITK geometry into the NIfTI
conventions of :mod:`segmentation.io`.

Geometry. ITK describes a voxel ``(i, j, k)`` (``i`` fastest in the file, the ITK index
order) by its *physical point* in LPS patient coordinates::

    p_LPS = origin + D @ diag(spacing) @ (i, j, k)

with ``D`` the 3x3 direction matrix (``TransformMatrix`` in the header, its columns the
axis directions), ``origin`` = ``Offset`` and ``spacing`` = ``ElementSpacing``. NIfTI world
is RAS, so the source affine of the returned Volume is ``LPS_TO_RAS @ [[D diag(s), o],
[0, 1]]`` (x and y rows negated), and the source array is the ITK image in ``(i, j, k)``
order (NumPy's ``GetArrayFromImage`` gives ``(k, j, i)``; it is transposed). LUNA16's
``annotations.csv`` coordinates are LPS physical points of this kind.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import numpy as np

from segmentation.dicom import LPS_TO_RAS
from segmentation.io import METAIMAGE_SUFFIXES, Volume, VolumeError, volume_from_array

__all__ = [
    "MetaImageError",
    "is_metaimage",
    "lps_affine",
    "read_metaimage",
]


_HEADER_LINE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")
_MAX_HEADER_BYTES = 1 << 16
_INLINE_DATA = ("LOCAL",)


class MetaImageError(VolumeError):
    """A MetaImage scan is unusable. The message names the header and, if to blame, the data file."""


def is_metaimage(path: str | os.PathLike) -> bool:
    """True when the file name ends in ``.mhd`` or ``.mha`` (case-insensitive)."""
    name = Path(path).name.lower()
    return any(name.endswith(s) and len(name) > len(s) for s in METAIMAGE_SUFFIXES)


def lps_affine(*, origin_mm, spacing_mm, direction) -> np.ndarray:
    """The LPS voxel ``(i, j, k)`` -> physical point affine of an ITK image.

    Args:
        origin_mm: ``(3,)`` physical point of voxel (0, 0, 0) (ITK ``GetOrigin``).
        spacing_mm: ``(3,)`` voxel spacing along i, j, k (ITK ``GetSpacing``).
        direction: 9 numbers, row-major 3x3 direction matrix (ITK ``GetDirection``).

    Returns:
        float64 ``(4, 4)`` affine.
    """
    matrix = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = matrix * np.asarray(spacing_mm, dtype=np.float64)[None, :]
    affine[:3, 3] = np.asarray(origin_mm, dtype=np.float64)
    return affine


def _header_fields(path: Path) -> dict[str, str]:
    """``key = value`` fields of a MetaImage header, up to ``ElementDataFile`` (the last key)."""
    fields: dict[str, str] = {}
    with open(path, "rb") as handle:
        head = handle.read(_MAX_HEADER_BYTES)
    for raw_line in head.split(b"\n"):
        line = raw_line.decode("latin-1")
        match = _HEADER_LINE.match(line)
        if match is None:
            continue
        fields[match.group(1).lower()] = match.group(2)
        if match.group(1).lower() == "elementdatafile":
            break
    return fields


def _check_data_file(path: Path, *, n_bytes_expected: int) -> None:
    """Raises MetaImageError when the ``.raw`` named by an ``.mhd`` is missing or short."""
    fields = _header_fields(path)
    data_name = fields.get("elementdatafile")
    if not data_name:
        raise MetaImageError(
            f"Expected an ElementDataFile entry in the MetaImage header. Received: file='{path}' "
            "without one"
        )
    if data_name.upper() in _INLINE_DATA or data_name.upper().startswith("LIST") \
            or "%" in data_name or " " in data_name.strip():
        return  # data inline, or split over several files: left to ITK
    data_path = Path(data_name) if os.path.isabs(data_name) else path.parent / data_name
    if not data_path.is_file():
        raise MetaImageError(
            f"Expected the data file '{data_path}' named by ElementDataFile in the MetaImage "
            f"header '{path}'. Received: no such file"
        )
    compressed = fields.get("compresseddata", "false").strip().lower() in ("true", "1")
    size = data_path.stat().st_size
    try:
        header_bytes = max(int(fields.get("headersize", "0")), 0)  # -1: data at the end
    except ValueError:
        header_bytes = 0
    if not compressed and size < n_bytes_expected + header_bytes:
        raise MetaImageError(
            f"Expected {n_bytes_expected} bytes of voxel data in '{data_path}' (named by "
            f"'{path}'). Received: {size} bytes (the file is short)"
        )


def _read_itk(path: Path):
    import SimpleITK as sitk  # heavy (~0.3 s), and only MetaImage users need it

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise MetaImageError(
            f"Expected a readable MetaImage header. Received: file='{path}' ({_itk_reason(err)})"
        ) from err
    size = tuple(int(s) for s in reader.GetSize())
    if reader.GetDimension() != 3 or reader.GetNumberOfComponents() != 1:
        raise MetaImageError(
            f"Expected a 3D single-component MetaImage. Received: file='{path}' with "
            f"{reader.GetDimension()} dimensions, {reader.GetNumberOfComponents()} "
            f"component(s), size={size}"
        )
    if path.name.lower().endswith(".mhd"):
        pixel = np.dtype(sitk.GetArrayViewFromImage(sitk.Image([1, 1, 1], reader.GetPixelID())).dtype)
        _check_data_file(path, n_bytes_expected=int(np.prod(size)) * pixel.itemsize)
    try:
        return reader.Execute()
    except RuntimeError as err:
        raise MetaImageError(
            f"Expected readable MetaImage voxel data. Received: file='{path}' ({_itk_reason(err)})"
        ) from err


def _itk_reason(err: Exception) -> str:
    """The useful last lines of an ITK exception message."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith("Exception thrown in SimpleITK")]
    return " ".join(useful[-3:]) if useful else type(err).__name__


def read_metaimage(
    path: str | os.PathLike,
    *,
    kind: Literal["image", "mask"] = "image",
    binarize: bool = False,
) -> Volume:
    """Reads a ``.mhd``/``.mha`` scan or mask into a Volume with its exact geometry.

    Args:
        path: The ``.mhd`` header (with its data file beside it, as ElementDataFile names
            it) or a single-file ``.mha``.
        kind: ``"image"`` (float32) or ``"mask"`` (uint8, values checked to be in {0, 1}).
        binarize: For masks, map labels > 0 to 1 instead of raising.

    Returns:
        A `segmentation.io.Volume` in canonical RAS+ order whose ``source_affine`` is the
        RAS form of the ITK geometry (see the module docstring) and whose ``path`` is the
        header. Writing a mask with it as reference gives a NIfTI file on the same grid.

    Raises:
        MetaImageError (a VolumeError): Missing header, missing or short data file (named),
            unreadable data, not 3D single-component; plus the checks of
            `segmentation.io.volume_from_array` (finite values, non-singular geometry).
        TypeError: ``path`` is not path-like.
    """
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes):
        raise TypeError(f"Expected path to be a str or os.PathLike. Received: path={path!r}")
    path = Path(path)
    if not is_metaimage(path):
        raise MetaImageError(
            f"Expected a MetaImage file ending in .mhd or .mha. Received: path='{path}'"
        )
    if not path.is_file():
        raise MetaImageError(
            f"Expected an existing MetaImage file. Received: path='{path}' "
            f"({'not a file' if path.exists() else 'not found'})"
        )
    import SimpleITK as sitk  # heavy (~0.3 s), and only MetaImage users need it

    image = _read_itk(path)
    array = np.asarray(sitk.GetArrayFromImage(image)).transpose(2, 1, 0)
    affine = LPS_TO_RAS @ lps_affine(origin_mm=image.GetOrigin(), spacing_mm=image.GetSpacing(),
                                     direction=image.GetDirection())
    try:
        return volume_from_array(array, affine, kind=kind, path=path, binarize=binarize)
    except MetaImageError:
        raise
    except VolumeError as err:
        raise MetaImageError(str(err)) from err
