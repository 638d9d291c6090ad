"""The run's checkpoints and resume state: atomic last/best commit, ``state.json``, history.

Commit of an epoch (`commit_epoch`), every file written through
`segmentation.io.atomic_write`: ``checkpoints/last.keras`` is written to a temporary file;
while it waits there, ``checkpoints/best.keras`` and its copy ``model.keras`` (when the
epoch improved) and a ``state.json.pending`` record are written; then the checkpoint is
renamed into place and the pending record after it. A run killed at any moment is resumed
from the last completed epoch (`read_state`): a pending record whose optimizer step matches
``last.keras`` is rolled forward, otherwise dropped. ``history.csv`` and ``summary.json`` are
then rewritten from the state, so no epoch is lost or repeated.

The state (``state.json``): completed ``epoch``, ``optimizer_step``, ``sample_index`` (where
the patch stream restarts), the best validation (``best_key``, ``best_epoch``, ``best_val``),
the early-stopping counter ``validations_without_improvement``, ``stopped_early``,
``wall_time_s``, ``train_patches_per_s`` and the ``history`` rows.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras

# Importing ``losses`` registers lungseg's losses and loss callbacks with Keras, so that
# ``keras.saving.load_model`` can rebuild a compiled checkpoint in a fresh process (resume).
import losses  # noqa: F401
from pipelines.training.data import PreparedData
from pipelines.training.errors import CheckpointError
from pipelines.training.model import WarmupDecaySchedule  # noqa: F401  (registered likewise)
from segmentation.io import atomic_write
from segmentation.validation import json_safe

__all__ = [
    "STATE_VERSION",
    "atomic_json",
    "commit_epoch",
    "read_state",
    "checkpoint_step",
    "load_last_checkpoint",
    "write_history",
    "run_summary",
]

logger = logging.getLogger(__name__)

STATE_VERSION = 1
_STEP_ENTRY = "lungseg_state.json"  # the optimizer step, inside each .keras archive


# --------------------------------------------------------------------------- atomic files


def _atomic_text(path: Path, text: str) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)

    atomic_write(path, write)


def atomic_json(path: Path, data: Any) -> None:
    """Writes ``data`` as indented JSON, atomically; NaN and infinities become ``null``."""
    _atomic_text(path, json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n")


# --------------------------------------------------------------------------- checkpoints


def _save_with_step(model: keras.Model, path: Path, *, step: int) -> None:
    """Saves ``model`` to ``path`` and adds the optimizer step to the archive."""
    model.save(path)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(_STEP_ENTRY, json.dumps({"optimizer_step": step}))


def _write_checkpoint(model: keras.Model, path: Path, *, step: int,
                      before_rename: Callable[[], None] | None = None) -> None:
    """Writes a checkpoint atomically; ``before_rename`` runs while it waits under its temporary name.

    Raises:
        CheckpointError: The checkpoint could not be written (``path`` is intact).
    """
    kept = f"{path} is intact" if path.exists() else f"no earlier {path.name} existed"

    def write(tmp: Path) -> None:
        _save_with_step(model, tmp, step=step)
        if before_rename is not None:
            before_rename()

    try:
        atomic_write(path, write)
    except OSError as error:
        raise CheckpointError(
            f"Expected to write the checkpoint {path}. Received: {error.__class__.__name__}: "
            f"{error}. The previous checkpoint {kept}; free disk space and rerun with --resume."
        ) from error


def _copy_checkpoint(src: Path, dst: Path) -> None:
    try:
        atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))
    except OSError as error:
        raise CheckpointError(
            f"Expected to copy {src} to {dst}. Received: {error}. {src} is intact."
        ) from error


def _write_pending(path: Path, state: dict) -> None:
    try:
        atomic_json(path, state)
    except OSError as error:
        raise CheckpointError(
            f"Expected to write {path}. Received: {error}. checkpoints/last.keras and "
            "state.json are intact (previous epoch); free disk space and rerun with --resume."
        ) from error


def commit_epoch(model: keras.Model, *, run_dir: Path, state: dict, improved: bool) -> None:
    """Commits the epoch that ``state`` records (see the module docstring for the order).

    Args:
        model: The model (with its optimizer) after the epoch.
        run_dir: The run folder.
        state: The run state, already updated for this epoch (``optimizer_step`` included).
        improved: The epoch's validation is the best so far: write ``best.keras`` and
            ``model.keras`` too.

    Raises:
        CheckpointError: A file could not be written; the previous epoch's commit is intact.
    """
    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    step = int(state["optimizer_step"])
    pending = ckpt_dir / "state.json.pending"

    def best_and_pending() -> None:
        if improved:
            best = ckpt_dir / "best.keras"
            _write_checkpoint(model, best, step=step)
            _copy_checkpoint(best, run_dir / "model.keras")
        _write_pending(pending, state)

    _write_checkpoint(model, ckpt_dir / "last.keras", step=step, before_rename=best_and_pending)
    os.replace(pending, ckpt_dir / "state.json")


def checkpoint_step(path: Path) -> int:
    """The optimizer step stored in a .keras checkpoint (reads only its JSON metadata)."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        if _STEP_ENTRY in names:
            return int(json.loads(archive.read(_STEP_ENTRY))["optimizer_step"])
    raise ValueError(f"Expected lungseg metadata in {path}. Received: entries {names}")


