"""The run's Keras callbacks, one job each, in the order `pipelines.training.run` lists them.

Keras ships ``TerminateOnNaN``, ``EarlyStopping``, ``CSVLogger``, ``ModelCheckpoint`` and
``BackupAndRestore``; the run keeps its own where one of them cannot keep a contract of the
run folder (each class says which), and uses Keras's ``TensorBoard`` for the scalars.

Callbacks of one epoch talk through the ``logs`` dict Keras hands to each in turn (the
learning rate and the ``val_*`` metrics reach ``TensorBoard`` that way), through the
`LesionValidation` they are given, and through the run ``state`` dict that
`pipelines.training.checkpoint` commits.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import scipy.ndimage as ndi
import tensorflow as tf
from skimage.segmentation import find_boundaries

from pipelines.training.checkpoint import (STATE_VERSION, atomic_json, commit_epoch,
                                           run_summary, write_history)
from pipelines.training.data import PreparedData
from pipelines.training.errors import TrainingError
from pipelines.training.validation import HISTORY_VAL_KEYS, metric_sort_key, validate
from segmentation.config import Config

__all__ = [
    "LearningRateLog",
    "ThroughputMeter",
    "DivergenceGuard",
    "LesionValidation",
    "BestValidation",
    "ValidationImages",
    "EarlyStoppingOnValidations",
    "EpochCommit",
]


def _optimizer_step(model: keras.Model) -> int:
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


class LearningRateLog(keras.callbacks.Callback):
    """Puts the learning rate at the end of each epoch into ``logs["learning_rate"]``."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class ThroughputMeter(keras.callbacks.Callback):
    """Training patches per second; the first batch of each epoch (tracing, warm-up) is not timed.

    Args:
        batch_size: Patches per (global) batch.
    """

    def __init__(self, *, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size
        self._batch_t0: float | None = None
        self._timed_patches = 0
        self._timed_s = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._batch_t0 = None

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if self._batch_t0 is not None:
            self._timed_s += now - self._batch_t0
            self._timed_patches += self.batch_size
        self._batch_t0 = now

    def patches_per_s(self) -> float | None:
        """Patches per second over the timed batches of this session; None before any."""
        return self._timed_patches / self._timed_s if self._timed_s > 0 else None


class DivergenceGuard(keras.callbacks.Callback):
    """Stops the run with a `TrainingError` at the first non-finite training loss.

    Ours, not ``keras.callbacks.TerminateOnNaN``: that one stops quietly (``stop_training``,
    after which the epoch would be committed) or raises a ``RuntimeError`` naming the batch
    only; the run must raise `TrainingError` naming epoch, batch and global step, the
    non-finite loss components, and the epoch that ``checkpoints/last.keras`` holds.

    Args:
        steps_per_epoch: ``train.steps_per_epoch`` (for the message).
        debug: ``train.debug`` (components are named only then; else the message says so).
        state: The run state; its ``epoch`` is the epoch kept on disk.
    """

    def __init__(self, *, steps_per_epoch: int, debug: bool, state: dict) -> None:
        super().__init__()
        self.steps_per_epoch = steps_per_epoch
        self.debug = debug
        self.state = state
        self.current_epoch = 0  # 0-based index of the epoch being trained

    def on_epoch_begin(self, epoch, logs=None):
        self.current_epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        loss = logs.get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingError(self._message(batch, logs))

    def _message(self, batch: int, logs: dict) -> str:
        bad = sorted(k for k, v in logs.items()
                     if k != "loss" and isinstance(v, (int, float, np.floating)) and not math.isfinite(float(v)))
        where = (f"epoch {self.current_epoch + 1}, batch {batch + 1} of {self.steps_per_epoch} "
                 f"(global step {_optimizer_step(self.model)})")
        detail = ""
        if bad:
            detail = f" Non-finite components: {', '.join(bad)}."
        elif not self.debug:
            detail = " Set train.debug=true to name the loss component."
        return (
            f"Training diverged: the loss is {float(logs['loss'])} at {where}.{detail} Nothing of this "
            f"epoch was saved; checkpoints/last.keras holds epoch {self.state.get('epoch', 0)}. Lower "
            "optim.learning_rate or keep optim.clipnorm, then resume with --resume or start another run."
        )


class LesionValidation(keras.callbacks.Callback):
    """Every ``train.val_every`` epochs and after the last: `validate` on whole scans.

    Puts ``val_<key>`` of `HISTORY_VAL_KEYS` into ``logs`` (NaN when undefined) and keeps
    ``summary`` and ``probs`` (network-space probabilities of the first validation scan)
    for the callbacks after it; both are None in an epoch without validation. Keras has no
    lesion-level (connected-component, whole-scan) validation.

    Args:
        config: The run config.
        prepared: The validation scans (`pipelines.training.data.prepare_data`).
        validate_fn: `validate` (a stand-in in tests).
    """

    def __init__(self, *, config: Config, prepared: PreparedData,
                 validate_fn: Callable[..., Any] = validate) -> None:
        super().__init__()
        self.config = config
        self.prepared = prepared
        self.validate_fn = validate_fn
        self.summary: dict | None = None
        self.probs: np.ndarray | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self.summary = self.probs = None

    def on_epoch_end(self, epoch, logs=None):
        n_done, cfg = epoch + 1, self.config.train
        if not (n_done % cfg.val_every == 0 or n_done == cfg.epochs):
            return
        self.summary, self.probs = self.validate_fn(self.model, self.config, self.prepared,
                                                    return_first_probs=True)
        if logs is not None:
            for key in HISTORY_VAL_KEYS:
                value = self.summary.get(key)
                logs[f"val_{key}"] = float("nan") if value is None else float(value)


class BestValidation(keras.callbacks.Callback):
    """Tracks the best validation in the run state, and the validations since it improved.

    The order is `metric_sort_key` of ``train.best_metric``: lexicographic over several
    metrics, NaN worst, lower-is-better metrics negated. ``improved`` tells `EpochCommit`
    to write ``best.keras``. Kept in the state (``best_key``, ``best_epoch``, ``best_val``,
    ``validations_without_improvement``), so it survives a resume.

    Args:
        validation: The run's `LesionValidation` (listed before this callback).
        state: The run state.
        best_metric: ``train.best_metric``.
    """

    def __init__(self, *, validation: LesionValidation, state: dict, best_metric: tuple[str, ...]) -> None:
        super().__init__()
        self.validation = validation
        self.state = state
        self.best_metric = tuple(best_metric)
        self.improved = False

    def on_epoch_end(self, epoch, logs=None):
        self.improved = False
        summary = self.validation.summary
        if summary is None:
            return
        key = metric_sort_key(summary, self.best_metric)
        best = self.state.get("best_key")
        best_key = None if best is None else tuple(-math.inf if v is None else v for v in best)
        self.improved = best_key is None or key > best_key
        if self.improved:
            self.state.update(best_key=list(key), best_epoch=epoch + 1, best_val=summary)
            self.state["validations_without_improvement"] = 0
        else:
            self.state["validations_without_improvement"] = self.state.get(
                "validations_without_improvement", 0) + 1


class EarlyStoppingOnValidations(keras.callbacks.Callback):
    """Stops the run after ``patience`` validations in a row without improvement.

    Ours, not ``keras.callbacks.EarlyStopping``: that one watches one logged metric and
    resets its counter and best value in ``on_train_begin``, so a resumed run would forget
    them; here the count is `BestValidation`'s, in the run state (``stopped_early`` too, so
    a resumed run that had stopped stays stopped), and counts validations, not epochs.

    Args:
        state: The run state.
        patience: ``train.early_stopping_patience``; 0 never stops.
    """

    def __init__(self, *, state: dict, patience: int) -> None:
        super().__init__()
        self.state = state
        self.patience = patience

    def on_epoch_end(self, epoch, logs=None):
        if self.patience and self.state.get("validations_without_improvement", 0) >= self.patience:
            self.state["stopped_early"] = True
            self.model.stop_training = True


class ValidationImages(keras.callbacks.Callback):
    """TensorBoard image of each validation: an axial slice of the first scan with outlines.

    The slice through the largest lesion, radiological view, truth outlined green and the
    prediction (``>= inference.threshold``, network space) red; under ``logs/images``.
    Keras's ``TensorBoard`` writes scalars and histograms, not overlays.

    Args:
        validation: The run's `LesionValidation` (listed before this callback).
        prepared: The validation scans.
        log_dir: The images' event folder.
        threshold: ``inference.threshold``.
    """

    def __init__(self, *, validation: LesionValidation, prepared: PreparedData, log_dir: Path,
                 threshold: float) -> None:
        super().__init__()
        self.validation = validation
        self.prepared = prepared
        self.log_dir = log_dir
        self.threshold = threshold
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        probs = self.validation.probs
        if probs is None:
            return
        case = self.prepared.val_cases[0]
        mask = np.asarray(case.mask_net)
        k = largest_lesion_slice(mask)
        rgb = outline_image(np.asarray(case.image_net[:, :, k]), mask[:, :, k] > 0,
                            probs[:, :, k] >= self.threshold)
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(str(self.log_dir))
        with self._writer.as_default():
            tf.summary.image(f"validation/{case.case_id}_slice{k}", rgb[None], step=epoch + 1)
        self._writer.flush()


def outline_image(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """RGB float32 (H, W, 3) radiological view of an axial slice (I, J) with outlines.

    Patient right on the image left, anterior at the top; truth outline green, prediction
    red (yellow where both).
    """

    def view(a: np.ndarray) -> np.ndarray:  # (I, J) in RAS+ -> rows = A..P, cols = R..L
        return np.ascontiguousarray(a[::-1, ::-1].T)

    gray = view(image).astype(np.float32)
    lo, hi = float(gray.min()), float(gray.max())
    gray = (gray - lo) / (hi - lo) if hi > lo else np.zeros_like(gray)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    t = find_boundaries(view(truth), mode="inner")
    p = find_boundaries(view(pred), mode="inner")
    rgb[t] = (0.0, 1.0, 0.0)
    rgb[p] = (1.0, 0.0, 0.0)
    rgb[t & p] = (1.0, 1.0, 0.0)
    return rgb


def largest_lesion_slice(mask: np.ndarray) -> int:
    """The axial index (last axis) through the centre of the largest component; the middle if none."""
    mask = np.asarray(mask) > 0
    if not mask.any():
        return mask.shape[2] // 2
    labels, n = ndi.label(mask, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    largest = int(np.argmax(sizes))
    k = np.nonzero(labels == largest)[2]
    return int(round(float(k.mean())))


class EpochCommit(keras.callbacks.Callback):
    """Appends the epoch's history row to the run state and commits the epoch.

    The commit (`pipelines.training.checkpoint.commit_epoch`: ``last.keras``, ``best.keras``
    and ``model.keras`` when `BestValidation` saw an improvement, ``state.json``), then
    ``history.csv`` and ``summary.json`` rewritten from the state; only the chief writes.
    Ours, not ``ModelCheckpoint``/``BackupAndRestore``/``CSVLogger``: the checkpoint, the
    state and the history must move together (a kill between them must neither lose nor
    repeat an epoch), the checkpoint carries its optimizer step, and ``history.csv`` is
    rewritten from the state, not appended to.

    Args:
        run_dir: The run folder.
        prepared: The prepared data (its config; case lists for the summary).
        state: The run state.
        best: The run's `BestValidation` (listed before this callback).
        validation: The run's `LesionValidation`.
        meter: The run's `ThroughputMeter`.
        chief: This worker writes the run folder.
        wall_time_s: A function giving the run's wall time so far (earlier sessions included).
    """

    def __init__(self, *, run_dir: Path, prepared: PreparedData, state: dict, best: BestValidation,
                 validation: LesionValidation, meter: ThroughputMeter, chief: bool,
                 wall_time_s: Callable[[], float]) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.prepared = prepared
        self.state = state
        self.best = best
        self.validation = validation
        self.meter = meter
        self.chief = chief
        self.wall_time_s = wall_time_s

    def on_epoch_end(self, epoch, logs=None):
        n_done, cfg = epoch + 1, self.prepared.config.train
        row = self._history_row(n_done, logs or {})
        self.state.setdefault("history", []).append(row)
        patches_per_s = self.meter.patches_per_s()
        self.state.update(
            version=STATE_VERSION,
            epoch=n_done,
            optimizer_step=_optimizer_step(self.model),
            sample_index=n_done * cfg.steps_per_epoch * cfg.batch_size,
            wall_time_s=row["wall_time_s"],
            train_patches_per_s=(self.state.get("train_patches_per_s") if patches_per_s is None
                                 else patches_per_s),
        )
        if not self.chief:
            return
        commit_epoch(self.model, run_dir=self.run_dir, state=self.state, improved=self.best.improved)
        write_history(self.run_dir / "history.csv", self.state["history"])
        atomic_json(self.run_dir / "summary.json", run_summary(self.state, self.prepared, status="running"))

    def _history_row(self, n_done: int, logs: dict) -> dict:
        row: dict[str, Any] = {"epoch": n_done, "loss": float(logs.get("loss", float("nan")))}
        for key in sorted(logs):
            if key.startswith("loss_") or (key.endswith("_loss") and key != "loss"):
                row[key] = float(logs[key])
        row["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        row["wall_time_s"] = round(self.wall_time_s(), 3)
        summary = self.validation.summary
        for key in HISTORY_VAL_KEYS:
            row[f"val_{key}"] = None if summary is None else summary.get(key)
        return row
