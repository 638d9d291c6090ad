"""Checks a command makes before its work: where the output goes, and its cheap arguments.

Every ``lungseg`` command calls these before it reads a scan, loads TensorFlow or a model,
so a mistake costs a fraction of a second, not the whole run:

* `check_output_dir` / `check_output_file`: the output exists as a folder (or file) or can
  be created, is writable, does not lie below a file, and is not one of the inputs;
* `check_threshold`, `check_window`: numbers in range;
* `check_run_dir`: a training run folder for a new run is new or empty; for ``--resume``
  it holds a run.

Messages use the command line's option names (``--out``, ``--threshold``, ...).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from segmentation.dataset import discover_cases
from segmentation.plausibility import ScanLimits, check_header, estimate_inference_bytes

__all__ = [
    "PreflightError",
    "RUN_MARKERS",
    "check_output_dir",
    "check_output_file",
    "check_run_dir",
    "check_threshold",
    "check_training_inputs",
    "check_window",
    "finite_positive",
]

RUN_MARKERS = ("config.yaml", "manifest.json", "checkpoints", "cache")
"""Entries of a run folder that ``lungseg train`` started (the cache comes first)."""


class PreflightError(ValueError):
    """An output location or an argument is unusable; the message names the option."""


def _as_path(value: Any, *, option: str) -> Path:
    if isinstance(value, (str, os.PathLike)) and not isinstance(value, bytes):
        return Path(value)
    raise TypeError(f"Expected {option} to be a path. Received: {option}={value!r}")


def _nearest_existing(path: Path) -> Path:
    current = path.absolute()
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def _check_creatable(path: Path, *, option: str, kind: str) -> None:
    """The nearest existing ancestor of ``path`` must be a writable folder."""
    if kind == "folder" and path.is_dir():
        ancestor = path
    else:
        ancestor = _nearest_existing(path if kind == "folder" else path.parent)
    if not ancestor.is_dir():
        raise PreflightError(
            f"Expected {option} to be a {kind} that can be created. Received: {option} '{path}' "
            f"lies below '{ancestor}', which is a file"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PreflightError(
            f"Expected {option} to be writable. Received: {option} '{path}' "
            f"({'the folder' if ancestor == path else 'its parent'} '{ancestor}' is not writable)"
        )


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:  # pragma: no cover - broken symlink loops
        return False


def check_output_dir(path: Any, *, option: str = "--out",
                     inputs: Iterable[tuple[str, Any]] = ()) -> Path:
    """Checks an output folder before any work (nothing is created).

    Args:
        path: The folder.
        option: Its option name, for messages.
        inputs: ``(option, path)`` of the command's inputs; the output must be none of them.

    Returns:
        ``path`` as a Path.

    Raises:
        PreflightError: A file, below a file, not writable, or one of the inputs.
    """
    out = _as_path(path, option=option)
    if out.exists() and not out.is_dir():
        raise PreflightError(f"Expected {option} to be a folder. Received: {option} '{out}' is a file")
    for name, value in inputs:
        if value is not None and _same(out, Path(value)):
            raise PreflightError(
                f"Expected {option} to be another folder than {name} (results would mix with "
                f"the inputs). Received: {option} '{out}', {name} '{value}'"
            )
    _check_creatable(out, option=option, kind="folder")
    return out


def check_output_file(path: Any, *, option: str = "--out",
                      inputs: Iterable[tuple[str, Any]] = ()) -> Path:
    """Checks an output file before any work: not a folder, creatable, not an input."""
    out = _as_path(path, option=option)
    if out.is_dir():
        raise PreflightError(f"Expected {option} to be a file path. Received: {option} '{out}' is a folder")
    for name, value in inputs:
        if value is not None and _same(out, Path(value)):
            raise PreflightError(
                f"Expected {option} to be another file than {name}. Received: {option} '{out}'"
            )
    _check_creatable(out, option=option, kind="file")
    return out


def check_threshold(value: Any, *, option: str = "--threshold") -> float:
    """A probability threshold in (0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise PreflightError(f"Expected {option} in (0, 1). Received: {option} {value!r}")
    return float(value)


def check_window(window: Any, *, option: str = "--window", spatial_dims: int | None = None,
                 divisor: int = 1) -> tuple[int, ...]:
    """A sliding window: positive integers, one per spatial axis, multiples of ``divisor``."""
    if isinstance(window, (str, bytes)) or not isinstance(window, Sequence) or not window or any(
            isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in window):
        raise PreflightError(f"Expected {option} to be positive integers. Received: {option} {window!r}")
    if spatial_dims is not None and len(window) != spatial_dims:
        raise PreflightError(
            f"Expected {option} to have {spatial_dims} values (one per spatial axis of the "
            f"model). Received: {option} {' '.join(map(str, window))}"
        )
    if any(w % divisor for w in window):
        raise PreflightError(
            f"Expected every {option} value to be a multiple of {divisor} (2**depth of the "
            f"model). Received: {option} {' '.join(map(str, window))}"
        )
    return tuple(int(w) for w in window)


def check_run_dir(path: Any, *, resume: bool, option: str = "--out") -> Path:
    """Checks a training run folder before anything is created in it.

    A new run needs a folder that is missing or empty; ``--resume`` needs one that holds a
    run (any of `RUN_MARKERS`).

    Raises:
        PreflightError: A file, not writable, or ``--resume`` without a run.
        FileExistsError: A new run in a folder that holds files.
    """
    run = check_output_dir(path, option=option)
    entries = sorted(p.name for p in run.iterdir()) if run.is_dir() else []
    if resume:
        if not any(name in RUN_MARKERS for name in entries):
            state = "does not exist" if not run.exists() else (
                "is empty" if not entries else f"holds no run ({', '.join(entries[:6])})")
            raise PreflightError(
                f"Expected {option} to hold a run started by lungseg train when resuming. "
                f"Received: {option} '{run}' {state}; drop --resume to start a new run"
            )
    elif entries:
        raise FileExistsError(
            f"Expected a new or empty run folder. Received: out_dir={run} already holds "
            f"{', '.join(entries[:6])}; use --resume to continue that run, or choose another --out"
        )
    return run


def finite_positive(value: Any, *, option: str) -> float:
    """A finite number > 0 (e.g. ``--max-memory-gb``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value > 0):
        raise PreflightError(f"Expected {option} to be a number > 0. Received: {option} {value!r}")
    return float(value)


def check_training_inputs(config: Any, *, data_dir: Any, out_dir: Any, resume: bool,
                          limits: Any = None) -> list:
    """What ``lungseg train`` checks before TensorFlow is loaded and the run folder created.

    The run folder (`check_run_dir`), the dataset layout
    (`segmentation.dataset.discover_cases`) and, from each training image's header alone,
    its voxel spacing and the memory of its preprocessing
    (`segmentation.plausibility.check_header`). The voxel values (Hounsfield units, labels)
    are checked by `pipelines.train.prepare_data` when each case is read.

    Args:
        config: The run `segmentation.config.Config`.
        data_dir: ``--data``.
        out_dir: ``--out``.
        resume: ``--resume``.
        limits: `segmentation.plausibility.ScanLimits` (None: the defaults).

    Returns:
        The discovered cases.

    Raises:
        PreflightError, FileExistsError: Run folder (see `check_run_dir`) or ``--data``.
        segmentation.dataset.DatasetError: A bad dataset layout.
        segmentation.plausibility.PlausibilityError: An implausible scan header.
    """
    data = _as_path(data_dir, option="--data")
    if not data.is_dir():
        raise PreflightError(
            f"Expected --data to be a dataset folder. Received: --data '{data}' "
            f"({'not a folder' if data.exists() else 'not found'})"
        )
    if _same(Path(out_dir), data):
        raise PreflightError(
            f"Expected --out to be another folder than --data. Received: --out '{out_dir}'"
        )
    check_run_dir(out_dir, resume=resume)
    cases = discover_cases(data, split="train")
    limits = ScanLimits() if limits is None else limits

    def estimate(shape: Sequence[int], spacing_mm: Sequence[float], itemsize: int) -> dict:
        return estimate_inference_bytes(
            shape, spacing_mm, target_spacing_mm=config.preprocess.target_spacing_mm,
            window=config.train.patch_size, batch_size=config.train.batch_size,
            channels=config.model.in_channels, filters=config.model.filters,
            source_itemsize=itemsize)

    for case in cases:
        check_header(case.image, limits=limits, estimate=estimate)
    return cases
