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
import io
import json
import logging
import math
import multiprocessing
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segmentation.validation import check_int

__all__ = [
    "LOSS_CONFIGS",
    "STUDY_COLUMNS",
    "CLAIMS",
    "study_losses",
    "run_config",
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

NOT_REACHED = "not reached"

CLAIMS = (
    {"key": "iou", "label": "IoU +18%", "metric": "iou", "claimed_change": 0.18, "higher_is_better": True},
    {"key": "convergence", "label": "convergence about 40% faster", "metric": "epochs_to_target",
     "claimed_change": -0.40, "higher_is_better": False},
    {"key": "small_lesions", "label": "markedly higher small-lesion detection",
     "metric": "small_lesion_recall", "claimed_change": 0.10, "higher_is_better": True},
)
"""The article's claims for hybrid (0.5 BCE + 0.5 Dice) against BCE alone.

``claimed_change`` is the relative change claimed (for "markedly" we take +10%). A claim
*holds* when the 95% intervals of hybrid and BCE do not overlap, the change goes the claimed
way and is at least half the claimed size; it *does not hold* when the intervals do not overlap
and the change goes the other way or is smaller than that; otherwise it is *inconclusive*
(intervals overlap, or one seed).
"""

_CONVERGENCE_FRACTION = 0.8
_TABLE_METRICS = (("iou", "IoU"), ("dice", "Dice"), ("lesion_recall", "lesion recall"),
                  ("small_lesion_recall", "small-lesion recall"), ("fp_per_scan", "FP/scan"),
                  ("cpm", "CPM"), ("epochs_to_target", "epochs to target"),
                  ("wall_time_to_target_s", "time to target (s)"), ("best_epoch", "best epoch"))


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


def run_config(base, *, loss: str, seed_index: int):
    """The config of one run: ``base`` with the loss and ``train.seed + seed_index``.

    Args:
        base: The study's shared `segmentation.config.Config`.
        loss: A name of `LOSS_CONFIGS`.
        seed_index: 0, 1, ... (the same index gives the same patch stream and initial weights).

    Returns:
        A new Config.
    """
    name = _check_losses([loss])[0]
    train = dataclasses.replace(base.train, seed=base.train.seed + int(seed_index))
    return dataclasses.replace(base, loss=dict(LOSS_CONFIGS[name]), train=train)


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


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


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


# --------------------------------------------------------------------------- convergence


def _read_history(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _float_or_none(text: Any) -> float | None:
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def validation_curve(history: list[dict]) -> list[tuple[int, float, float]]:
    """``(epoch, val_iou_mean, wall_time_s)`` of the validated epochs of a ``history.csv``."""
    curve = []
    for row in history:
        value = _float_or_none(row.get("val_iou_mean"))
        if value is not None:
            curve.append((int(float(row["epoch"])), value, _float_or_none(row.get("wall_time_s")) or 0.0))
    return curve


def convergence(curve: Sequence[tuple[int, float, float]], *, target_iou: float) -> tuple[int | None, float | None]:
    """First validated epoch (and its wall time) whose validation IoU is >= ``target_iou``.

    Args:
        curve: ``(epoch, val_iou, wall_time_s)`` rows in epoch order.
        target_iou: The validation IoU that defines convergence.

    Returns:
        ``(epoch, wall_time_s)``, or ``(None, None)`` when the target is not reached.
    """
    for epoch, value, wall in curve:
        if value >= target_iou:
            return epoch, wall
    return None, None


# --------------------------------------------------------------------------- statistics


def interval(values: Sequence[float | None]) -> dict:
    """Mean and 95% t-interval half-width over seeds (None values left out).

    ``half_width = t_{0.975, n-1} * sd / sqrt(n)`` (sd with ``n - 1``); None for n < 2.

    Returns:
        ``{"n", "mean", "half_width", "low", "high"}`` (mean None when n == 0).
    """
    from scipy import stats

    data = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = int(data.size)
    if n == 0:
        return {"n": 0, "mean": None, "half_width": None, "low": None, "high": None}
    mean = float(data.mean())
    if n < 2:
        return {"n": 1, "mean": mean, "half_width": None, "low": None, "high": None}
    half = float(stats.t.ppf(0.975, n - 1) * data.std(ddof=1) / math.sqrt(n))
    return {"n": n, "mean": mean, "half_width": half, "low": mean - half, "high": mean + half}


def _relative(new: float | None, reference: float | None) -> float | None:
    if new is None or reference is None or reference == 0:
        return None
    return (new - reference) / abs(reference)


def judge_claim(claim: dict, hybrid: dict, bce: dict, *, n_runs: tuple[int, int] | None = None) -> dict:
    """Verdict on one claim from the intervals of hybrid and BCE (see `CLAIMS`).

    Args:
        claim: An entry of `CLAIMS`.
        hybrid: `interval` of the hybrid runs' metric.
        bce: `interval` of the BCE runs' metric.
        n_runs: ``(hybrid runs, BCE runs)``; when fewer values than runs (a convergence target
            not reached by every run) the verdict is inconclusive.

    Returns:
        ``{"claim", "verdict", "relative_change", "text"}`` with verdict ``holds``,
        ``does not hold`` or ``inconclusive``.
    """
    change = _relative(hybrid["mean"], bce["mean"])
    claimed = claim["claimed_change"]
    numbers = (f"hybrid {_fmt(hybrid['mean'])} {_pm(hybrid)} vs BCE {_fmt(bce['mean'])} {_pm(bce)}"
               f", change {_pct(change)} (claimed {claimed:+.0%})")
    if n_runs is not None and (hybrid["n"] < n_runs[0] or bce["n"] < n_runs[1]):
        verdict = "inconclusive"
        why = (f"target reached by {hybrid['n']}/{n_runs[0]} hybrid and {bce['n']}/{n_runs[1]} "
               "BCE runs")
        if hybrid["n"] == n_runs[0] and bce["n"] == 0 and hybrid["n"] > 0:
            verdict, why = "holds", "BCE never reached the target"
    elif change is None:
        verdict, why = "inconclusive", "no value to compare"
    elif hybrid["n"] < 2 or bce["n"] < 2:
        verdict, why = "inconclusive", "1 seed: no interval"
    elif hybrid["low"] <= bce["high"] and bce["low"] <= hybrid["high"]:
        verdict, why = "inconclusive", "95% intervals overlap"
    else:
        better = change > 0 if claim["higher_is_better"] else change < 0
        big_enough = abs(change) >= abs(claimed) / 2
        if better and big_enough:
            verdict, why = "holds", "intervals apart, in the claimed direction"
        elif better:
            verdict, why = "does not hold", "a real but much smaller effect than claimed"
        else:
            verdict, why = "does not hold", "intervals apart, opposite direction"
    return {"claim": claim["label"], "verdict": verdict, "relative_change": change,
            "text": f"{claim['label']}: **{verdict}** ({why}; {numbers})"}


# --------------------------------------------------------------------------- formatting


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _pm(stat: dict) -> str:
    if stat["n"] < 2:
        return "± n/a (1 seed)" if stat["n"] == 1 else ""
    return f"± {_fmt(stat['half_width'])}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1%}"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _csv_text(rows: list[dict], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return buffer.getvalue()


def _write_text(path: Path, text: str) -> Path:
    from segmentation.io import atomic_write

    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _save_figure(figure: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    from segmentation.io import atomic_write

    try:
        return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))
    finally:
        plt.close(figure)


# --------------------------------------------------------------------------- rows and plots


def _run_row(job_result: dict, *, loss: str, seed_index: int, train_seed: int, target_iou: float,
             heldout_split: str, bin_labels: list[str]) -> dict:
    run_dir = Path(job_result["run_dir"])
    heldout = job_result["heldout"]
    summary = _read_json(run_dir / "summary.json") or {}
    curve = validation_curve(_read_history(run_dir / "history.csv"))
    epoch, wall = convergence(curve, target_iou=target_iou)
    by_size = heldout.get("recall_by_size") or {}
    row = {
        "loss": loss,
        "seed_index": seed_index,
        "train_seed": train_seed,
        "iou": heldout.get("iou_mean"),
        "dice": heldout.get("dice_mean"),
        "lesion_recall": heldout.get("lesion_recall"),
        "small_lesion_recall": heldout.get("small_lesion_recall"),
        "fp_per_scan": heldout.get("fp_per_scan"),
        "cpm": heldout.get("cpm"),
        "epochs_to_target": NOT_REACHED if epoch is None else epoch,
        "wall_time_to_target_s": NOT_REACHED if wall is None else round(wall, 1),
        "best_epoch": summary.get("best_epoch"),
        "best_val_iou": max((v for _, v, _ in curve), default=None),
        "epochs_completed": summary.get("epochs_completed"),
        "wall_time_s": summary.get("wall_time_s"),
        "n_heldout": heldout.get("n_cases"),
        "heldout_split": heldout_split,
        "status": job_result["status"],
        "run_dir": str(run_dir),
        "curve": curve,
    }
    for label in bin_labels:
        entry = by_size.get(label) or {}
        row[f"recall_{label}"] = entry.get("recall")
        row[f"count_{label}"] = entry.get("count")
    return row


def _numeric(value: Any) -> float | None:
    return None if value is None or value == NOT_REACHED else float(value)


def _aggregate(rows: list[dict], losses: list[str], bin_labels: list[str]) -> dict:
    out = {}
    for loss in losses:
        mine = [r for r in rows if r["loss"] == loss]
        stats = {key: interval([_numeric(r.get(key)) for r in mine]) for key, _ in _TABLE_METRICS}
        for label in bin_labels:
            stats[f"recall_{label}"] = interval([_numeric(r.get(f"recall_{label}")) for r in mine])
        stats["n_runs"] = len(mine)
        out[loss] = stats
    return out


def _mean_curve(rows: list[dict]) -> tuple[list[int], list[float]]:
    by_epoch: dict[int, list[float]] = {}
    for row in rows:
        for epoch, value, _ in row["curve"]:
            by_epoch.setdefault(epoch, []).append(value)
    epochs = sorted(by_epoch)
    return epochs, [float(np.mean(by_epoch[e])) for e in epochs]


def _plot_convergence(path: Path, rows: list[dict], losses: list[str], target_iou: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for loss in losses:
        epochs, values = _mean_curve([r for r in rows if r["loss"] == loss])
        n = sum(r["loss"] == loss for r in rows)
        axis.plot(epochs, values, marker="o", label=f"{loss} (n={n})")
    axis.axhline(target_iou, color="grey", linestyle="--", linewidth=1,
                 label=f"target IoU {target_iou:.3f}")
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation IoU (mean over seeds)")
    axis.set_title("Convergence per loss")
    axis.set_ylim(0.0, 1.0)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return _save_figure(figure, path)


def _plot_small_lesion_recall(path: Path, stats: dict, losses: list[str], bin_labels: list[str],
                              counts: dict[str, Any]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7.0, 4.2))
    width = 0.8 / max(1, len(losses))
    x = np.arange(len(bin_labels))
    for i, loss in enumerate(losses):
        means = [stats[loss][f"recall_{b}"]["mean"] for b in bin_labels]
        errors = [stats[loss][f"recall_{b}"]["half_width"] or 0.0 for b in bin_labels]
        heights = [np.nan if m is None else m for m in means]
        axis.bar(x + (i - (len(losses) - 1) / 2) * width, heights, width, yerr=errors,
                 capsize=2, label=loss)
    axis.set_xticks(x, [f"{b} mm\n(n={counts.get(b, 0)})" for b in bin_labels])
    axis.set_ylim(0.0, 1.05)
    axis.set_ylabel("held-out lesion recall (mean over seeds)")
    axis.set_xlabel("equivalent diameter (lesions per bin)")
    axis.set_title("Lesion detection by size")
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return _save_figure(figure, path)


def _table(stats: dict, losses: list[str]) -> str:
    header = "| loss | runs | " + " | ".join(label for _, label in _TABLE_METRICS) + " |"
    lines = [header, "|" + "---|" * (len(_TABLE_METRICS) + 2)]
    for loss in losses:
        cells = []
        for key, _ in _TABLE_METRICS:
            stat = stats[loss][key]
            if stat["n"] == 0:
                cells.append(NOT_REACHED if key in ("epochs_to_target", "wall_time_to_target_s") else "n/a")
                continue
            cell = f"{_fmt(stat['mean'], 1 if 'target' in key or key == 'best_epoch' else 3)} {_pm(stat)}"
            if key in ("epochs_to_target", "wall_time_to_target_s") and stat["n"] < stats[loss]["n_runs"]:
                cell += f" ({stat['n']}/{stats[loss]['n_runs']} reached)"
            cells.append(cell.strip())
        lines.append(f"| {loss} | {stats[loss]['n_runs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _relative_table(stats: dict, losses: list[str]) -> str:
    if "bce" not in stats:
        return "BCE is not in the study: no relative changes."
    lines = ["| loss | IoU | small-lesion recall | epochs to target |", "|---|---|---|---|"]
    for loss in losses:
        if loss == "bce":
            continue
        cells = [_pct(_relative(stats[loss][k]["mean"], stats["bce"][k]["mean"]))
                 for k in ("iou", "small_lesion_recall", "epochs_to_target")]
        lines.append(f"| {loss} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _claims(stats: dict) -> list[dict]:
    if "bce" not in stats or "hybrid" not in stats:
        return [{"claim": c["label"], "verdict": "not tested", "relative_change": None,
                 "text": f"{c['label']}: **not tested** (the study needs both bce and hybrid)"}
                for c in CLAIMS]
    out = []
    for claim in CLAIMS:
        n_runs = None
        if claim["metric"] == "epochs_to_target":
            n_runs = (stats["hybrid"]["n_runs"], stats["bce"]["n_runs"])
        out.append(judge_claim(claim, stats["hybrid"][claim["metric"]], stats["bce"][claim["metric"]],
                               n_runs=n_runs))
    return out


def _command(config_path: Path, data_dir: Path, out_dir: Path, losses: list[str], n_seeds: int,
             epochs: int | None, target_iou: float | None, overrides: Sequence[str]) -> str:
    parts = ["lungseg study losses", f"--config {config_path}", f"--data {data_dir}",
             f"--out {out_dir}", f"--losses {','.join(losses)}", f"--seeds {n_seeds}"]
    if epochs is not None:
        parts.append(f"--epochs {epochs}")
    if target_iou is not None:
        parts.append(f"--target-iou {target_iou}")
    parts += [f"--set {o}" for o in overrides]
    return " ".join(parts)


def _study_md(*, stats: dict, losses: list[str], claims: list[dict], target: dict, base,
              command: str, n_seeds: int, heldout_split: str, n_heldout: int, rows: list[dict],
              wall_s: float) -> str:
    from pipelines.bench import machine_info

    t = base.train
    machine = machine_info()
    reused = sum(r["status"] == "kept" for r in rows)
    lines = [
        "# Loss study",
        "",
        f"Command: `{command}`",
        "",
        f"Setup: {len(rows)} runs ({len(losses)} losses x {n_seeds} seed(s)), each {t.epochs} epochs x {t.steps_per_epoch} steps x batch {t.batch_size} of "
        f"{'x'.join(map(str, t.patch_size))} patches, validation every {t.val_every} epoch(s); "
        f"model filters {list(base.model.filters)}, optimizer {base.optim.optimizer} "
        f"lr {base.optim.learning_rate} ({base.optim.schedule}). Identical across runs except the "
        f"loss and the seed: data split (split_seed {base.data.split_seed}), preprocessed cache, "
        "budget (early stopping off), sampling/augmentation/initialisation seed per seed index "
        f"(train.seed {t.seed} + index). Held-out: {n_heldout} scans of the {heldout_split} split"
        + (" (no labelled test split: the best epoch was chosen on these same scans, so the "
           "held-out figures are optimistic)" if heldout_split == "validation" else "")
        + f", scored with `lungseg evaluate` (lesion match: {base.evaluation.match}, small lesions "
        f"< {base.evaluation.small_lesion_mm:g} mm). Machine: {machine['cpu_model']}, "
        f"{machine['usable_cores']} cores, GPUs {machine['gpus'] or 'none'}, TF {machine['tensorflow']}. "
        f"Training wall time of the runs: {sum(r['wall_time_s'] or 0.0 for r in rows) / 60:.1f} min; "
        f"this call: {wall_s / 60:.1f} min ({reused} finished runs kept).",
        "",
        "## Held-out results (mean ± 95% interval over seeds)",
        "",
        "Interval: mean ± t(0.975, n-1) · sd / √n over seeds; n/a (1 seed) with one seed. "
        f"Epochs and time to target: first validated epoch whose validation IoU ≥ {target['value']:.3f} "
        f"({target['rule']}); means over the runs that reached it.",
        "",
        _table(stats, losses),
        "",
        "## Relative change against BCE (of the means)",
        "",
        _relative_table(stats, losses),
        "",
        "## The article's claims (hybrid 0.5 BCE + 0.5 Dice vs BCE alone)",
        "",
        "Rule: a claim holds when the 95% intervals of hybrid and BCE do not overlap, the change "
        "goes the claimed way and is at least half the claimed size; it does not hold when the "
        "intervals are apart and the change is opposite or smaller; otherwise inconclusive. "
        "\"Markedly\" is taken as +10%.",
        "",
        *[f"- {c['text']}" for c in claims],
        "",
        "Figures: `convergence.png` (validation IoU per epoch, mean over seeds), "
        "`small_lesion_recall.png` (held-out recall per size bin). Per-run values: `study.csv`.",
        "",
    ]
    return "\n".join(lines)


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
