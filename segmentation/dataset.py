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
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from segmentation.io import METAIMAGE_SUFFIXES, NIFTI_SUFFIXES, case_id_from_path

__all__ = ["Case", "DatasetError", "INCOMPLETE_MARKER", "discover_cases", "kfold_split", "split_cases"]

_SPLITS = ("train", "test")
_SCAN_SUFFIXES = NIFTI_SUFFIXES + METAIMAGE_SUFFIXES
_MAX_LISTED = 10
INCOMPLETE_MARKER = "dataset.incomplete.json"
"""A dataset writer's mark of an unfinished folder (`segmentation.phantom`); such a folder is refused."""


class DatasetError(ValueError):
    """The dataset layout is unusable. The message names the root or the file."""


@dataclasses.dataclass(frozen=True)
class Case:
    """One scan and its label.

    Attributes:
        case_id: File name of the image without ``.nii(.gz)`` and ``_0000``.
        image: Absolute path of the CT under the resolved dataset root (``..`` collapsed;
            a symlink inside the root is kept, so the file name stays the listed one).
        label: Same for the mask, or None (unlabelled test case).
    """

    case_id: str
    image: Path
    label: Path | None


# --------------------------------------------------------------------------------------------
# Path helpers
# --------------------------------------------------------------------------------------------


def _listing(items: Sequence[str]) -> str:
    items = list(items)
    more = f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"{items[:_MAX_LISTED]}{more}"


def _is_inside(real: str, root_real: str) -> bool:
    return real == root_real or os.path.commonpath([real, root_real]) == root_real


def _resolve_inside(root_real: str, entry: str, *, what: str) -> Path:
    """Resolves ``entry`` relative to the root; raises if it is absolute or escapes the root."""
    if not isinstance(entry, str) or not entry.strip():
        raise DatasetError(
            f"Expected {what} to be a non-empty relative path string. Received: {what}={entry!r}"
        )
    if os.path.isabs(entry) or entry.startswith("~"):
        raise DatasetError(
            f"Expected {what} to be a path relative to the dataset root '{root_real}'. "
            f"Received: {what}={entry!r} (absolute path)"
        )
    lexical = os.path.normpath(os.path.join(root_real, entry))
    real = os.path.realpath(lexical)
    if not (_is_inside(real, root_real) and _is_inside(lexical, root_real)):
        raise DatasetError(
            f"Expected {what} to resolve inside the dataset root '{root_real}'. "
            f"Received: {what}={entry!r} (resolves to '{real}')"
        )
    return Path(lexical)  # keeps the listed file name (case id) of a symlink inside the root


def _require_files(paths: Sequence[tuple[str, Path]], *, source: str) -> None:
    missing = [f"{what}: {path}" for what, path in paths if not path.is_file()]
    if missing:
        raise DatasetError(
            f"Expected every file listed by {source} to exist. Received: {len(missing)} "
            f"missing: {_listing(missing)}"
        )


def _nifti_files(folder: Path, root_real: str, *, file_ending: str | None = None) -> list[Path]:
    """Visible NIfTI files of a folder, resolved and checked to lie inside the root."""
    found = []
    for entry in sorted(os.listdir(folder)):
        if entry.startswith("."):  # hidden files, macOS "._lung_001.nii.gz" forks in MSD tars
            continue
        lower = entry.lower()
        if file_ending is not None:
            if not entry.endswith(file_ending):
                continue
        elif not lower.endswith(_SCAN_SUFFIXES):
            continue
        rel = os.path.relpath(folder / entry, root_real)
        path = _resolve_inside(root_real, rel, what=f"file '{folder.name}/{entry}'")
        if path.is_file():
            found.append(path)
    return found