def read_state(run_dir: Path) -> dict | None:
    """The committed state, after rolling a pending commit forward when it matches.

    Returns:
        The state dict, or None when the run has no committed epoch.

    Raises:
        ValueError: ``state.json`` is not valid JSON.
    """
    ckpt_dir = run_dir / "checkpoints"
    state_path, pending_path = ckpt_dir / "state.json", ckpt_dir / "state.json.pending"
    last = ckpt_dir / "last.keras"
    if pending_path.exists():
        try:
            pending = json.loads(pending_path.read_text())
            step = checkpoint_step(last) if last.exists() else None
        except (ValueError, OSError):
            pending, step = None, None
        if pending is not None and step is not None and step == pending.get("optimizer_step"):
            os.replace(pending_path, state_path)  # the crash came between the two renames
            logger.info("Completed the interrupted commit of epoch %s", pending.get("epoch"))
        else:
            pending_path.unlink()
    if not state_path.exists():
        return None
    try:
        return json.loads(state_path.read_text())
    except ValueError as error:
        raise ValueError(
            f"Expected valid JSON in {state_path}. Received: {error}; the run cannot be resumed"
        ) from error


def load_last_checkpoint(run_dir: Path, state: dict) -> keras.Model:
    """Loads ``checkpoints/last.keras`` (compiled, with its optimizer) and checks its step.

    Raises:
        ValueError: The checkpoint's optimizer step is not the state's.
    """
    last = run_dir / "checkpoints" / "last.keras"
    model = keras.saving.load_model(last, safe_mode=True)
    step = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    if step != state.get("optimizer_step"):
        raise ValueError(
            f"Expected {last} at optimizer step {state.get('optimizer_step')} "
            f"(epoch {state.get('epoch')} in state.json). Received: step {step}"
        )
    return model


# --------------------------------------------------------------------------- history and summary


def write_history(path: Path, rows: list[dict]) -> None:
    """Rewrites ``history.csv`` from the state's rows (validation columns last, NaN empty)."""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    val_cols = [c for c in columns if c.startswith("val_")]
    columns = [c for c in columns if not c.startswith("val_")] + val_cols
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v)
                         for k, v in row.items()})
    _atomic_text(path, buffer.getvalue())


def run_summary(state: dict, prepared: PreparedData, *, status: str) -> dict:
    """The ``summary.json`` dict of a run state."""
    best_val = state.get("best_val") or {}
    names = prepared.config.train.best_metric
    return {
        "status": status,
        "best_epoch": state.get("best_epoch"),
        "best_metric": {name: best_val.get(name) for name in names},
        "val_metrics": {k: v for k, v in best_val.items() if not isinstance(v, (dict, list))},
        "recall_by_size": best_val.get("recall_by_size"),
        "recall_by_attribute": best_val.get("recall_by_attribute"),
        "epochs_completed": state.get("epoch", 0),
        "epochs": prepared.config.train.epochs,
        "optimizer_step": state.get("optimizer_step", 0),
        "wall_time_s": state.get("wall_time_s", 0.0),
        "train_patches_per_s": state.get("train_patches_per_s"),
        "n_train_cases": len(prepared.train_cases),
        "n_val_cases": len(prepared.val_cases[: prepared.config.data.max_val_cases or None]),
        "train_cases": prepared.train_ids,
        "val_cases": prepared.val_ids,
        "stopped_early": bool(state.get("stopped_early", False)),
    }
