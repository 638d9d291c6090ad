"""Case discovery (MSD, nnU-Net v2, plain folders) and deterministic case-level splits.

Layouts, tried in this order:

* nnU-Net v2: ``dataset.json`` with ``channel_names`` / ``file_ending``; images
  ``imagesTr/{case}_0000{file_ending}``, labels ``labelsTr/{case}{file_ending}`` (test:
  ``imagesTs/`` and, if present, ``labelsTs/``). Only single-channel CT is supported.
* Medical Segmentation Decathlon: ``dataset.json`` with ``training: [{image, label}]`` and
  ``test: [image, ...]`` (test labels are paired from ``labelsTs/`` when a file of the same
  name exists there, as the lungseg phantom writes them).
* Plain folders (no ``dataset.json``): ``images/`` + ``labels/`` or ``imagesTr/`` +
  ``labelsTr/`` (test: ``imagesTs/`` + ``labelsTs/``, else ``images/`` + ``labels/`` with
  optional labels), paired by case id (file name without ``.nii(.gz)`` and ``_0000``).

Scans may also be MetaImage (``.mhd`` header beside its ``.raw``, or ``.mha``): plain folders
list them with the NIfTI files, and an nnU-Net ``file_ending`` may be ``.mha``/``.mhd``.

Every path must resolve (``os.path.realpath``) inside the dataset root; entries that escape
it (``..``, absolute paths, symlinks pointing out) are rejected.

The `Case` record and the layout readers live in `segmentation.dataset_layouts`.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from segmentation.dataset_layouts import (  # Case, DatasetError: re-exported
    _SPLITS,
    Case,
    DatasetError,
    _check_unique_ids,
    _discover_msd,
    _discover_nnunet,
    _discover_plain,
    _load_dataset_json,
)

__all__ = ["Case", "DatasetError", "INCOMPLETE_MARKER", "discover_cases", "kfold_split", "split_cases"]

INCOMPLETE_MARKER = "dataset.incomplete.json"
"""A dataset writer's mark of an unfinished folder (`segmentation.phantom`); such a folder is refused."""


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def discover_cases(
    root: str | os.PathLike, *, split: Literal["train", "test"] = "train"
) -> list[Case]:
    """Finds the cases of a dataset in MSD, nnU-Net v2 or plain-folder layout.

    Args:
        root: Dataset root folder.
        split: ``"train"`` (every case must have a label) or ``"test"`` (label may be None).

    Returns:
        Cases sorted by case id, with absolute paths under the resolved root.

    Raises:
        TypeError: If ``root`` is not path-like.
        DatasetError (a ValueError): Missing root or folders, unreadable dataset.json, paths
            escaping the root, missing files, unpaired images/labels, duplicate case ids,
            multi-channel nnU-Net data, numTraining mismatch.
    """
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"Expected root to be a str or os.PathLike. Received: root={root!r}")
    if split not in _SPLITS:
        raise ValueError(f"Expected split to be one of {_SPLITS}. Received: split={split!r}")
    if not os.path.isdir(root):
        raise DatasetError(f"Expected an existing dataset folder. Received: root='{root}'")
    root_real = os.path.realpath(root)
    if os.path.exists(os.path.join(root_real, INCOMPLETE_MARKER)):
        raise DatasetError(
            f"Expected a complete dataset. Received: root='{root}' holds {INCOMPLETE_MARKER} "
            "(an interrupted `lungseg phantom`); rerun that command with --overwrite"
        )
    json_path = Path(root_real) / "dataset.json"
    if json_path.is_file():
        data = _load_dataset_json(json_path)
        if "channel_names" in data or "file_ending" in data:
            cases = _discover_nnunet(root_real, data, json_path, split)
        elif "training" in data:
            cases = _discover_msd(root_real, data, json_path, split)
        else:
            raise DatasetError(
                f"Expected an MSD ('training') or nnU-Net v2 ('channel_names', 'file_ending') "
                f"dataset.json. Received: keys={sorted(data)} in '{json_path}'"
            )
    else:
        cases = _discover_plain(root_real, split)
    if not cases:
        raise DatasetError(
            f"Expected at least one {split} case in '{root_real}'. Received: none"
        )
    return cases


