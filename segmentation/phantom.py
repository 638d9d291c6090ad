"""Synthetic chest CT phantoms with lung-nodule masks, written as an MSD-layout dataset.

A phantom case is built in world millimetres, in canonical RAS+ voxel order, layer by layer:
air outside the body, subcutaneous fat, chest-wall muscle, ribs, sternum and spine, the
mediastinum (fat, heart, aorta, oesophagus, trachea), the abdomen below the diaphragm, two
textured lungs, branching pulmonary vessel trees (about 10 mm tapering to 1 mm) and bronchial
trees, and 0 to 5 nodules (solid, part-solid or ground-glass; round to lobulated; some touching
the pleura or a vessel). CT-like correlated noise and a mild point-spread blur come last. The
array is then stored in a randomly drawn source orientation (RAS, LPS, flipped and permuted
axes) with the matching affine, so reading it back with nibabel canonicalisation gives the
anatomy upright.

Everything is a pure function of the seed. The anatomy is drawn in units of the in-plane field
of view, so the same seed at another size or spacing gives the same chest, scaled; vessel and
nodule sizes are absolute millimetres.

Coordinates: ``size`` and ``spacing_mm`` are given in canonical order ``(I, J, K)`` =
(right-left, anterior-posterior, cranio-caudal); the slice axis ``K`` is the coarse one. World
coordinates in ``nodules.json`` are RAS+ millimetres (NIfTI / nibabel convention; negate x and y
for LPS / ITK coordinates).

Generation of one case lives in `segmentation.phantom_case` (re-exported here); this module
writes cases and datasets.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable, Sequence

import nibabel as nib
import numpy as np

from segmentation.dataset import INCOMPLETE_MARKER
from segmentation.io import atomic_write
from segmentation.phantom_anatomy import (  # noqa: F401  (tissue classes: re-exported)
    AIR,
    AIRWAY_LUMEN,
    AIRWAY_WALL,
    BONE,
    FAT,
    LUNG,
    NODULE_SOLID,
    NODULE_SUBSOLID,
    SOFT_TISSUE,
    TISSUE_LABELS,
    VESSEL,
    _draw_anatomy,
    _draw_axcodes,
    _draw_spacing,
    _draw_trees,
    _lung_texture,
    _render_anatomy,
)
from segmentation.phantom_case import (  # noqa: F401  (generation: re-exported)
    DEFAULT_SIZE,
    KERNELS,
    MAX_FOV_INPLANE_MM,
    MAX_NODULES,
    MAX_SIZE,
    MAX_SPACING_MM,
    MIN_FOV_INPLANE_MM,
    MIN_FOV_SLICE_MM,
    MIN_SIZE,
    MIN_SPACING_MM,
    PhantomCase,
    _check_fov,
    _check_scanner,
    _check_size,
    _check_spacing,
    generate_case,
)
from segmentation.phantom_nodules import (  # noqa: F401  (nodule constants re-exported; _grow_minimum for its test)
    MIN_NODULE_VOXELS,
    NODULE_KINDS,
    NODULE_LOCATIONS,
    _draw_nodule_specs,
    _grow_minimum,
    _paint_nodule,
    _Placer,
)
from segmentation.validation import check_int

_CASE_PATTERN = re.compile(r"^phantom_(test_)?\d+\.nii\.gz$")
_SPLIT_CODES = {"train": 0, "test": 1}
GENERATOR_VERSION = "1"


# --------------------------------------------------------------------------- writing


def _atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Writes `data` atomically through `segmentation.io.atomic_write` (temp file, fsync, rename)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def _nifti_bytes(array: np.ndarray, affine: np.ndarray, *, description: str) -> bytes:
    """Deterministic .nii.gz bytes (gzip mtime 0), qform = sform = affine (scanner code)."""
    image = nib.Nifti1Image(array, affine)
    header = image.header
    header.set_data_dtype(array.dtype)
    header.set_slope_inter(1.0, 0.0)
    header.set_xyzt_units("mm", "sec")
    header["descrip"] = description.encode()[:79]
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    raw = image.to_bytes()
    # nibabel stores "no scaling" as NaN; write an explicit slope 1, intercept 0
    stored = nib.Nifti1Header.from_fileobj(io.BytesIO(raw))
    stored["scl_slope"], stored["scl_inter"] = 1.0, 0.0
    block = stored.binaryblock
    return gzip.compress(block + raw[len(block):], compresslevel=1, mtime=0)


def write_case(case: PhantomCase, image_path: str | os.PathLike,
               label_path: str | os.PathLike) -> None:
    """Writes a case's int16 HU image and uint8 nodule mask as .nii.gz files, atomically."""
    description = f"lungseg phantom v{GENERATOR_VERSION} seed={case.seed}"
    _atomic_write_bytes(Path(image_path), _nifti_bytes(case.image_hu, case.affine,
                                                       description=description))
    _atomic_write_bytes(Path(label_path), _nifti_bytes(case.mask, case.affine,
                                                       description=description + " nodules"))


