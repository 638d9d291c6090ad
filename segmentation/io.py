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
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

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

NIFTI_SUFFIXES = (".nii.gz", ".nii")
METAIMAGE_SUFFIXES = (".mhd", ".mha")  # read through segmentation.metaimage (SimpleITK)
_CHANNEL_SUFFIX = "_0000"
_KINDS_READ = ("image", "mask")
_KINDS_WRITE = ("mask", "probs", "image")
_SPACES = ("canonical", "source")
_WRITE_DTYPES = {
    "mask": (np.dtype(np.uint8),),
    "probs": (np.dtype(np.float32), np.dtype(np.uint8)),
    "image": (np.dtype(np.float32), np.dtype(np.int16)),
}
_PROBS_UINT8_SCALE = 255.0  # uint8 probabilities: stored value / 255, via scl_slope
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
# Writing
# --------------------------------------------------------------------------------------------


def atomic_write(path: str | os.PathLike, write_fn: Callable[[Path], None]) -> Path:
    """Writes a file atomically: ``write_fn`` fills a temporary file, which is then renamed.

    The temporary file lives in the destination directory (so that ``os.replace`` is atomic)
    and keeps the destination's suffixes (``.nii.gz`` stays gzip for nibabel). If
    ``write_fn`` raises, or is interrupted, the temporary file is removed and the
    destination is left untouched. Missing parent directories are created.

    Args:
        path: Destination file.
        write_fn: Called once with the temporary path; must write the whole file there.

    Returns:
        The destination path.

    Raises:
        TypeError: If ``path`` is not path-like or ``write_fn`` is not callable.
        Whatever ``write_fn`` raises (after cleanup).
    """
    path = _as_path(path)
    if not callable(write_fn):
        raise TypeError(f"Expected write_fn to be callable. Received: write_fn={write_fn!r}")
    if path.is_dir():
        raise ValueError(f"Expected a file path, not a directory. Received: path='{path}'")
    path.parent.mkdir(parents=True, exist_ok=True)
    suffixes = "".join(path.suffixes) if not path.name.startswith(".") else ""
    base = path.name[: len(path.name) - len(suffixes)] if suffixes else path.name
    fd, tmp_name = tempfile.mkstemp(prefix=f".{base}.tmp-", suffix=suffixes, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write_fn(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _prepare_write_array(
    array: np.ndarray, *, reference: Volume, kind: str, dtype: np.dtype, space: str
) -> np.ndarray:
    """Validates ``array`` and returns it in source order with the on-disk dtype."""
    ref = _where(reference.path)
    array = np.asarray(array)
    expected = reference.array.shape if space == "canonical" else reference.source_shape
    if array.shape != tuple(expected):
        raise ValueError(
            f"Expected array of shape {tuple(expected)} ({space} order of reference {ref}). "
            f"Received: array.shape={array.shape}"
        )
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise TypeError(
            f"Expected a real numeric or bool array to write. Received: array.dtype={array.dtype}"
        )
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        n_bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise ValueError(
            f"Expected only finite values to write. Received: array with {n_bad} non-finite "
            f"value(s)"
        )
    if kind == "mask":
        if not ((array == 0) | (array == 1)).all():
            found = np.unique(array)[:_MAX_LISTED_VALUES].tolist()
            raise ValueError(
                "Expected mask values in {0, 1} (threshold probabilities first, or write them "
                f"with kind='probs'). Received: values={found}"
            )
    elif kind == "probs":
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 1:
            raise ValueError(
                "Expected probabilities in [0, 1] (apply the sigmoid to logits first). "
                f"Received: min={low}, max={high}"
            )
    elif dtype == np.int16:
        info = np.iinfo(np.int16)
        if (array != np.round(array)).any() or array.min() < info.min or array.max() > info.max:
            raise ValueError(
                "Expected integral values within int16 range for dtype=int16. "
                f"Received: min={float(array.min())}, max={float(array.max())}"
            )
    if space == "canonical":
        array = reference.to_source(array)
    if kind == "probs" and dtype == np.uint8:
        array = np.rint(array.astype(np.float64) * _PROBS_UINT8_SCALE)
    out = np.ascontiguousarray(array.astype(dtype, copy=False))
    if np.issubdtype(dtype, np.floating) and not np.isfinite(out).all():
        raise ValueError(
            f"Expected values representable as {dtype}. Received: min={float(array.min())}, "
            f"max={float(array.max())} (overflow to inf)"
        )
    return out


def _slope_inter(kind: str, dtype: np.dtype) -> tuple[float | None, float | None]:
    """scl_slope/scl_inter to store: identity for integers, 1/255 for uint8 probs, NaN for floats."""
    if kind == "probs" and dtype == np.uint8:
        return 1.0 / _PROBS_UINT8_SCALE, 0.0
    if np.issubdtype(dtype, np.integer):
        return 1.0, 0.0
    return None, None


def _output_header(reference: Volume, *, kind: str, dtype: np.dtype) -> nib.Nifti1Header:
    """The reference header with data-related fields reset for ``kind``."""
    header = reference.header.copy()
    header.set_data_dtype(dtype)
    header.set_slope_inter(*_slope_inter(kind, dtype))
    header["cal_min"] = 0.0
    header["cal_max"] = 1.0 if kind in ("mask", "probs") else 0.0
    header.set_intent("none")
    header["descrip"] = f"lungseg {kind}".encode()
    return header


def _stored_shape(reference: Volume) -> tuple[int, ...]:
    """The source shape plus the trailing singleton axes of the source file (4D with one volume)."""
    shape = tuple(int(s) for s in reference.header.get_data_shape())
    source = tuple(reference.source_shape)
    if len(shape) > 3 and shape[:3] == source and all(s == 1 for s in shape[3:]):
        return shape
    return source


def write_volume(
    path: str | os.PathLike,
    array: np.ndarray,
    *,
    reference: Volume,
    kind: Literal["mask", "probs", "image"],
    space: Literal["canonical", "source"] = "canonical",
    dtype: type | np.dtype | None = None,
) -> Path:
    """Writes an array in the reference's source orientation, affine and header codes.

    Args:
        path: Destination ``.nii`` or ``.nii.gz`` file (overwritten atomically).
        array: ndarray of shape ``reference.array.shape`` (``space="canonical"``) or
            ``reference.source_shape`` (``space="source"``).
        reference: The Volume the array belongs to (usually the CT it was predicted from).
        kind: ``"mask"`` (values in {0, 1}, stored uint8), ``"probs"`` (values in [0, 1],
            stored float32, or uint8 quantised to steps of 1/255 with scl_slope=1/255) or
            ``"image"`` (float32 or int16).
        space: Voxel order of ``array``.
        dtype: On-disk dtype; defaults to uint8 for masks and float32 otherwise. NIfTI has
            no float16 data type, so ``np.float16`` is refused; use ``np.uint8`` for compact
            probability maps.

    Returns:
        The written path.

    Raises:
        ValueError: Bad path suffix, kind, space, dtype, shape or values.
        VolumeError: If the re-read file's shape or affine differ from the reference's
            source shape and affine (nothing is left at ``path`` in that case). A reference
            read from a 4D file with one volume gets a 4D file with one volume.
    """
    path = _as_path(path)
    _check_kind(kind, _KINDS_WRITE)
    if space not in _SPACES:
        raise ValueError(f"Expected space to be one of {_SPACES}. Received: space={space!r}")
    if not isinstance(reference, Volume):
        raise TypeError(
            f"Expected reference to be a Volume. Received: reference={type(reference).__name__}"
        )
    if _nifti_suffix(path) is None:
        raise ValueError(
            f"Expected an output path ending in .nii or .nii.gz. Received: path='{path}'"
        )
    out_dtype = np.dtype(np.uint8 if kind == "mask" else np.float32) if dtype is None else None
    if out_dtype is None:
        try:
            out_dtype = np.dtype(dtype)
        except TypeError as err:
            raise TypeError(f"Expected a NumPy dtype. Received: dtype={dtype!r}") from err
    if out_dtype == np.float16:
        raise ValueError(
            "Expected a dtype that NIfTI can store (NIfTI-1/2 have no float16; use "
            f"dtype=np.uint8 for compact probabilities). Received: dtype={out_dtype}"
        )
    if out_dtype not in _WRITE_DTYPES[kind]:
        allowed = [str(d) for d in _WRITE_DTYPES[kind]]
        raise ValueError(
            f"Expected dtype in {allowed} for kind={kind!r}. Received: dtype={out_dtype}"
        )
    data = _prepare_write_array(
        array, reference=reference, kind=kind, dtype=out_dtype, space=space
    )
    header = _output_header(reference, kind=kind, dtype=out_dtype)
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image

    stored_shape = _stored_shape(reference)

    def _write_and_verify(tmp: Path) -> None:
        image = image_class(data.reshape(stored_shape), reference.source_affine, header=header,
                            dtype=out_dtype)
        image.header.set_slope_inter(*_slope_inter(kind, out_dtype))  # init resets them
        nib.save(image, tmp)
        written = nib.load(tmp)
        if tuple(written.shape) != stored_shape or not np.allclose(
            written.affine, reference.source_affine, rtol=0.0, atol=1e-4
        ):
            raise VolumeError(
                f"Expected the written file '{path}' to have the source shape "
                f"{tuple(reference.source_shape)} and affine {reference.source_affine.tolist()} "
                f"of {_where(reference.path)}. Received: shape={tuple(written.shape)}, "
                f"affine={np.asarray(written.affine).tolist()}"
            )

    return atomic_write(path, _write_and_verify)


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