def _index_by_case(paths: Sequence[Path], *, folder: str, strip_channel: bool = True) -> dict[str, Path]:
    by_case: dict[str, list[Path]] = {}
    for path in paths:
        case_id = case_id_from_path(path) if strip_channel else _strip_nifti(path.name)
        by_case.setdefault(case_id, []).append(path)
    duplicates = {k: [p.name for p in v] for k, v in by_case.items() if len(v) > 1}
    if duplicates:
        raise DatasetError(
            f"Expected one file per case id in '{folder}'. Received: duplicate case ids "
            f"{_listing([f'{k}: {v}' for k, v in sorted(duplicates.items())])}"
        )
    return {k: v[0] for k, v in by_case.items()}


def _strip_nifti(name: str) -> str:
    for suffix in _SCAN_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _check_unique_ids(cases: Sequence[Case], *, source: str) -> list[Case]:
    seen: dict[str, Path] = {}
    duplicates = []
    for case in cases:
        if case.case_id in seen:
            duplicates.append(f"{case.case_id}: {seen[case.case_id].name}, {case.image.name}")
        seen[case.case_id] = case.image
    if duplicates:
        raise DatasetError(
            f"Expected unique case ids in {source}. Received: duplicates {_listing(duplicates)}"
        )
    return sorted(cases, key=lambda c: c.case_id)


# --------------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------------


