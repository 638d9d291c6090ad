"""``lungseg study detectability``: a contrast-detail probe of a trained model on real scans.

Paints nodules of known kind, diameter and contrast into the lungs of the given scans
(`segmentation.detectability`), segments the painted scans with the run exactly as
``lungseg predict`` does (`pipelines.infer.predict_volume`: the run's preprocessing,
sliding window, threshold and minimum size), and scores every painted nodule found or
missed. Outputs in ``out_dir`` (each written atomically):

* ``detectability.csv``: one row per planned nodule (`PROBE_COLUMNS`: case, id, kind,
  diameter, contrast, painted, world centre in RAS mm, voxels, parenchyma and nodule mean
  HU, maximum probability, detected).
* ``summary.json``: ``cells`` (kind, diameter_mm, contrast_hu, planned, painted,
  detected, detection_rate, interval_95 (Wilson)), ``by_kind``, ``contrast_50_hu`` (per kind
  and diameter, the lowest contrast from which every cell is detected at least half the
  time), ``planned``/``painted``/``detected``, ``inputs`` and ``options``.
* ``report.md``: a table per kind (diameter x contrast: detected / painted).
* ``detectability.png``: detection rate against contrast, one line per diameter, one panel
  per kind.
* with ``save_scans``: ``scans/{case}_probe.nii.gz`` and ``scans/{case}_probe_labels.nii.gz``
  (the painted scan and its nodules labelled by ``nodule_id``, in the input's grid).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.evaluate_report import _csv_text, _new_figure, _save_figure, _write_text
from pipelines.infer import predict_volume
from pipelines.infer_inputs import InferenceError, _estimator, _read_case, _run_config, find_inputs
from segmentation.console import progress_bar
from segmentation.detectability import (
    PROBE_COLUMNS,
    assign_cells,
    paint_probe_nodules,
    probe_cells,
    score_probe,
    summarise_probe,
)
from segmentation.io import read_volume, write_volume
from segmentation.lungmask import lung_region
from segmentation.plausibility import ScanLimits
from segmentation.preflight import check_output_dir
from segmentation.validation import check_bool, check_int

__all__ = ["DEFAULT_KINDS", "DEFAULT_DIAMETERS_MM", "DEFAULT_CONTRASTS_HU", "probe_detectability"]

logger = logging.getLogger(__name__)

DEFAULT_KINDS = ("solid", "ground_glass")
DEFAULT_DIAMETERS_MM = (4.0, 6.0, 10.0)
DEFAULT_CONTRASTS_HU = (150.0, 250.0, 350.0, 450.0, 600.0, 850.0)


def _labels_for(labels_dir: Path | None, case_id: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """The truth of a case (canonical order) from ``labels_dir/{case_id}.nii[.gz]``, if any."""
    if labels_dir is None:
        return None
    for suffix in (".nii.gz", ".nii"):
        path = labels_dir / f"{case_id}{suffix}"
        if path.exists():
            truth = read_volume(path, kind="mask", binarize=True)
            if truth.array.shape != shape:
                raise InferenceError(
                    f"Expected the label of case '{case_id}' to have its scan's shape {shape}. "
                    f"Received: shape {truth.array.shape} in file '{path}'")
            return truth.array
    logger.warning("case '%s': no label in '%s'; painted nodules avoid nothing", case_id, labels_dir)
    return None


def probe_detectability(*, model_dir: str | os.PathLike, input_path: str | os.PathLike,
                        out_dir: str | os.PathLike, labels_dir: str | os.PathLike | None = None,
                        kinds: Sequence[str] = DEFAULT_KINDS,
                        diameters_mm: Sequence[float] = DEFAULT_DIAMETERS_MM,
                        contrasts_hu: Sequence[float] = DEFAULT_CONTRASTS_HU, per_cell: int = 4,
                        seed: int = 0, gap_mm: float = 10.0, save_scans: bool = False,
                        overwrite: bool = False, limits: ScanLimits | None = None,
                        progress: bool = True, tta: bool | None = None) -> dict[str, Any]:
    """Runs the detectability probe of a trained run on some scans.

    Args:
        model_dir: Run folder (``model.keras`` + ``config.yaml``).
        input_path: NIfTI/MetaImage file, folder of them, or a DICOM series folder: the scans
            the nodules are painted into (scans the model never trained on).
        out_dir: Output folder.
        labels_dir: Optional folder of truth masks named like the scans (``{case}.nii.gz``):
            painted nodules stay ``gap_mm`` away from the lesions already there.
        kinds: Nodule kinds (``solid``, ``part_solid``, ``ground_glass``).
        diameters_mm: Nominal diameters, mm.
        contrasts_hu: Contrasts above the local parenchyma, HU.
        per_cell: Nodules per (kind, diameter, contrast), spread over the scans.
        seed: Seed of the plan, the positions and the shapes.
        gap_mm: Minimum distance between painted nodules and from the truth.
        save_scans: Also write the painted scans and their nodule labels.
        overwrite: Replace an earlier probe in ``out_dir``.
        limits: Plausibility limits of each scan; None: the defaults.
        progress: Show a progress bar over the scans.
        tta: Mirror test-time augmentation; None: the run's ``inference.tta`` (as
            ``lungseg predict``).

    Returns:
        The summary (as written to ``summary.json``) plus ``out_dir``.

    Raises:
        ValueError / TypeError: Bad kinds, diameters, contrasts, ``per_cell`` or ``seed``
            (names the argument).
        InferenceError: Bad run folder or input path; a label whose shape is not its scan's
            (names the file and both shapes); an ``out_dir`` with an earlier probe and no
            ``overwrite``.
    """
    cells = probe_cells(kinds=kinds, diameters_mm=diameters_mm, contrasts_hu=contrasts_hu)
    per_cell = check_int(per_cell, name="per_cell", minimum=1)
    seed = check_int(seed, name="seed", minimum=0)
    tta = None if tta is None else check_bool(tta, name="tta")
    out = Path(out_dir)
    check_output_dir(out, option="out_dir", inputs=[("input_path", input_path), ("model_dir", model_dir)])
    if (out / "summary.json").exists() and not overwrite:
        raise InferenceError("Expected an out_dir without an earlier probe (pass overwrite=True to "
                             f"replace it). Received: out_dir='{out}' holds summary.json")
    labels = None if labels_dir is None else Path(labels_dir)
    if labels is not None and not labels.is_dir():
        raise InferenceError(f"Expected labels_dir to be a folder of masks. Received: labels_dir='{labels}'")
    run = Path(model_dir)
    config = _run_config(run)
    if tta is not None:
        config = dataclasses.replace(
            config, inference=dataclasses.replace(config.inference, tta=tta))
    cases = find_inputs(input_path)
    limits = ScanLimits() if limits is None else limits
    estimate = _estimator(config, tta=config.inference.tta)

    from pipelines.infer_inputs import _load_model  # TensorFlow: only after the checks
    from pipelines.predictor import make_predict_fn

    model = _load_model(run, config)
    predict_fn = make_predict_fn(model, batch_size=config.inference.batch_size)
    plan = assign_cells(cells, per_cell=per_cell, n_scans=len(cases), rng=np.random.default_rng(seed))
    rows: list[dict] = []
    for index, case in enumerate(progress_bar(cases, enabled=progress, desc="probe", unit="scan")):
        volume = _read_case(case, limits=limits, estimate=estimate)
        truth = _labels_for(labels, case.case_id, volume.array.shape)
        lung = lung_region(volume.array, spacing_mm=volume.spacing_mm)
        painted, nodules, case_rows = paint_probe_nodules(
            volume.array, lung=lung, avoid=truth, spacing_mm=volume.spacing_mm, affine=volume.affine,
            cells=plan[index], rng=np.random.default_rng([seed, index]), case_id=case.case_id, gap_mm=gap_mm)
        probe_volume = dataclasses.replace(volume, array=painted)
        probs, mask = predict_volume(model, config, probe_volume, predict_fn=predict_fn)
        nodules_source = probe_volume.to_source(nodules)
        case_rows = score_probe(case_rows, labels=nodules_source, mask=mask, probs=probs)
        if save_scans:
            write_volume(out / "scans" / f"{case.case_id}_probe.nii.gz", painted, reference=volume, kind="image")
            write_volume(out / "scans" / f"{case.case_id}_probe_labels.nii.gz", nodules_source,
                         reference=volume, kind="image", space="source", dtype=np.int16)
        found = sum(bool(r.get("detected")) for r in case_rows)
        logger.info("%s: %d of %d painted nodules found (%d planned)", case.case_id, found,
                    sum(bool(r["painted"]) for r in case_rows), len(case_rows))
        rows.extend(case_rows)

    summary = summarise_probe(rows, cells=cells)
    summary["inputs"] = {"model_dir": str(run), "input": str(input_path),
                         "labels_dir": None if labels is None else str(labels), "n_scans": len(cases)}
    summary["options"] = {"kinds": [c for c in dict.fromkeys(c.kind for c in cells)],
                          "diameters_mm": sorted({c.diameter_mm for c in cells}),
                          "contrasts_hu": sorted({c.contrast_hu for c in cells}),
                          "per_cell": per_cell, "seed": seed, "gap_mm": gap_mm,
                          "threshold": config.inference.threshold,
                          "min_size_mm3": config.inference.min_size_mm3, "tta": config.inference.tta}
    out.mkdir(parents=True, exist_ok=True)
    _write_text(out / "detectability.csv",
                _csv_text(PROBE_COLUMNS, [[r.get(c) for c in PROBE_COLUMNS] for r in rows]))
    _write_text(out / "report.md", _report_md(summary))
    _plot(out / "detectability.png", summary)
    _write_text(out / "summary.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return {**summary, "out_dir": str(out)}


def _rate_text(cell: dict) -> str:
    if not cell["painted"]:
        return "not placed"
    return f"{cell['detected']}/{cell['painted']}"


def _report_md(summary: dict) -> str:
    options, inputs = summary["options"], summary["inputs"]
    lines = [
        "# Detectability probe", "",
        f"Model `{inputs['model_dir']}` on {inputs['n_scans']} scan(s) of `{inputs['input']}`: "
        f"{summary['painted']} of {summary['planned']} planned nodules painted, "
        f"{summary['detected']} detected (threshold {options['threshold']}, min size "
        f"{options['min_size_mm3']} mm3, seed {options['seed']}).", "",
        "Each nodule is an ellipsoid painted into parenchyma away from vessels, the chest wall, "
        "the scan's own lesions and the other painted nodules; contrast is above the local "
        "parenchyma (added for ground glass). Cells: detected / painted.", "",
    ]
    for kind, totals in summary["by_kind"].items():
        rate = totals["detection_rate"]
        lines += [f"## {kind}: {totals['detected']}/{totals['painted']}"
                  + ("" if rate is None else f" ({rate:.2f})"), ""]
        cells = [c for c in summary["cells"] if c["kind"] == kind]
        contrasts = list(dict.fromkeys(c["contrast_hu"] for c in cells))
        lines.append("| diameter (mm) | " + " | ".join(f"+{c:g} HU" for c in contrasts)
                     + " | lowest contrast seen >= 50 % |")
        lines.append("|---" * (len(contrasts) + 2) + "|")
        for diameter in dict.fromkeys(c["diameter_mm"] for c in cells):
            row = [_rate_text(c) for c in cells if c["diameter_mm"] == diameter]
            c50 = summary["contrast_50_hu"][kind][str(diameter)]
            lines.append(f"| {diameter:g} | " + " | ".join(row) + f" | {'none' if c50 is None else f'+{c50:g} HU'} |")
        lines.append("")
    return "\n".join(lines)


def _plot(path: Path, summary: dict) -> None:
    figure, first = _new_figure()
    kinds = list(summary["by_kind"])
    figure.set_size_inches(5 * len(kinds), 4)
    figure.delaxes(first)
    for i, kind in enumerate(kinds):
        axes = figure.add_subplot(1, len(kinds), i + 1)
        cells = [c for c in summary["cells"] if c["kind"] == kind]
        for diameter in dict.fromkeys(c["diameter_mm"] for c in cells):
            curve = [c for c in cells if c["diameter_mm"] == diameter and c["painted"]]
            axes.plot([c["contrast_hu"] for c in curve], [c["detection_rate"] for c in curve], "o-",
                      label=f"{diameter:g} mm")
        axes.set_ylim(-0.02, 1.02)
        axes.set_xlabel("contrast above parenchyma (HU)")
        axes.set_ylabel("detection rate")
        axes.set_title(kind)
        axes.grid(True, alpha=0.3)
        axes.legend(loc="lower right")
    figure.tight_layout()
    _save_figure(figure, path)
