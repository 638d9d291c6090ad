"""Tests of segmentation/thresholding.py: threshold, hysteresis and minimum component volume."""

from __future__ import annotations

import numpy as np
import pytest

from segmentation.thresholding import effective_grow_threshold, probabilities_to_mask


def test_effective_grow_threshold_only_below_the_threshold():
    assert effective_grow_threshold(0.5, 0.25) == 0.25
    assert effective_grow_threshold(0.5, None) is None
    assert effective_grow_threshold(0.5, 0.5) is None
    assert effective_grow_threshold(0.4, 0.6) is None


def test_predictor_reexports_the_same_rule():
    from pipelines import predictor

    assert predictor.probabilities_to_mask is probabilities_to_mask


def test_probabilities_to_mask_threshold_is_inclusive():
    probs = np.array([0.49, 0.5, 0.51], np.float32).reshape(1, 1, 3)
    np.testing.assert_array_equal(probabilities_to_mask(probs, threshold=0.5)[0, 0], [False, True, True])


def test_probabilities_to_mask_removes_small_components():
    probs = np.zeros((10, 10, 10), np.float32)
    probs[0, 0, 0] = 0.9  # 1 voxel = 2 mm3
    probs[5:7, 5:7, 5:7] = 0.9  # 8 voxels = 16 mm3
    mask = probabilities_to_mask(probs, spacing_mm=(2.0, 1.0, 1.0), min_size_mm3=10.0)
    assert mask.sum() == 8 and not mask[0, 0, 0]


def test_probabilities_to_mask_empty_prediction_stays_empty():
    mask = probabilities_to_mask(np.zeros((3, 3, 3)), spacing_mm=(1, 1, 1), min_size_mm3=5.0)
    assert mask.dtype == bool and not mask.any()


def _two_blobs():
    """A lesion whose core reaches 0.8 inside a rim of 0.3, and a rim-only blob far from it."""
    probs = np.zeros((12, 12, 12), np.float32)
    probs[1:6, 1:6, 1:6] = 0.3
    probs[3, 3, 3] = 0.8
    probs[8:11, 8:11, 8:11] = 0.3
    return probs


def test_grow_threshold_grows_a_found_lesion_into_its_rim_and_finds_no_new_one():
    probs = _two_blobs()
    assert probabilities_to_mask(probs, threshold=0.5).sum() == 1
    mask = probabilities_to_mask(probs, threshold=0.5, grow_threshold=0.25)
    assert mask.sum() == 125 and mask[1:6, 1:6, 1:6].all() and not mask[8:11, 8:11, 8:11].any()


def test_grow_threshold_is_inclusive_and_off_at_or_above_the_threshold():
    probs = _two_blobs()
    assert probabilities_to_mask(probs, threshold=0.5, grow_threshold=0.3).sum() == 125
    assert probabilities_to_mask(probs, threshold=0.5, grow_threshold=0.31).sum() == 1
    np.testing.assert_array_equal(probabilities_to_mask(probs, threshold=0.25, grow_threshold=0.4),
                                  probs >= 0.25)


def test_minimum_size_sees_the_grown_component():
    probs = _two_blobs()  # 1 mm voxels: the core alone is 1 mm3, the grown lesion 125 mm3
    kwargs = {"threshold": 0.5, "spacing_mm": (1.0, 1.0, 1.0), "min_size_mm3": 8.0}
    assert not probabilities_to_mask(probs, **kwargs).any()
    assert probabilities_to_mask(probs, grow_threshold=0.25, **kwargs).sum() == 125


def test_grow_threshold_with_an_empty_prediction_stays_empty():
    probs = np.full((4, 4, 4), 0.3, np.float32)
    assert not probabilities_to_mask(probs, threshold=0.5, grow_threshold=0.2).any()


@pytest.mark.parametrize(
    "kwargs, match",
    [({"threshold": 1.0}, "threshold"), ({"connectivity": 4}, "connectivity"),
     ({"min_size_mm3": 1.0}, "spacing_mm"), ({"grow_threshold": 0.0}, "grow_threshold"),
     ({"grow_threshold": 1.5}, "grow_threshold")],
)
def test_probabilities_to_mask_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        probabilities_to_mask(np.ones((2, 2, 2)), **kwargs)
