"""Known-value tests of segmentation.metrics on tiny hand-built masks."""
import itertools
import json
import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from segmentation import metrics as m

NAN = float("nan")


def _bar(length, on, *, shape=None):
    """(1, 1, length) mask with the listed k indices set."""
    mask = np.zeros((1, 1, length) if shape is None else shape, dtype=bool)
    mask[0, 0, list(on)] = True
    return mask


def _same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b)


# --------------------------------------------------------------------------- voxel level
@pytest.mark.parametrize("true_on, pred_on, expected", [
    # dice, iou, precision, sensitivity
    ((0, 1, 2, 3), (2, 3, 4, 5), (0.5, 1 / 3, 0.5, 0.5)),
    ((0, 1, 2, 3), (0, 1, 2, 3), (1.0, 1.0, 1.0, 1.0)),
    ((0, 1, 2, 3), (0,), (2 / 5, 1 / 4, 1.0, 1 / 4)),
    ((0, 1), (4, 5), (0.0, 0.0, 0.0, 0.0)),
])
def test_voxel_overlap_known_values(true_on, pred_on, expected):
    t, p = _bar(8, true_on), _bar(8, pred_on)
    got = (m.dice(t, p), m.iou(t, p), m.precision(t, p), m.sensitivity(t, p))
    assert got == pytest.approx(expected)


def test_volume_difference_uses_spacing():
    t, p = _bar(8, (0, 1, 2, 3)), _bar(8, (0, 1))
    got = m.volume_difference(t, p, spacing_mm=(1.0, 1.5, 2.0))
    assert got == pytest.approx({"volume_true_mm3": 12.0, "volume_pred_mm3": 6.0,
                                 "abs_volume_diff_mm3": 6.0, "rel_volume_diff": -0.5})
    assert m.volume_mm3(t, spacing_mm=(1.0, 1.5, 2.0)) == pytest.approx(12.0)


def test_hd95_two_voxels_2mm_apart():
    t, p = _bar(2, (0,)), _bar(2, (1,))
    assert m.hd95(t, p, spacing_mm=(1.0, 1.0, 2.0)) == pytest.approx(2.0)
    assert m.surface_dice(t, p, spacing_mm=(1.0, 1.0, 2.0), tolerance_mm=1.0) == 0.0
    assert m.surface_dice(t, p, spacing_mm=(1.0, 1.0, 2.0), tolerance_mm=2.0) == 1.0


def test_hd95_is_max_of_directed_95th_percentiles():
    # truth surface {0}; prediction surface {0, 5}: directed distances [0] and [0, 5]
    t, p = _bar(6, (0,)), _bar(6, (0, 5))
    to_pred, to_true = m.surface_distances(t, p, spacing_mm=(1, 1, 1))
    assert to_pred.tolist() == [0.0] and sorted(to_true.tolist()) == [0.0, 5.0]
    assert m.hd95(t, p, spacing_mm=(1, 1, 1)) == pytest.approx(0.95 * 5.0)
    assert m.surface_dice(t, p, spacing_mm=(1, 1, 1), tolerance_mm=1.0) == pytest.approx(2 / 3)


def test_surface_of_cube_excludes_interior_voxel():
    cube = np.zeros((5, 5, 5), dtype=bool)
    cube[1:4, 1:4, 1:4] = True
    to_pred, to_true = m.surface_distances(cube, cube, spacing_mm=(1, 1, 1))
    assert len(to_pred) == 26 and len(to_true) == 26 and to_pred.max() == 0.0
    # a cube filling the whole array: border voxels are surface too
    full = np.ones((3, 3, 3), dtype=bool)
    assert len(m.surface_distances(full, full, spacing_mm=(1, 1, 1))[0]) == 26


