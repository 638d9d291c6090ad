"""``lungseg import luna16`` and ``lungseg import lidc``: public datasets to an MSD dataset.

Both commands write the layout that `segmentation.dataset.discover_cases` reads (MSD, as
``lungseg phantom`` writes it): ``imagesTr/{case}.nii.gz`` (CT, int16 Hounsfield units when
the values allow it, else float32) and ``labelsTr/{case}.nii.gz`` (uint8 {0, 1}), each with
the scan's exact geometry (the source affine of the MetaImage or DICOM series, RAS), plus
``nodules.csv``, ``README.md``, ``import_report.json`` and, written last, ``dataset.json``:
a folder without ``dataset.json`` is incomplete. A folder that already holds a
``dataset.json`` is refused unless ``overwrite``.

Scans are converted in parallel (``workers`` processes; 1 runs in this process), with a
tqdm bar when stderr is a terminal. A scan that fails is reported (``lines``, ``skipped``)
and leaves no file; the others are written.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from segmentation.console import is_terminal
from segmentation.dicom import read_dicom_series
from segmentation.io import Volume, atomic_write, write_volume
from segmentation.lidc import NODULE_COLUMNS, POINT_COLUMNS, build_case, parse_lidc_xml
from segmentation.lidc_tree import find_lidc_series, slice_index
from segmentation.luna16 import ras_nodules, read_annotations, sphere_mask
from segmentation.metaimage import read_metaimage
from segmentation.validation import check_float, check_int

__all__ = ["LUNA16_NODULE_COLUMNS", "import_lidc", "import_luna16", "write_case"]

logger = logging.getLogger(__name__)

_INT16 = np.iinfo(np.int16)
LUNA16_NODULE_COLUMNS = ("case_id", "nodule_id", "centre_x_mm", "centre_y_mm", "centre_z_mm",
                         "diameter_mm", "n_voxels")


# --------------------------------------------------------------------------------------------
# Shared machinery
# --------------------------------------------------------------------------------------------


def _path(value: Any, *, option: str) -> Path:
    if isinstance(value, (str, os.PathLike)) and not isinstance(value, bytes):
        return Path(value)
    raise TypeError(f"Expected {option} to be a path. Received: {option}={value!r}")


def _check_workers(workers: Any) -> int:
    if workers is None:
        return max(1, min(4, os.cpu_count() or 1))
    return check_int(workers, name="--workers", minimum=1)


def _prepare_out(out: Path, *, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"Expected a dataset folder for --out. Received: --out='{out}' is a file")
    if (out / "dataset.json").exists():
        if not overwrite:
            raise ValueError(
                f"Expected a --out folder without a dataset (pass --overwrite to replace it). "
                f"Received: '{out / 'dataset.json'}' exists"
            )
        (out / "dataset.json").unlink()  # incomplete until rewritten
    out.mkdir(parents=True, exist_ok=True)


def _image_dtype(array: np.ndarray) -> type:
    integral = bool(np.all(array == np.round(array)))
    in_range = array.size == 0 or (array.min() >= _INT16.min and array.max() <= _INT16.max)
    return np.int16 if integral and in_range else np.float32


def write_case(volume: Volume, mask_source: np.ndarray | None, *, image_path: Path,
               label_path: Path | None) -> None:
    """Writes one CT (and its label) with the volume's exact geometry; all or nothing.

    Args:
        volume: The CT as read (its source affine and voxel order are kept on disk).
        mask_source: uint8 ``volume.source_shape`` label in source order, or None.
        image_path: ``imagesTr/{case}.nii.gz`` (or ``imagesTs``).
        label_path: ``labelsTr/{case}.nii.gz``, or None when there is no label.
    """
    written: list[Path] = []
    try:
        source = volume.to_source(volume.array)
        written.append(write_volume(image_path, source, reference=volume, kind="image",
                                    space="source", dtype=_image_dtype(source)))
        if label_path is not None and mask_source is not None:
            written.append(write_volume(label_path, mask_source, reference=volume, kind="mask",
                                        space="source"))
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def _run_all(function: Callable[..., dict], tasks: Sequence[dict], *, workers: int,
             desc: str) -> list[dict]:
    """Runs ``function(**task)`` for every task; a failure becomes ``{"error": ...}``."""
    results: list[dict] = []
    bar = tqdm(total=len(tasks), desc=desc, unit="scan", disable=not is_terminal(sys.stderr))
    try:
        if workers == 1:
            for task in tasks:
                results.append(_guarded(function, task))
                bar.update(1)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = {pool.submit(_guarded, function, task): task for task in tasks}
                for future in as_completed(futures):
                    try:
                        results.append(future.result())
                    except Exception as err:  # a worker process died (memory, signal)
                        task = futures[future]
                        results.append({"case_id": task["case_id"], "source": str(task["source"]),
                                        "error": f"{type(err).__name__}: {err}"})
                    bar.update(1)
    finally:
        bar.close()
    return sorted(results, key=lambda r: r["case_id"])


def _guarded(function: Callable[..., dict], task: dict) -> dict:
    try:
        return function(**task)
    except Exception as err:
        logger.warning("Import of %s failed: %s", task["source"], err)
        return {"case_id": task["case_id"], "source": str(task["source"]),
                "error": f"{type(err).__name__}: {err}"}


def _csv_text(columns: Sequence[str], rows: Sequence[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buffer.getvalue()


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _finish(out: Path, *, name: str, description: str, results: list[dict], labelled: bool,
            tables: dict[str, str], readme: str, report: dict) -> dict:
    """Writes the tables, README.md, import_report.json and dataset.json (last)."""
    done = [r for r in results if "error" not in r]
    for file_name, text in tables.items():
        _write_text(out / file_name, text)
    _write_text(out / "README.md", readme)
    _write_text(out / "import_report.json", json.dumps(report, indent=2, default=str) + "\n")
    folder = "imagesTr" if labelled else "imagesTs"
    entries = [{"image": f"./{folder}/{r['case_id']}.nii.gz",
                "label": f"./labelsTr/{r['case_id']}.nii.gz"} for r in done]
    dataset = {
        "name": name, "description": description, "tensorImageSize": "3D",
        "modality": {"0": "CT"}, "labels": {"0": "background", "1": "nodule"},
        "numTraining": len(done) if labelled else 0, "numTest": 0 if labelled else len(done),
        "training": entries if labelled else [],
        "test": [] if labelled else [e["image"] for e in entries],
        "nodules": "nodules.csv",
    }
    _write_text(out / "dataset.json", json.dumps(dataset, indent=1) + "\n")
    return dataset


def _summary(out: Path, results: list[dict], lines: list[str], extra: dict) -> dict:
    failed = [r for r in results if "error" in r]
    for r in failed:
        lines.append(f"FAILED {r['case_id']} ({r['source']}): {r['error']}")
    lines.append(f"{len(results) - len(failed)} scan(s) written, {len(failed)} failed; "
                 f"dataset in {out}")
    return {"out_dir": str(out), "written": [r["case_id"] for r in results if "error" not in r],
            "failed": [{k: r[k] for k in ("case_id", "source", "error")} for r in failed],
            "lines": lines, **extra}


# --------------------------------------------------------------------------------------------
# LUNA16
# --------------------------------------------------------------------------------------------

_LUNA16_README = """# LUNA16 imported by lungseg

