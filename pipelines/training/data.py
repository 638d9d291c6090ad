"""The training data: discovery, the case-level split, the preprocessing cache, the patch feed.

`prepare_data` discovers the dataset, splits it by case (``data.split_seed``, or fold
``data.fold`` of ``data.n_folds``), computes the CT z-score statistics from the training
cases when the config asks for them (stored in the resolved config), preprocesses every
case once into the cache (a tqdm bar) and builds the lesion-balanced `PatchSampler` and the
augmenter. `make_train_dataset` turns them into the infinite stream of global batches,
starting at any sample index (exact resume).

The cache lives in ``run_dir/cache`` (or ``data.cache_dir``), in a sub-folder named by a hash
of the data and the preprocessing, so a stale cache is never reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from pipelines.data import make_patch_dataset
from segmentation.augmentation import build_augmenter
from segmentation.config import Config, config_to_dict
from segmentation.console import progress_bar
from segmentation.dataset import discover_cases, kfold_split, split_cases
from segmentation.io import check_pair, read_volume
from segmentation.nodule_attributes import find_dataset_nodule_table, read_nodule_table
from segmentation.nodule_insertion import with_nodule_insertion
from segmentation.plausibility import ScanLimits, check_scan
from segmentation.preprocessing import (air_level, body_level, cache_case, compute_ct_stats,
                                        load_cached_case, preprocess_volume)
from segmentation.sampling import PatchSampler

__all__ = ["ValCase", "PreparedData", "data_hash", "prepare_data", "make_train_dataset"]

logger = logging.getLogger(__name__)


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


def _background_threshold(config: Config) -> float | None:
    """``train.background``: None for ``uniform``, the body level for ``body``."""
    if config.train.background == "uniform":
        return None
    return body_level(config.preprocess)


def _discover(config: Config, data_dir: Path) -> tuple[list, list]:
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
        pad_value=air_level(config.preprocess),
        background_threshold=_background_threshold(config),
    )
    # augment.lesion_paste / synthetic_nodules
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