def _reference_hd95(t, p, spacing):
    """Independent brute force: erosion surface and all-pairs distances."""
    st = t & ~ndimage.binary_erosion(t, border_value=0)
    sp = p & ~ndimage.binary_erosion(p, border_value=0)
    d = cdist(np.argwhere(st) * spacing, np.argwhere(sp) * spacing)
    return max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95)), d


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hd95_and_surface_dice_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    spacing = np.array([0.7, 1.1, 2.5])
    t = ndimage.binary_dilation(rng.random((12, 11, 9)) > 0.93, iterations=1)
    p = ndimage.binary_dilation(rng.random((12, 11, 9)) > 0.93, iterations=1)
    expected, d = _reference_hd95(t, p, spacing)
    assert m.hd95(t, p, spacing_mm=spacing) == pytest.approx(expected)
    tol = 1.5
    within = (d.min(axis=1) <= tol).sum() + (d.min(axis=0) <= tol).sum()
    assert m.surface_dice(t, p, spacing_mm=spacing, tolerance_mm=tol) == pytest.approx(
        within / (d.shape[0] + d.shape[1]))


def test_cropping_does_not_change_results():
    t = np.zeros((6, 6, 6), dtype=bool)
    t[0:3, 0:3, 0:4] = True  # touches the array border
    p = np.roll(t, 1, axis=2)
    big_t = np.zeros((20, 21, 22), dtype=bool)
    big_p = np.zeros_like(big_t)
    big_t[0:6, 0:6, 0:6], big_p[0:6, 0:6, 0:6] = t, p
    a = m.evaluate_case(t, p, spacing_mm=(1, 2, 3))
    b = m.evaluate_case(big_t, big_p, spacing_mm=(1, 2, 3))
    for key in a.voxel:
        assert _same(a.voxel[key], b.voxel[key]), key


# --------------------------------------------------------------------------- empty cases
def test_both_empty_gives_nan_and_counts_as_empty_case():
    empty = np.zeros((4, 4, 4), dtype=bool)
    result = m.evaluate_case(empty, empty, spacing_mm=(1, 1, 1))
    for key in ("dice", "iou", "precision", "sensitivity", "hd95_mm", "surface_dice",
                "rel_volume_diff"):
        assert math.isnan(result.voxel[key]), key
    assert result.voxel["abs_volume_diff_mm3"] == 0.0
    assert result.both_empty and not result.false_positive_scan
    assert (result.n_lesions, result.n_components, result.n_false_positives) == (0, 0, 0)
    assert math.isnan(result.lesion_recall) and math.isnan(result.lesion_precision)


def test_empty_truth_with_prediction_is_false_positive_scan():
    empty = np.zeros((4, 4, 4), dtype=bool)
    pred = empty.copy()
    pred[1, 1, 1] = True
    result = m.evaluate_case(empty, pred, spacing_mm=(1, 1, 1))
    assert result.voxel["dice"] == 0.0 and result.voxel["iou"] == 0.0
    assert result.voxel["precision"] == 0.0 and math.isnan(result.voxel["sensitivity"])
    assert math.isnan(result.voxel["hd95_mm"]) and result.voxel["surface_dice"] == 0.0
    assert result.false_positive_scan and not result.both_empty
    assert result.n_false_positives == 1 and result.lesion_precision == 0.0


def test_empty_prediction_with_truth_scores_zero():
    empty = np.zeros((4, 4, 4), dtype=bool)
    truth = empty.copy()
    truth[1, 1, 1:3] = True
    result = m.evaluate_case(truth, empty, spacing_mm=(1, 1, 1))
    assert result.voxel["dice"] == 0.0 and result.voxel["sensitivity"] == 0.0
    assert math.isnan(result.voxel["precision"]) and math.isnan(result.voxel["hd95_mm"])
    assert result.voxel["rel_volume_diff"] == -1.0
    assert result.lesion_recall == 0.0 and not result.false_positive_scan


def test_all_empty_summary():
    empty = np.zeros((3, 3, 3), dtype=bool)
    results = [m.evaluate_case(empty, empty, spacing_mm=(1, 1, 1), case_id=str(i))
               for i in range(3)]
    s = m.summarize(results)
    assert s["n_cases"] == 3 and s["n_empty_cases"] == 3 and s["n_lesions"] == 0
    assert s["dice_mean"] is None and s["iou_mean"] is None
    assert s["lesion_recall"] is None and s["small_lesion_recall"] is None
    assert s["fp_per_scan"] == 0.0 and s["cpm"] is None and s["froc"] is None
    json.dumps(s, allow_nan=False)


