"""What ``lungseg predict`` reads: the run folder (model and config) and the scans.

`load_run` (the model, loaded safely, checked against the run's ``config.yaml``),
`find_inputs` (the scans of ``--input``: NIfTI, MetaImage or one DICOM series), `output_paths`
(the files of a case) and the scan reading with its plausibility checks. Re-exported by
`pipelines.infer`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pipelines.training.precision import cpu_flags, inference_policy
from segmentation.config import Config
from segmentation.io import METAIMAGE_SUFFIXES, NIFTI_SUFFIXES, Volume, case_id_from_path, read_volume
from segmentation.plausibility import (
    PlausibilityError,
    ScanLimits,
    check_header,
    check_scan,
    estimate_inference_bytes,
)
from segmentation.runfolder import MODEL_FILE, RunFolderError, load_run_config

__all__ = ["InferenceError", "InputCase", "find_inputs", "load_run", "model_policy",
           "native_precision", "output_paths"]

logger = logging.getLogger(__name__)


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
    return native_precision(model)


def model_policy(model: Any) -> str:
    """The mixed policy of a model's layers, or ``float32`` (heads and pools are float32 in all)."""
    names = {layer.dtype_policy.name for layer in model.layers}
    return next((name for name in sorted(names) if name.startswith("mixed_")), "float32")


def _float32_config(value: Any) -> Any:
    """A model config with every mixed dtype policy replaced by float32 (a pure copy)."""
    if isinstance(value, dict):
        if value.get("class_name") == "DTypePolicy" and str(
                value.get("config", {}).get("name", "")).startswith("mixed_"):
            return {**value, "config": {**value["config"], "name": "float32"}}
        return {key: _float32_config(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_float32_config(item) for item in value]
    return value


def native_precision(model: Any) -> Any:
    """``model``, rebuilt in float32 when this machine cannot run its policy natively
    (`pipelines.training.precision.inference_policy`); the weights are the same."""
    import keras
    import tensorflow as tf

    policy = model_policy(model)
    if policy == "float32":
        return model
    wanted = inference_policy(policy, gpu_count=len(tf.config.list_physical_devices("GPU")),
                              flags=cpu_flags())
    if wanted == policy:
        return model
    rebuilt = keras.Model.from_config(_float32_config(model.get_config()))
    rebuilt.set_weights(model.get_weights())
    logger.info("Model trained in %s runs in float32 here (no native %s)", policy,
                policy.removeprefix("mixed_"))
    return rebuilt


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
