"""The learning curve of docs/results.md: unseen-scan metrics against training budget.

Reads the ``summary.json`` of ``lungseg evaluate --nodules`` runs named
``EV_ROOT/{recipe}{minutes}-{set}`` (e.g. ``base20-u1``: recipe ``base``, 20 minutes, unseen set
``u1``), writes ``learning_curve.csv`` and ``learning_curve.png`` beside this file.

    python docs/results/learning_curve.py EV_ROOT
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
METRICS = ("dice_mean", "lesion_recall", "small_lesion_recall", "ground_glass_recall", "fp_per_scan")


def read_rows(ev_root: Path) -> list[dict]:
    rows = []
    for path in sorted(ev_root.glob("*/summary.json")):
        match = re.fullmatch(r"([a-z_]+?)(\d+)-(\w+)", path.parent.name)
        if not match:
            continue
        summary = json.loads(path.read_text())
        kinds = (summary.get("recall_by_attribute") or {}).get("kind") or {}
        ground_glass = kinds.get("ground_glass") or {}
        rows.append({"recipe": match.group(1), "minutes": int(match.group(2)), "set": match.group(3),
                     "n_scans": summary["n_cases"], "n_nodules": summary["n_lesions"],
                     "dice_mean": summary["dice_mean"], "lesion_recall": summary["lesion_recall"],
                     "small_lesion_recall": summary["small_lesion_recall"],
                     "ground_glass_recall": ground_glass.get("recall"),
                     "ground_glass_count": ground_glass.get("count"),
                     "fp_per_scan": summary["fp_per_scan"], "cpm": summary.get("cpm")})
    return rows


def plot(rows: list[dict], out: Path) -> None:
    sets = sorted({r["set"] for r in rows})
    figure, axes = plt.subplots(len(sets), len(METRICS), figsize=(3.2 * len(METRICS), 2.8 * len(sets)),
                                squeeze=False)
    for i, name in enumerate(sets):
        for j, metric in enumerate(METRICS):
            ax = axes[i][j]
            for recipe in sorted({r["recipe"] for r in rows}):
                points = sorted((r["minutes"], r[metric]) for r in rows
                                if r["set"] == name and r["recipe"] == recipe and r[metric] is not None)
                if points:
                    ax.plot(*zip(*points), marker="o", label=recipe)
            ax.set_title(f"{name}: {metric}", fontsize=9)
            ax.set_xlabel("training budget (min, 2 CPU cores)", fontsize=8)
            if metric != "fp_per_scan":
                ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=100)


def main(ev_root: str) -> None:
    rows = read_rows(Path(ev_root))
    with open(HERE / "learning_curve.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, HERE / "learning_curve.png")


if __name__ == "__main__":
    main(sys.argv[1])