def test_empty_cases_left_out_of_means_but_fp_scan_counts_zero():
    empty = np.zeros((3, 3, 3), dtype=bool)
    one = empty.copy()
    one[1, 1, 1] = True
    results = [m.evaluate_case(one, one, spacing_mm=(1, 1, 1)),      # dice 1
               m.evaluate_case(empty, empty, spacing_mm=(1, 1, 1)),  # NaN, left out
               m.evaluate_case(empty, one, spacing_mm=(1, 1, 1))]    # 0, FP scan
    s = m.summarize(results)
    assert s["dice_mean"] == pytest.approx(0.5) and s["iou_mean"] == pytest.approx(0.5)
    assert s["n_empty_cases"] == 1 and s["n_fp_scans"] == 1
    assert s["fp_per_scan"] == pytest.approx(1 / 3)


# --------------------------------------------------------------------------- lesion level
def test_two_lesions_one_found():
    t = _bar(10, (0, 1, 7, 8))
    p = _bar(10, (0, 1))
    r = m.evaluate_case(t, p, spacing_mm=(1, 1, 1))
    assert (r.n_lesions, r.n_detected, r.n_false_positives) == (2, 1, 0)
    assert r.lesion_recall == 0.5 and r.lesion_precision == 1.0
    assert r.lesion_f1 == pytest.approx(2 / 3)
    assert [les["detected"] for les in r.lesions] == [True, False]
    assert r.lesions[0]["dice"] == 1.0 and math.isnan(r.lesions[1]["dice"])


def test_lesion_split_into_two_components_counts_once_and_no_false_positive():
    t = _bar(8, (0, 1, 2, 3, 4))
    p = _bar(8, (0, 1, 2, 4))  # pieces {0,1,2} and {4}
    r = m.evaluate_case(t, p, spacing_mm=(1, 1, 1))
    assert (r.n_lesions, r.n_components, r.n_detected, r.n_false_positives) == (1, 2, 1, 0)
    assert r.lesion_recall == 1.0 and r.lesion_precision == 1.0
    assert r.lesions[0]["matched_component"] == 1  # the larger overlap
    assert r.lesions[0]["dice"] == pytest.approx(2 * 3 / (5 + 3))
    assert r.lesions[0]["iou"] == pytest.approx(3 / 5)
    assert [c["false_positive"] for c in r.components] == [False, False]
    assert [c["matched_lesion"] for c in r.components] == [1, None]


def test_two_lesions_touched_by_one_component():
    t = _bar(8, (0, 1, 2, 4, 5))  # lesions {0,1,2} and {4,5}
    p = _bar(8, (0, 1, 2, 3, 4, 5))  # one component over both
    r = m.evaluate_case(t, p, spacing_mm=(1, 1, 1))
    assert (r.n_lesions, r.n_components, r.n_detected, r.n_false_positives) == (2, 1, 1, 0)
    assert [les["detected"] for les in r.lesions] == [True, False]
    assert r.lesions[0]["dice"] == pytest.approx(2 * 3 / (3 + 6))
    assert r.lesions[0]["iou"] == pytest.approx(0.5)
    assert r.lesion_recall == 0.5 and r.lesion_precision == 1.0


def test_false_positive_component_far_from_truth():
    t = _bar(10, (0, 1))
    p = _bar(10, (0, 1, 5, 8))
    r = m.evaluate_case(t, p, spacing_mm=(1, 1, 1))
    assert (r.n_detected, r.n_components, r.n_false_positives) == (1, 3, 2)
    assert r.lesion_precision == pytest.approx(1 / 3)


def test_matching_maximises_total_overlap():
    # lesions A {0..5}, B {8, 9}; components Y {0, 1, 2} (A: 3) and X {4..8} (A: 2, B: 1):
    # Y-A + X-B (4 voxels) beats X-A (2), so both lesions are found
    t = _bar(10, (0, 1, 2, 3, 4, 5, 8, 9))
    p = _bar(10, (0, 1, 2, 4, 5, 6, 7, 8))
    r = m.evaluate_case(t, p, spacing_mm=(1, 1, 1))
    assert (r.n_lesions, r.n_components, r.n_detected, r.n_false_positives) == (2, 2, 2, 0)
    assert [les["matched_component"] for les in r.lesions] == [1, 2]