def _load_dataset_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(
            f"Expected a readable JSON file. Received: path='{path}' ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(data, dict):
        raise DatasetError(
            f"Expected a JSON object in '{path}'. Received: {type(data).__name__}"
        )
    return data


def _check_count(found: int, expected, *, key: str, json_path: Path) -> None:
    if expected is None:
        return
    if not isinstance(expected, int) or isinstance(expected, bool) or expected != found:
        raise DatasetError(
            f"Expected {key} in '{json_path}' to equal the number of cases found ({found}). "
            f"Received: {key}={expected!r}"
        )


def _test_label(root_real: str, image: Path) -> Path | None:
    """The label of a test image in labelsTs/ (same file name), if present."""
    candidate = Path(root_real) / "labelsTs" / image.name
    if not os.path.lexists(candidate):
        return None
    label = _resolve_inside(root_real, os.path.relpath(candidate, root_real),
                            what=f"file 'labelsTs/{image.name}'")
    return label if label.is_file() else None


def _discover_msd(root_real: str, data: dict, json_path: Path, split: str) -> list[Case]:
    key = "training" if split == "train" else "test"
    entries = data.get(key)
    if not isinstance(entries, list):
        raise DatasetError(
            f"Expected '{key}' in '{json_path}' to be a list. Received: {key}={type(entries).__name__}"
        )
    cases, to_check = [], []
    for index, entry in enumerate(entries):
        where = f"dataset.json {key}[{index}]"
        if split == "train":
            if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
                raise DatasetError(
                    f"Expected {where} to be an object with 'image' and 'label'. "
                    f"Received: {where}={entry!r}"
                )
            image = _resolve_inside(root_real, entry["image"], what=f"{where}.image")
            label = _resolve_inside(root_real, entry["label"], what=f"{where}.label")
            to_check += [(f"{where}.image", image), (f"{where}.label", label)]
        else:
            raw = entry.get("image") if isinstance(entry, dict) else entry
            image = _resolve_inside(root_real, raw, what=where)
            to_check.append((where, image))
            label = None
        cases.append((image, label, where))
    _require_files(to_check, source=f"'{json_path}'")
    result = []
    for image, label, where in cases:
        if split == "test":
            label = _test_label(root_real, image)
        result.append(Case(_case_id(image, where), image, label))
    if split == "train":
        _check_count(len(result), data.get("numTraining"), key="numTraining", json_path=json_path)
    return _check_unique_ids(result, source=f"'{json_path}'")


def _case_id(path: Path, where: str) -> str:
    """case_id_from_path with an error that names the dataset.json entry."""
    try:
        return case_id_from_path(path)
    except ValueError as err:
        raise DatasetError(f"{err} (from {where})") from err


def _discover_nnunet(root_real: str, data: dict, json_path: Path, split: str) -> list[Case]:
    channels = data.get("channel_names", data.get("modality"))
    if not isinstance(channels, dict) or len(channels) != 1:
        raise DatasetError(
            f"Expected exactly one input channel (CT) in 'channel_names' of '{json_path}'. "
            f"Received: channel_names={channels!r}"
        )
    file_ending = data.get("file_ending", ".nii.gz")
    if file_ending not in _SCAN_SUFFIXES:
        raise DatasetError(
            f"Expected file_ending in {list(_SCAN_SUFFIXES)} in '{json_path}'. "
            f"Received: file_ending={file_ending!r}"
        )
    image_dir, label_dir = ("imagesTr", "labelsTr") if split == "train" else ("imagesTs", "labelsTs")
    root = Path(root_real)
    if not (root / image_dir).is_dir():
        raise DatasetError(
            f"Expected a folder '{image_dir}' in the nnU-Net dataset '{root_real}'. "
            f"Received: no such folder"
        )
    files = _nifti_files(root / image_dir, root_real, file_ending=file_ending)
    channel_zero, other = [], []
    for path in files:
        stem = path.name[: -len(file_ending)]
        if len(stem) > 5 and stem[-5] == "_" and stem[-4:].isdigit():
            (channel_zero if stem[-4:] == "0000" else other).append(path)
        else:
            other.append(path)
    if other:
        raise DatasetError(
            f"Expected only single-channel images named {{case}}_0000{file_ending} in "
            f"'{root_real}/{image_dir}'. Received: {_listing([p.name for p in other])}"
        )
    images = _index_by_case(channel_zero, folder=f"{root_real}/{image_dir}")
    labels: dict[str, Path] = {}
    if (root / label_dir).is_dir():
        labels = _index_by_case(
            _nifti_files(root / label_dir, root_real, file_ending=file_ending),
            folder=f"{root_real}/{label_dir}",
            strip_channel=False,
        )
    cases = _pair(images, labels, root_real=root_real, image_dir=image_dir,
                  label_dir=label_dir, require_labels=split == "train")
    if split == "train":
        _check_count(len(cases), data.get("numTraining"), key="numTraining", json_path=json_path)
    return cases


def _pair(
    images: dict[str, Path],
    labels: dict[str, Path],
    *,
    root_real: str,
    image_dir: str,
    label_dir: str,
    require_labels: bool,
) -> list[Case]:
    if require_labels:
        no_label = sorted(set(images) - set(labels))
        no_image = sorted(set(labels) - set(images))
        if no_label or no_image:
            raise DatasetError(
                f"Expected every image in '{root_real}/{image_dir}' to have a label of the same "
                f"case id in '{root_real}/{label_dir}' and vice versa. Received: images without "
                f"label {_listing(no_label)}, labels without image {_listing(no_image)}"
            )
    return sorted(
        (Case(case_id, image, labels.get(case_id)) for case_id, image in images.items()),
        key=lambda c: c.case_id,
    )


def _discover_plain(root_real: str, split: str) -> list[Case]:
    root = Path(root_real)
    if split == "train":
        candidates = [("imagesTr", "labelsTr"), ("images", "labels")]
    else:
        candidates = [("imagesTs", "labelsTs"), ("images", "labels")]
    for image_dir, label_dir in candidates:
        if (root / image_dir).is_dir() and (split == "test" or (root / label_dir).is_dir()):
            break
    else:
        raise DatasetError(
            f"Expected a dataset.json or the folders {candidates} in the dataset root "
            f"'{root_real}'. Received: {sorted(p.name for p in root.iterdir())[:_MAX_LISTED]}"
        )
    images = _index_by_case(_nifti_files(root / image_dir, root_real),
                            folder=f"{root_real}/{image_dir}")
    labels: dict[str, Path] = {}
    if (root / label_dir).is_dir():
        labels = _index_by_case(_nifti_files(root / label_dir, root_real),
                                folder=f"{root_real}/{label_dir}")
    if not images:
        raise DatasetError(
            f"Expected at least one .nii/.nii.gz (or .mhd/.mha) image in '{root_real}/{image_dir}'. "
            f"Received: none"
        )
    return _pair(images, labels, root_real=root_real, image_dir=image_dir,
                 label_dir=label_dir, require_labels=split == "train")


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
