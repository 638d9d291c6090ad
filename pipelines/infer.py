"""Inference: ``lungseg predict --model RUN_DIR --input PATH --out DIR [--probs] [--tta]
[--threshold T] [--min-size-mm3 V] [--window I J K] [--overwrite]``.

Per scan (`predict_volume` holds the numerical part, `predict` the files):

1. read: `segmentation.io.read_volume` for a NIfTI file, `segmentation.dicom.read_dicom_series`
   for a folder holding one DICOM series;
2. `segmentation.preprocessing.preprocess_volume` with the run's own ``config.preprocess``
   (the resolved ``config.yaml`` saved by training, so preprocessing cannot drift);
3. `pipelines.predictor.predict_probabilities`: the one sliding-window wrapper (window =
   ``inference.window`` or ``train.patch_size``, ``inference.overlap``, Gaussian importance,
   batched windows, air-only windows skipped, optional mirror TTA), network-space
   probabilities;
4. `pipelines.predictor.postprocess`, the post-processing chain that training-time
   validation shares: ``Geometry.inverse(probs, order=1)`` (probabilities, not labels, go
   back to the exact source grid and voxel order, then are clipped to [0, 1]), threshold
   (``>= threshold``), removal of connected components smaller than ``min_size_mm3``
   (connectivity ``evaluation.connectivity``, as in evaluation) and, with
   ``inference.lung_mask``, the lung filter;
5. write, each file atomically: ``{case}_probs.nii.gz`` (with ``write_probs``; float32),
   ``{case}_nodules.csv``, ``{case}_nodules.json`` and last ``{case}_mask.nii.gz`` (uint8),
   all with the input's source shape, affine and header codes (``write_volume`` re-reads the
   file and checks shape and affine before the rename). Since the mask is written last, a
   case whose mask exists is complete; if any write fails, the files of that case written in
   this attempt are removed, so nothing partial is left.

Nodule table (one row per connected component of the final mask, largest first): ``id``
(1..n), ``centroid_vox_i/j/k`` (source voxel order, as stored in the input file),
``centroid_x/y/z_mm`` (world RAS+ mm as nibabel reports it; for DICOM input that is the
patient LPS position with x and y negated), ``diameter_mm`` (equivalent sphere diameter
``(6 V / pi) ** (1/3)``), ``volume_mm3``, ``mean_prob`` and ``max_prob`` (probabilities in
the component), ``slice_start`` and ``slice_end`` (inclusive indices along the *slice axis*:
the source axis with the largest spacing, ties broken by the axis most aligned with the
world superior-inferior direction; reported in the JSON) and ``size_category`` of the
equivalent diameter: ``"<6mm"``, ``"6-8mm"`` (6 to < 8), ``"8-15mm"`` (8 to < 15),
``">=15mm"`` (Lung-RADS-like solid-nodule size bands).

Inputs: a NIfTI file; a folder of NIfTI files (every ``.nii``/``.nii.gz`` in it, sorted;
case id = file name without the suffix and without a trailing ``_0000``); or a folder with
no NIfTI file holding one DICOM series (case id = the folder name). MetaImage scans
(``.mhd`` + ``.raw``, ``.mha``; LUNA16) are read like NIfTI files, one case per header
(case id = the file name without the suffix). In a folder run a bad
scan is caught and reported (``lines``, its case record) and the other scans go on; a
single-scan input raises the error instead (bad input, exit status 2 in the CLI).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from segmentation.config import Config, ConfigError
from segmentation.console import progress_bar
from segmentation.io import (
    METAIMAGE_SUFFIXES,
    NIFTI_SUFFIXES,
    Volume,
    atomic_write,
    case_id_from_path,
    read_volume,
    write_volume,
)
from segmentation.lesions import Lesion, find_components, lesion_table
from segmentation.plausibility import (
    PlausibilityError,
    ScanLimits,
    check_header,
    check_memory,
    check_scan,
    estimate_inference_bytes,
    window_bytes,
)
from segmentation.preflight import check_output_dir
from segmentation.preprocessing import preprocess_volume
from segmentation.runfolder import CONFIG_FILE, MODEL_FILE, RunFolderError, load_run_config
from segmentation.validation import check_float

__all__ = [
    "CONFIG_FILE",
    "MODEL_FILE",
    "NODULE_COLUMNS",
    "InferenceError",
    "InputCase",
    "find_inputs",
    "load_run",
    "nodule_table",
    "output_paths",
    "predict",
    "predict_volume",
    "size_category",
    "slice_axis",
]

logger = logging.getLogger(__name__)

NODULE_COLUMNS = (
    "id",
    "centroid_vox_i",
    "centroid_vox_j",
    "centroid_vox_k",
    "centroid_x_mm",
    "centroid_y_mm",
    "centroid_z_mm",
    "diameter_mm",
    "volume_mm3",
    "mean_prob",
    "max_prob",
    "slice_start",
    "slice_end",
    "size_category",
)
"""Columns of ``{case}_nodules.csv`` (and keys of each ``nodules`` entry of the JSON)."""

_SIZE_BANDS_MM = ((6.0, "<6mm"), (8.0, "6-8mm"), (15.0, "8-15mm"), (math.inf, ">=15mm"))
_DECIMALS = 4


class InferenceError(ValueError):
    """Bad run directory, input or option. The message names the path or the argument."""


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def _as_path(value: Any, *, name: str) -> Path:
    if isinstance(value, (str, os.PathLike)) and not isinstance(value, bytes):
        return Path(value)
    raise TypeError(f"Expected {name} to be a str or os.PathLike. Received: {name}={value!r}")


def _check_model(model: Any, config: Config, path: Path) -> None:
    """The model's input rank and channels must match the run config."""
    shape = tuple(model.inputs[0].shape)
    spatial_dims = config.model.spatial_dims
    channels = config.model.in_channels
    if len(shape) != spatial_dims + 2 or shape[-1] not in (None, channels):
        raise InferenceError(
            f"Expected the model in '{path}' to take {spatial_dims}D inputs with {channels} "
            f"channel(s) as its config.yaml says (model.spatial_dims={spatial_dims}, "
            f"model.context_slices={config.model.context_slices}). Received: input shape={shape}"
        )


