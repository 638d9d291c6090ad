"""The LUNA16 detection protocol: candidate matching, FROC, CPM and bootstrap intervals.

Our own implementation of the rules of the LUNA16 challenge evaluation (Setio et al.,
Medical Image Analysis 2017, and its published evaluation script):

* A candidate *hits* a finding when its distance to the finding's centre is strictly less
  than the finding's radius (``diameter_mm / 2``); a finding with a negative diameter (the
  ``-1`` of ``annotations_excluded.csv``) counts as 10 mm.
* Each annotated nodule hit by at least one candidate is one true positive scored by the
  highest probability among its hits; the other hits on it (double hits) are dropped, not
  counted as false positives. A candidate that hits two nodules counts for both.
* A candidate that hits no nodule but an excluded finding (non-nodules, nodules < 3 mm,
  nodules marked by fewer than 3 readers) is ignored: neither true nor false positive.
* Every other candidate is a false positive scored by its probability.
* The FROC curve pools all scans (`froc`): sensitivity = detected /
  all nodules, false positives per scan = false positives / number of scans, one point per
  distinct score threshold; sensitivities at 1/8, 1/4, 1/2, 1, 2, 4, 8 FP per scan are
  linearly interpolated on it and their mean is the CPM.
* Intervals: the scans are resampled with replacement (``n_bootstrap`` times, seeded), the
  curve recomputed on each sample, and the ``(1 - confidence) / 2`` and
  ``(1 + confidence) / 2`` order statistics of the sorted values are reported (index
  ``floor(q * n)``, as the challenge script does). Samples without any nodule are skipped.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "EXCLUDED_DEFAULT_DIAMETER_MM",
    "FROC_FP_RATES",
    "PLOT_FP_RATES",
    "ScanMatch",
    "froc",
    "luna16_froc",
    "match_scan",
]

EXCLUDED_DEFAULT_DIAMETER_MM = 10.0
"""Diameter used for a finding listed with a negative diameter (as LUNA16 does)."""

PLOT_FP_RATES = tuple(float(2.0 ** e) for e in np.linspace(-3.0, 3.0, 49))
"""FP-per-scan grid of the plotted curve and its band (contains the seven FROC_FP_RATES)."""

FROC_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
"""The seven FP-per-scan operating points of the LUNA16 CPM."""


def froc(scores: Sequence[float], is_true_positive: Sequence[bool], *, n_lesions: int,
         n_scans: int, fp_rates: Sequence[float] = FROC_FP_RATES) -> dict:
    """FROC curve and CPM by the LUNA16 convention.

    Candidates of all scans are pooled and sorted by score; at each distinct score threshold
    the curve has the point (false positives / n_scans, true positives / n_lesions), starting at
    (0, 0). Sensitivity at each requested FP rate is linearly interpolated on that curve
    (``np.interp``: beyond the last point it stays at the final sensitivity). CPM is the mean
    over ``fp_rates``. Lesions never detected keep sensitivity below 1.

    Args:
        scores: candidate scores (max probability of each matched or false-positive component).
        is_true_positive: True for a matched component, False for a false positive.
        n_lesions: number of truth lesions over all scans (denominator of sensitivity).
        n_scans: number of scans.
        fp_rates: FP-per-scan operating points (LUNA16: 1/8 ... 8).

    Returns:
        dict ``{"fp_rates", "sensitivities", "cpm", "curve_fp_per_scan", "curve_sensitivity",
        "curve_thresholds"}`` (lists of floats; sensitivities and cpm NaN when n_lesions == 0).
    """
    score_arr = np.asarray(scores, dtype=np.float64).reshape(-1)
    tp_arr = np.asarray(is_true_positive, dtype=bool).reshape(-1)
    if score_arr.shape != tp_arr.shape:
        raise ValueError(
            "Expected scores and is_true_positive of equal length. "
            f"Received: len(scores)={score_arr.size}, len(is_true_positive)={tp_arr.size}")
    if not np.all(np.isfinite(score_arr)):
        raise ValueError("Expected finite scores. Received: scores with NaN/inf")
    if n_scans <= 0:
        raise ValueError(f"Expected n_scans > 0. Received: n_scans={n_scans}")
    if n_lesions < int(tp_arr.sum()):
        raise ValueError(
            f"Expected n_lesions >= number of true positives ({int(tp_arr.sum())}). "
            f"Received: n_lesions={n_lesions}")
    order = np.argsort(-score_arr, kind="stable")
    sorted_scores, sorted_tp = score_arr[order], tp_arr[order]
    cum_tp = np.cumsum(sorted_tp)
    cum_fp = np.cumsum(~sorted_tp)
    # last index of each run of equal scores = one threshold
    last = np.flatnonzero(np.r_[sorted_scores[1:] != sorted_scores[:-1], True]) \
        if sorted_scores.size else np.zeros(0, dtype=int)
    fps = np.r_[0.0, cum_fp[last] / n_scans]
    if n_lesions > 0:
        sens = np.r_[0.0, cum_tp[last] / n_lesions]
        at = np.interp(np.asarray(fp_rates, dtype=np.float64), fps, sens)
        cpm = float(np.mean(at))
    else:
        sens = np.full(fps.shape, np.nan)
        at = np.full(len(fp_rates), np.nan)
        cpm = float("nan")
    return {
        "fp_rates": [float(f) for f in fp_rates],
        "sensitivities": [float(s) for s in at],
        "cpm": cpm,
        "curve_fp_per_scan": [float(f) for f in fps],
        "curve_sensitivity": [float(s) for s in sens],
        "curve_thresholds": [float("inf")] + [float(sorted_scores[i]) for i in last],
    }


@dataclasses.dataclass(frozen=True)
class ScanMatch:
    """The candidates of one scan matched against its findings.

    Attributes:
        nodule_scores: float64 ``(N,)`` highest probability among the hits of each
            annotated nodule; NaN for a nodule that no candidate hits.
        false_positive_scores: float64 ``(F,)`` probabilities of the false positives.
        n_candidates: Candidates of the scan.
        n_ignored: Candidates that hit only excluded findings.
        n_double_hits: Hits beyond the first on a nodule (dropped).
    """

    nodule_scores: np.ndarray
    false_positive_scores: np.ndarray
    n_candidates: int
    n_ignored: int
    n_double_hits: int


def _table(value, *, name: str) -> np.ndarray:
    table = np.asarray(value if value is not None else np.zeros((0, 4)), dtype=np.float64)
    if table.size == 0:
        return np.zeros((0, 4))
    if table.ndim != 2 or table.shape[1] != 4 or not np.all(np.isfinite(table)):
        raise ValueError(
            f"Expected {name} to be a finite (N, 4) table. Received: {name}.shape={table.shape}"
        )
    return table


def _hits(candidates: np.ndarray, findings: np.ndarray) -> np.ndarray:
    """bool ``(C, N)``: candidate c lies strictly within the radius of finding n."""
    diameter = np.where(findings[:, 3] < 0, EXCLUDED_DEFAULT_DIAMETER_MM, findings[:, 3])
    d2 = np.sum((candidates[:, None, :3] - findings[None, :, :3]) ** 2, axis=-1)
    return d2 < (diameter[None, :] / 2.0) ** 2


def match_scan(nodules, candidates, *, excluded=None) -> ScanMatch:
    """Matches one scan's candidates to its annotated nodules and excluded findings.

    All coordinates in the same world convention and unit (LUNA16: LPS mm).

    Args:
        nodules: ``(N, 4)`` rows ``(x, y, z, diameter_mm)`` of the annotated nodules.
        candidates: ``(C, 4)`` rows ``(x, y, z, probability)``.
        excluded: ``(M, 4)`` rows ``(x, y, z, diameter_mm)`` of excluded findings, or None.

    Returns:
        A `ScanMatch` (rules in the module docstring).

    Raises:
        ValueError: A table that is not a finite (N, 4) array.
    """
    nodules = _table(nodules, name="nodules")
    candidates = _table(candidates, name="candidates")
    excluded = _table(excluded, name="excluded")
    hit_nodule = _hits(candidates, nodules)
    hit_excluded = _hits(candidates, excluded)
    probabilities = candidates[:, 3]
    scores = np.where(hit_nodule, probabilities[:, None], -np.inf).max(axis=0, initial=-np.inf)
    scores = np.where(np.isfinite(scores), scores, np.nan)
    on_nodule = hit_nodule.any(axis=1)
    on_excluded = hit_excluded.any(axis=1)
    return ScanMatch(
        nodule_scores=scores,
        false_positive_scores=probabilities[~on_nodule & ~on_excluded].copy(),
        n_candidates=int(candidates.shape[0]),
        n_ignored=int(np.count_nonzero(~on_nodule & on_excluded)),
        n_double_hits=int(np.maximum(hit_nodule.sum(axis=0) - 1, 0).sum()),
    )


def _check_bootstrap(n_bootstrap, seed, confidence) -> None:
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, numbers.Integral) or n_bootstrap < 0:
        raise ValueError(f"Expected n_bootstrap to be an integer >= 0. Received: n_bootstrap={n_bootstrap!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"Expected seed to be an integer >= 0. Received: seed={seed!r}")
    if not isinstance(confidence, numbers.Real) or not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"Expected confidence in (0, 1). Received: confidence={confidence!r}")


def _pooled(matches: Sequence[ScanMatch]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scores, TP flags and scan index of every scored entry (sorted by score, descending),
    and the number of nodules of each scan."""
    scores, flags, scans = [], [], []
    for index, match in enumerate(matches):
        detected = match.nodule_scores[np.isfinite(match.nodule_scores)]
        scores += [detected, match.false_positive_scores]
        flags += [np.ones(detected.size, bool), np.zeros(match.false_positive_scores.size, bool)]
        scans.append(np.full(detected.size + match.false_positive_scores.size, index))
    score = np.concatenate(scores) if scores else np.zeros(0)
    flag = np.concatenate(flags) if flags else np.zeros(0, bool)
    scan = np.concatenate(scans) if scans else np.zeros(0, int)
    order = np.argsort(-score, kind="stable")
    n_nodules = np.array([m.nodule_scores.size for m in matches], dtype=np.int64)
    return score[order], flag[order], scan[order], n_nodules


