"""Atomic file writing and `write_volume`, the exact write-back of `segmentation.io`.

A private helper of `segmentation.io` (which re-exports `atomic_write` and `write_volume`):
`atomic_write` is the project's one atomic-write helper (temporary file in the destination
directory, fsync, ``os.replace``); `write_volume` writes an array in the source orientation,
affine and header codes of its reference Volume and re-reads it before the rename.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

from segmentation.io_volume import (
    _MAX_LISTED_VALUES,
    Volume,
    VolumeError,
    _as_path,
    _check_kind,
    _nifti_suffix,
    _where,
)

__all__ = ["atomic_write", "write_volume"]

_KINDS_WRITE = ("mask", "probs", "image")
_SPACES = ("canonical", "source")
_WRITE_DTYPES = {
    "mask": (np.dtype(np.uint8),),
    "probs": (np.dtype(np.float32), np.dtype(np.uint8)),
    "image": (np.dtype(np.float32), np.dtype(np.int16)),
}
_PROBS_UINT8_SCALE = 255.0  # uint8 probabilities: stored value / 255, via scl_slope


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