@pytest.mark.parametrize("connectivity, n_corner, n_edge", [(26, 1, 1), (18, 2, 1), (6, 2, 2)])
def test_connectivity(connectivity, n_corner, n_edge):
    corner = np.zeros((2, 2, 2), dtype=bool)
    corner[0, 0, 0] = corner[1, 1, 1] = True
    edge = np.zeros((2, 2, 2), dtype=bool)
    edge[0, 0, 0] = edge[1, 1, 0] = True
    assert m.label_components(corner, connectivity=connectivity)[1] == n_corner
    assert m.label_components(edge, connectivity=connectivity)[1] == n_edge
    r = m.evaluate_case(corner, corner, spacing_mm=(1, 1, 1), connectivity=connectivity)
    assert r.n_lesions == n_corner and r.settings["connectivity"] == connectivity


def test_iou_criterion_turns_weak_overlap_into_miss_and_false_positive():
    t = _bar(10, (0, 1, 2, 3, 4))
    p = _bar(10, (4, 5, 6, 7))  # overlap 1, IoU 1/8
    loose = m.evaluate_case(t, p, spacing_mm=(1, 1, 1))
    assert loose.n_detected == 1 and loose.n_false_positives == 0
    strict = m.evaluate_case(t, p, spacing_mm=(1, 1, 1), criterion="iou", iou_threshold=0.5)
    assert strict.n_detected == 0 and strict.n_false_positives == 1
    edge = m.evaluate_case(t, p, spacing_mm=(1, 1, 1), criterion="iou", iou_threshold=0.125)
    assert edge.n_detected == 1


def test_match_lesions_on_overlap_matrix():
    overlap = np.array([[5, 1], [0, 0]])
    out = m.match_lesions(overlap, [5, 3], [6, 1])
    assert out["pairs"] == [(0, 0)] and out["false_positive"] == [False, False]
    assert out["iou"] == [pytest.approx(5 / 6)] and out["dice"] == [pytest.approx(10 / 11)]


def test_lesion_properties_world_centroid_volume_and_diameter():
    mask = np.zeros((4, 5, 6), dtype=bool)
    mask[1, 2, 3] = True
    mask[1, 2, 4] = True
    affine = np.array([[-2.0, 0, 0, 10], [0, 2, 0, 20], [0, 0, 2, 30], [0, 0, 0, 1]])
    r = m.evaluate_case(mask, mask, spacing_mm=(2, 2, 2), affine=affine)
    lesion = r.lesions[0]
    assert lesion["centroid_mm"] == pytest.approx([10 - 2, 24, 30 + 7])
    assert lesion["volume_mm3"] == pytest.approx(16.0)
    assert lesion["diameter_mm"] == pytest.approx((6 * 16 / math.pi) ** (1 / 3))
    labels, n = m.label_components(mask)
    assert m.lesion_properties(labels, n, spacing_mm=(2, 2, 2), affine=affine) == [
        {k: lesion[k] for k in ("id", "n_voxels", "volume_mm3", "diameter_mm", "centroid_mm")}]


def test_centroid_without_affine_is_index_times_spacing():
    mask = _bar(4, (2,))
    r = m.evaluate_case(mask, mask, spacing_mm=(1, 1, 2.5))
    assert r.lesions[0]["centroid_mm"] == pytest.approx([0, 0, 5.0])


def test_public_functions_agree_with_evaluate_case():
    rng = np.random.default_rng(3)
    t = ndimage.binary_dilation(rng.random((10, 10, 10)) > 0.95)
    p = ndimage.binary_dilation(rng.random((10, 10, 10)) > 0.95)
    r = m.evaluate_case(t, p, spacing_mm=(1, 2, 1), tolerance_mm=2.0)
    assert r.voxel["dice"] == pytest.approx(m.dice(t, p))
    assert r.voxel["iou"] == pytest.approx(m.iou(t, p))
    assert r.voxel["hd95_mm"] == pytest.approx(m.hd95(t, p, spacing_mm=(1, 2, 1)))
    assert r.voxel["surface_dice"] == pytest.approx(
        m.surface_dice(t, p, spacing_mm=(1, 2, 1), tolerance_mm=2.0))
    labels_t, n_t = m.label_components(t)
    labels_p, n_p = m.label_components(p)
    assert r.n_lesions == n_t and r.n_components == n_p
    ov = m.overlap_matrix(labels_t, n_t, labels_p, n_p)
    brute = np.array([[np.sum((labels_t == i) & (labels_p == j)) for j in range(1, n_p + 1)]
                      for i in range(1, n_t + 1)])
    np.testing.assert_array_equal(ov, brute)


