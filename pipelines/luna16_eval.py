"""LUNA16 commands: ``lungseg evaluate --luna16`` and the candidates of ``lungseg predict``.

``evaluate_luna16`` reads the annotations, optional excluded findings, optional list of
scans and a candidates file, applies the challenge protocol (`segmentation.froc`) scan by
scan and writes, each atomically, ``luna16_froc.json`` (summary) and ``luna16_froc.png``
(the FROC curve with its bootstrap band) into ``--out``.

The scans of the evaluation are those of ``--seriesuids`` when given (the official
denominator: LUNA16's ``seriesuids.csv``, 888 scans); otherwise the union of the scans named
in the annotations, the excluded findings and the candidates (a scan with no nodule, no
excluded finding and no candidate is then missing from the FP-per-scan denominator).
Candidates of a scan outside ``--seriesuids`` are ignored and counted.

``write_candidates`` turns the ``{case}_nodules.json`` files of a predict run into a LUNA16
candidates file: one row per predicted component, its centroid in world coordinates in the
scan's own convention (LPS for MetaImage and DICOM input, as LUNA16 uses; RAS for NIfTI)
and its maximum probability.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segmentation.froc import PLOT_FP_RATES, luna16_froc, match_scan
from segmentation.io import atomic_write
from segmentation.luna16 import (
    candidates_csv_text,
    lps_to_ras,
    read_annotations,
    read_candidates,
    read_seriesuids,
    scans_of,
)

__all__ = ["LUNA16_FILES", "evaluate_luna16", "write_candidates"]

logger = logging.getLogger(__name__)

LUNA16_FILES = ("luna16_froc.json", "luna16_froc.png")
_LPS_KINDS = ("metaimage", "dicom")


def _path(value: Any, *, option: str) -> Path:
    if isinstance(value, (str, os.PathLike)) and not isinstance(value, bytes):
        return Path(value)
    raise TypeError(f"Expected {option} to be a path. Received: {option}={value!r}")


def _plot(path: Path, result: dict) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # heavy (~0.5 s), for plots only
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    curve = result["curve"]
    if curve["low"] is not None:
        axes.fill_between(curve["fp_per_scan"], curve["low"], curve["high"], color="tab:blue",
                          alpha=0.2, label=f"{result['bootstrap']['confidence']:.0%} bootstrap interval")
    axes.plot(curve["fp_per_scan"], curve["sensitivity"], color="tab:blue", label="FROC")
    axes.plot(result["fp_rates"], result["sensitivities"], "o", color="tab:red",
              label="LUNA16 operating points")
    axes.set_xscale("log", base=2)
    axes.set_xlim(PLOT_FP_RATES[0] * 0.9, PLOT_FP_RATES[-1] * 1.1)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("average false positives per scan")
    axes.set_ylabel("sensitivity")
    axes.set_title(f"LUNA16 FROC, CPM = {result['cpm']:.3f} ({result['n_scans']} scans, "
                   f"{result['n_nodules']} nodules)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="lower right")
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))


def evaluate_luna16(*, annotations: str | os.PathLike, candidates: str | os.PathLike,
                    out_dir: str | os.PathLike, excluded: str | os.PathLike | None = None,
                    seriesuids: str | os.PathLike | None = None, n_bootstrap: int = 1000,
                    seed: int = 0, overwrite: bool = False) -> dict:
    """The LUNA16 FROC evaluation of a candidates file (``lungseg evaluate --luna16``).

    Args:
        annotations: ``annotations.csv`` (``seriesuid,coordX,coordY,coordZ,diameter_mm``).
        candidates: Candidates (``seriesuid,coordX,coordY,coordZ,probability``), same
            world convention as the annotations.
        out_dir: Report folder (created).
        excluded: ``annotations_excluded.csv`` (hits on these are ignored), or None.
        seriesuids: File listing the evaluated scans, or None (see the module docstring).
        n_bootstrap: Bootstrap samples over scans for the intervals (0: none).
        seed: Seed of the bootstrap.
        overwrite: Replace an earlier ``luna16_froc.json`` in ``out_dir``.

    Returns:
        The summary written to ``luna16_froc.json``: ``cpm``, ``sensitivity`` (FP rate ->
        value), ``sensitivity_ci95`` / ``cpm_ci95`` (named after the confidence), counts,
        inputs and ``files``.

    Raises:
        segmentation.luna16.Luna16Error: A missing or malformed table (names option, file
            and line).
        ValueError: No nodule in the evaluated scans, an earlier report without
            ``overwrite``, or ``out_dir`` is a file.
    """
    out = _path(out_dir, option="--out")
    if out.exists() and not out.is_dir():
        raise ValueError(f"Expected a report folder for --out. Received: --out='{out}' is a file")
    if (out / LUNA16_FILES[0]).exists() and not overwrite:
        raise ValueError(
            f"Expected a --out folder without an earlier LUNA16 report (pass --overwrite to "
            f"replace it). Received: '{out / LUNA16_FILES[0]}' exists"
        )
    truth = read_annotations(_path(annotations, option="--luna16"), option="--luna16")
    found = read_candidates(_path(candidates, option="--candidates"), option="--candidates")
    ignored = read_annotations(_path(excluded, option="--excluded"), option="--excluded") \
        if excluded is not None else {}
    if seriesuids is not None:
        scans = read_seriesuids(_path(seriesuids, option="--seriesuids"), option="--seriesuids")
    else:
        scans = scans_of(truth, ignored, found)
    unknown = sorted(set(found) - set(scans))
    n_unknown = int(sum(found[uid].shape[0] for uid in unknown))
    if unknown:
        logger.warning("%d candidate(s) of %d scan(s) not in --seriesuids ignored (first: %s)",
                       n_unknown, len(unknown), unknown[0])
    nodules_outside = sorted(set(truth) - set(scans))
    if nodules_outside:
        logger.warning("%d scan(s) of --luna16 not in --seriesuids left out (first: %s)",
                       len(nodules_outside), nodules_outside[0])
    matches = {uid: match_scan(truth.get(uid), found.get(uid), excluded=ignored.get(uid))
               for uid in scans}
    result = luna16_froc(matches, n_bootstrap=n_bootstrap, seed=seed)
    level = f"ci{round(result['bootstrap']['confidence'] * 100):d}"
    rates = [f"{r:g}" for r in result["fp_rates"]]
    summary = {
        "protocol": "LUNA16 FROC (segmentation.froc)",
        "cpm": result["cpm"],
        f"cpm_{level}": result["cpm_ci"],
        "sensitivity": dict(zip(rates, result["sensitivities"])),
        f"sensitivity_{level}": dict(zip(rates, result["sensitivity_ci"]))
        if result["sensitivity_ci"] is not None else None,
        **{k: result[k] for k in ("n_scans", "n_nodules", "n_detected", "n_false_positives",
                                  "n_candidates", "n_ignored", "n_double_hits")},
        "n_candidates_unknown_scan": n_unknown,
        "bootstrap": result["bootstrap"],
        "curve": result["curve"],
        "inputs": {"annotations": str(annotations), "candidates": str(candidates),
                   "excluded": None if excluded is None else str(excluded),
                   "seriesuids": None if seriesuids is None else str(seriesuids),
                   "scans_from": "--seriesuids" if seriesuids is not None else
                   "union of --luna16, --excluded and --candidates"},
        "files": {name: str(out / name) for name in LUNA16_FILES},
    }
    out.mkdir(parents=True, exist_ok=True)
    _plot(out / LUNA16_FILES[1], result)
    blob = json.dumps(summary, indent=2, allow_nan=False) + "\n"
    atomic_write(out / LUNA16_FILES[0], lambda tmp: Path(tmp).write_text(blob))
    return summary


def _candidate_rows(json_path: Path, *, seriesuid: str, lps: bool) -> list[tuple]:
    record = json.loads(json_path.read_text())
    rows = []
    for nodule in record.get("nodules", []):
        centre = np.array([nodule["centroid_x_mm"], nodule["centroid_y_mm"], nodule["centroid_z_mm"]],
                          dtype=np.float64)
        if lps:
            centre = lps_to_ras(centre)  # the sign flip is its own inverse: RAS -> LPS
        rows.append((seriesuid, *centre.tolist(), float(nodule["max_prob"])))
    return rows


def write_candidates(path: str | os.PathLike, cases: Sequence[tuple[str, str, Path]]) -> tuple[Path, int]:
    """Writes the LUNA16 candidates file of a predict run (atomically).

    Args:
        path: Destination CSV (``--luna16-csv``).
        cases: ``(case_id, kind, nodules_json)`` per written case; ``kind`` is the input kind
            of `pipelines.infer.InputCase` (``"metaimage"``/``"dicom"``: LPS, else RAS). The
            case id is the ``seriesuid`` (LUNA16 scans are named ``{seriesuid}.mhd``).

    Returns:
        ``(path, number of rows)``.

    Raises:
        OSError / ValueError: A nodules JSON cannot be read (names it).
    """
    out = _path(path, option="--luna16-csv")
    rows: list[tuple] = []
    for case_id, kind, json_path in cases:
        try:
            rows += _candidate_rows(Path(json_path), seriesuid=case_id, lps=kind in _LPS_KINDS)
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"Expected a readable nodules JSON for case {case_id}. "
                             f"Received: '{json_path}' ({type(err).__name__}: {err})") from err
    text = candidates_csv_text(rows)
    atomic_write(out, lambda tmp: Path(tmp).write_text(text))
    return out, len(rows)
