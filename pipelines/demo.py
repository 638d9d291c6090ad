"""``lungseg demo``: the main job end to end on synthetic phantom CTs, with no download.

Steps (each one the same code as its own command):

1. ``lungseg phantom``: a small phantom dataset with held-out test scans (``data/``);
2. ``lungseg train``: ``configs/cpu.yaml`` (``configs/quick.yaml`` with ``--quick``) (``run/``);
3. ``lungseg predict`` on the held-out scans, with probabilities (``heldout_pred/``);
4. ``lungseg evaluate`` of those predictions against their labels (``evaluation/``);
5. ``lungseg predict`` on one new scan the model has never seen, with its nodule table
   (``new_scan/`` and ``new_scan_pred/``).

The result is a short table (Dice, IoU, lesion recall, small-lesion recall, FP per scan) and
the paths of the masks, the report with its plots and the TensorBoard logs.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from segmentation.config import load_config
from segmentation.phantom import generate_case, write_case, write_phantom_dataset

__all__ = ["DemoSettings", "DEMO_SETTINGS", "run_demo", "format_table"]

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
_PARTS = ("data", "run", "heldout_pred", "evaluation", "new_scan", "new_scan_pred")


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """Sizes of one demo flavour.

    Attributes:
        config: Config file name in ``configs/``.
        n_cases: Training + validation phantom cases.
        n_test: Held-out phantom cases (evaluated with ``lungseg evaluate``).
        size: Phantom grid in canonical (I, J, K) order.
        spacing_mm: Phantom voxel spacing (``None``: the phantom's own draw for that size).
        seed: Phantom seed.
        overrides: ``--set`` overrides applied to the config.
    """

    config: str
    n_cases: int
    n_test: int
    size: tuple[int, int, int]
    spacing_mm: tuple[float, float, float] | None
    seed: int
    overrides: tuple[str, ...] = ()


DEMO_SETTINGS = {
    "full": DemoSettings(config="cpu.yaml", n_cases=24, n_test=6, size=(192, 192, 112),
                         spacing_mm=None, seed=2026),
    "quick": DemoSettings(config="quick.yaml", n_cases=8, n_test=2, size=(128, 128, 80),
                          spacing_mm=(1.5, 1.5, 2.5), seed=2026),
}


def run_demo(*, out_dir: str | Path, quick: bool = False, overwrite: bool = False,
             progress: bool = True, settings: DemoSettings | None = None) -> dict[str, Any]:
    """Runs the demo into ``out_dir``.

    Args:
        out_dir: Output folder; must be new or empty unless ``overwrite``.
        quick: The tiny flavour (``configs/quick.yaml``, a few small scans).
        overwrite: Replace an earlier demo's folders in ``out_dir`` (other files are kept).
        progress: Progress bars.
        settings: Replaces the flavour's `DemoSettings` (tests use a tiny one).

    Returns:
        ``text`` (what the CLI prints), ``summary`` (the evaluation's ``summary.json``),
        ``paths`` and ``seconds`` (wall time of each step).

    Raises:
        FileExistsError: ``out_dir`` holds an earlier demo and ``overwrite`` is False.
    """
    from pipelines.evaluate import evaluate
    from pipelines.infer import predict
    from pipelines.train import train

    if settings is None:
        settings = DEMO_SETTINGS["quick" if quick else "full"]
    out = Path(out_dir)
    _prepare_out_dir(out, overwrite=overwrite)
    paths = {part: out / part for part in _PARTS}
    seconds: dict[str, float] = {}
    start = time.perf_counter()

    def step(name: str) -> None:
        seconds[name] = round(time.perf_counter() - start - sum(seconds.values()), 2)
        logger.info("demo: %s done after %.1f s", name, seconds[name])

    write_phantom_dataset(paths["data"], n_cases=settings.n_cases, seed=settings.seed,
                          size=settings.size, spacing_mm=settings.spacing_mm, n_test=settings.n_test)
    step("phantom")

    config = load_config(CONFIG_DIR / settings.config, overrides=settings.overrides)
    train_summary = train(config, data_dir=paths["data"], out_dir=paths["run"], progress=progress,
                          command_line=["lungseg", "demo"] + (["--quick"] if quick else []))
    step("train")

    predicted = predict(model_dir=paths["run"], input_path=paths["data"] / "imagesTs",
                        out_dir=paths["heldout_pred"], write_probs=True, progress=progress)
    _raise_on_failures(predicted, "held-out scans")
    step("predict_heldout")

    summary = evaluate(pred_dir=paths["heldout_pred"], truth_dir=paths["data"] / "labelsTs",
                       probs_dir=paths["heldout_pred"], out_dir=paths["evaluation"],
                       nodules=paths["data"] / "nodules.json")
    step("evaluate")

    new_case = generate_case(seed=settings.seed + 10_000, size=settings.size, spacing_mm=settings.spacing_mm)
    new_image = paths["new_scan"] / "new_scan.nii.gz"
    write_case(new_case, new_image, paths["new_scan"] / "new_scan_truth.nii.gz")
    new_pred = predict(model_dir=paths["run"], input_path=new_image, out_dir=paths["new_scan_pred"],
                       write_probs=False, progress=progress)
    _raise_on_failures(new_pred, "the new scan")
    step("predict_new_scan")

    total = round(time.perf_counter() - start, 1)
    text = format_table(summary, train_summary=train_summary, paths=paths, seconds=seconds,
                        total_s=total, n_true_new=len(new_case.nodules),
                        n_found_new=sum(case.get("n_nodules", 0) for case in new_pred["cases"]))
    return {"text": text, "summary": summary, "train_summary": train_summary,
            "paths": {k: str(v) for k, v in paths.items()}, "seconds": seconds, "total_s": total}


def format_table(summary: dict[str, Any], *, train_summary: dict[str, Any], paths: dict[str, Path],
                 seconds: dict[str, float], total_s: float, n_true_new: int, n_found_new: int) -> str:
    """The demo's printed report: a metrics table and where the outputs are."""

    def fmt(value: Any) -> str:
        return "n/a" if value is None else f"{float(value):.3f}"

    rows = [
        ("Dice (mean over scans)", fmt(summary.get("dice_mean"))),
        ("IoU (mean over scans)", fmt(summary.get("iou_mean"))),
        ("Lesion recall", fmt(summary.get("lesion_recall"))),
        (f"Small-lesion recall (< {summary.get('small_lesion_mm', 10):g} mm)", fmt(summary.get("small_lesion_recall"))),
        ("False positives per scan", fmt(summary.get("fp_per_scan"))),
        ("CPM (FROC)", fmt(summary.get("cpm"))),
    ]
    by_kind = (summary.get("recall_by_attribute") or {}).get("kind") or {}
    rows += [(f"Recall of {kind.replace('_', '-')} nodules",
              f"{fmt(entry.get('recall'))} ({entry.get('detected')}/{entry.get('count')})")
             for kind, entry in sorted(by_kind.items())]
    width = max(len(name) for name, _ in rows)
    lines = [
        f"lungseg demo: {summary.get('n_cases')} held-out phantom scans, {summary.get('n_lesions')} nodules",
        "",
        *(f"  {name.ljust(width)}  {value}" for name, value in rows),
        "",
        f"New scan: {n_found_new} nodule(s) predicted, {n_true_new} in the phantom's truth.",
        "",
        "Outputs:",
        f"  masks (held-out)      {paths['heldout_pred']}",
        f"  report and plots      {paths['evaluation'] / 'report.md'}, froc.png, recall_by_size.png",
        f"  new scan + nodules    {paths['new_scan_pred']}",
        f"  trained model         {paths['run'] / 'model.keras'} (best epoch {train_summary.get('best_epoch')})",
        f"  TensorBoard logs      tensorboard --logdir {paths['run'] / 'logs'}",
        "",
        "Wall time: " + ", ".join(f"{name} {value:.0f} s" for name, value in seconds.items())
        + f"; total {total_s:.0f} s",
    ]
    return "\n".join(lines)


def _prepare_out_dir(out: Path, *, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"Expected --out to be a folder. Received: out={out} (a file)")
    existing = [out / part for part in _PARTS if (out / part).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"Expected an empty --out for the demo. Received: out={out} holds an earlier demo "
            f"({', '.join(p.name for p in existing)}); pass --overwrite or choose another --out"
        )
    for path in existing:
        shutil.rmtree(path)
    out.mkdir(parents=True, exist_ok=True)


def _raise_on_failures(result: dict[str, Any], what: str) -> None:
    if result.get("failed"):
        errors = [f"{case['case_id']}: {case.get('error')}" for case in result["cases"] if case["status"] == "failed"]
        raise RuntimeError(f"Prediction failed on {what}: " + "; ".join(errors))