def test_matching_is_a_maximum_overlap_assignment_brute_force():
    rng = np.random.default_rng(7)
    for _ in range(20):
        overlap = rng.integers(0, 4, size=(3, 4)) * (rng.random((3, 4)) > 0.4)
        out = m.match_lesions(overlap, [20] * 3, [20] * 4)
        best = 0
        for perm in itertools.permutations(range(4), 3):
            best = max(best, sum(overlap[i, j] for i, j in enumerate(perm)))
        assert sum(overlap[i, j] for i, j in out["pairs"]) == best
        assert all(overlap[i, j] > 0 for i, j in out["pairs"])


# --------------------------------------------------------------------------- summary, sizes
def _single_voxel_case(spacing, detected):
    t = np.zeros((3, 3, 3), dtype=bool)
    t[1, 1, 1] = True
    return m.evaluate_case(t, t if detected else np.zeros_like(t), spacing_mm=(spacing,) * 3)


def test_small_lesion_recall_and_size_bins():
    # single voxel of side s: diameter = s * (6/pi)^(1/3) = 1.2407 s
    specs = [(2.0, True), (4.0, False), (7.0, False), (12.0, True), (20.0, True)]
    s = m.summarize([_single_voxel_case(sp, det) for sp, det in specs])
    assert s["n_lesions"] == 5 and s["lesion_recall"] == pytest.approx(3 / 5)
    assert s["small_lesion_recall"] == pytest.approx(1 / 3)  # 2.5, 5.0, 8.7 mm
    assert list(s["recall_by_size"]) == ["<3", "3-6", "6-10", "10-20", ">=20"]
    got = {k: (v["recall"], v["count"]) for k, v in s["recall_by_size"].items()}
    assert got == {"<3": (1.0, 1), "3-6": (0.0, 1), "6-10": (0.0, 1), "10-20": (1.0, 1),
                   ">=20": (1.0, 1)}
    s6 = m.summarize([_single_voxel_case(sp, det) for sp, det in specs], small_lesion_mm=6.0,
                     size_bins_mm=(4.0,))
    assert s6["small_lesion_recall"] == pytest.approx(0.5)
    assert {k: v["count"] for k, v in s6["recall_by_size"].items()} == {"<4": 1, ">=4": 4}


def test_summary_has_documented_keys_and_is_json_safe():
    s = m.summarize([_single_voxel_case(2.0, True)])
    for key in ("n_cases", "n_lesions", "n_empty_cases", "dice_mean", "iou_mean",
                "lesion_recall", "small_lesion_recall", "lesion_precision", "lesion_f1",
                "fp_per_scan", "recall_by_size", "cpm", "froc"):
        assert key in s
    json.dumps(s, allow_nan=False)


# --------------------------------------------------------------------------- FROC
def test_froc_known_values():
    out = m.froc([0.9, 0.8, 0.7, 0.6], [True, False, True, False], n_lesions=4, n_scans=2)
    assert out["sensitivities"] == pytest.approx([0.25, 0.25, 0.5, 0.5, 0.5, 0.5, 0.5])
    assert out["cpm"] == pytest.approx(3 / 7)


def test_froc_tied_scores_interpolate_linearly():
    out = m.froc([0.9, 0.9], [True, False], n_lesions=1, n_scans=1)
    assert out["sensitivities"] == pytest.approx([0.125, 0.25, 0.5, 1, 1, 1, 1])


def test_froc_undetected_lesions_cap_sensitivity():
    out = m.froc([0.5], [True], n_lesions=4, n_scans=1)
    assert out["sensitivities"] == pytest.approx([0.25] * 7) and out["cpm"] == 0.25


def test_froc_without_lesions_is_nan():
    out = m.froc([0.5], [False], n_lesions=0, n_scans=1)
    assert math.isnan(out["cpm"])