def _order_statistics(values: np.ndarray, confidence: float) -> tuple[float, float]:
    values = np.sort(values[np.isfinite(values)])
    if values.size == 0:
        return math.nan, math.nan
    tail = (1.0 - confidence) / 2.0
    low = values[int(math.floor(tail * values.size))]
    high = values[min(int(math.floor((1.0 - tail) * values.size)), values.size - 1)]
    return float(low), float(high)


def luna16_froc(matches: Sequence[ScanMatch] | Mapping[str, ScanMatch], *, n_bootstrap: int = 1000,
                seed: int = 0, confidence: float = 0.95) -> dict:
    """FROC, CPM and bootstrap intervals of matched scans (LUNA16 protocol).

    Args:
        matches: One `ScanMatch` per scan of the evaluation (scans without nodules or
            candidates included: they count in the FP-per-scan denominator).
        n_bootstrap: Bootstrap samples over scans (0: no intervals).
        seed: Seed of the resampling.
        confidence: Level of the intervals.

    Returns:
        dict with ``fp_rates`` (the seven), ``sensitivities`` (at them), ``cpm``,
        ``sensitivity_ci`` (``[low, high]`` per rate, or None), ``cpm_ci``, ``curve``
        (``fp_per_scan`` / ``sensitivity`` on `PLOT_FP_RATES`, with ``low`` / ``high``
        bands), counts (``n_scans``, ``n_nodules``, ``n_detected``, ``n_false_positives``,
        ``n_candidates``, ``n_ignored``, ``n_double_hits``) and ``bootstrap``
        (``samples``, ``valid_samples``, ``seed``, ``confidence``).

    Raises:
        ValueError: No scan, no annotated nodule at all, bad bootstrap options.
    """
    _check_bootstrap(n_bootstrap, seed, confidence)
    matches = list(matches.values()) if isinstance(matches, Mapping) else list(matches)
    if not matches:
        raise ValueError("Expected at least one scan to evaluate. Received: none")
    score, flag, scan, n_nodules = _pooled(matches)
    n_scans, n_total = len(matches), int(n_nodules.sum())
    if n_total == 0:
        raise ValueError("Expected at least one annotated nodule over all scans (sensitivity is "
                         "undefined otherwise). Received: none")
    point = froc(score, flag, n_lesions=n_total, n_scans=n_scans)
    grid = froc(score, flag, n_lesions=n_total, n_scans=n_scans, fp_rates=PLOT_FP_RATES)
    rates_at = [PLOT_FP_RATES.index(r) for r in FROC_FP_RATES]
    samples = np.full((n_bootstrap, len(PLOT_FP_RATES)), np.nan)
    rng = np.random.default_rng(seed)
    for b in range(n_bootstrap):
        counts = np.bincount(rng.integers(0, n_scans, n_scans), minlength=n_scans)
        lesions = int(counts @ n_nodules)
        if lesions == 0:
            continue
        weights = counts[scan]
        result = froc(np.repeat(score, weights), np.repeat(flag, weights), n_lesions=lesions,
                      n_scans=n_scans, fp_rates=PLOT_FP_RATES)
        samples[b] = result["sensitivities"]
    valid = samples[np.all(np.isfinite(samples), axis=1)]
    bands = [_order_statistics(valid[:, i], confidence) for i in range(len(PLOT_FP_RATES))]
    cpm_samples = valid[:, rates_at].mean(axis=1) if valid.size else np.zeros(0)
    with_ci = n_bootstrap > 0 and valid.shape[0] > 0
    return {
        "fp_rates": list(point["fp_rates"]),
        "sensitivities": list(point["sensitivities"]),
        "cpm": point["cpm"],
        "sensitivity_ci": [list(bands[i]) for i in rates_at] if with_ci else None,
        "cpm_ci": list(_order_statistics(cpm_samples, confidence)) if with_ci else None,
        "curve": {
            "fp_per_scan": list(PLOT_FP_RATES),
            "sensitivity": list(grid["sensitivities"]),
            "low": [b[0] for b in bands] if with_ci else None,
            "high": [b[1] for b in bands] if with_ci else None,
        },
        "n_scans": n_scans,
        "n_nodules": n_total,
        "n_detected": int(flag.sum()),
        "n_false_positives": int((~flag).sum()),
        "n_candidates": int(sum(m.n_candidates for m in matches)),
        "n_ignored": int(sum(m.n_ignored for m in matches)),
        "n_double_hits": int(sum(m.n_double_hits for m in matches)),
        "bootstrap": {"samples": int(n_bootstrap), "valid_samples": int(valid.shape[0]),
                      "seed": int(seed), "confidence": float(confidence)},
    }
