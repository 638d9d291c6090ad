"""The learning curve of docs/results.md: unseen-scan metrics against training steps.

``learning_curve.csv`` beside this file is the record: one row per (recipe, steps, unseen set).
Given an EV_ROOT, rows are added (or replaced) from the ``summary.json`` of the
``lungseg evaluate --nodules`` runs named ``EV_ROOT/{recipe}-{steps}-{set}`` (e.g.
``base-3600-u1``: recipe ``base``, 3,600 training steps, unseen set ``u1``); rows of earlier
sessions whose evaluation folders are gone are kept. Then the table and the plot
(``learning_curve.png``) are written again.

    python docs/results/learning_curve.py [EV_ROOT]
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
CSV = HERE / "learning_curve.csv"
METRICS = ("dice_mean", "lesion_recall", "small_lesion_recall", "ground_glass_recall", "fp_per_scan")
FIELDS = ("recipe", "steps", "set", "n_scans", "n_nodules", "dice_mean", "lesion_recall",
          "small_lesion_recall", "ground_glass_recall", "ground_glass_count", "fp_per_scan", "cpm")
# quiet wall time of `lungseg train --config configs/cpu.yaml` on the project's 2-core AMD EPYC
# (docs/results.md): preprocessing ~50 s, 0.22 s per step, ~25 s per validation
SECONDS_PER_STEP = 0.22


def read_summaries(ev_root: Path) -> list[dict]:
    rows = []
    for path in sorted(ev_root.glob("*/summary.json")):
        match = re.fullmatch(r"([a-z_]+)-(\d+)-(\w+)", path.parent.name)
        if not match:
            continue
        summary = json.loads(path.read_text())
        kinds = (summary.get("recall_by_attribute") or {}).get("kind") or {}
        ground_glass = kinds.get("ground_glass") or {}
        rows.append({"recipe": match.group(1), "steps": int(match.group(2)), "set": match.group(3),
                     "n_scans": summary["n_cases"], "n_nodules": summary["n_lesions"],
                     "dice_mean": summary["dice_mean"], "lesion_recall": summary["lesion_recall"],
                     "small_lesion_recall": summary["small_lesion_recall"],
                     "ground_glass_recall": ground_glass.get("recall"),
                     "ground_glass_count": ground_glass.get("count"),
                     "fp_per_scan": summary["fp_per_scan"], "cpm": summary.get("cpm")})
    return rows


def read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["steps"] = int(row["steps"])
        for key in FIELDS[3:]:
            row[key] = float(row[key]) if row[key] not in ("", "None") else None
    return rows


def merge(old: list[dict], new: list[dict]) -> list[dict]:
    key = lambda r: (r["recipe"], int(r["steps"]), r["set"])  # noqa: E731
    merged = {key(r): r for r in old}
    merged.update({key(r): r for r in new})
    return [merged[k] for k in sorted(merged)]


def plot(rows: list[dict], out: Path) -> None:
    sets = sorted({r["set"] for r in rows})
    figure, axes = plt.subplots(len(sets), len(METRICS), figsize=(3.2 * len(METRICS), 2.9 * len(sets)),
                                squeeze=False)
    for i, name in enumerate(sets):
        for j, metric in enumerate(METRICS):
            ax = axes[i][j]
            for recipe in sorted({r["recipe"] for r in rows}):
                points = sorted((r["steps"], r[metric]) for r in rows
                                if r["set"] == name and r["recipe"] == recipe and r[metric] is not None)
                if points:
                    ax.plot(*zip(*points), marker="o", label=recipe)
            ax.set_title(f"{name}: {metric}", fontsize=9)
            ax.set_xlabel(f"training steps (~{SECONDS_PER_STEP} s each)", fontsize=8)
            if metric != "fp_per_scan":
                ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=100)


def main(argv: list[str]) -> None:
    rows = merge(read_csv(CSV), read_summaries(Path(argv[0])) if argv else [])
    with open(CSV, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, HERE / "learning_curve.png")
    for row in rows:
        gg = (f"{row['ground_glass_recall']:.3f}" if row["ground_glass_recall"] is not None else "-")
        print(f"| {row['recipe']} | {row['steps']:,} | {row['set']} | {row['dice_mean']:.3f} | "
              f"{row['lesion_recall']:.3f} | {row['small_lesion_recall']:.3f} | {gg} | "
              f"{row['fp_per_scan']:.2f} | {row['cpm']:.3f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