def case_seed(seed: int, *, split: str, index: int) -> int:
    """The per-case seed that `write_phantom_dataset` derives for case `index` of `split`."""
    sequence = np.random.SeedSequence(seed, spawn_key=(_SPLIT_CODES[split], index))
    return int(sequence.generate_state(1, dtype=np.uint32)[0])


INCOMPLETE_FILE = INCOMPLETE_MARKER
"""Written before the first case and removed after ``dataset.json``: a folder holding it is an
interrupted `write_phantom_dataset` (`segmentation.dataset.discover_cases` refuses it)."""
_BYTES_PER_VOXEL_ON_DISK = 1.4  # int16 phantom image gzip-compressed to about 0.62, plus label


def estimate_dataset_bytes(out_dir: str | os.PathLike, *, n_cases: int, n_test: int = 0,
                           size: Sequence[int] | None = None) -> dict:
    """Disk space a phantom dataset will take, and the free space where it goes.

    Measured: a 256 x 256 x 160 case takes about 12.6 MB compressed (image) plus 0.05 MB
    (label), i.e. about 1.4 bytes per voxel for the pair (an estimate, not a bound).

    Returns:
        ``{"bytes": estimated total, "free_bytes": free space, "checked": the folder whose
        file system was measured}``.
    """
    grid = DEFAULT_SIZE if size is None else tuple(int(s) for s in size)
    n_total = max(int(n_cases), 0) + max(int(n_test), 0)
    voxels = int(np.prod(grid, dtype=np.int64))
    checked = Path(out_dir).absolute()
    while not checked.exists() and checked != checked.parent:
        checked = checked.parent
    try:
        free = shutil.disk_usage(checked).free
    except OSError:
        free = 0
    return {"bytes": int(n_total * voxels * _BYTES_PER_VOXEL_ON_DISK), "free_bytes": int(free),
            "checked": str(checked)}


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"Expected out_dir to be a directory. Received: out_dir={out_dir}")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            state = ("an interrupted phantom dataset (it holds " + INCOMPLETE_FILE + ")"
                     if (out_dir / INCOMPLETE_FILE).exists() else "not empty")
            raise ValueError(
                "Expected out_dir to be empty or missing (pass overwrite=True to replace a "
                f"phantom dataset). Received: out_dir={out_dir} ({state})")
        (out_dir / "dataset.json").unlink(missing_ok=True)   # incomplete until rewritten
        (out_dir / "nodules.json").unlink(missing_ok=True)
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            folder = out_dir / sub
            if folder.is_dir():
                for path in folder.iterdir():
                    if _CASE_PATTERN.match(path.name):
                        path.unlink()