def _check_cases(cases: Sequence[Case], *, minimum: int) -> list[Case]:
    if isinstance(cases, (str, bytes)) or not isinstance(cases, Sequence):
        raise TypeError(f"Expected cases to be a sequence of Case. Received: cases={cases!r}")
    bad = [type(c).__name__ for c in cases if not isinstance(c, Case)]
    if bad:
        raise TypeError(f"Expected every item of cases to be a Case. Received: types={bad[:5]}")
    if len(cases) < minimum:
        raise ValueError(
            f"Expected at least {minimum} cases to split. Received: len(cases)={len(cases)}"
        )
    return _check_unique_ids(list(cases), source="cases")


def _check_seed(seed) -> int:
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
        raise TypeError(f"Expected seed to be an integer >= 0. Received: seed={seed!r}")
    return int(seed)


def _shuffled(cases: list[Case], seed: int) -> list[Case]:
    order = np.random.default_rng(seed).permutation(len(cases))
    return [cases[i] for i in order]


def split_cases(
    cases: Sequence[Case], *, val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Case], list[Case]]:
    """Splits cases into train and validation at case level, deterministically by seed.

    The result depends only on the set of case ids, ``val_fraction`` and ``seed`` (not on
    the input order). The validation part has ``round(n * val_fraction)`` cases, at least 1
    and at most n - 1.

    Args:
        cases: At least 2 cases with unique ids.
        val_fraction: Fraction of cases for validation, in (0, 1).
        seed: Integer >= 0.

    Returns:
        (train, validation), each sorted by case id, disjoint, together all cases.

    Raises:
        ValueError: Fewer than 2 cases, duplicate ids, val_fraction outside (0, 1).
        TypeError: Bad cases or seed type.
    """
    if not isinstance(val_fraction, numbers.Real) or not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(
            f"Expected val_fraction in the open interval (0, 1). Received: val_fraction={val_fraction!r}"
        )
    seed = _check_seed(seed)
    ordered = _check_cases(cases, minimum=2)
    n_val = min(max(int(round(len(ordered) * float(val_fraction))), 1), len(ordered) - 1)
    shuffled = _shuffled(ordered, seed)
    val_ids = {c.case_id for c in shuffled[:n_val]}
    train = [c for c in ordered if c.case_id not in val_ids]
    val = [c for c in ordered if c.case_id in val_ids]
    return train, val


def kfold_split(
    cases: Sequence[Case], *, n_folds: int = 5, fold: int, seed: int = 0
) -> tuple[list[Case], list[Case]]:
    """Returns (train, validation) of one fold of a deterministic case-level k-fold split.

    Over ``fold = 0 .. n_folds - 1`` every case is in exactly one validation part; fold sizes
    differ by at most one.

    Args:
        cases: At least ``n_folds`` cases with unique ids.
        n_folds: Number of folds, >= 2.
        fold: Fold index in [0, n_folds).
        seed: Integer >= 0.

    Returns:
        (train, validation), each sorted by case id.

    Raises:
        ValueError: n_folds < 2, fold out of range, fewer cases than folds, duplicate ids.
        TypeError: Bad cases, n_folds, fold or seed type.
    """
    for name, value in (("n_folds", n_folds), ("fold", fold)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise TypeError(f"Expected {name} to be an integer. Received: {name}={value!r}")
    if n_folds < 2:
        raise ValueError(f"Expected n_folds >= 2. Received: n_folds={n_folds}")
    if not 0 <= fold < n_folds:
        raise ValueError(
            f"Expected fold in [0, {n_folds - 1}] for n_folds={n_folds}. Received: fold={fold}"
        )
    seed = _check_seed(seed)
    ordered = _check_cases(cases, minimum=n_folds)
    folds = np.array_split(np.arange(len(ordered)), n_folds)
    shuffled = _shuffled(ordered, seed)
    val_ids = {shuffled[i].case_id for i in folds[fold]}
    train = [c for c in ordered if c.case_id not in val_ids]
    val = [c for c in ordered if c.case_id in val_ids]
    return train, val