Source: the LUNA16 scans (MetaImage `.mhd`/`.raw`, {n_scans} scan(s) written) and
`{annotations}`. Written by `lungseg import luna16`.

- `imagesTr/` (or `imagesTs/` with `--mask none`): the CT as NIfTI with the scan's exact
  geometry (MetaImage origin, spacing and direction, converted from ITK's LPS to NIfTI's RAS).
- `labelsTr/`: {mask_text}
- `nodules.csv`: one row per annotation of a written scan: centre in **RAS** world mm
  (LUNA16's `coordX`, `coordY` negated; `coordZ` kept), `diameter_mm` as annotated, and the
  number of voxels of its sphere (`n_voxels`; 0 when the centre lies outside the scan).
- `import_report.json`: skipped annotations (scan not found) and failed scans.
"""


def _luna16_case(*, case_id: str, source: Path, nodules_ras: np.ndarray, out: str,
                 sphere: bool) -> dict:
    volume = read_metaimage(source)
    out_dir = Path(out)
    rows, mask = [], None
    if sphere:
        mask = np.zeros(volume.source_shape, dtype=np.uint8)
    for number, nodule in enumerate(nodules_ras, start=1):
        n_voxels = 0
        if sphere:
            one = sphere_mask(volume.source_shape, volume.source_affine, nodule[None, :])
            n_voxels = int(one.sum())
            mask |= one
        rows.append({"case_id": case_id, "nodule_id": number,
                     **{f"centre_{a}_mm": round(float(v), 4) for a, v in zip("xyz", nodule[:3])},
                     "diameter_mm": float(nodule[3]), "n_voxels": n_voxels if sphere else None})
    folder = "imagesTr" if sphere else "imagesTs"
    write_case(volume, mask, image_path=out_dir / folder / f"{case_id}.nii.gz",
               label_path=out_dir / "labelsTr" / f"{case_id}.nii.gz" if sphere else None)
    return {"case_id": case_id, "source": str(source), "nodules": rows}


def _find_mhd(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name.lower().endswith(".mhd") and not path.name.startswith("."):
            case_id = path.name[:-4]
            if case_id in found:
                raise ValueError(
                    f"Expected one .mhd file per seriesuid under --input '{root}'. Received: "
                    f"'{found[case_id]}' and '{path}'"
                )
            found[case_id] = path
    return found


def import_luna16(*, input_dir: str | os.PathLike, annotations: str | os.PathLike,
                  out_dir: str | os.PathLike, mask: str = "sphere", workers: int | None = None,
                  overwrite: bool = False) -> dict:
    """Converts LUNA16 scans to an MSD dataset (``lungseg import luna16``).

    Args:
        input_dir: LUNA16 root; every ``{seriesuid}.mhd`` below it (``subset0`` ...
            ``subset9``) is a scan.
        annotations: ``annotations.csv`` (``seriesuid,coordX,coordY,coordZ,diameter_mm``).
        out_dir: Dataset folder (``--out``).
        mask: ``"sphere"``: ``labelsTr`` with a ball of each annotation's diameter (an
            approximation of the nodule; stated in the dataset's README); ``"none"``: CT
            only, in ``imagesTs`` (for ``lungseg predict`` + ``evaluate --luna16``).
        workers: Parallel processes (default: up to 4).
        overwrite: Replace a dataset already in ``out_dir``.

    Returns:
        ``{"out_dir", "written", "failed", "skipped_annotations", "lines"}``.

    Raises:
        ValueError: Bad option, no scan found, duplicate seriesuid, an existing dataset
            without ``overwrite``; `segmentation.luna16.Luna16Error` for a bad annotations file.
    """
    if mask not in ("sphere", "none"):
        raise ValueError(f"Expected --mask to be 'sphere' or 'none'. Received: --mask={mask!r}")
    workers = _check_workers(workers)
    root = _path(input_dir, option="--input")
    if not root.is_dir():
        raise ValueError(f"Expected the LUNA16 folder for --input. Received: --input='{root}' (not a folder)")
    table = read_annotations(_path(annotations, option="--annotations"), option="--annotations")
    scans = _find_mhd(root)
    if not scans:
        raise ValueError(f"Expected .mhd scans under --input '{root}'. Received: none")
    out = _path(out_dir, option="--out")
    _prepare_out(out, overwrite=overwrite)
    lines, skipped = [], []
    for uid in sorted(set(table) - set(scans)):
        skipped.append({"seriesuid": uid, "n_annotations": int(table[uid].shape[0]),
                        "reason": f"no scan {uid}.mhd under --input '{root}'"})
        lines.append(f"skipped {table[uid].shape[0]} annotation(s) of {uid}: no scan {uid}.mhd "
                     f"under {root} (file --annotations '{annotations}')")
    tasks = [{"case_id": uid, "source": path, "out": str(out), "sphere": mask == "sphere",
              "nodules_ras": ras_nodules(table.get(uid, np.zeros((0, 4))))}
             for uid, path in sorted(scans.items())]
    results = _run_all(_luna16_case, tasks, workers=workers, desc="import luna16")
    rows = [row for r in results if "error" not in r for row in r["nodules"]]
    for row in rows:
        if row["n_voxels"] == 0:
            lines.append(f"note: annotation {row['nodule_id']} of {row['case_id']} marks no voxel "
                         "(centre outside the scan)")
    mask_text = ("a ball of each annotation's `diameter_mm` around its centre (voxels whose "
                 "centre lies within the radius). **This is an approximation**: LUNA16 gives a "
                 "centre and a diameter, not an outline." if mask == "sphere"
                 else "none (`--mask none`).")
    written = sum("error" not in r for r in results)
    readme = _LUNA16_README.format(n_scans=written, annotations=Path(annotations).name,
                                   mask_text=mask_text)
    report = {"command": "lungseg import luna16", "input": str(root), "annotations": str(annotations),
              "mask": mask, "skipped_annotations": skipped,
              "failed": [r for r in results if "error" in r]}
    _finish(out, name="LUNA16", description="LUNA16 scans imported by lungseg", results=results,
            labelled=mask == "sphere", tables={"nodules.csv": _csv_text(LUNA16_NODULE_COLUMNS, rows)},
            readme=readme, report=report)
    return _summary(out, results, lines, {"skipped_annotations": skipped})


# --------------------------------------------------------------------------------------------
# LIDC-IDRI
# --------------------------------------------------------------------------------------------

_LIDC_README = """# LIDC-IDRI imported by lungseg

Written by `lungseg import lidc` from {n_scans} CT series (DICOM) and their reader XML files.

- `imagesTr/`: the CT as NIfTI with the series' exact geometry (DICOM LPS converted to RAS).
- `labelsTr/`: the voxels marked by at least {consensus} of the readers who marked each
  nodule (nodules marked by at least {min_readers} reader(s)). Each reader's contour is
  filled on the slice it names, boundary pixels included; `inclusion=FALSE` contours cut
  holes. Readers' marks are grouped into nodules by overlap, else by centroid distance.
- `nodules.csv`: one row per grouped nodule: centre of its consensus mask in RAS mm,
  equivalent diameter and volume of the consensus mask, readers, `in_mask`, and the median
  of each reader characteristic (LIDC scales).
- `small_and_non_nodules.csv`: nodules < 3 mm and non-nodules (single points): never in
  the mask.
- `import_report.json`: skipped XML files and series, and failed series with the reason.
"""


def _lidc_case(*, case_id: str, source: Path, xml: Path, out: str, consensus: float,
               min_readers: int) -> dict:
    reading = parse_lidc_xml(xml)
    volume = read_dicom_series(source)
    index = slice_index(source, affine=volume.source_affine, shape=volume.source_shape)
    case = build_case(reading, index, shape=volume.source_shape, affine=volume.source_affine,
                      case_id=case_id, consensus=consensus, min_readers=min_readers)
    out_dir = Path(out)
    write_case(volume, case["mask"], image_path=out_dir / "imagesTr" / f"{case_id}.nii.gz",
               label_path=out_dir / "labelsTr" / f"{case_id}.nii.gz")
    return {"case_id": case_id, "source": str(source), "xml": str(xml),
            "nodules": case["nodules"], "points": case["points"]}


def import_lidc(*, input_dir: str | os.PathLike, out_dir: str | os.PathLike,
                consensus: float = 0.5, min_readers: int = 1, cases: Sequence[str] | None = None,
                workers: int | None = None, overwrite: bool = False) -> dict:
    """Converts LIDC-IDRI CT series and reader XML to an MSD dataset (``lungseg import lidc``).

    Args:
        input_dir: TCIA ``LIDC-IDRI`` folder (``--input``).
        out_dir: Dataset folder (``--out``).
        consensus: Fraction of a nodule's readers that must mark a voxel, in (0, 1].
        min_readers: Nodules marked by fewer readers stay out of the mask.
        cases: Only these case ids, PatientIDs or SeriesInstanceUIDs (``--cases``).
        workers: Parallel processes (default: up to 4).
        overwrite: Replace a dataset already in ``out_dir``.

    Returns:
        ``{"out_dir", "written", "failed", "notes", "lines"}``.

    Raises:
        ValueError: Bad option, nothing to import, an existing dataset without ``overwrite``.
    """
    check_float(consensus, name="--consensus", minimum=0.0, maximum=1.0, low_open=True)
    min_readers = check_int(min_readers, name="--min-readers", minimum=1)
    workers = _check_workers(workers)
    root = _path(input_dir, option="--input")
    series, notes = find_lidc_series(root, cases=cases)
    out = _path(out_dir, option="--out")
    _prepare_out(out, overwrite=overwrite)
    tasks = [{"case_id": s.case_id, "source": s.folder, "xml": s.xml, "out": str(out),
              "consensus": float(consensus), "min_readers": min_readers} for s in series]
    results = _run_all(_lidc_case, tasks, workers=workers, desc="import lidc")
    done = [r for r in results if "error" not in r]
    readme = _LIDC_README.format(n_scans=len(done), consensus=consensus, min_readers=min_readers)
    report = {"command": "lungseg import lidc", "input": str(root), "consensus": consensus,
              "min_readers": min_readers, "notes": notes,
              "failed": [r for r in results if "error" in r]}
    tables = {"nodules.csv": _csv_text(NODULE_COLUMNS, [row for r in done for row in r["nodules"]]),
              "small_and_non_nodules.csv": _csv_text(POINT_COLUMNS, [row for r in done for row in r["points"]])}
    _finish(out, name="LIDC-IDRI", description="LIDC-IDRI CT with reader consensus masks (lungseg)",
            results=results, labelled=True, tables=tables, readme=readme, report=report)
    return _summary(out, results, list(notes), {"notes": notes})