def load_run(model_dir: str | os.PathLike) -> tuple[Any, Config]:
    """Loads a training run's model and resolved config.

    Args:
        model_dir: Run folder holding ``model.keras`` and ``config.yaml`` (as written by
            ``lungseg train``).

    Returns:
        ``(model, config)``: the Keras model loaded with ``safe_mode=True`` and
        ``compile=False`` (inference needs no optimizer or loss), and the `Config` loaded
        from ``config.yaml``.

    Raises:
        InferenceError: The folder is missing, lacks ``config.yaml`` or ``model.keras``, its
            ``config.yaml`` is empty, truncated, incomplete or does not match its hash or the
            manifest (`segmentation.runfolder.load_run_config`), the model cannot be loaded
            safely, or its inputs do not match the config.
        segmentation.config.ConfigError: ``config.yaml`` is invalid (names the file).
    """
    run = _as_path(model_dir, name="model_dir")
    config = _run_config(run)
    return _load_model(run, config), config


def _run_config(run: Path) -> Config:
    """`segmentation.runfolder.load_run_config`, its errors as `InferenceError`."""
    try:
        return load_run_config(run)
    except RunFolderError as err:
        raise InferenceError(str(err)) from None


def _load_model(run: Path, config: Config) -> Any:
    """The run's ``model.keras`` (safe mode, not compiled), checked against ``config``."""
    import keras  # lazy: importing this module stays cheap

    model_path = run / MODEL_FILE
    try:
        model = keras.saving.load_model(model_path, compile=False, safe_mode=True)
    except Exception as err:  # corrupt zip, unsafe lambda, unknown layer, ...
        raise InferenceError(
            f"Expected a Keras model that loads in safe mode. Received: file='{model_path}' "
            f"({type(err).__name__}: {err})"
        ) from err
    _check_model(model, config, model_path)
    return model


# --------------------------------------------------------------------------------------------
# One volume
# --------------------------------------------------------------------------------------------


def _check_options(threshold: Any, min_size_mm3: Any) -> tuple[float | None, float | None]:
    """The ``threshold`` and ``min_size_mm3`` a caller passed (None: the config's, checked by it)."""
    if threshold is not None:
        threshold = check_float(threshold, name="threshold", minimum=0, maximum=1, low_open=True,
                                high_open=True, error=InferenceError)
    if min_size_mm3 is not None:
        min_size_mm3 = check_float(min_size_mm3, name="min_size_mm3", minimum=0, error=InferenceError)
    return threshold, min_size_mm3