def write_phantom_dataset(out_dir: str | os.PathLike, *, n_cases: int, seed: int,
                          size: Sequence[int] | None = None,
                          spacing_mm: Sequence[float] | None = None, n_test: int = 0,
                          overwrite: bool = False,
                          progress: Callable[[int, int], None] | None = None,
                          noise_scale: float = 1.0, kernel: str = "standard") -> Path:
    """Writes an MSD-layout phantom dataset.

    Layout: `dataset.json` (MSD keys; `training` and `test` lists, plus the extra key
    `test_labels` since MSD has no labelsTs), `imagesTr/phantom_000.nii.gz`,
    `labelsTr/phantom_000.nii.gz`, `imagesTs/phantom_test_000.nii.gz` and
    `labelsTs/phantom_test_000.nii.gz` (when n_test > 0), and `nodules.json` (every nodule,
    world RAS+ mm; see `generate_case`). Case `i` of a split is generated from
    `case_seed(seed, split=..., index=i)`, so it does not depend on n_cases or n_test.
    dataset.json is written last: a folder without it is incomplete, and `INCOMPLETE_FILE`
    (written before the first case, removed after dataset.json) says so in so many words.

    Args:
        out_dir: dataset folder; created if missing.
        n_cases: number of training cases, >= 1.
        seed: int >= 0.
        size: canonical grid shape (I, J, K); None is (256, 256, 160).
        spacing_mm: canonical voxel size; None draws one per case (see `generate_case`).
        n_test: number of held-out cases with labels, >= 0.
        overwrite: replace an existing phantom dataset in a non-empty out_dir (only
            dataset.json, nodules.json and phantom_*.nii.gz case files are removed).
        progress: called as progress(n_done, n_total) after each case.
        noise_scale, kernel: the scanner setting of every case (see `generate_case`).

    Returns:
        The dataset folder.

    Raises:
        TypeError, ValueError: for bad arguments (named), or a non-empty out_dir without
            overwrite.
    """
    n_cases = check_int(n_cases, name="n_cases", minimum=1)
    n_test = check_int(n_test, name="n_test", minimum=0)
    seed = check_int(seed, name="seed", minimum=0)
    size = _check_size(size)
    spacing = _check_spacing(spacing_mm)
    if spacing is not None:
        _check_fov(size, spacing)
    _check_scanner(noise_scale, kernel)
    if not isinstance(overwrite, bool):
        raise TypeError(f"Expected overwrite to be a bool. Received: overwrite={overwrite!r}")
    if progress is not None and not callable(progress):
        raise TypeError(f"Expected progress to be callable or None. Received: "
                        f"progress={progress!r}")
    out = Path(out_dir)
    _prepare_out_dir(out, overwrite)
    estimate = estimate_dataset_bytes(out, n_cases=n_cases, n_test=n_test, size=size)
    if estimate["bytes"] > estimate["free_bytes"] > 0:
        raise ValueError(
            f"Expected room for the dataset in out_dir={out}. Received: about "
            f"{estimate['bytes'] / 1e9:.3g} GB needed for {n_cases + n_test} case(s) of "
            f"{list(size)} voxels, {estimate['free_bytes'] / 1e9:.3g} GB free")
    out.mkdir(parents=True, exist_ok=True)
    marker = {"status": "incomplete: an interrupted lungseg phantom; rerun it with --overwrite",
              "n_cases": n_cases, "n_test": n_test, "seed": seed, "size": list(size),
              "spacing_mm": None if spacing is None else list(spacing)}
    _atomic_write_bytes(out / INCOMPLETE_FILE, json.dumps(marker, indent=1).encode())
    plan = [("train", i, f"phantom_{i:03d}", "imagesTr", "labelsTr") for i in range(n_cases)]
    plan += [("test", i, f"phantom_test_{i:03d}", "imagesTs", "labelsTs")
             for i in range(n_test)]
    cases, nodules, training, test, test_labels = {}, [], [], [], []
    for done, (split, index, case_id, image_dir, label_dir) in enumerate(plan, start=1):
        this_seed = case_seed(seed, split=split, index=index)
        case = generate_case(seed=this_seed, size=size, spacing_mm=spacing,
                             noise_scale=noise_scale, kernel=kernel)
        image_rel, label_rel = f"{image_dir}/{case_id}.nii.gz", f"{label_dir}/{case_id}.nii.gz"
        write_case(case, out / image_rel, out / label_rel)
        entry = {"image": f"./{image_rel}", "label": f"./{label_rel}"}
        if split == "train":
            training.append(entry)
        else:
            test.append(f"./{image_rel}")
            test_labels.append(entry)
        cases[case_id] = {
            "split": split, "seed": this_seed, "image": image_rel, "label": label_rel,
            "shape": list(case.image_hu.shape), "axcodes": "".join(case.axcodes),
            "spacing_mm": list(case.spacing_mm), "n_nodules": len(case.nodules),
        }
        nodules += [{"case_id": case_id, **record} for record in case.nodules]
        if progress is not None:
            progress(done, len(plan))
    generator = {"generator": "lungseg.segmentation.phantom", "version": GENERATOR_VERSION,
                 "seed": seed, "size": list(size),
                 "spacing_mm": None if spacing is None else list(spacing),
                 "noise_scale": float(noise_scale), "kernel": kernel}
    nodules_doc = {
        "coordinate_system": "RAS+ world mm (NIfTI/nibabel; negate x and y for LPS)",
        "diameter": "equivalent diameter (6 V / pi)^(1/3) of the voxelised mask component",
        **generator, "cases": cases, "nodules": nodules,
    }
    _atomic_write_bytes(out / "nodules.json", json.dumps(nodules_doc, indent=1).encode())
    dataset = {
        "name": "LungsegPhantom",
        "description": "Synthetic chest CT with lung nodules (lungseg phantom)",
        "reference": "lungseg segmentation/phantom.py",
        "licence": "CC0-1.0",
        "release": GENERATOR_VERSION,
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "nodule"},
        "numTraining": n_cases,
        "numTest": n_test,
        "training": training,
        "test": test,
        "test_labels": test_labels,
        "nodules": "nodules.json",
        "lungseg_phantom": generator,
    }
    _atomic_write_bytes(out / "dataset.json", json.dumps(dataset, indent=1).encode())
    (out / INCOMPLETE_FILE).unlink()
    return out
