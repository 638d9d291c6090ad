"""`train`: ``lungseg train --config CONFIG --data DATASET_DIR --out RUN_DIR [--resume]``.

``model.fit`` plus callbacks: data (`pipelines.training.data`) -> model
(`pipelines.training.model`) -> ``fit`` with the run's callbacks
(`pipelines.training.callbacks`), which validate (`pipelines.training.validation`) and
commit each epoch (`pipelines.training.checkpoint`).

Run directory (every file written atomically): ``config.yaml`` (resolved), ``model.keras``
(copy of the best), ``checkpoints/last.keras`` (with optimizer state, every epoch),
``checkpoints/best.keras``, ``checkpoints/state.json``, ``logs/`` (TensorBoard),
``history.csv`` (one row per completed epoch), ``summary.json``, ``manifest.json`` (library
versions, platform, data hash, seeds, config hash, command line) and ``cache/`` (unless
``data.cache_dir`` is set).

Exact resume: the run restarts from the last committed epoch (`checkpoint.read_state`); the
patch stream restarts at sample ``epoch * steps_per_epoch * batch_size`` (sample ``i`` is a
pure function of the seed and ``i``), the learning-rate schedule is a function of
``optimizer.iterations`` saved in the checkpoint, and ``history.csv`` is rewritten from the
state, so no epoch is lost or repeated.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf
import yaml

from pipelines.training.callbacks import (BestValidation, DivergenceGuard,
                                          EarlyStoppingOnValidations, EpochCommit,
                                          LearningRateLog, LesionValidation, ThroughputMeter,
                                          ValidationImages)
from pipelines.training.checkpoint import atomic_json, load_last_checkpoint, read_state, run_summary
from pipelines.training.data import PreparedData, make_train_dataset, prepare_data
from pipelines.training.errors import TrainingError
from pipelines.training.model import (build_model, compile_model, is_chief, make_strategy,
                                      model_loss_callbacks, precision_policy, seed_everything,
                                      training_policy)
from segmentation.config import Config, config_to_dict, save_config
from segmentation.console import keras_verbose
from segmentation.plausibility import ScanLimits
from segmentation.preflight import check_run_dir
from segmentation.runfolder import load_run_config

__all__ = ["train"]

logger = logging.getLogger(__name__)

_LIBRARIES = ("lungseg", "tensorflow", "keras", "numpy", "scipy", "nibabel", "scikit-image",
              "albumentations", "pyyaml", "tqdm")


def train(config: Config, *, data_dir: str | os.PathLike, out_dir: str | os.PathLike,
          resume: bool = False, progress: bool = True, devices: Sequence[str] | None = None,
          callbacks: Sequence[keras.callbacks.Callback] = (),
          command_line: Sequence[str] | None = None, limits: ScanLimits | None = None) -> dict:
    """Trains a model and fills the run directory (see the module docstring).

    Args:
        config: The run config (``load_config(path, overrides=...)``).
        data_dir: Dataset folder.
        out_dir: Run folder; must be new or empty unless ``resume``.
        resume: Continue the run in ``out_dir`` from its last completed epoch (the config
            must equal the run's ``config.yaml``).
        progress: tqdm bar while preprocessing and Keras's progress bar while training.
        devices: Devices for ``train.distribute`` ``mirrored``/``auto`` (e.g.
            ``["/cpu:0", "/cpu:1"]``).
        callbacks: Extra Keras callbacks (run after the run's own).
        command_line: Recorded in ``manifest.json`` (default: ``sys.argv``).
        limits: Plausibility checks of each scan (`segmentation.plausibility.ScanLimits`);
            None: the defaults.

    Returns:
        The ``summary.json`` dict.

    Raises:
        FileNotFoundError: ``data_dir`` does not exist.
        FileExistsError: ``out_dir`` already holds a run and ``resume`` is False.
        ValueError: Bad dataset or a config that differs from the run's on resume, an
            implausible scan, ``resume`` without a run in ``out_dir``, or a
            ``train.mixed_precision`` this machine cannot run. Nothing is left in
            ``out_dir`` by a run refused this way.
        TrainingError: The loss diverged (names epoch and step) or a checkpoint could not
            be written (`CheckpointError`; the previous checkpoint is intact).
    """
    run_dir = Path(out_dir)
    check_run_dir(run_dir, resume=resume)
    training_policy(config.train.mixed_precision)  # a policy this machine cannot run: refused now
    if resume:
        _check_resumed_precision(run_dir)
    before = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else None
    state = read_state(run_dir) if resume else None
    if resume and (run_dir / "config.yaml").exists():
        config = _resume_config(config, run_dir)
    session_start = time.perf_counter()
    seed_everything(config)
    try:  # the run folder is created here, once the dataset has been read and checked
        prepared = prepare_data(config, data_dir=data_dir, run_dir=run_dir, progress=progress,
                                limits=ScanLimits() if limits is None else limits)
    except Exception:
        _remove_new_entries(run_dir, before)
        raise
    run_dir.mkdir(parents=True, exist_ok=True)
    config = prepared.config
    strategy = make_strategy(config, devices=devices)
    chief = is_chief(strategy)
    _check_replicas(config, strategy.num_replicas_in_sync)
    manifest = _manifest(run_dir, prepared, data_dir=data_dir, resumed=state is not None,
                         strategy=strategy, command_line=command_line)
    if chief:
        save_config(config, run_dir / "config.yaml")
        if state is not None:
            manifest.setdefault("resumed", []).append(
                {"at": datetime.datetime.now().isoformat(timespec="seconds"), "epoch": state["epoch"]})
        atomic_json(run_dir / "manifest.json", manifest)

    state = state or {"epoch": 0, "history": []}
    if int(state["epoch"]) >= config.train.epochs or state.get("stopped_early"):
        logger.info("Run in %s already complete (%d epochs)", run_dir, int(state["epoch"]))
        return _finish(run_dir, state, prepared, chief=chief, status="completed")
    wall_at_start = float(state.get("wall_time_s", 0.0))
    _fit(prepared, run_dir=run_dir, state=state, strategy=strategy, chief=chief,
         progress=progress, extra_callbacks=callbacks,
         wall_time_s=lambda: wall_at_start + time.perf_counter() - session_start)
    status = "stopped_early" if state.get("stopped_early") else "completed"
    return _finish(run_dir, state, prepared, chief=chief, status=status)


def _fit(prepared: PreparedData, *, run_dir: Path, state: dict, strategy: tf.distribute.Strategy,
         chief: bool, progress: bool, extra_callbacks: Sequence[keras.callbacks.Callback],
         wall_time_s: Callable[[], float]) -> None:
    """Builds (or loads) the model and runs ``model.fit`` from the state's epoch."""
    config = prepared.config
    cfg = config.train
    initial_epoch = int(state["epoch"])
    with precision_policy(cfg.mixed_precision):
        with strategy.scope():
            if initial_epoch > 0:
                model = load_last_checkpoint(run_dir, state)
            else:
                model = build_model(config)
                compile_model(model, config, total_steps=cfg.epochs * cfg.steps_per_epoch)
        start_index = initial_epoch * cfg.steps_per_epoch * cfg.batch_size
        dataset = make_train_dataset(config, prepared, start_index, n_outputs=len(model.outputs))
        guard = DivergenceGuard(steps_per_epoch=cfg.steps_per_epoch, debug=cfg.debug, state=state)
        run_callbacks = _run_callbacks(prepared, run_dir=run_dir, state=state, chief=chief,
                                       guard=guard, wall_time_s=wall_time_s)
        run_callbacks += model_loss_callbacks(model)
        if chief:
            run_callbacks.append(keras.callbacks.TensorBoard(
                log_dir=str(run_dir / "logs"), update_freq="epoch", write_graph=False))
        logger.info("Training %s epochs %d..%d on %d replica(s)", run_dir, initial_epoch + 1,
                    cfg.epochs, strategy.num_replicas_in_sync)
        try:
            model.fit(dataset, epochs=cfg.epochs, initial_epoch=initial_epoch,
                      steps_per_epoch=cfg.steps_per_epoch,
                      callbacks=[*run_callbacks, *extra_callbacks],
                      verbose=keras_verbose(progress), shuffle=False)
        except tf.errors.InvalidArgumentError as error:
            if not cfg.debug:
                raise
            raise TrainingError(
                f"Training stopped by a debug check in epoch {guard.current_epoch + 1}: "
                f"{error.message.strip().splitlines()[0]}. checkpoints/last.keras holds epoch "
                f"{state.get('epoch', 0)}."
            ) from error


def _run_callbacks(prepared: PreparedData, *, run_dir: Path, state: dict, chief: bool,
                   guard: DivergenceGuard, wall_time_s: Callable[[], float]) -> list:
    """The run's own callbacks, in the order they must run at each epoch's end."""
    config = prepared.config
    cfg = config.train
    meter = ThroughputMeter(batch_size=cfg.batch_size)
    validation = LesionValidation(config=config, prepared=prepared)
    best = BestValidation(validation=validation, state=state, best_metric=cfg.best_metric)
    images = []
    if chief and cfg.tensorboard_images:
        images = [ValidationImages(validation=validation, prepared=prepared,
                                   log_dir=run_dir / "logs" / "images",
                                   threshold=config.inference.threshold)]
    return [
        LearningRateLog(), meter, guard, validation, best, *images,
        EarlyStoppingOnValidations(state=state, patience=cfg.early_stopping_patience),
        EpochCommit(run_dir=run_dir, prepared=prepared, state=state, best=best,
                    validation=validation, meter=meter, chief=chief, wall_time_s=wall_time_s),
    ]


def _finish(run_dir: Path, state: dict, prepared: PreparedData, *, chief: bool, status: str) -> dict:
    summary = run_summary(state, prepared, status=status)
    if chief:
        atomic_json(run_dir / "summary.json", summary)
    return summary


# --------------------------------------------------------------------------- run folder


def _resume_config(config: Config, run_dir: Path) -> Config:
    """The config to resume with: ``config`` must equal the run's; its CT statistics are kept."""
    saved = load_run_config(run_dir, need_model=False)  # whole, unedited, the manifest's
    diffs = _config_differences(config, saved)
    if diffs:
        raise ValueError(
            f"Expected the config of the run in {run_dir} when resuming. Received differences: "
            + "; ".join(diffs[:8]) + ". Resume with the same config, or start another --out"
        )
    if saved.preprocess.ct_stats is not None:
        config = dataclasses.replace(config, preprocess=saved.preprocess)
    return config


def _config_differences(a: Config, b: Config) -> list[str]:
    da, db = config_to_dict(a), config_to_dict(b)
    for d in (da, db):
        d["preprocess"].pop("ct_stats", None)

    def walk(x: Any, y: Any, prefix: str) -> list[str]:
        if isinstance(x, dict) and isinstance(y, dict):
            out = []
            for key in sorted(set(x) | set(y)):
                out += walk(x.get(key), y.get(key), f"{prefix}{key}.")
            return out
        return [] if x == y else [f"{prefix.rstrip('.')}: {y!r} (run) vs {x!r} (given)"]

    return walk(da, db, "")


def _check_replicas(config: Config, replicas: int) -> None:
    if config.train.batch_size % replicas:
        raise ValueError(
            f"Expected train.batch_size to be a multiple of the {replicas} replicas. "
            f"Received: train.batch_size={config.train.batch_size}"
        )


def _manifest(run_dir: Path, prepared: PreparedData, *, data_dir: str | os.PathLike,
              resumed: bool, strategy: tf.distribute.Strategy,
              command_line: Sequence[str] | None) -> dict:
    """The run's ``manifest.json`` content, updated for this session.

    Raises:
        ValueError: A resumed run whose manifest records another dataset hash.
    """
    manifest_path = run_dir / "manifest.json"
    manifest: dict = {}
    if resumed and manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("data_hash") not in (None, prepared.data_hash):
            raise ValueError(
                f"Expected the dataset the run in {run_dir} started with. Received: data_dir="
                f"{data_dir} has hash {prepared.data_hash[:12]}, the run recorded "
                f"{manifest['data_hash'][:12]}; resume needs the same data"
            )
    config = prepared.config
    manifest.update(
        created=manifest.get("created") or datetime.datetime.now().isoformat(timespec="seconds"),
        python=sys.version.split()[0],
        platform=platform.platform(),
        libraries=_library_versions(),
        devices=[d.name for d in tf.config.list_logical_devices()],
        replicas=strategy.num_replicas_in_sync,
        strategy=type(strategy).__name__,
        data_dir=str(Path(data_dir).resolve()),
        data_hash=prepared.data_hash,
        seed=config.train.seed,
        split_seed=config.data.split_seed,
        config_hash=hashlib.sha256(
            yaml.safe_dump(config_to_dict(config), sort_keys=True).encode()).hexdigest(),
        command_line=list(command_line if command_line is not None else sys.argv),
        train_cases=prepared.train_ids,
        val_cases=prepared.val_ids,
        cache_dir=str(prepared.cache_dir),
        # fixed at the start: a resumed run's checkpoint keeps its layers' policy
        precision=manifest.get("precision") or training_policy(config.train.mixed_precision),
    )
    return manifest


def _check_resumed_precision(run_dir: Path) -> None:
    """Refuses to resume a bfloat16 run (``auto`` on another machine, say) where oneDNN cannot
    run it, and warns when a float16 run (started on a GPU) resumes without one: its
    checkpoint's layers keep the policy the run started with (manifest.json)."""
    try:
        recorded = json.loads((run_dir / "manifest.json").read_text()).get("precision")
    except (OSError, ValueError, AttributeError):
        return  # no readable manifest: the run folder checks report it
    if recorded == "mixed_float16" and not tf.config.list_physical_devices("GPU"):
        logger.warning(
            "Resuming %s without a GPU: it trains in mixed_float16 (manifest.json), which a CPU "
            "emulates about 7-8x slower than float32 (docs/results.md, 'bfloat16 on a CPU'). "
            "Resume it on a GPU to train at its usual speed.", run_dir)
        return
    if recorded != "mixed_bfloat16":
        return
    try:
        training_policy("bfloat16")
    except ValueError:
        raise ValueError(
            f"Expected a GPU or an AVX-512 CPU to resume the run in {run_dir}: it trains in "
            "mixed_bfloat16 (manifest.json), which oneDNN cannot run below AVX-512. Received: a "
            "CPU without avx512f; resume it on a machine like the one it started on"
        ) from None


def _library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _remove_new_entries(run_dir: Path, before: set[str] | None) -> None:
    """Removes what this call created in ``run_dir`` (all of it when the folder was new)."""
    if before is None:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    for path in run_dir.iterdir() if run_dir.is_dir() else ():
        if path.name not in before:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
