"""Tests for segmentation.froc: LUNA16 matching rules and hand-computed FROC/CPM."""

from __future__ import annotations

import numpy as np
import pytest

from segmentation.froc import PLOT_FP_RATES, luna16_froc, match_scan
from segmentation.metrics import FROC_FP_RATES

# Scan A: nodule N1 (r = 5 mm) hit twice, nodule N2 (r = 3 mm) missed by a candidate exactly
# on its radius (not a hit: strict), an excluded finding of unknown size (-1 -> 10 mm) hit
# once, one far candidate. Scan B: nodule N3 (r = 4) hit at 3 mm, missed at 5 mm, one far
# candidate. Scan C: no nodule, one candidate.
NODULES = {
    "A": [[0, 0, 0, 10.0], [50, 0, 0, 6.0]],
    "B": [[0, 0, 0, 8.0]],
    "C": [],
}
EXCLUDED = {"A": [[0, 50, 0, -1.0]]}
CANDIDATES = {
    "A": [[1, 0, 0, 0.9], [0, 2, 0, 0.6], [0, 51, 0, 0.95], [100, 0, 0, 0.7], [50, 3, 0, 0.99]],
    "B": [[0, 0, 5, 0.5], [0, 0, 3, 0.3], [20, 0, 0, 0.8]],
    "C": [[0, 0, 0, 0.4]],
}


def _matches(excluded=EXCLUDED):
    return {uid: match_scan(NODULES[uid], CANDIDATES[uid], excluded=excluded.get(uid))
            for uid in NODULES}


def test_match_scan_scores_double_hits_once_and_ignores_excluded_hits():
    match = _matches()["A"]
    np.testing.assert_array_equal(match.nodule_scores, [0.9, np.nan])
    np.testing.assert_array_equal(np.sort(match.false_positive_scores), [0.7, 0.99])
    assert (match.n_candidates, match.n_ignored, match.n_double_hits) == (5, 1, 1)


def test_candidate_on_a_nodule_and_an_excluded_finding_is_a_true_positive():
    match = match_scan([[0, 0, 0, 10.0]], [[1, 0, 0, 0.8]], excluded=[[2, 0, 0, 10.0]])
    np.testing.assert_array_equal(match.nodule_scores, [0.8])
    assert match.false_positive_scores.size == 0 and match.n_ignored == 0


def test_one_candidate_hitting_two_nodules_counts_for_both():
    match = match_scan([[0, 0, 0, 10.0], [4, 0, 0, 10.0]], [[2, 0, 0, 0.7]])
    np.testing.assert_array_equal(match.nodule_scores, [0.7, 0.7])


def test_hand_computed_sensitivities_and_cpm():
    # Pooled, by score: .99 FP, .9 TP, .8 FP, .7 FP, .5 FP, .4 FP, .3 TP; 3 nodules, 3 scans.
    # Curve (FP/scan, sens): (0,0) (1/3,0) (1/3,1/3) (2/3,1/3) (1,1/3) (4/3,1/3) (5/3,1/3) (5/3,2/3)
    result = luna16_froc(_matches(), n_bootstrap=0)
    expected = [0, 0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3]
    np.testing.assert_allclose(result["sensitivities"], expected, atol=1e-12)
    assert result["cpm"] == pytest.approx(8 / 21)
    assert result["fp_rates"] == list(FROC_FP_RATES)
    assert (result["n_scans"], result["n_nodules"], result["n_detected"]) == (3, 3, 2)
    assert (result["n_false_positives"], result["n_candidates"]) == (5, 9)
    assert (result["n_ignored"], result["n_double_hits"]) == (1, 1)
    assert result["sensitivity_ci"] is None and result["cpm_ci"] is None


def test_without_the_excluded_table_the_excluded_hit_is_a_false_positive():
    # .99 FP, .95 FP, .9 TP ...: (0,0) (1/3,0) (2/3,0) (2/3,1/3) (1,1/3) ... (2,1/3) (2,2/3)
    result = luna16_froc(_matches(excluded={}), n_bootstrap=0)
    np.testing.assert_allclose(result["sensitivities"], [0, 0, 0, 1 / 3, 2 / 3, 2 / 3, 2 / 3],
                               atol=1e-12)
    assert result["n_false_positives"] == 6 and result["n_ignored"] == 0


def test_bootstrap_of_identical_scans_collapses_to_the_point_estimate():
    scan = match_scan([[0, 0, 0, 10.0]], [[0, 0, 0, 0.9], [30, 0, 0, 0.5]])
    result = luna16_froc([scan] * 4, n_bootstrap=50, seed=3)
    for value, (low, high) in zip(result["sensitivities"], result["sensitivity_ci"]):
        assert low == pytest.approx(value) and high == pytest.approx(value)
    assert result["cpm_ci"] == pytest.approx([result["cpm"]] * 2)
    assert result["bootstrap"]["valid_samples"] == 50


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    first = luna16_froc(_matches(), n_bootstrap=200, seed=7)
    again = luna16_froc(_matches(), n_bootstrap=200, seed=7)
    assert first["sensitivity_ci"] == again["sensitivity_ci"]
    assert first["cpm_ci"] == again["cpm_ci"]
    # a resample made only of scan C (no nodule, p = 1/27) has no sensitivity: skipped
    assert 150 < first["bootstrap"]["valid_samples"] < 200
    low, high = first["cpm_ci"]
    assert low <= first["cpm"] <= high and low < high
    assert len(first["curve"]["sensitivity"]) == len(PLOT_FP_RATES)


def test_no_candidates_gives_zero_sensitivity():
    result = luna16_froc([match_scan([[0, 0, 0, 5.0]], None)], n_bootstrap=0)
    assert result["sensitivities"] == [0.0] * 7 and result["cpm"] == 0.0


def test_no_nodule_at_all_is_an_error():
    with pytest.raises(ValueError, match="at least one annotated nodule"):
        luna16_froc([match_scan(None, [[0, 0, 0, 0.5]])], n_bootstrap=0)


def test_no_scan_is_an_error():
    with pytest.raises(ValueError, match="at least one scan"):
        luna16_froc([], n_bootstrap=0)


@pytest.mark.parametrize("kwargs, match", [({"n_bootstrap": -1}, "n_bootstrap"),
                                           ({"seed": 1.5}, "seed"),
                                           ({"confidence": 1.0}, "confidence")])
def test_bad_bootstrap_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        luna16_froc(_matches(), **kwargs)


def test_bad_table_shape_is_an_error():
    with pytest.raises(ValueError, match="candidates"):
        match_scan([[0, 0, 0, 5.0]], [[0, 0, 0]])
