"""What ``lungseg evaluate`` compares: prediction, truth and probability files paired by case
id (`find_pairs`), and each prediction put on its truth's voxel grid (`align_to_truth`).

The file naming and geometry rules are those of `pipelines.evaluate` (its module docstring).
Re-exported by `pipelines.evaluate`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from segmentation.io import NIFTI_SUFFIXES, Volume

__all__ = ["EvaluationError", "align_to_truth", "find_pairs"]

_SAME_GRID_ATOL_MM = 1e-3
_PRED_SUFFIXES = ("_mask",)
_PROBS_SUFFIXES = ("_probs", "_prob")


class EvaluationError(ValueError):
    """Bad evaluation input; the message names the folder, file or case."""


# --------------------------------------------------------------------------- file pairing
def _nifti_stem(path: Path) -> str | None:
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def _list_nifti(folder: Path, *, name: str) -> list[tuple[str, Path]]:
    if not folder.is_dir():
        raise EvaluationError(
            f"Expected {name} to be an existing folder. Received: {name}='{folder}'")
    found = sorted((stem, path) for path in folder.iterdir()
                   if path.is_file() and not path.name.startswith(".")
                   and (stem := _nifti_stem(path)) is not None)
    if not found:
        raise EvaluationError(
            f"Expected NIfTI files (.nii, .nii.gz) in {name}. Received: {name}='{folder}' "
            "(no NIfTI file found)")
    return found


def _truth_id(stem: str) -> str:
    return stem[:-5] if stem.endswith("_0000") and len(stem) > 5 else stem


def _match_id(stem: str, truth_ids: set[str], suffixes: Sequence[str]) -> str | None:
    if stem in truth_ids:
        return stem
    for suffix in suffixes:
        if stem.endswith(suffix) and stem[: -len(suffix)] in truth_ids:
            return stem[: -len(suffix)]
    return None


def _index(entries: list[tuple[str, Path]], *, name: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for case_id, path in entries:
        if case_id in out:
            raise EvaluationError(
                f"Expected one file per case id in {name}. Received: duplicate case id "
                f"'{case_id}' in '{out[case_id]}' and '{path}'")
        out[case_id] = path
    return out


def find_pairs(*, pred_dir: str | os.PathLike, truth_dir: str | os.PathLike,
               probs_dir: str | os.PathLike | None = None) -> list[dict]:
    """Pairs truth, prediction and probability files by case id.

    Args:
        pred_dir: folder of predicted masks.
        truth_dir: folder of ground-truth masks.
        probs_dir: optional folder of probability maps.

    Returns:
        list (sorted by case id) of ``{"case_id", "truth", "pred", "probs"}``; ``pred`` is None
        for a case without a prediction (evaluated as an empty prediction), ``probs`` None
        without ``probs_dir``.

    Raises:
        EvaluationError: missing or empty folder, duplicate case ids, a prediction or
            probability map with no truth, or (with probs_dir) a prediction without a
            probability map.
    """
    truth = _index([(_truth_id(stem), path) for stem, path in
                    _list_nifti(Path(truth_dir), name="truth_dir")], name="truth_dir")
    truth_ids = set(truth)

    pred_files = [(stem, path) for stem, path in _list_nifti(Path(pred_dir), name="pred_dir")
                  if not stem.endswith(_PROBS_SUFFIXES)]
    if not pred_files:
        raise EvaluationError(
            "Expected predicted masks in pred_dir (only probability maps were found). "
            f"Received: pred_dir='{pred_dir}'")
    preds = _index(_assign(pred_files, truth_ids, _PRED_SUFFIXES, name="pred_dir",
                           what="prediction"), name="pred_dir")
    probs: dict[str, Path] = {}
    if probs_dir is not None:
        prob_files = _list_nifti(Path(probs_dir), name="probs_dir")
        if any(stem.endswith(_PROBS_SUFFIXES) for stem, _ in prob_files):
            # A folder written by `lungseg predict --probs` holds masks beside the maps.
            prob_files = [(stem, path) for stem, path in prob_files if stem.endswith(_PROBS_SUFFIXES)]
        probs = _index(_assign(prob_files, truth_ids, _PROBS_SUFFIXES, name="probs_dir",
                               what="probability map"), name="probs_dir")
        lacking = sorted(set(preds) - set(probs))
        if lacking:
            raise EvaluationError(
                "Expected a probability map in probs_dir for every prediction (FROC needs all). "
                f"Received: no probability map for case(s) {lacking} in probs_dir='{probs_dir}'")
    return [{"case_id": case_id, "truth": truth[case_id], "pred": preds.get(case_id),
             "probs": probs.get(case_id)} for case_id in sorted(truth)]


def _assign(files: list[tuple[str, Path]], truth_ids: set[str], suffixes: Sequence[str], *,
            name: str, what: str) -> list[tuple[str, Path]]:
    out = []
    for stem, path in files:
        case_id = _match_id(stem, truth_ids, suffixes)
        if case_id is None:
            raise EvaluationError(
                f"Expected every {what} in {name} to have a ground-truth mask. "
                f"Received: '{path}' (case id '{stem}') has no truth file")
        out.append((case_id, path))
    return out


# --------------------------------------------------------------------------- geometry
def _describe(volume: Volume) -> str:
    return (f"'{volume.path}' shape={tuple(volume.array.shape)} "
            f"spacing_mm={tuple(round(s, 6) for s in volume.spacing_mm)} "
            f"affine={np.round(volume.affine, 4).tolist()}")


def _corner_points(shape: Sequence[int], *, extent: bool) -> np.ndarray:
    """(4, 8) homogeneous voxel coordinates: voxel centres or grid extent (+-0.5) corners."""
    pad = 0.5 if extent else 0.0
    axes = [np.array([-pad, n - 1 + pad]) for n in shape]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=0).reshape(3, -1)
    return np.vstack([grid, np.ones((1, 8))])


def _same_grid(a: Volume, b: Volume) -> bool:
    if a.array.shape != b.array.shape:
        return False
    points = _corner_points(a.array.shape, extent=False)
    return float(np.max(np.abs(a.affine @ points - b.affine @ points))) <= _SAME_GRID_ATOL_MM


def _same_world_space(a: Volume, b: Volume) -> bool:
    rot_a = a.affine[:3, :3] / np.asarray(a.spacing_mm)
    rot_b = b.affine[:3, :3] / np.asarray(b.spacing_mm)
    cross = np.abs(rot_a.T @ rot_b)
    is_permutation = (np.allclose(np.sort(cross, axis=1)[:, -1], 1.0, atol=1e-3)
                      and np.allclose(cross.sum(axis=0), 1.0, atol=1e-2)
                      and np.allclose(cross.sum(axis=1), 1.0, atol=1e-2))
    if not is_permutation:
        return False
    world_a = (a.affine @ _corner_points(a.array.shape, extent=True))[:3]
    world_b = (b.affine @ _corner_points(b.array.shape, extent=True))[:3]
    tolerance = 0.5 * max(max(a.spacing_mm), max(b.spacing_mm))
    return bool(np.all(np.abs(world_a.min(axis=1) - world_b.min(axis=1)) <= tolerance)
                and np.all(np.abs(world_a.max(axis=1) - world_b.max(axis=1)) <= tolerance))


def align_to_truth(volume: Volume, truth: Volume, *, order: int, case_id: str) -> tuple[
        np.ndarray, str]:
    """Puts ``volume`` on the truth's voxel grid.

    Args:
        volume: prediction (or probability map) as read by ``segmentation.io.read_volume``.
        truth: ground-truth Volume of the same case.
        order: interpolation order when resampling (0 for masks, 1 for probabilities).
        case_id: case named in errors.

    Returns:
        ``(array, alignment)``: array of the truth's shape (I, J, K) and ``"same grid"`` or
        ``"resampled"``.

    Raises:
        EvaluationError: incompatible geometries; names the case and both geometries.
    """
    if _same_grid(volume, truth):
        return volume.array, "same grid"
    if not _same_world_space(volume, truth):
        raise EvaluationError(
            f"Expected case '{case_id}' to have the prediction on the truth's grid or on another "
            "grid of the same world space (same axes, world bounding box within half a voxel). "
            f"Received: truth {_describe(truth)}; prediction {_describe(volume)}")
    # output voxel o (truth grid) -> world -> input voxel of `volume`
    matrix = np.linalg.inv(volume.affine) @ truth.affine
    source = volume.array.astype(np.float32) if order > 0 else volume.array
    array = ndimage.affine_transform(source, matrix[:3, :3], offset=matrix[:3, 3],
                                     output_shape=truth.array.shape, order=order,
                                     mode="constant", cval=0.0, prefilter=False)
    if order > 0:
        array = np.clip(array, 0.0, 1.0)
    return array, "resampled"
