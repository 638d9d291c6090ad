"""Lesion-level validation of a model during training, and the "best" ordering of its results.

`validate` runs whole validation scans through `pipelines.predictor.predict_probabilities`
(the one sliding-window implementation) and `pipelines.predictor.postprocess` (the one
post-processing chain: probabilities back to each scan's own grid, threshold, minimum size,
lung filter), then `segmentation.metrics.evaluate_case` and `segmentation.metrics.summarize`
against the label as stored on disk. `metric_sort_key` orders summaries by
``train.best_metric``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from pipelines import predictor  # module attribute look-ups: tests stand in for the network
from pipelines.training.data import PreparedData, ValCase
from segmentation.config import Config
from segmentation.metrics import evaluate_case, summarize
from segmentation.nodule_attributes import join_mask, summarize_joins

__all__ = ["HISTORY_VAL_KEYS", "validate", "metric_sort_key"]

HISTORY_VAL_KEYS = (
    "dice_mean",
    "iou_mean",
    "lesion_recall",
    "small_lesion_recall",
    "lesion_precision",
    "fp_per_scan",
)
"""Validation metrics written to ``history.csv`` (as ``val_<key>``) and TensorBoard."""

_LOWER_IS_BETTER = ("fp_per_scan", "hd95", "volume_diff", "n_false_positives")


def validate(model: keras.Model, config: Config, prepared: PreparedData, *,
             return_first_probs: bool = False):
    """Evaluates ``model`` on the validation scans, in each scan's own geometry.

    Args:
        model: Trained model (logits).
        config: The run config (inference and evaluation sections).
        prepared: From `prepare_data`; at most ``data.max_val_cases`` scans are used.
        return_first_probs: Also return the network-space probabilities of the first scan.

    Returns:
        The `segmentation.metrics.summarize` dict (plus ``val_time_s``, and with
        ``prepared.nodule_table`` also ``recall_by_attribute`` and ``nodule_attributes``, as in
        ``lungseg evaluate --nodules``); with ``return_first_probs`` a tuple ``(summary, probs)``.
    """
    start = time.perf_counter()
    ev = config.evaluation
    cases = prepared.val_cases[: config.data.max_val_cases or None]
    predict_fn = predictor.make_predict_fn(model, batch_size=config.inference.batch_size)
    tta = config.inference.tta if config.train.val_tta is None else config.train.val_tta
    results, first = [], None
    for case in cases:
        probs_net = predictor.predict_probabilities(model, np.asarray(case.image_net),
                                                    config=config, tta=tta, predict_fn=predict_fn)
        if first is None:
            first = probs_net
        probs, pred = predictor.postprocess(probs_net, geometry=case.geometry, config=config,
                                            image_net=case.image_net)
        results.append(evaluate_case(
            case.label(), pred, spacing_mm=case.spacing_mm, affine=case.geometry.source_affine,
            probs=probs, case_id=case.case_id, connectivity=ev.connectivity,
            criterion=ev.match, iou_threshold=ev.iou_threshold, tolerance_mm=ev.tolerance_mm,
        ))
    summary = summarize(results, small_lesion_mm=ev.small_lesion_mm, size_bins_mm=ev.size_bins_mm)
    if prepared.nodule_table is not None:
        summary["recall_by_attribute"], summary["nodule_attributes"] = _attribute_summary(
            prepared.nodule_table, cases, results, connectivity=ev.connectivity)
    summary["val_time_s"] = time.perf_counter() - start
    return (summary, first) if return_first_probs else summary


def _attribute_summary(table: Any, cases: Sequence[ValCase], results: Sequence[Any], *,
                       connectivity: int) -> tuple[dict, dict]:
    """Recall by nodule attribute: the dataset's nodule table joined to each case's lesions."""
    joins = [join_mask([r for r in table.rows if r.case_id == case.case_id],
                       mask_true=case.label(), lesions=result.lesions,
                       affine=case.geometry.source_affine, connectivity=connectivity)
             for case, result in zip(cases, results)]
    return summarize_joins(table, results, joins)


def metric_sort_key(summary: dict, names: Sequence[str]) -> tuple[float, ...]:
    """Lexicographic "higher is better" key of the ``train.best_metric`` values.

    NaN/None is the worst value; metrics where lower is better (``fp_per_scan``, HD95,
    volume differences) are negated.

    Raises:
        ValueError: A name is not a numeric key of ``summary``.
    """
    key = []
    for name in names:
        if name not in summary:
            numeric = sorted(k for k, v in summary.items() if isinstance(v, (int, float)) or v is None)
            raise ValueError(
                f"Expected train.best_metric to name validation metrics ({', '.join(numeric)}). "
                f"Received: train.best_metric contains {name!r}"
            )
        value = summary[name]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            key.append(-math.inf)
            continue
        if not isinstance(value, (int, float)):
            raise ValueError(f"Expected a numeric metric for train.best_metric. Received: {name}={value!r}")
        key.append(-float(value) if any(tag in name for tag in _LOWER_IS_BETTER) else float(value))
    return tuple(key)

