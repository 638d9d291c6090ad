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

import dataclasses
import functools
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# `predict` calls `_load_model` through this module's name (tests replace
# `pipelines.infer._load_model`), and `_write_outputs` calls `write_volume` likewise.
from pipelines.infer_inputs import (
    InferenceError,
    InputCase,
    _as_path,
    _estimator,
    _header_refusals,
    _load_model,
    _read_case,
    _run_config,
    _window_of,
    find_inputs,
    load_run,
    output_paths,
)
from pipelines.infer_nodules import NODULE_COLUMNS, _nodules_csv, nodule_table, size_category, slice_axis
from segmentation.config import Config, ConfigError
from segmentation.console import progress_bar
from segmentation.io import Volume, atomic_write, write_volume
from segmentation.plausibility import ScanLimits, check_memory, window_bytes
from segmentation.preflight import check_output_dir
from segmentation.preprocessing import preprocess_volume
from segmentation.runfolder import CONFIG_FILE, MODEL_FILE
from segmentation.thresholding import effective_grow_threshold
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
                 window: list[int], grow_threshold: float | None = None) -> dict:
    return {
        "case_id": case.case_id,
        "input": str(case.path),
        "model_dir": str(run),
        "shape": list(volume.source_shape),
        "spacing_mm": [round(s, 6) for s in _source_spacing_mm(volume)],
        "affine": np.asarray(volume.source_affine).round(6).tolist(),
        "slice_axis": slice_axis(volume.source_affine),
        "threshold": threshold,
        "grow_threshold": grow_threshold,
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
                          window=list(inference_window(config)),
                          grow_threshold=effective_grow_threshold(
                              threshold, config.inference.grow_threshold))
    _write_outputs(paths, volume=volume, probs=probs if write_probs else None, mask=mask,
                   rows=rows, record=record)
    if not write_probs and paths["probs"].exists():
        # A probability map from an earlier run would no longer match the new mask.
        paths["probs"].unlink()
        logger.info("Removed stale %s", paths["probs"])
    outputs = {k: v for k, v in paths.items() if k != "probs" or write_probs}
    return outputs, len(rows)


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
    grow_threshold = effective_grow_threshold(options["threshold"], inference.grow_threshold)
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
        f"{counts['failed']} failed; threshold {options['threshold']}"
        + (f" (grown to {grow_threshold})" if grow_threshold is not None else "")
        + ", min size "
        f"{options['min_size_mm3']} mm3, TTA {'on' if options['tta'] else 'off'}; output in {out}"
    )
    return {"cases": records, "failed": failed, "lines": lines, "out_dir": str(out)}
