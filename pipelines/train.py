"""Training: ``lungseg train --config CONFIG --data DATASET_DIR --out RUN_DIR [--resume]``.

`train` is ``model.fit`` plus callbacks; the building blocks are public so that
``lungseg bench train`` and ``lungseg study losses`` reuse them:

* `prepare_data`: discovery, the case-level split (``data.split_seed``), preprocessing of
  every case once into the cache (a tqdm bar), CT z-score statistics from the training
  cases (stored in the resolved config), the lesion-balanced `PatchSampler` and the
  augmenter.
* `build_model`, `compile_model` (AdamW or SGD, cosine/poly/constant schedule with warm-up
  on ``optimizer.iterations``, optional global-norm clipping, the loss and its component
  metrics, ``jit_compile``), `make_train_dataset` (the global batch, from any sample index).
* `validate`: whole validation scans through `pipelines.predictor.predict_probabilities`
  (the one sliding-window implementation), probabilities back to each scan's own grid
  with ``Geometry.inverse(order=1)``, threshold, then `segmentation.metrics.evaluate_case`
  and `segmentation.metrics.summarize` against the label as stored on disk.

Run directory (every file written atomically):

``config.yaml`` (resolved), ``model.keras`` (copy of the best), ``checkpoints/last.keras``
(with optimizer state, every epoch), ``checkpoints/best.keras``, ``checkpoints/state.json``
(completed epochs, optimizer step, best value, early-stopping counter, the history rows),
``logs/`` (TensorBoard), ``history.csv`` (one row per completed epoch), ``summary.json``,
``manifest.json`` (library versions, platform, data hash, seeds, config hash, command line)
and ``cache/`` (unless ``data.cache_dir`` is set; preprocessed cases live in a sub-folder
named by a hash of the data and the preprocessing, so stale caches are never reused).

Exact resume. At the end of every epoch the checkpoint is written to a temporary file, a
``state.json.pending`` record is written, then both are renamed into place (checkpoint
first). A run killed at any moment is resumed from the last completed epoch: a pending
record whose optimizer step matches the checkpoint is rolled forward, otherwise dropped.
The patch stream restarts at sample ``epoch * steps_per_epoch * batch_size`` (sample ``i``
is a pure function of the seed and ``i``), the learning-rate schedule is a function of
``optimizer.iterations`` saved in the checkpoint, and ``history.csv`` is rewritten from the
state, so no epoch is lost or repeated.

Distribution. ``train.distribute``: ``auto`` (MirroredStrategy over all GPUs when there are
several), ``none``, ``mirrored`` (``devices=`` or all GPUs) or ``multi_worker``
(``MultiWorkerMirroredStrategy`` configured by the ``TF_CONFIG`` environment variable; only
the chief writes the run directory). The dataset yields the global batch
(``train.batch_size``), which must be divisible by the number of replicas; Keras splits it
and scales the loss by ``1 / replicas``. Caveat: Keras clips gradients (``optim.clipnorm``)
per replica before the all-reduce, so with clipping active a multi-replica step differs
slightly from a single-device step.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import errno
import hashlib
import io
import json
import logging
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import scipy.ndimage as ndi
import tensorflow as tf
import yaml

# Importing ``losses`` registers lungseg's losses and loss callbacks with Keras, so that
# ``keras.saving.load_model`` can rebuild a compiled checkpoint in a fresh process (resume).
from losses import component_metrics, get_loss, loss_callbacks
from models.unet import build_unet
from segmentation.config import Config, config_to_dict, load_config, save_config
from segmentation.console import keras_verbose, progress_bar
from segmentation.plausibility import ScanLimits

__all__ = [
    "TrainingError",
    "CheckpointError",
    "ValCase",
    "PreparedData",
    "WarmupDecaySchedule",
    "HISTORY_VAL_KEYS",
    "prepare_data",
    "make_strategy",
    "build_model",
    "make_optimizer",
    "compile_model",
    "make_train_dataset",
    "validate",
    "train",
    "bench_train",
    "metric_sort_key",
    "data_hash",
]

logger = logging.getLogger(__name__)

HISTORY_VAL_KEYS = (
    "dice_mean",
    "iou_mean",
    "lesion_recall",
    "small_lesion_recall",
    "lesion_precision",
    "fp_per_scan",
)
"""Validation metrics written to ``history.csv`` (as ``val_<key>``) and TensorBoard."""

_LOWER_IS_BETTER = ("fp_per_scan", "hd95", "volume_diff", "n_false_positives")
_STATE_VERSION = 1


class TrainingError(RuntimeError):
    """Training could not go on (diverged loss, failed checkpoint); the message says what is kept."""


class CheckpointError(TrainingError):
    """A checkpoint could not be written; the previous one is intact."""


# --------------------------------------------------------------------------- data


@dataclasses.dataclass
class ValCase:
    """A validation scan.

    Attributes:
        case_id: Case identifier.
        image_net: float32 (I, J, K) preprocessed image (network space, memmap).
        mask_net: uint8 (I, J, K) preprocessed label (network space; image summaries only).
        geometry: `segmentation.alignment.Geometry` from the scan's grid to network space.
        label_path: The label file; metrics compare with it in the scan's own geometry.
    """

    case_id: str
    image_net: np.ndarray
    mask_net: np.ndarray
    geometry: Any
    label_path: Path
    _label: np.ndarray | None = dataclasses.field(default=None, repr=False)

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel spacing of the stored (source-order) label, from the affine's column norms."""
        affine = np.asarray(self.geometry.source_affine, dtype=np.float64)
        return tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))

    def label(self) -> np.ndarray:
        """bool (source_shape) label as stored on disk; read once, then kept in memory."""
        if self._label is None:
            from segmentation.io import read_volume

            volume = read_volume(self.label_path, kind="mask")
            self._label = np.ascontiguousarray(volume.to_source(volume.array) > 0)
            if self._label.shape != tuple(self.geometry.source_shape):
                raise ValueError(
                    f"Expected the label {self.label_path} to have the image's shape "
                    f"{tuple(self.geometry.source_shape)}. Received: shape={self._label.shape}"
                )
        return self._label


