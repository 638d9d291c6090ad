"""The dataset layouts `segmentation.dataset.discover_cases` reads, and the `Case` record.

One reader per layout (`_discover_nnunet`, `_discover_msd`, `_discover_plain`), the
``dataset.json`` loader, and the path helpers that keep every entry inside the dataset root
(``os.path.realpath``; ``..``, absolute paths and symlinks pointing out are rejected). The
layouts themselves are described in `segmentation.dataset`, which re-exports `Case` and
`DatasetError`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

from segmentation.io import METAIMAGE_SUFFIXES, NIFTI_SUFFIXES, case_id_from_path

__all__ = ["Case", "DatasetError"]

_SPLITS = ("train", "test")
_SCAN_SUFFIXES = NIFTI_SUFFIXES + METAIMAGE_SUFFIXES
_MAX_LISTED = 10


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
