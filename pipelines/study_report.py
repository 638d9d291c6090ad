"""The report of ``lungseg study losses`` (`pipelines.study`): convergence from each run's
``history.csv``, 95% intervals over seeds, the article's claims judged, the rows of
``study.csv``, the two plots and ``study.md``.

Pure functions of the runs' results, except the writers (``_write_text``, ``_save_figure``).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

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



def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


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