@dataclasses.dataclass
class PreparedData:
    """Everything `train` needs from the dataset (see `prepare_data`).

    Attributes:
        config: The resolved config (``preprocess.ct_stats`` filled in for ct_zscore).
        train_cases: Cached training cases (``CachedCase``: memmapped image/mask, lesions).
        val_cases: Validation scans.
        sampler: The lesion-balanced `PatchSampler` over the training cases.
        augmenter: ``augment(image, mask, seed)`` or None when augmentation is disabled.
        cache_dir: Folder of the preprocessed cases.
        data_hash: SHA-256 over the dataset's files (relative path, size, content).
        nodule_table: the dataset's nodule attribute table (a phantom ``nodules.json``, see
            `segmentation.nodule_attributes`) or None; validation then adds
            ``recall_by_attribute`` (e.g. ground-glass recall) to its summary.
    """

    config: Config
    train_cases: list
    val_cases: list[ValCase]
    sampler: Any
    augmenter: Callable | None
    cache_dir: Path
    data_hash: str
    nodule_table: Any = None

    @property
    def train_ids(self) -> list[str]:
        return [c.case_id for c in self.train_cases]

    @property
    def val_ids(self) -> list[str]:
        return [c.case_id for c in self.val_cases]


def data_hash(paths: Sequence[Path], *, root: Path) -> str:
    """SHA-256 over the files' paths relative to ``root``, sizes and contents (sorted)."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        rel = os.path.relpath(path, root)
        digest.update(f"{rel}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _spec_hash(config: Config, data_digest: str) -> str:
    text = json.dumps(
        {"preprocess": config_to_dict(config.preprocess), "data": data_digest}, sort_keys=True
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _air_pad_value(config: Config) -> float:
    from segmentation.preprocessing import air_level

    return air_level(config.preprocess)


def _background_threshold(config: Config) -> float | None:
    """``train.background``: None for ``uniform``, the body level for ``body``."""
    if config.train.background == "uniform":
        return None
    from segmentation.preprocessing import body_level

    return body_level(config.preprocess)


def _discover(config: Config, data_dir: Path) -> tuple[list, list]:
    from segmentation.dataset import discover_cases, kfold_split, split_cases

    if not data_dir.exists():
        raise FileNotFoundError(
            f"Expected a dataset folder. Received: data_dir={data_dir} (no such directory)"
        )
    if not data_dir.is_dir():
        raise ValueError(f"Expected a dataset folder. Received: data_dir={data_dir} (not a directory)")
    cases = discover_cases(data_dir, split="train")
    if not cases:
        raise ValueError(
            "Expected labelled training cases (MSD dataset.json, nnU-Net v2 imagesTr/labelsTr, or "
            f"images/ + labels/). Received: data_dir={data_dir} holds no case"
        )
    if len(cases) < 2:
        raise ValueError(
            "Expected at least 2 labelled cases (one for training, one for validation). "
            f"Received: data_dir={data_dir} holds 1 case ({cases[0].case_id})"
        )
    data = config.data
    if data.n_folds >= 2:
        return kfold_split(cases, n_folds=data.n_folds, fold=data.fold, seed=data.split_seed)
    return split_cases(cases, val_fraction=data.val_fraction, seed=data.split_seed)


def _resolve_ct_stats(config: Config, train_cases: Sequence, progress: bool) -> Config:
    """Computes CT z-score statistics from the training cases when they are needed."""
    spec = config.preprocess
    if spec.normalisation != "ct_zscore" or spec.ct_stats is not None:
        return config
    from segmentation.io import check_pair, read_volume
    from segmentation.preprocessing import compute_ct_stats

    def pairs():
        for case in _progress(train_cases, progress, "CT statistics"):
            image = read_volume(case.image, kind="image")
            mask = check_pair(image, read_volume(case.label, kind="mask", binarize=config.data.binarize_labels))
            yield image.array, mask.array

    stats = compute_ct_stats(pairs())
    return dataclasses.replace(config, preprocess=dataclasses.replace(spec, ct_stats=stats))


def _progress(items: Sequence, enabled: bool, desc: str):
    return progress_bar(items, enabled=enabled, desc=desc, unit="case", leave=False)


def _cache_cases(cases: Sequence, *, config: Config, cache_dir: Path, progress: bool,
                 limits: ScanLimits | None = None) -> list:
    """Preprocesses each case once (reusing valid cache entries); returns CachedCase objects."""
    from segmentation.io import check_pair, read_volume
    from segmentation.plausibility import check_scan
    from segmentation.preprocessing import cache_case, load_cached_case, preprocess_volume

    cached = []
    for case in _progress(cases, progress, "preprocessing"):
        try:
            cached.append(load_cached_case(cache_dir, case.case_id))
            continue
        except (FileNotFoundError, ValueError, OSError):
            pass  # missing, stale or corrupt entry: (re)build it
        image = read_volume(case.image, kind="image")
        if limits is not None:
            check_scan(image, limits=limits)
        mask = check_pair(image, read_volume(case.label, kind="mask", binarize=config.data.binarize_labels))
        pre = preprocess_volume(image, spec=config.preprocess, mask=mask)
        cache_case(pre, cache_dir=cache_dir, case_id=case.case_id)
        cached.append(load_cached_case(cache_dir, case.case_id))
    return cached


def prepare_data(config: Config, *, data_dir: str | os.PathLike, run_dir: str | os.PathLike,
                 progress: bool = True, limits: ScanLimits | None = None) -> PreparedData:
    """Discovers, splits and preprocesses the dataset; builds the sampler and augmenter.

    Args:
        config: The run config.
        data_dir: Dataset folder (MSD, nnU-Net v2 or plain folders).
        run_dir: Run folder (the cache goes to ``run_dir/cache`` unless ``data.cache_dir``).
        progress: Show tqdm bars.
        limits: Plausibility checks of each scan read (`segmentation.plausibility`); None:
            none.

    Returns:
        `PreparedData` whose ``config`` is the resolved config.

    Raises:
        FileNotFoundError: ``data_dir`` does not exist.
        ValueError: No case, one case, no label voxel in any training case, or a bad file
            (the message names it).
    """
    from segmentation.augmentation import build_augmenter
    from segmentation.sampling import PatchSampler

    data_dir = Path(data_dir)
    train_split, val_split = _discover(config, data_dir)
    files = [p for c in [*train_split, *val_split] for p in (c.image, c.label)]
    digest = data_hash(files, root=data_dir)
    config = _resolve_ct_stats(config, train_split, progress)
    cache_root = Path(config.data.cache_dir) if config.data.cache_dir else Path(run_dir) / "cache"
    cache_dir = cache_root / _spec_hash(config, digest)
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached = _cache_cases([*train_split, *val_split], config=config, cache_dir=cache_dir,
                          progress=progress, limits=limits)
    train_cases = cached[: len(train_split)]
    val_cases = [
        ValCase(case_id=c.case_id, image_net=c.image, mask_net=c.mask, geometry=c.geometry,
                label_path=Path(case.label))
        for c, case in zip(cached[len(train_split):], val_split)
    ]
    if config.train.foreground_fraction > 0 and not any(np.any(c.mask) for c in train_cases):
        names = ", ".join(c.case_id for c in train_cases[:10])
        raise ValueError(
            f"Expected at least one label voxel in the training cases of {data_dir}. Received: "
            f"no foreground voxel in any of the {len(train_cases)} training cases ({names}"
            f"{', ...' if len(train_cases) > 10 else ''}); check the label files"
        )
    model_cfg = config.model
    sampler = PatchSampler(
        train_cases,
        patch_size=config.train.patch_size,
        foreground_fraction=config.train.foreground_fraction,
        seed=config.train.seed,
        context_slices=model_cfg.context_slices,
        pad_value=_air_pad_value(config),
        background_threshold=_background_threshold(config),
    )
    from segmentation.nodule_insertion import with_nodule_insertion  # augment.lesion_paste / synthetic_nodules

    sampler = with_nodule_insertion(sampler, augment=config.augment, preprocess=config.preprocess,
                                    cache_dir=cache_dir)
    augmenter = None
    if config.augment.enabled:
        augmenter = build_augmenter(config.augment, spatial_dims=model_cfg.spatial_dims)
    return PreparedData(config=config, train_cases=train_cases, val_cases=val_cases,
                        sampler=sampler, augmenter=augmenter, cache_dir=cache_dir,
                        data_hash=digest, nodule_table=_dataset_nodule_table(data_dir))


def _dataset_nodule_table(data_dir: Path):
    """The dataset's nodule table (`segmentation.nodule_attributes`), or None (a bad one warns)."""
    from segmentation.nodule_attributes import find_dataset_nodule_table, read_nodule_table

    path = find_dataset_nodule_table(data_dir)
    try:
        return None if path is None else read_nodule_table(path)
    except ValueError as error:
        logger.warning("nodule attribute table left out of validation: %s", error)
        return None


