"""``lungseg study losses``: one model per loss and seed, everything else identical.

For each loss and seed index ``k`` the study trains `pipelines.train.train` with the same
config except ``loss`` and ``train.seed = seed + k`` (the sampler, augmentation and weight
initialisation seed, so seed index ``k`` sees the same patch stream under every loss). The data
split (``data.split_seed``), the preprocessed cache (``data.cache_dir = OUT/cache``, shared, so
preprocessing runs once), the budget (``train.epochs``, ``train.steps_per_epoch``; early stopping
is switched off so that every run gets the whole budget) and the validation schedule are the
same for every run.

Each run's best model (``model.keras``, chosen on validation by ``train.best_metric``) predicts
the held-out scans with `pipelines.infer.predict` and is scored with
`pipelines.evaluate.evaluate` (the code of ``lungseg evaluate``, with the config's
``evaluation`` settings). Held-out scans: the dataset's labelled test split (e.g. the phantom's
imagesTs/labelsTs), else the validation split (then say so: the best epoch was chosen on them).

Output folder::

    OUT/study.csv               one row per loss and seed
    OUT/study.md                means with 95% intervals, changes against BCE, the article's claims
    OUT/convergence.png         validation IoU against epoch, mean over seeds, one line per loss
    OUT/small_lesion_recall.png held-out lesion recall per size bin and loss (mean over seeds)
    OUT/cache/                  preprocessed cases, shared by all runs
    OUT/heldout/labels/         links to the held-out labels (the truth folder of evaluate)
    OUT/runs/{loss}_seed{k}/    run folders; heldout_pred/ (masks and probabilities), heldout_eval/ inside

Resume: a run whose ``summary.json`` says it completed is kept as it is (after checking that
its ``config.yaml`` is the one the study asks for); a run folder with anything else in it is
resumed (``train(resume=True)``: from its last checkpoint, or from the start when it has
none). Held-out predictions already written are not redone, and a held-out report newer than
the run's model is reused.

Convergence: from each run's ``history.csv`` (``val_iou_mean`` per validated epoch,
``wall_time_s``), the first validated epoch (and its cumulative wall time) at which the
validation IoU reaches ``target_iou``; default 0.8 x the mean over the BCE runs of their best
validation IoU (over the first loss's runs when BCE is not studied). "not reached" is a value.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import json
import logging
import multiprocessing
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.study_report import (  # noqa: F401  (CLAIMS, NOT_REACHED and the statistics: re-exported)
    _CONVERGENCE_FRACTION,
    CLAIMS,
    NOT_REACHED,
    _aggregate,
    _claims,
    _command,
    _csv_text,
    _plot_convergence,
    _plot_small_lesion_recall,
    _read_history,
    _read_json,
    _run_row,
    _study_md,
    _table,
    _write_text,
    convergence,
    interval,
    judge_claim,
    validation_curve,
)
from segmentation.validation import check_int

__all__ = [
    "LOSS_CONFIGS",
    "STUDY_COLUMNS",
    "CLAIMS",
    "study_losses",
    "run_config",
    "study_loss",
    "validation_curve",
    "convergence",
    "interval",
    "judge_claim",
]

logger = logging.getLogger(__name__)

LOSS_CONFIGS: dict[str, dict] = {
    "bce": {"name": "bce"},
    "dice": {"name": "dice"},
    "hybrid": {"name": "hybrid"},  # 0.5 BCE + 0.5 Dice (losses.get_loss default components)
    "focal": {"name": "focal"},
    "tversky": {"name": "tversky"},
    "focal_tversky": {"name": "focal_tversky"},
}
"""Loss config of each study name (through `losses.get_loss`)."""

STUDY_COLUMNS = (
    "loss", "seed_index", "train_seed", "iou", "dice", "lesion_recall", "small_lesion_recall",
    "fp_per_scan", "cpm", "epochs_to_target", "wall_time_to_target_s", "best_epoch",
    "best_val_iou", "epochs_completed", "wall_time_s", "n_heldout", "heldout_split", "status",
    "run_dir",
)
"""Leading columns of ``study.csv`` (``recall_<bin>`` columns per size bin follow)."""

# --------------------------------------------------------------------------- arguments


def _check_losses(losses: Any) -> list[str]:
    if isinstance(losses, str):
        losses = [name.strip() for name in losses.split(",") if name.strip()]
    try:
        names = [str(name) for name in losses]
    except TypeError:
        raise TypeError(f"Expected losses to be a list of loss names. Received: losses={losses!r}") from None
    if not names:
        raise ValueError(f"Expected at least one loss name in {tuple(LOSS_CONFIGS)}. Received: losses=[]")
    unknown = [name for name in names if name not in LOSS_CONFIGS]
    if unknown:
        raise ValueError(
            f"Expected loss names in {tuple(LOSS_CONFIGS)}. Received: losses={names} "
            f"(unknown: {', '.join(unknown)})"
        )
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"Expected each loss once. Received: losses={names} (repeated: {', '.join(duplicates)})")
    return names


def _check_target(target_iou: Any) -> float | None:
    if target_iou is None:
        return None
    if isinstance(target_iou, bool) or not isinstance(target_iou, (int, float)) or not 0.0 < target_iou <= 1.0:
        raise ValueError(f"Expected target_iou in (0, 1]. Received: target_iou={target_iou!r}")
    return float(target_iou)


# --------------------------------------------------------------------------- configs


def _base_config(config_path: Path, overrides: Sequence[str], *, epochs: int | None, cache_dir: Path):
    """The study's shared config: shared cache, the budget, no early stopping."""
    from segmentation.config import load_config

    config = load_config(config_path, overrides=overrides)
    train = dataclasses.replace(config.train, early_stopping_patience=0,
                                epochs=config.train.epochs if epochs is None else epochs)
    data = dataclasses.replace(config.data, cache_dir=str(cache_dir.resolve()))
    return dataclasses.replace(config, train=train, data=data)