def test_froc_from_probability_maps_ignores_split_fragments():
    t = _bar(20, (0, 1, 2, 3, 10, 11))  # lesions {0..3} and {10, 11}
    p = _bar(20, (0, 1, 3, 16))  # fragments {0,1} and {3}; FP {16}; lesion 2 missed
    probs = np.zeros((1, 1, 20), dtype=np.float32)
    probs[0, 0, [0, 1, 3, 16]] = [0.7, 0.9, 0.95, 0.6]
    probs[0, 0, 11] = 0.3
    r = m.evaluate_case(t, p, spacing_mm=(1, 1, 1), probs=probs)
    assert [c["max_probability"] for c in r.components] == pytest.approx([0.9, 0.95, 0.6])
    assert [c["false_positive"] for c in r.components] == [False, False, True]
    assert r.lesions[0]["max_probability"] == pytest.approx(0.9)
    assert r.lesions[1]["max_probability"] is None
    assert r.lesions[1]["max_probability_in_lesion"] == pytest.approx(0.3)
    s = m.summarize([r])
    # candidates: TP 0.9, FP 0.6 -> points (0,0), (0,0.5), (1,0.5)
    assert s["froc"] == pytest.approx({k: 0.5 for k in
                                       ("0.125", "0.25", "0.5", "1", "2", "4", "8")})
    assert s["cpm"] == pytest.approx(0.5)


def test_froc_scan_without_components_needs_no_probabilities():
    t = _bar(4, (0, 1))
    with_probs = m.evaluate_case(t, t, spacing_mm=(1, 1, 1), probs=t * 0.8)
    no_pred = m.evaluate_case(t, np.zeros_like(t), spacing_mm=(1, 1, 1))
    s = m.summarize([with_probs, no_pred])
    assert s["cpm"] == pytest.approx(0.5)  # 1 of 2 lesions found, no FP


def test_summary_without_probabilities_has_no_cpm():
    s = m.summarize([_single_voxel_case(2.0, True)])
    assert s["cpm"] is None and s["froc"] is None


# --------------------------------------------------------------------------- bad input
def test_non_binary_mask_is_rejected_by_name():
    t = _bar(4, (0,)).astype(np.uint8)
    p = t * 2
    with pytest.raises(ValueError, match="mask_pred"):
        m.evaluate_case(t, p, spacing_mm=(1, 1, 1))
    with pytest.raises(ValueError, match="mask_true"):
        m.dice(np.full((1, 1, 2), 0.5), t[:, :, :2])


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="same shape"):
        m.dice(np.zeros((2, 2, 2), bool), np.zeros((2, 2, 3), bool))


def test_not_3d_is_rejected():
    with pytest.raises(ValueError, match="3D"):
        m.dice(np.zeros((2, 2), bool), np.zeros((2, 2), bool))


def test_nan_probabilities_are_rejected():
    t = _bar(4, (0,))
    probs = np.zeros((1, 1, 4), np.float32)
    probs[0, 0, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        m.evaluate_case(t, t, spacing_mm=(1, 1, 1), probs=probs)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        m.evaluate_case(t, t, spacing_mm=(1, 1, 1), probs=np.full((1, 1, 4), 2.0))
    with pytest.raises(ValueError, match="probs.shape"):
        m.evaluate_case(t, t, spacing_mm=(1, 1, 1), probs=np.zeros((1, 1, 3)))


@pytest.mark.parametrize("kwargs, message", [
    ({"connectivity": 4}, "connectivity"),
    ({"criterion": "centre"}, "criterion"),
    ({"criterion": "iou", "iou_threshold": 0.0}, "iou_threshold"),
    ({"tolerance_mm": -1.0}, "tolerance_mm"),
    ({"spacing_mm": (1, 0, 1)}, "spacing_mm"),
    ({"spacing_mm": (1, 1)}, "spacing_mm"),
    ({"affine": np.diag([2.0, 1, 1, 1])}, "affine"),
])
def test_bad_options_are_rejected_by_name(kwargs, message):
    t = _bar(4, (0,))
    options = {"spacing_mm": (1, 1, 1), **kwargs}
    with pytest.raises(ValueError, match=message):
        m.evaluate_case(t, t, **options)


def test_summarize_rejects_bad_input():
    with pytest.raises(ValueError, match="results"):
        m.summarize([])
    with pytest.raises(TypeError, match="CaseResult"):
        m.summarize([{"dice": 1.0}])
    with pytest.raises(ValueError, match="size_bins_mm"):
        m.summarize([_single_voxel_case(2.0, True)], size_bins_mm=(6.0, 3.0))