def make_train_dataset(config: Config, prepared: PreparedData, start_index: int = 0,
                       *, n_outputs: int = 1) -> tf.data.Dataset:
    """The infinite dataset of global training batches, starting at sample ``start_index``.

    Args:
        config: The run config (``train.batch_size`` is the global batch).
        prepared: From `prepare_data`.
        start_index: First sample index (resume: ``epoch * steps_per_epoch * batch_size``).
        n_outputs: Model outputs (deep supervision); targets are repeated for each.

    Returns:
        Dataset of ``(image (B, *patch, C) float32, mask (B, *patch, 1) float32)``.
    """
    from pipelines.data import make_patch_dataset

    parallel = config.train.num_parallel_calls or tf.data.AUTOTUNE
    dataset = make_patch_dataset(
        prepared.sampler,
        prepared.augmenter,
        batch_size=config.train.batch_size,
        seed=config.train.seed,
        start_index=start_index,
        num_parallel_calls=parallel,
        deterministic=True,
    )
    if n_outputs > 1:
        dataset = dataset.map(lambda x, y: (x, tuple([y] * n_outputs)))
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


# --------------------------------------------------------------------------- model


def make_strategy(config: Config, *, devices: Sequence[str] | None = None) -> tf.distribute.Strategy:
    """The tf.distribute strategy of ``train.distribute`` (see the module docstring).

    Raises:
        ValueError: ``multi_worker`` without ``TF_CONFIG``, or ``devices`` with ``none``.
    """
    mode = config.train.distribute
    if mode == "none":
        if devices:
            raise ValueError(
                f"Expected no devices with train.distribute=none. Received: devices={list(devices)}"
            )
        return tf.distribute.get_strategy()
    if mode == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ValueError(
                "Expected the TF_CONFIG environment variable for train.distribute=multi_worker "
                "(cluster and task of this worker). Received: TF_CONFIG is not set"
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    if devices:
        return tf.distribute.MirroredStrategy(devices=list(devices))
    gpus = tf.config.list_logical_devices("GPU")
    if mode == "mirrored" or len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _is_chief(strategy: tf.distribute.Strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type == "chief" or (task_type == "worker" and task_id == 0
                                    and "chief" not in resolver.cluster_spec().as_dict())


def build_model(config: Config) -> keras.Model:
    """The U-Net of ``config.model`` with dynamic spatial dims (seeded by ``train.seed``)."""
    m = config.model
    return build_unet(
        m.spatial_dims,
        in_channels=m.in_channels,
        filters=m.filters,
        norm=m.norm,
        residual=m.residual,
        dropout=m.dropout,
        deep_supervision=m.deep_supervision,
        head_bias=m.head_bias,
        input_shape=(*([None] * m.spatial_dims), m.in_channels),
    )


@keras.saving.register_keras_serializable(package="lungseg")
class WarmupDecaySchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up then cosine (to ``final_learning_rate``), poly or constant decay.

    A pure function of the optimizer step, saved with the optimizer, so a resumed run
    continues the schedule exactly.

    Args:
        peak_learning_rate: Rate after warm-up.
        total_steps: Steps of the whole run (warm-up included).
        warmup_steps: Linear warm-up steps (rate ``peak * (step + 1) / warmup_steps``).
        kind: ``cosine``, ``poly`` (``peak * (1 - t)**power``) or ``constant``.
        power: Poly exponent.
        final_learning_rate: Cosine end value.
    """

    def __init__(self, peak_learning_rate: float, total_steps: int, *, warmup_steps: int = 0,
                 kind: str = "cosine", power: float = 0.9, final_learning_rate: float = 0.0) -> None:
        if kind not in ("cosine", "poly", "constant"):
            raise ValueError(f"Expected kind in (cosine, poly, constant). Received: kind={kind!r}")
        if total_steps < 1 or warmup_steps < 0:
            raise ValueError(
                "Expected total_steps >= 1 and warmup_steps >= 0. "
                f"Received: total_steps={total_steps}, warmup_steps={warmup_steps}"
            )
        self.peak_learning_rate = float(peak_learning_rate)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.kind = kind
        self.power = float(power)
        self.final_learning_rate = float(final_learning_rate)

    def __call__(self, step):
        ops = keras.ops
        step = ops.cast(step, "float32")
        peak = self.peak_learning_rate
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        t = ops.clip((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        if self.kind == "cosine":
            decayed = self.final_learning_rate + (peak - self.final_learning_rate) * 0.5 * (
                1.0 + ops.cos(math.pi * t))
        elif self.kind == "poly":
            decayed = peak * ops.power(1.0 - t, self.power)
        else:
            decayed = ops.convert_to_tensor(peak, "float32") + 0.0 * t
        if self.warmup_steps == 0:
            return decayed
        warm = peak * (step + 1.0) / self.warmup_steps
        return ops.where(step < self.warmup_steps, warm, decayed)

    def get_config(self) -> dict:
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "kind": self.kind,
            "power": self.power,
            "final_learning_rate": self.final_learning_rate,
        }


def make_optimizer(config: Config, *, total_steps: int) -> keras.optimizers.Optimizer:
    """AdamW or SGD (Nesterov) on a `WarmupDecaySchedule`; LossScaleOptimizer under mixed precision."""
    o = config.optim
    schedule = WarmupDecaySchedule(
        o.learning_rate,
        total_steps,
        warmup_steps=o.warmup_epochs * config.train.steps_per_epoch,
        kind=o.schedule,
        power=o.poly_power,
    )
    clip = {"global_clipnorm": o.clipnorm} if o.clipnorm is not None else {}
    if o.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=o.weight_decay, **clip)
    else:
        optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=o.momentum, nesterov=True,
                                         weight_decay=o.weight_decay or None, **clip)
    if config.train.mixed_precision:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def _make_loss(config: Config):
    spec = dict(config.loss)
    if config.train.debug:
        spec["debug"] = True
    return get_loss(spec)


def _component_metrics(loss) -> list:
    return list(component_metrics(loss))


def compile_model(model: keras.Model, config: Config, *, total_steps: int) -> keras.Model:
    """Compiles ``model`` for training (call inside the strategy's scope).

    Deep-supervision models (several outputs) get one loss per output with weights
    ``1, 1/2, 1/4, ...`` normalised to sum 1; loss components are logged for the first.
    """
    n_outputs = len(model.outputs)
    loss = _make_loss(config)
    metrics = _component_metrics(loss)
    kwargs: dict[str, Any] = {}
    if n_outputs > 1:
        weights = np.array([0.5**i for i in range(n_outputs)])
        kwargs["loss_weights"] = list(weights / weights.sum())
        metrics = [metrics] + [[] for _ in range(n_outputs - 1)]
        loss = [loss] + [_make_loss(config) for _ in range(n_outputs - 1)]
    model.compile(
        optimizer=make_optimizer(config, total_steps=total_steps),
        loss=loss,
        metrics=metrics or None,
        jit_compile=bool(config.train.jit_compile),
        **kwargs,
    )
    return model


# --------------------------------------------------------------------------- validation


def validate(model: keras.Model, config: Config, prepared: PreparedData, *,
             return_first_probs: bool = False):
    """Evaluates ``model`` on the validation scans, in each scan's own geometry.

    Args:
        model: Trained model (logits).
        config: The run config (inference and evaluation sections).
        prepared: From `prepare_data`; at most ``data.max_val_cases`` scans are used.
        return_first_probs: Also return the network-space probabilities of the first scan.

    Returns:
        The `segmentation.metrics.summarize` dict (plus ``val_time_s``, and with
        ``prepared.nodule_table`` also ``recall_by_attribute`` and ``nodule_attributes``, as in
        ``lungseg evaluate --nodules``); with ``return_first_probs`` a tuple ``(summary, probs)``.
    """
    from pipelines.predictor import (lung_filter, make_predict_fn, predict_probabilities,
                                     probabilities_to_mask)
    from segmentation.metrics import evaluate_case, summarize

    start = time.perf_counter()
    ev = config.evaluation
    cases = prepared.val_cases[: config.data.max_val_cases or None]
    predict_fn = make_predict_fn(model, batch_size=config.inference.batch_size)
    results, first = [], None
    for case in cases:
        probs_net = predict_probabilities(model, np.asarray(case.image_net), config=config,
                                          predict_fn=predict_fn)
        if first is None:
            first = probs_net
        probs = np.clip(case.geometry.inverse(probs_net, order=1), 0.0, 1.0).astype(np.float32)
        pred = probabilities_to_mask(probs, threshold=config.inference.threshold,
                                     spacing_mm=case.spacing_mm,
                                     min_size_mm3=config.inference.min_size_mm3,
                                     connectivity=ev.connectivity)
        pred = lung_filter(pred, image_net=case.image_net, geometry=case.geometry, config=config)
        results.append(evaluate_case(
            case.label(), pred, spacing_mm=case.spacing_mm, affine=case.geometry.source_affine,
            probs=probs, case_id=case.case_id, connectivity=ev.connectivity,
            criterion=ev.match, iou_threshold=ev.iou_threshold, tolerance_mm=ev.tolerance_mm,
        ))
    summary = summarize(results, small_lesion_mm=ev.small_lesion_mm, size_bins_mm=ev.size_bins_mm)
    if prepared.nodule_table is not None:
        from segmentation.nodule_attributes import join_mask, summarize_joins

        table = prepared.nodule_table
        joins = [join_mask([r for r in table.rows if r.case_id == case.case_id],
                           mask_true=case.label(), lesions=result.lesions,
                           affine=case.geometry.source_affine, connectivity=ev.connectivity)
                 for case, result in zip(cases, results)]
        summary["recall_by_attribute"], summary["nodule_attributes"] = summarize_joins(
            table, results, joins)
    summary["val_time_s"] = time.perf_counter() - start
    return (summary, first) if return_first_probs else summary


def metric_sort_key(summary: dict, names: Sequence[str]) -> tuple[float, ...]:
    """Lexicographic "higher is better" key of the ``train.best_metric`` values.

    NaN/None is the worst value; metrics where lower is better (``fp_per_scan``, HD95,
    volume differences) are negated.

    Raises:
        ValueError: A name is not a numeric key of ``summary``.
    """
    key = []
    for name in names:
        if name not in summary:
            numeric = sorted(k for k, v in summary.items() if isinstance(v, (int, float)) or v is None)
            raise ValueError(
                f"Expected train.best_metric to name validation metrics ({', '.join(numeric)}). "
                f"Received: train.best_metric contains {name!r}"
            )
        value = summary[name]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            key.append(-math.inf)
            continue
        if not isinstance(value, (int, float)):
            raise ValueError(f"Expected a numeric metric for train.best_metric. Received: {name}={value!r}")
        key.append(-float(value) if any(tag in name for tag in _LOWER_IS_BETTER) else float(value))
    return tuple(key)


def _outline_image(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """RGB float32 (H, W, 3) radiological view of an axial slice (I, J) with outlines.

    Patient right on the image left, anterior at the top; truth outline green, prediction
    red (yellow where both).
    """
    from skimage.segmentation import find_boundaries

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


def _largest_lesion_slice(mask: np.ndarray) -> int:
    mask = np.asarray(mask) > 0
    if not mask.any():
        return mask.shape[2] // 2
    labels, n = ndi.label(mask, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    largest = int(np.argmax(sizes))
    k = np.nonzero(labels == largest)[2]
    return int(round(float(k.mean())))


# --------------------------------------------------------------------------- run folder


def _atomic_text(path: Path, text: str) -> None:
    from segmentation.io import atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    atomic_write(path, write)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return _json_safe(value.item())
    if isinstance(value, Path):
        return str(value)
    return value


def _atomic_json(path: Path, data: Any) -> None:
    _atomic_text(path, json.dumps(_json_safe(data), indent=2, allow_nan=False) + "\n")


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _save_model_tmp(model: keras.Model, path: Path) -> Path:
    """Saves ``model`` next to ``path`` under a temporary name; returns the temporary path."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.keras")
    try:
        model.save(tmp)
        _fsync_file(tmp)
    except BaseException as error:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(error, OSError):
            kept = f"{path} is intact" if path.exists() else f"no earlier {path.name} existed"
            raise CheckpointError(
                f"Expected to write the checkpoint {path}. Received: {error.__class__.__name__}: "
                f"{error}. The previous checkpoint {kept}; free disk space and rerun with --resume."
            ) from error
        raise
    return tmp


def _copy_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.stem}.{os.getpid()}.tmp{dst.suffix}")
    try:
        shutil.copyfile(src, tmp)
        _fsync_file(tmp)
        os.replace(tmp, dst)
    except OSError as error:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise CheckpointError(
            f"Expected to copy {src} to {dst}. Received: {error}. {src} is intact."
        ) from error


def _library_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {}
    for name in ("lungseg", "tensorflow", "keras", "numpy", "scipy", "nibabel", "scikit-image",
                 "albumentations", "pyyaml", "tqdm"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _config_hash(config: Config) -> str:
    text = yaml.safe_dump(config_to_dict(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


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


def _read_state(run_dir: Path) -> dict | None:
    """The committed state, after rolling a pending commit forward when it matches."""
    ckpt_dir = run_dir / "checkpoints"
    state_path, pending_path = ckpt_dir / "state.json", ckpt_dir / "state.json.pending"
    last = ckpt_dir / "last.keras"
    if pending_path.exists():
        try:
            pending = json.loads(pending_path.read_text())
            step = _checkpoint_step(last) if last.exists() else None
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
        state = json.loads(state_path.read_text())
    except ValueError as error:
        raise ValueError(
            f"Expected valid JSON in {state_path}. Received: {error}; the run cannot be resumed"
        ) from error
    return state


def _checkpoint_step(path: Path) -> int:
    """The optimizer step stored in a .keras checkpoint (reads only its JSON metadata)."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        if "lungseg_state.json" in names:
            return int(json.loads(archive.read("lungseg_state.json"))["optimizer_step"])
    raise ValueError(f"Expected lungseg metadata in {path}. Received: entries {names}")


# --------------------------------------------------------------------------- callbacks


class _RunCallback(keras.callbacks.Callback):
    """Validation, history, checkpoints, best model, early stopping and the NaN guard."""

    def __init__(self, *, config: Config, prepared: PreparedData, run_dir: Path, state: dict,
                 session_start: float, chief: bool) -> None:
        super().__init__()
        self.config = config
        self.prepared = prepared
        self.run_dir = run_dir
        self.state = state
        self.session_start = session_start
        self.wall_at_start = float(state.get("wall_time_s", 0.0))
        self.chief = chief
        self.ckpt_dir = run_dir / "checkpoints"
        self._image_writer = None
        self._batch_t0: float | None = None
        self._timed_patches = 0
        self._timed_s = 0.0
        self._epoch = 0

    # ---- speed and NaN guard
    @property
    def current_epoch(self) -> int:
        """0-based index of the epoch being trained."""
        return self._epoch

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._batch_t0 = None

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if self._batch_t0 is not None:  # first batch of each epoch (tracing, warm-up) not timed
            self._timed_s += now - self._batch_t0
            self._timed_patches += self.config.train.batch_size
        self._batch_t0 = now
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self._diverged(batch, logs or {})

    def _diverged(self, batch: int, logs: dict) -> None:
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        bad = sorted(k for k, v in logs.items()
                     if k != "loss" and isinstance(v, (int, float, np.floating)) and not math.isfinite(float(v)))
        where = f"epoch {self._epoch + 1}, batch {batch + 1} of {self.config.train.steps_per_epoch} (global step {step})"
        detail = ""
        if bad:
            detail = f" Non-finite components: {', '.join(bad)}."
        elif not self.config.train.debug:
            detail = " Set train.debug=true to name the loss component."
        kept = self.state.get("epoch", 0)
        raise TrainingError(
            f"Training diverged: the loss is {float(logs['loss'])} at {where}.{detail} Nothing of this "
            f"epoch was saved; checkpoints/last.keras holds epoch {kept}. Lower optim.learning_rate "
            "or keep optim.clipnorm, then resume with --resume or start another run."
        )

    # ---- epoch end
    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        cfg = self.config.train
        n_done = epoch + 1
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        logs["learning_rate"] = lr
        validated = n_done % cfg.val_every == 0 or n_done == cfg.epochs
        improved = False
        summary = None
        if validated:
            summary, probs = validate(self.model, self.config, self.prepared, return_first_probs=True)
            for key in HISTORY_VAL_KEYS:
                value = summary.get(key)
                logs[f"val_{key}"] = float("nan") if value is None else float(value)
            key = metric_sort_key(summary, cfg.best_metric)
            best = self.state.get("best_key")
            best_key = None if best is None else tuple(-math.inf if v is None else v for v in best)
            improved = best_key is None or key > best_key
            if improved:
                self.state.update(best_key=list(key), best_epoch=n_done, best_val=summary)
                self.state["validations_without_improvement"] = 0
            else:
                self.state["validations_without_improvement"] = self.state.get(
                    "validations_without_improvement", 0) + 1
            if self.chief and cfg.tensorboard_images and probs is not None:
                self._write_image(n_done, probs)
        row = self._history_row(n_done, logs, summary, lr)
        self.state.setdefault("history", []).append(row)
        patience = cfg.early_stopping_patience
        if patience and self.state.get("validations_without_improvement", 0) >= patience:
            self.state["stopped_early"] = True
            self.model.stop_training = True
        self._commit(n_done, improved)

    def _history_row(self, n_done: int, logs: dict, summary: dict | None, lr: float) -> dict:
        row: dict[str, Any] = {"epoch": n_done, "loss": float(logs.get("loss", float("nan")))}
        for key in sorted(logs):
            if key.startswith("loss_") or (key.endswith("_loss") and key != "loss"):
                row[key] = float(logs[key])
        row["lr"] = lr
        row["wall_time_s"] = round(self.wall_at_start + time.perf_counter() - self.session_start, 3)
        for key in HISTORY_VAL_KEYS:
            value = None if summary is None else summary.get(key)
            row[f"val_{key}"] = value
        return row

    def _write_image(self, step: int, probs: np.ndarray) -> None:
        case = self.prepared.val_cases[0]
        mask = np.asarray(case.mask_net)
        k = _largest_lesion_slice(mask)
        image = np.asarray(case.image_net[:, :, k])
        pred = probs[:, :, k] >= self.config.inference.threshold
        rgb = _outline_image(image, mask[:, :, k] > 0, pred)
        if self._image_writer is None:
            self._image_writer = tf.summary.create_file_writer(str(self.run_dir / "logs" / "images"))
        with self._image_writer.as_default():
            tf.summary.image(f"validation/{case.case_id}_slice{k}", rgb[None], step=step)
        self._image_writer.flush()

    def _commit(self, n_done: int, improved: bool) -> None:
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        self.state.update(
            version=_STATE_VERSION,
            epoch=n_done,
            optimizer_step=step,
            sample_index=n_done * self.config.train.steps_per_epoch * self.config.train.batch_size,
            wall_time_s=self.state["history"][-1]["wall_time_s"],
            train_patches_per_s=self.patches_per_s(),
        )
        if not self.chief:
            return
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        last = self.ckpt_dir / "last.keras"
        tmp_last = _save_model_tmp(_WithStep(self.model, step), last)
        try:
            if improved:
                best = self.ckpt_dir / "best.keras"
                tmp_best = _save_model_tmp(_WithStep(self.model, step), best)
                os.replace(tmp_best, best)
                _copy_atomic(best, self.run_dir / "model.keras")
            pending = self.ckpt_dir / "state.json.pending"
            try:
                _atomic_json(pending, self.state)
            except OSError as error:
                raise CheckpointError(
                    f"Expected to write {pending}. Received: {error}. checkpoints/last.keras and "
                    "state.json are intact (previous epoch); free disk space and rerun with --resume."
                ) from error
        except BaseException:
            with contextlib.suppress(OSError):
                tmp_last.unlink()
            raise
        os.replace(tmp_last, last)
        os.replace(pending, self.ckpt_dir / "state.json")
        _write_history(self.run_dir / "history.csv", self.state["history"])
        _atomic_json(self.run_dir / "summary.json", _summary(self.state, self.prepared, status="running"))

    def patches_per_s(self) -> float | None:
        if self._timed_s <= 0:
            return self.state.get("train_patches_per_s")
        return self._timed_patches / self._timed_s


class _WithStep:
    """Saves a model and adds ``lungseg_state.json`` (the optimizer step) to the archive."""

    def __init__(self, model: keras.Model, step: int) -> None:
        self.model, self.step = model, step

    def save(self, path: Path) -> None:
        import zipfile

        self.model.save(path)
        with zipfile.ZipFile(path, "a") as archive:
            archive.writestr("lungseg_state.json", json.dumps({"optimizer_step": self.step}))


def _write_history(path: Path, rows: list[dict]) -> None:
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


def _summary(state: dict, prepared: PreparedData, *, status: str) -> dict:
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


# --------------------------------------------------------------------------- train


def _check_run_dir(run_dir: Path, resume: bool) -> None:
    from segmentation.preflight import check_run_dir

    check_run_dir(run_dir, resume=resume)


def _remove_new_entries(run_dir: Path, before: set[str] | None) -> None:
    """Removes what this call created in ``run_dir`` (all of it when the folder was new)."""
    import shutil

    if before is None:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    for path in run_dir.iterdir() if run_dir.is_dir() else ():
        if path.name not in before:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


@contextlib.contextmanager
def _precision_policy(mixed: bool):
    previous = keras.mixed_precision.global_policy()
    if mixed:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _seed_everything(config: Config) -> None:
    keras.utils.set_random_seed(config.train.seed)
    if config.train.deterministic:
        tf.config.experimental.enable_op_determinism()


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
            implausible scan, or ``resume`` without a run in ``out_dir``. Nothing is left in
            ``out_dir`` by a run refused this way.
        TrainingError: The loss diverged (names epoch and step) or a checkpoint could not
            be written (`CheckpointError`; the previous checkpoint is intact).
    """
    run_dir = Path(out_dir)
    _check_run_dir(run_dir, resume)
    before = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else None
    state = _read_state(run_dir) if resume else None
    if resume and (run_dir / "config.yaml").exists():
        from segmentation.runfolder import load_run_config

        saved = load_run_config(run_dir, need_model=False)  # whole, unedited, the manifest's
        diffs = _config_differences(config, saved)
        if diffs:
            raise ValueError(
                f"Expected the config of the run in {run_dir} when resuming. Received differences: "
                + "; ".join(diffs[:8]) + ". Resume with the same config, or start another --out"
            )
        if saved.preprocess.ct_stats is not None:
            config = dataclasses.replace(config, preprocess=saved.preprocess)
    session_start = time.perf_counter()
    _seed_everything(config)
    try:  # the run folder is created here, once the dataset has been read and checked
        prepared = prepare_data(config, data_dir=data_dir, run_dir=run_dir, progress=progress,
                                limits=ScanLimits() if limits is None else limits)
    except Exception:
        _remove_new_entries(run_dir, before)
        raise
    run_dir.mkdir(parents=True, exist_ok=True)
    config = prepared.config
    cfg = config.train
    strategy = make_strategy(config, devices=devices)
    chief = _is_chief(strategy)
    replicas = strategy.num_replicas_in_sync
    if cfg.batch_size % replicas:
        raise ValueError(
            f"Expected train.batch_size to be a multiple of the {replicas} replicas. "
            f"Received: train.batch_size={cfg.batch_size}"
        )
    manifest_path = run_dir / "manifest.json"
    if state is not None and manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("data_hash") not in (None, prepared.data_hash):
            raise ValueError(
                f"Expected the dataset the run in {run_dir} started with. Received: data_dir="
                f"{data_dir} has hash {prepared.data_hash[:12]}, the run recorded "
                f"{manifest['data_hash'][:12]}; resume needs the same data"
            )
    else:
        manifest = {}
    if chief:
        save_config(config, run_dir / "config.yaml")
        manifest.update(
            created=manifest.get("created") or datetime.datetime.now().isoformat(timespec="seconds"),
            python=sys.version.split()[0],
            platform=platform.platform(),
            libraries=_library_versions(),
            devices=[d.name for d in tf.config.list_logical_devices()],
            replicas=replicas,
            strategy=type(strategy).__name__,
            data_dir=str(Path(data_dir).resolve()),
            data_hash=prepared.data_hash,
            seed=cfg.seed,
            split_seed=config.data.split_seed,
            config_hash=_config_hash(config),
            command_line=list(command_line if command_line is not None else sys.argv),
            train_cases=prepared.train_ids,
            val_cases=prepared.val_ids,
            cache_dir=str(prepared.cache_dir),
        )
        if state is not None:
            manifest.setdefault("resumed", []).append(
                {"at": datetime.datetime.now().isoformat(timespec="seconds"), "epoch": state["epoch"]})
        _atomic_json(manifest_path, manifest)

    state = state or {"epoch": 0, "history": []}
    initial_epoch = int(state["epoch"])
    if initial_epoch >= cfg.epochs or state.get("stopped_early"):
        logger.info("Run in %s already complete (%d epochs)", run_dir, initial_epoch)
        summary = _summary(state, prepared, status="completed")
        if chief:
            _atomic_json(run_dir / "summary.json", summary)
        return summary

    total_steps = cfg.epochs * cfg.steps_per_epoch
    with _precision_policy(cfg.mixed_precision):
        with strategy.scope():
            if initial_epoch > 0:
                last = run_dir / "checkpoints" / "last.keras"
                model = keras.saving.load_model(last, safe_mode=True)
                step = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
                if step != state.get("optimizer_step"):
                    raise ValueError(
                        f"Expected {last} at optimizer step {state.get('optimizer_step')} "
                        f"(epoch {initial_epoch} in state.json). Received: step {step}"
                    )
            else:
                model = build_model(config)
                compile_model(model, config, total_steps=total_steps)
        n_outputs = len(model.outputs)
        start_index = initial_epoch * cfg.steps_per_epoch * cfg.batch_size
        dataset = make_train_dataset(config, prepared, start_index, n_outputs=n_outputs)
        run_cb = _RunCallback(config=config, prepared=prepared, run_dir=run_dir, state=state,
                              session_start=session_start, chief=chief)
        all_callbacks: list = [run_cb]
        all_callbacks += _loss_callbacks(model)
        if chief:
            all_callbacks.append(keras.callbacks.TensorBoard(
                log_dir=str(run_dir / "logs"), update_freq="epoch", write_graph=False))
        all_callbacks += list(callbacks)
        logger.info("Training %s epochs %d..%d on %d replica(s)", run_dir, initial_epoch + 1,
                    cfg.epochs, replicas)
        try:
            model.fit(
                dataset,
                epochs=cfg.epochs,
                initial_epoch=initial_epoch,
                steps_per_epoch=cfg.steps_per_epoch,
                callbacks=all_callbacks,
                verbose=keras_verbose(progress),
                shuffle=False,
            )
        except tf.errors.InvalidArgumentError as error:
            if not cfg.debug:
                raise
            raise TrainingError(
                f"Training stopped by a debug check in epoch {run_cb.current_epoch + 1}: "
                f"{error.message.strip().splitlines()[0]}. checkpoints/last.keras holds epoch "
                f"{state.get('epoch', 0)}."
            ) from error
    status = "stopped_early" if state.get("stopped_early") else "completed"
    summary = _summary(state, prepared, status=status)
    if chief:
        _atomic_json(run_dir / "summary.json", summary)
    return summary


def _loss_callbacks(model: keras.Model) -> list:
    """The losses package's callbacks (weight schedules, learned weights, debug step)."""
    loss = model.loss[0] if isinstance(model.loss, (list, tuple)) else model.loss
    return list(loss_callbacks(loss))


# --------------------------------------------------------------------------- bench


def bench_train(config: Config, *, data_dir: str | os.PathLike, run_dir: str | os.PathLike,
                steps: int = 20, warmup_steps: int = 3, progress: bool = False) -> dict:
    """Patches per second of the input pipeline alone and of the training step.

    The training-step figure feeds a cached batch (no input pipeline), so the two numbers
    show which one limits training.

    Returns:
        ``{"pipeline_patches_per_s", "train_step_patches_per_s", "batch_size",
        "patch_size", "spatial_dims", "steps", "n_train_cases"}``.
    """
    from pipelines.data import measure_pipeline_throughput

    _seed_everything(config)
    try:  # the run folder is created here, once the dataset has been read and checked
        prepared = prepare_data(config, data_dir=data_dir, run_dir=run_dir, progress=progress,
                                limits=ScanLimits() if limits is None else limits)
    except Exception:
        _remove_new_entries(run_dir, before)
        raise
    run_dir.mkdir(parents=True, exist_ok=True)
    config = prepared.config
    dataset = make_train_dataset(config, prepared)
    pipeline = measure_pipeline_throughput(dataset, n_batches=steps, warmup_batches=warmup_steps)
    with _precision_policy(config.train.mixed_precision):
        model = build_model(config)
        compile_model(model, config, total_steps=steps + warmup_steps)
        x, y = next(iter(make_train_dataset(config, prepared, n_outputs=len(model.outputs))))
        for _ in range(warmup_steps):
            model.train_on_batch(x, y)
        start = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(x, y)
        elapsed = time.perf_counter() - start
    return {
        "pipeline_patches_per_s": pipeline,
        "train_step_patches_per_s": steps * config.train.batch_size / elapsed,
        "batch_size": config.train.batch_size,
        "patch_size": list(config.train.patch_size),
        "spatial_dims": config.model.spatial_dims,
        "steps": steps,
        "n_train_cases": len(prepared.train_cases),
    }