def study_loss(base_loss: dict, name: str) -> dict:
    """The loss of study arm ``name``, built from the config's own loss settings.

    ``hybrid`` is the config's loss when that is a hybrid; a single loss is the config's loss
    of that name, or the hybrid's component of that name without its weights (so
    ``cpu.yaml``'s ``dice`` arm keeps ``skip_empty: true``, and ``--set loss...`` reaches every
    arm); a loss the config does not name is `LOSS_CONFIGS`'s default.

    Args:
        base_loss: The config's ``loss`` section.
        name: A name of `LOSS_CONFIGS`.

    Returns:
        A loss config for `losses.get_loss`.
    """
    base = dict(base_loss)
    if base.get("name") == name:
        return base
    components = base.get("components") or [] if base.get("name") == "hybrid" else []
    for component in components:
        spec = {"name": component} if isinstance(component, str) else dict(component)
        if spec.get("name") == name:
            spec.pop("weight", None)
            spec.pop("final_weight", None)
            return spec
    return dict(LOSS_CONFIGS[name])


def run_config(base, *, loss: str, seed_index: int):
    """The config of one run: ``base`` with the arm's loss (`study_loss`) and
    ``train.seed + seed_index``.

    Args:
        base: The study's shared `segmentation.config.Config`.
        loss: A name of `LOSS_CONFIGS`.
        seed_index: 0, 1, ... (the same index gives the same patch stream and initial weights).

    Returns:
        A new Config.
    """
    name = _check_losses([loss])[0]
    train = dataclasses.replace(base.train, seed=base.train.seed + int(seed_index))
    return dataclasses.replace(base, loss=study_loss(base.loss, name), train=train)