def _source_spacing_mm(volume: Volume) -> tuple[float, float, float]:
    norms = np.linalg.norm(np.asarray(volume.source_affine)[:3, :3], axis=0)
    return tuple(float(n) for n in norms)  # type: ignore[return-value]


def predict_volume(model: Any, config: Config, volume: Volume, *, tta: bool | None = None,
                   threshold: float | None = None, min_size_mm3: float | None = None,
                   predict_fn: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and mask of one scan, in the scan's own (source) voxel grid.

    Args:
        model: Keras model (logits out), or None when ``predict_fn`` is given.
        config: The run config (``preprocess``, ``train.patch_size``, ``inference`` and
            ``evaluation.connectivity``).
        volume: The CT (`segmentation.io.Volume`, Hounsfield units).
        tta: Mirror test-time augmentation; None: ``config.inference.tta``.
        threshold: Foreground where ``probs >= threshold``; None: ``config.inference.threshold``.
        min_size_mm3: Drop components smaller than this; None: ``config.inference.min_size_mm3``.
        predict_fn: Optional ready predictor ``(B, *window, C) float32 -> (B, *window, 1)``
            probabilities (e.g. `pipelines.predictor.make_predict_fn` reused across scans,
            or any callable standing in for a model in tests).

    Returns:
        ``(probs_source, mask_source)``: float32 probabilities in [0, 1] and the uint8
        {0, 1} mask, both of shape ``volume.source_shape`` in the order of the array as
        stored on disk (write them with ``space="source"``).

    Raises:
        InferenceError: ``threshold`` or ``min_size_mm3`` out of range.
        TypeError: ``threshold`` or ``min_size_mm3`` is not a number.
        ValueError: A non-finite preprocessed image (from `predict_probabilities`).
    """
    threshold, min_size_mm3 = _check_options(threshold, min_size_mm3)
    threshold = config.inference.threshold if threshold is None else threshold
    min_size_mm3 = config.inference.min_size_mm3 if min_size_mm3 is None else min_size_mm3
    return _predict_checked(model, config, volume, tta=tta, threshold=threshold,
                            min_size_mm3=min_size_mm3, predict_fn=predict_fn)


def _predict_checked(model: Any, config: Config, volume: Volume, *, tta: bool | None,
                     threshold: float, min_size_mm3: float,
                     predict_fn: Any) -> tuple[np.ndarray, np.ndarray]:
    """`predict_volume` on options already checked (by it, or where `predict` takes them)."""
    from pipelines.predictor import postprocess, predict_probabilities

    pre = preprocess_volume(volume, spec=config.preprocess)
    geometry, image_net = pre.geometry, pre.image
    del pre
    probs, mask = postprocess(
        # passed straight on: the chain holds the only reference and frees it early
        predict_probabilities(model, image_net, config=config, tta=tta, predict_fn=predict_fn),
        geometry=geometry, config=config, image_net=image_net, threshold=threshold,
        min_size_mm3=min_size_mm3)
    return probs, mask.view(np.uint8)


# --------------------------------------------------------------------------------------------
# Nodule table (pure)
# --------------------------------------------------------------------------------------------


def size_category(diameter_mm: float) -> str:
    """Size band of an equivalent diameter: ``<6mm``, ``6-8mm``, ``8-15mm`` or ``>=15mm``.

    Bands are half-open: 6.0 mm is ``"6-8mm"``, 8.0 mm ``"8-15mm"``, 15.0 mm ``">=15mm"``.

    Raises:
        ValueError: ``diameter_mm`` is negative or not finite.
    """
    if not (isinstance(diameter_mm, (int, float, np.floating)) and math.isfinite(diameter_mm)
            and diameter_mm >= 0):
        raise ValueError(f"Expected a finite diameter_mm >= 0. Received: diameter_mm={diameter_mm!r}")
    for upper_mm, label in _SIZE_BANDS_MM:
        if diameter_mm < upper_mm:
            return label
    return _SIZE_BANDS_MM[-1][1]  # pragma: no cover - inf bound always matches


def slice_axis(affine: np.ndarray) -> int:
    """The slice axis of a voxel grid: the axis with the largest spacing.

    Ties (within 1e-6 relative) go to the axis whose direction is closest to the world
    superior-inferior (z) axis, so an isotropic axial scan reports its axial slices.

    Args:
        affine: float ``(4, 4)`` voxel -> world affine of the grid.

    Returns:
        0, 1 or 2.
    """
    columns = np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    largest = np.flatnonzero(spacing >= spacing.max() * (1 - 1e-6))
    if largest.size == 1:
        return int(largest[0])
    z_alignment = np.abs(columns[2, largest]) / spacing[largest]
    return int(largest[np.argmax(z_alignment)])


def nodule_table(mask: np.ndarray, probs: np.ndarray, *, affine: np.ndarray,
                 connectivity: int = 26) -> list[dict[str, Any]]:
    """One row per predicted nodule (connected component), largest first.

    The rows of the lesion table (`segmentation.lesions.lesion_table`: components, volumes,
    equivalent diameters, voxel and world centroids, probabilities; the same definitions as
    evaluation), computed in the mask's bounding box only.

    Args:
        mask: uint8/bool ``(I, J, K)`` in source voxel order.
        probs: float ``(I, J, K)`` probabilities on the same grid.
        affine: ``(4, 4)`` source voxel -> world (RAS mm) affine.
        connectivity: 6, 18 or 26.

    Returns:
        List of dicts with the keys `NODULE_COLUMNS` (floats rounded to 4 decimals;
        ``slice_start``/``slice_end`` inclusive along `slice_axis`); empty for an empty mask.

    Raises:
        ValueError: Shapes differ, or a bad mask, affine or connectivity.
    """
    mask = np.asarray(mask)
    probs = np.asarray(probs)
    if mask.shape != probs.shape or mask.ndim != 3:
        raise ValueError(
            f"Expected mask and probs of the same 3D shape. Received: mask.shape={mask.shape}, "
            f"probs.shape={probs.shape}"
        )
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"Expected a (4, 4) affine. Received: affine.shape={affine.shape}")
    components = find_components(mask, connectivity=connectivity)
    spacing_mm = np.linalg.norm(affine[:3, :3], axis=0)
    table = lesion_table(components, spacing_mm=spacing_mm, affine=affine, intensity=probs)
    axis = slice_axis(affine)
    rows = [_nodule_row(lesion, axis) for lesion in table]
    rows.sort(key=lambda r: (-r["_volume"], r["slice_start"]))
    return [{"id": i + 1, **{k: v for k, v in r.items() if k != "_volume"}} for i, r in enumerate(rows)]


def _nodule_row(lesion: Lesion, axis: int) -> dict[str, Any]:
    """A lesion-table row as a nodule row (``_volume``: the unrounded volume, for sorting)."""
    (vox_i, vox_j, vox_k), (x_mm, y_mm, z_mm) = lesion.centroid_vox, lesion.centroid_mm
    extent = lesion.bbox[axis]
    return {
        "centroid_vox_i": round(vox_i, _DECIMALS),
        "centroid_vox_j": round(vox_j, _DECIMALS),
        "centroid_vox_k": round(vox_k, _DECIMALS),
        "centroid_x_mm": round(x_mm, _DECIMALS),
        "centroid_y_mm": round(y_mm, _DECIMALS),
        "centroid_z_mm": round(z_mm, _DECIMALS),
        "diameter_mm": round(lesion.diameter_mm, _DECIMALS),
        "volume_mm3": round(lesion.volume_mm3, _DECIMALS),
        "mean_prob": round(lesion.intensity_mean, _DECIMALS),
        "max_prob": round(lesion.intensity_max, _DECIMALS),
        "slice_start": extent.start,
        "slice_end": extent.stop - 1,
        "size_category": size_category(lesion.diameter_mm),
        "_volume": lesion.volume_mm3,
    }


def _nodules_csv(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(NODULE_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# Inputs and outputs
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class InputCase:
    """One scan to segment.

    Attributes:
        case_id: Output file prefix.
        path: The NIfTI or MetaImage file, or the DICOM series folder.
        kind: ``"nifti"``, ``"metaimage"`` or ``"dicom"``.
    """

    case_id: str
    path: Path
    kind: Literal["nifti", "metaimage", "dicom"]


def _is_nifti(path: Path) -> bool:
    """True for a NIfTI or a MetaImage (``.mhd``/``.mha``) scan file."""
    name = path.name.lower()
    return any(name.endswith(s) and len(name) > len(s) for s in NIFTI_SUFFIXES + METAIMAGE_SUFFIXES)


def _file_kind(path: Path) -> Literal["nifti", "metaimage"]:
    return "metaimage" if path.name.lower().endswith(METAIMAGE_SUFFIXES) else "nifti"


def find_inputs(input_path: str | os.PathLike) -> list[InputCase]:
    """The scans of ``--input``: a NIfTI file, a folder of NIfTI files, or a DICOM folder.

    Args:
        input_path: A ``.nii``/``.nii.gz`` file; a folder whose ``.nii``/``.nii.gz`` files
            (hidden files excluded, sorted by name) are the cases; or a folder without
            NIfTI files whose DICOM images form one series (case id: the folder name).

    Returns:
        The cases, in order.

    Raises:
        InferenceError: Missing path, a file that is not NIfTI, a folder with neither NIfTI
            files nor DICOM images, or two files with the same case id.
        segmentation.dicom.DicomError: A corrupt DICOM file in a DICOM folder.
    """
    from segmentation.dicom import find_dicom_series

    path = _as_path(input_path, name="input_path")
    if not path.exists():
        raise InferenceError(f"Expected an existing NIfTI file or folder. Received: input='{path}' (not found)")
    if path.is_file():
        if not _is_nifti(path):
            raise InferenceError(
                "Expected a NIfTI file (.nii, .nii.gz) or MetaImage (.mhd, .mha), a folder of them, "
                "or a folder holding one "
                f"DICOM series. Received: input='{path}'"
            )
        return [InputCase(case_id_from_path(path), path, _file_kind(path))]
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and _is_nifti(p))
    if files:
        cases = [InputCase(case_id_from_path(p), p, _file_kind(p)) for p in files]
        seen: dict[str, Path] = {}
        for case in cases:
            if case.case_id in seen:
                raise InferenceError(
                    f"Expected one file per case in folder '{path}'. Received: '{seen[case.case_id].name}' "
                    f"and '{case.path.name}' both give case id '{case.case_id}'"
                )
            seen[case.case_id] = case.path
        return cases
    if not find_dicom_series(path):
        raise InferenceError(
            "Expected NIfTI files (.nii, .nii.gz) or the DICOM slices of one series in folder "
            f"'{path}'. Received: neither"
        )
    return [InputCase(path.resolve().name, path, "dicom")]


def output_paths(out_dir: str | os.PathLike, case_id: str) -> dict[str, Path]:
    """The output files of a case: keys ``mask``, ``probs``, ``csv``, ``json``."""
    out = Path(out_dir)
    return {
        "mask": out / f"{case_id}_mask.nii.gz",
        "probs": out / f"{case_id}_probs.nii.gz",
        "csv": out / f"{case_id}_nodules.csv",
        "json": out / f"{case_id}_nodules.json",
    }


def _window_of(config: Config) -> tuple[int, ...]:
    """``inference.window`` or ``train.patch_size``: the rule of
    `pipelines.predictor.inference_window`, here without importing TensorFlow."""
    window = config.inference.window
    return tuple(int(w) for w in (config.train.patch_size if window is None else window))


def _estimator(config: Config, *, tta: bool) -> Any:
    """``estimate(shape, spacing_mm, itemsize)``: the memory of predicting one scan."""

    def estimate(shape: Sequence[int], spacing_mm: Sequence[float], itemsize: int) -> dict:
        return estimate_inference_bytes(
            shape, spacing_mm, target_spacing_mm=config.preprocess.target_spacing_mm,
            window=_window_of(config), batch_size=config.inference.batch_size,
            channels=config.model.in_channels, filters=config.model.filters, tta=tta,
            source_itemsize=itemsize)

    return estimate


def _read_case(case: InputCase, *, limits: ScanLimits | None = None, estimate: Any = None) -> Volume:
    """Reads a scan; with ``limits``, checks its header first and the voxels after."""
    if case.kind == "dicom":
        from segmentation.dicom import read_dicom_series

        volume = read_dicom_series(case.path)
    else:
        if limits is not None:
            check_header(case.path, limits=limits, estimate=estimate)
        volume = read_volume(case.path, kind="image")
    if limits is not None:
        check_scan(volume, limits=limits, estimate=estimate)
    return volume


def _write_outputs(paths: dict[str, Path], *, volume: Volume, probs: np.ndarray | None,
                   mask: np.ndarray, rows: list[dict], record: dict) -> list[Path]:
    """Writes one case's files (mask last); on failure removes those written here."""
    written: list[Path] = []
    try:
        if probs is not None:
            written.append(write_volume(paths["probs"], probs, reference=volume, kind="probs",
                                        space="source"))
        text = _nodules_csv(rows)
        written.append(atomic_write(paths["csv"], lambda tmp: Path(tmp).write_text(text)))
        blob = json.dumps(record, indent=2, allow_nan=False) + "\n"
        written.append(atomic_write(paths["json"], lambda tmp: Path(tmp).write_text(blob)))
        written.append(write_volume(paths["mask"], mask, reference=volume, kind="mask", space="source"))
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        if written:  # an earlier mask would now mark a half-replaced case as complete
            paths["mask"].unlink(missing_ok=True)
        raise
    return written


def _written_nodule_count(path: Path) -> int | None:
    """``n_nodules`` of an earlier run's JSON, or None when it cannot be read."""
    try:
        count = json.loads(path.read_text()).get("n_nodules")
    except (OSError, ValueError, AttributeError):
        return None
    return count if isinstance(count, int) else None


def _with_window(config: Config, window: Any, *, run: Path) -> Config:
    """``config`` with ``inference.window`` replaced, checked against the run's model."""
    if isinstance(window, (str, bytes)) or not isinstance(window, Sequence) or any(
            isinstance(w, bool) or not isinstance(w, (int, np.integer)) for w in window):
        raise InferenceError(
            f"Expected window to be a list of integers. Received: window={window!r}"
        )
    try:
        return dataclasses.replace(
            config, inference=dataclasses.replace(config.inference, window=tuple(int(w) for w in window))
        )
    except ConfigError as err:
        raise InferenceError(f"Invalid window for the run in '{run}': {err}") from err


def _case_record(case: InputCase, volume: Volume, rows: list[dict], *, run: Path,
                 threshold: float, min_size_mm3: float, tta: bool, connectivity: int,
                 window: list[int]) -> dict:
    return {
        "case_id": case.case_id,
        "input": str(case.path),
        "model_dir": str(run),
        "shape": list(volume.source_shape),
        "spacing_mm": [round(s, 6) for s in _source_spacing_mm(volume)],
        "affine": np.asarray(volume.source_affine).round(6).tolist(),
        "slice_axis": slice_axis(volume.source_affine),
        "threshold": threshold,
        "min_size_mm3": min_size_mm3,
        "tta": tta,
        "window": window,
        "connectivity": connectivity,
        "n_nodules": len(rows),
        "columns": list(NODULE_COLUMNS),
        "nodules": rows,
    }


def _run_case(case: InputCase, *, model: Any, config: Config, run: Path, out_dir: Path,
              write_probs: bool, tta: bool, threshold: float, min_size_mm3: float,
              predict_fn: Any, limits: ScanLimits | None = None,
              volume: Volume | None = None) -> tuple[dict[str, Path], int]:
    from pipelines.predictor import inference_window

    paths = output_paths(out_dir, case.case_id)
    if volume is None:
        volume = _read_case(case, limits=limits, estimate=_estimator(config, tta=tta))
    probs, mask = _predict_checked(model, config, volume, tta=tta, threshold=threshold,
                                   min_size_mm3=min_size_mm3, predict_fn=predict_fn)
    connectivity = config.evaluation.connectivity
    rows = nodule_table(mask, probs, affine=volume.source_affine, connectivity=connectivity)
    record = _case_record(case, volume, rows, run=run, threshold=threshold,
                          min_size_mm3=min_size_mm3, tta=tta, connectivity=connectivity,
                          window=list(inference_window(config)))
    _write_outputs(paths, volume=volume, probs=probs if write_probs else None, mask=mask,
                   rows=rows, record=record)
    if not write_probs and paths["probs"].exists():
        # A probability map from an earlier run would no longer match the new mask.
        paths["probs"].unlink()
        logger.info("Removed stale %s", paths["probs"])
    outputs = {k: v for k, v in paths.items() if k != "probs" or write_probs}
    return outputs, len(rows)


def _header_refusals(todo: Sequence[InputCase], *, single: bool, limits: ScanLimits,
                     estimate: Any) -> dict[str, Exception]:
    """Header checks (spacing and memory) of the NIfTI scans, before any voxel is read.

    Returns:
        ``case_id -> PlausibilityError`` of the scans refused; a single scan raises instead.
    """
    refused: dict[str, Exception] = {}
    for case in todo:
        try:
            if case.kind == "nifti":
                check_header(case.path, limits=limits, estimate=estimate)
        except PlausibilityError as err:
            if single:
                raise
            refused[case.case_id] = err
    return refused


def _predict_case(case: InputCase, *, out_dir: Path, overwrite: bool, single: bool,
                  refused: dict[str, Exception], run_case: Any) -> tuple[dict, str]:
    """One scan of `predict`: its record and the line the CLI prints.

    ``run_case(case) -> (outputs, n_nodules)`` runs the scan; an existing mask is skipped
    unless ``overwrite``; a failure is recorded, or raised for a ``single`` scan.
    """
    record = {"case_id": case.case_id, "input": str(case.path), "status": "ok", "outputs": {},
              "n_nodules": None, "seconds": 0.0, "error": None}
    paths = output_paths(out_dir, case.case_id)
    if paths["mask"].exists() and not overwrite:
        record.update(status="skipped", outputs={k: str(v) for k, v in paths.items() if v.exists()},
                      n_nodules=_written_nodule_count(paths["json"]))
        return record, f"skipped {case.case_id}: {paths['mask']} exists (use --overwrite to redo)"
    start = time.perf_counter()
    try:
        if case.case_id in refused:
            raise refused[case.case_id]
        outputs, n_nodules = run_case(case)
    except Exception as err:
        if single:
            raise
        record.update(status="failed", error=f"{type(err).__name__}: {err}",
                      seconds=round(time.perf_counter() - start, 3))
        logger.warning("Prediction failed for %s: %s", case.path, err)
        return record, f"FAILED {case.case_id} ({case.path}): {type(err).__name__}: {err}"
    seconds = time.perf_counter() - start
    record.update(outputs={k: str(v) for k, v in outputs.items()}, n_nodules=n_nodules,
                  seconds=round(seconds, 3))
    return record, f"ok {case.case_id}: {n_nodules} nodule(s) -> {outputs['mask']} ({seconds:.1f} s)"


def predict(*, model_dir: str | os.PathLike, input_path: str | os.PathLike,
            out_dir: str | os.PathLike, write_probs: bool = False, tta: bool | None = None,
            threshold: float | None = None, min_size_mm3: float | None = None,
            window: Sequence[int] | None = None, overwrite: bool = False,
            progress: bool = True, luna16_csv: str | os.PathLike | None = None,
            limits: ScanLimits | None = None) -> dict:
    """Segments one scan or a folder of scans with a trained run (``lungseg predict``).

    Args:
        model_dir: Run folder (``model.keras`` + ``config.yaml``).
        input_path: NIfTI file, folder of NIfTI files, or folder holding one DICOM series.
        out_dir: Output folder (created when the first file is written).
        write_probs: Also write ``{case}_probs.nii.gz`` (float32 probabilities).
        tta: Mirror test-time augmentation; None uses ``inference.tta`` of the run.
        threshold: Probability threshold; None uses ``inference.threshold``.
        min_size_mm3: Remove smaller predicted components; None uses ``inference.min_size_mm3``.
        window: Sliding window in voxels, one size per spatial axis of the model, each a
            multiple of ``2**depth``; None uses ``inference.window`` (or the training patch).
        overwrite: Redo cases whose mask already exists (otherwise they are skipped).
        progress: Show a tqdm bar over the scans (stderr).
        luna16_csv: Also write a LUNA16 candidates file here (`pipelines.luna16_eval.write_candidates`:
            one row per nodule of every ok or skipped case, LPS for MetaImage/DICOM input).
        limits: Plausibility limits of each scan (`segmentation.plausibility.ScanLimits`:
            spacing range, memory budget, ``allow_non_hu``); None: the defaults.

    Returns:
        ``{"cases": [...], "failed": int, "lines": [...], "out_dir": str}``. Each case is
        ``{"case_id", "input", "status" ("ok" | "skipped" | "failed"), "outputs" (name ->
        path), "n_nodules", "seconds", "error"}``; ``lines`` are the lines the CLI prints.

    Raises:
        InferenceError: Bad run folder, input path or option (names it); all checked
            before TensorFlow and the model are loaded.
        TypeError: A ``threshold`` or ``min_size_mm3`` that is not a number.
        segmentation.plausibility.PlausibilityError: A scan that is not plausible (spacing,
            memory, not HU), or a window too large for the memory budget.
        segmentation.io.VolumeError / segmentation.dicom.DicomError: The scan of a
            single-scan input (a file or a DICOM folder) is unusable (names the file); in a
            folder of scans such errors are reported per case instead.
    """
    out = _as_path(out_dir, name="out_dir")
    if out.exists() and not out.is_dir():
        raise InferenceError(f"Expected an output folder. Received: out_dir='{out}' is a file")
    input_dir = Path(input_path) if Path(input_path).is_dir() else None
    if input_dir is not None and out.resolve() == input_dir.resolve():
        raise InferenceError(
            "Expected an output folder other than the input folder (masks written there would be "
            f"read as scans next time). Received: out_dir='{out}', input='{input_path}'"
        )
    check_output_dir(out, option="out_dir", inputs=[("input_path", input_path), ("model_dir", model_dir)])
    threshold, min_size_mm3 = _check_options(threshold, min_size_mm3)
    run = _as_path(model_dir, name="model_dir")
    config = _run_config(run)
    if window is not None:
        config = _with_window(config, window, run=run)
    inference = config.inference
    options = {
        "tta": inference.tta if tta is None else bool(tta),
        "threshold": inference.threshold if threshold is None else threshold,
        "min_size_mm3": inference.min_size_mm3 if min_size_mm3 is None else min_size_mm3,
    }
    limits = ScanLimits() if limits is None else limits
    win = _window_of(config)
    check_memory(window_bytes(win, batch_size=inference.batch_size, channels=config.model.in_channels,
                              filters=config.model.filters, tta=options["tta"]),
                 limits=limits, what="one batch of sliding windows",
                 details=f"window {list(win)}, inference.batch_size {inference.batch_size}")
    cases = find_inputs(input_path)
    single = len(cases) == 1 and (Path(input_path).is_file() or cases[0].kind == "dicom")
    estimate = _estimator(config, tta=options["tta"])
    todo = [c for c in cases if overwrite or not output_paths(out, c.case_id)["mask"].exists()]
    refused = _header_refusals(todo, single=single, limits=limits, estimate=estimate)
    # A single scan is read and checked before TensorFlow and the model are loaded.
    preread = _read_case(todo[0], limits=limits, estimate=estimate) if single and todo else None
    model = predict_fn = None
    if any(c.case_id not in refused for c in todo):
        from pipelines.predictor import make_predict_fn  # TensorFlow: only after the checks

        model = _load_model(run, config)
        predict_fn = make_predict_fn(model, batch_size=inference.batch_size)
    run_case = functools.partial(_run_case, model=model, config=config, run=run, out_dir=out,
                                 predict_fn=predict_fn, write_probs=write_probs, limits=limits,
                                 volume=preread, **options)
    records, lines = [], []
    for case in progress_bar(cases, enabled=progress, desc="predict", unit="scan"):
        record, line = _predict_case(case, out_dir=out, overwrite=overwrite, single=single,
                                     refused=refused, run_case=run_case)
        records.append(record)
        lines.append(line)
    if luna16_csv is not None:
        from pipelines.luna16_eval import write_candidates

        kinds = {case.case_id: case.kind for case in cases}
        done = [(r["case_id"], kinds[r["case_id"]], output_paths(out, r["case_id"])["json"])
                for r in records if r["status"] != "failed"]
        csv_path, n_rows = write_candidates(luna16_csv, done)
        lines.append(f"LUNA16 candidates: {n_rows} row(s) of {len(done)} scan(s) -> {csv_path}")
    failed = sum(r["status"] == "failed" for r in records)
    counts = {s: sum(r["status"] == s for r in records) for s in ("ok", "skipped", "failed")}
    lines.append(
        f"{len(records)} scan(s): {counts['ok']} ok, {counts['skipped']} skipped, "
        f"{counts['failed']} failed; threshold {options['threshold']}, min size "
        f"{options['min_size_mm3']} mm3, TTA {'on' if options['tta'] else 'off'}; output in {out}"
    )
    return {"cases": records, "failed": failed, "lines": lines, "out_dir": str(out)}