def _comparable(config) -> dict:
    from segmentation.config import config_to_dict

    data = config_to_dict(config)
    data["preprocess"].pop("ct_stats", None)
    return data


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            out += _differences(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {b!r} (run) vs {a!r} (study)"]


# --------------------------------------------------------------------------- held-out data


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists() or dst.is_symlink():
        if dst.resolve() == src.resolve():
            return
        dst.unlink()
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(src.resolve(), dst)
    except OSError:
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def _nifti_suffix(path: Path) -> str:
    return ".nii.gz" if path.name.lower().endswith(".nii.gz") else ".nii"


def _heldout_cases(data_dir: Path, base) -> tuple[list, str]:
    """Labelled test cases, else the validation split of ``base`` (same split as training)."""
    from segmentation.dataset import discover_cases, kfold_split, split_cases

    try:
        test = [c for c in discover_cases(data_dir, split="test") if c.label is not None]
    except (ValueError, FileNotFoundError):
        test = []
    if test:
        return test, "test"
    cases = discover_cases(data_dir, split="train")
    if base.data.n_folds >= 2:
        _, val = kfold_split(cases, n_folds=base.data.n_folds, fold=base.data.fold,
                             seed=base.data.split_seed)
    else:
        _, val = split_cases(cases, val_fraction=base.data.val_fraction, seed=base.data.split_seed)
    return val, "validation"


def _prepare_heldout(cases: list, folder: Path) -> tuple[Path, Path]:
    """Links held-out images and labels as ``images/{name}`` and ``labels/{case}.nii[.gz]``."""
    images, labels = folder / "images", folder / "labels"
    for case in cases:
        _link_or_copy(Path(case.image), images / Path(case.image).name)
        _link_or_copy(Path(case.label), labels / f"{case.case_id}{_nifti_suffix(Path(case.label))}")
    return images, labels


# --------------------------------------------------------------------------- one run


def _run_finished(run_dir: Path) -> bool:
    summary = _read_json(run_dir / "summary.json")
    return bool(summary) and summary.get("status") in ("completed", "stopped_early") and (
        run_dir / "model.keras").exists()


def _check_finished_run(run_dir: Path, config) -> None:
    from segmentation.runfolder import load_run_config

    saved = load_run_config(run_dir)
    diffs = _differences(_comparable(config), _comparable(saved))
    if diffs:
        raise ValueError(
            f"Expected the finished run {run_dir} to have the study's config. Received differences: "
            + "; ".join(diffs[:6]) + ". Use another --out for a study with other settings"
        )


def _train_run(config, *, data_dir: Path, run_dir: Path, progress: bool) -> str:
    """Trains, resumes or keeps one run; returns ``kept``, ``resumed`` or ``trained``."""
    from pipelines.train import train

    if _run_finished(run_dir):
        _check_finished_run(run_dir, config)
        return "kept"
    resume = run_dir.is_dir() and any(run_dir.iterdir())
    train(config, data_dir=data_dir, out_dir=run_dir, resume=resume, progress=progress,
          command_line=["lungseg", "study", "losses", f"--out={run_dir.parent.parent}"])
    return "resumed" if resume else "trained"


def _evaluate_run(config, *, run_dir: Path, images: Path, labels: Path, progress: bool) -> dict:
    """Held-out predictions (kept when present) and the ``lungseg evaluate`` summary."""
    from pipelines.evaluate import evaluate
    from pipelines.infer import predict

    report = run_dir / "heldout_eval"
    model_path = run_dir / "model.keras"
    summary_path = report / "summary.json"
    if summary_path.exists() and summary_path.stat().st_mtime >= model_path.stat().st_mtime:
        summary = _read_json(summary_path)
        if summary is not None:
            return summary
    pred_dir = run_dir / "heldout_pred"
    result = predict(model_dir=run_dir, input_path=images, out_dir=pred_dir, write_probs=True,
                     overwrite=False, progress=progress)
    if result.get("failed"):
        lines = "; ".join(str(line) for line in result.get("lines", [])[-3:])
        raise RuntimeError(f"Expected every held-out scan of {run_dir} to be predicted. Received: {lines}")
    ev = config.evaluation
    # The predict folder holds the masks and their probability maps (FROC/CPM) side by side.
    return evaluate(pred_dir=pred_dir, truth_dir=labels, probs_dir=pred_dir, out_dir=report,
                    overwrite=True, connectivity=ev.connectivity, match=ev.match,
                    iou_threshold=ev.iou_threshold, small_lesion_mm=ev.small_lesion_mm,
                    size_bins_mm=tuple(ev.size_bins_mm), tolerance_mm=ev.tolerance_mm)


def _run_job(job: dict) -> dict:
    """Trains (or keeps) and evaluates one run; top level so that spawned workers can run it."""
    if job.get("threads"):
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(job["threads"])
        tf.config.threading.set_inter_op_parallelism_threads(max(1, job["threads"] // 2))
    run_dir = Path(job["run_dir"])
    config = job["config"]
    status = _train_run(config, data_dir=Path(job["data_dir"]), run_dir=run_dir, progress=job["progress"])
    heldout = _evaluate_run(config, run_dir=run_dir, images=Path(job["images"]),
                            labels=Path(job["labels"]), progress=job["progress"])
    return {"loss": job["loss"], "seed_index": job["seed_index"], "status": status,
            "heldout": heldout, "run_dir": str(run_dir)}


# --------------------------------------------------------------------------- entry point


def _target(rows_by_loss: dict[str, list[list]], losses: list[str], target_iou: float | None) -> dict:
    if target_iou is not None:
        return {"value": target_iou, "rule": "given with --target-iou"}
    reference = "bce" if "bce" in losses else losses[0]
    bests = [max((v for _, v, _ in curve), default=0.0) for curve in rows_by_loss[reference]]
    value = _CONVERGENCE_FRACTION * float(np.mean(bests)) if bests else 0.0
    if value <= 0.0:
        value = 1e-6  # nothing learned: any positive validation IoU counts
    return {"value": value, "rule": f"{_CONVERGENCE_FRACTION:g} x the mean best validation IoU "
                                    f"of the {reference} runs ({np.mean(bests):.3f})"}


def study_losses(*, config_path: str | os.PathLike, data_dir: str | os.PathLike,
                 out_dir: str | os.PathLike, losses: Sequence[str], n_seeds: int,
                 epochs: int | None = None, target_iou: float | None = None, parallel: int = 1,
                 overrides: Sequence[str] = (), progress: bool = False) -> dict:
    """Trains one model per loss and seed, evaluates each on the held-out scans, reports.

    Args:
        config_path: YAML config shared by every run.
        data_dir: Dataset folder (MSD, nnU-Net v2 or plain).
        out_dir: Study folder (see the module docstring); reused to resume.
        losses: Names in `LOSS_CONFIGS` (``bce, dice, hybrid, focal, tversky, focal_tversky``).
        n_seeds: Seeds per loss (>= 1).
        epochs: Epochs per run (default: the config's ``train.epochs``).
        target_iou: Validation IoU that defines convergence (default: see the module docstring).
        parallel: Runs at a time, each in its own spawned process with its own TensorFlow
            (1: sequential, in this process).
        overrides: ``key=value`` config overrides applied to every run.
        progress: Show training/prediction progress bars.

    Returns:
        ``{"text"`` (the table and where the files are), ``"rows"`` (one dict per run, the
        ``study.csv`` columns), ``"paths"`` (csv, md, convergence, small_lesion_recall),
        ``"stats"`` (per loss and metric: n, mean, half_width, low, high), ``"claims"``,
        ``"target_iou"``, ``"n_trained"`` (runs trained or resumed in this call)}.

    Raises:
        ValueError: unknown or repeated loss name, bad numbers, a finished run with another
            config in ``out_dir``, no labelled held-out scan.
        TypeError: non-integer ``n_seeds``/``epochs``/``parallel``.
        FileNotFoundError: missing config or dataset folder.
    """
    started = time.perf_counter()
    losses = _check_losses(losses)
    n_seeds = check_int(n_seeds, name="n_seeds", minimum=1)
    parallel = check_int(parallel, name="parallel", minimum=1)
    if epochs is not None:
        epochs = check_int(epochs, name="epochs", minimum=1)
    target_iou = _check_target(target_iou)
    overrides = [str(o) for o in overrides]
    config_path, data_dir, out = Path(config_path), Path(data_dir), Path(out_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"Expected a dataset folder. Received: data_dir={data_dir} (no such directory)")
    base = _base_config(config_path, overrides, epochs=epochs, cache_dir=out / "cache")
    from losses import get_loss

    for name in losses:  # fail before any training on a loss the losses package rejects
        get_loss(dict(LOSS_CONFIGS[name]))

    heldout, heldout_split = _heldout_cases(data_dir, base)
    if not heldout:
        raise ValueError(f"Expected labelled held-out scans in data_dir={data_dir}. Received: none")
    images, labels = _prepare_heldout(heldout, out / "heldout")

    jobs = []
    for loss in losses:
        for k in range(n_seeds):
            config = run_config(base, loss=loss, seed_index=k)
            jobs.append({"loss": loss, "seed_index": k, "config": config, "data_dir": str(data_dir),
                         "run_dir": str(out / "runs" / f"{loss}_seed{k}"), "images": str(images),
                         "labels": str(labels), "progress": progress, "threads": None})
    results = _execute(jobs, parallel=parallel, data_dir=data_dir)

    from segmentation.metrics import size_bin_labels

    bin_labels = size_bin_labels(base.evaluation.size_bins_mm)
    curves: dict[str, list[list]] = {loss: [] for loss in losses}
    for result in results:
        history = _read_history(Path(result["run_dir"]) / "history.csv")
        curves[result["loss"]].append(validation_curve(history))
    target = _target(curves, losses, target_iou)
    rows = [
        _run_row(result, loss=result["loss"], seed_index=result["seed_index"],
                 train_seed=base.train.seed + result["seed_index"], target_iou=target["value"],
                 heldout_split=heldout_split, bin_labels=bin_labels)
        for result in results
    ]
    stats = _aggregate(rows, losses, bin_labels)
    claims = _claims(stats)
    counts = {}
    if rows:
        counts = {b: rows[0].get(f"count_{b}") for b in bin_labels}
    columns = [*STUDY_COLUMNS, *[f"recall_{b}" for b in bin_labels]]
    command = _command(config_path, data_dir, out, losses, n_seeds, epochs, target_iou, overrides)
    paths = {
        "csv": _write_text(out / "study.csv", _csv_text(rows, columns)),
        "convergence": _plot_convergence(out / "convergence.png", rows, losses, target["value"]),
        "small_lesion_recall": _plot_small_lesion_recall(out / "small_lesion_recall.png", stats,
                                                         losses, bin_labels, counts),
    }
    md = _study_md(stats=stats, losses=losses, claims=claims, target=target, base=base,
                   command=command, n_seeds=n_seeds, heldout_split=heldout_split, n_heldout=len(heldout), rows=rows,
                   wall_s=time.perf_counter() - started)
    paths["md"] = _write_text(out / "study.md", md)
    text = "\n".join([
        _table(stats, losses), "", *[c["text"] for c in claims], "",
        f"target IoU {target['value']:.3f} ({target['rule']})",
        *[f"{name}: {path}" for name, path in paths.items()],
    ])
    public_rows = [{k: v for k, v in row.items() if k != "curve"} for row in rows]
    return {"text": text, "rows": public_rows, "paths": {k: str(v) for k, v in paths.items()},
            "stats": stats, "claims": claims, "target_iou": target["value"],
            "n_trained": sum(r["status"] != "kept" for r in rows)}


def _execute(jobs: list[dict], *, parallel: int, data_dir: Path) -> list[dict]:
    """Runs the jobs sequentially, or ``parallel`` at a time in spawned processes."""
    if parallel == 1 or len(jobs) == 1:
        return [_run_job(job) for job in jobs]
    # Fill the shared cache once, so that concurrent runs only read it.
    from pipelines.train import prepare_data

    first = jobs[0]
    prepare_data(first["config"], data_dir=data_dir, run_dir=Path(first["run_dir"]).parent,
                 progress=first["progress"])
    threads = max(1, (os.cpu_count() or 1) // parallel)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=parallel, mp_context=context) as pool:
        futures = [pool.submit(_run_job, {**job, "threads": threads}) for job in jobs]
        return [future.result() for future in futures]
