"""The shared argument checks: known values, the bad argument named in the message."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from segmentation.validation import (check_affine, check_bool, check_float, check_int, check_range,
                                     check_shape, check_spacing, json_safe)


class _Custom(ValueError):
    pass


@pytest.mark.parametrize("value, expected", [(3, 3), (np.int16(4), 4), (0, 0)])
def test_check_int_returns_python_int(value, expected):
    out = check_int(value, name="n", minimum=0)
    assert out == expected and type(out) is int


@pytest.mark.parametrize("value", [True, np.bool_(True), 1.0, "1", None])
def test_check_int_rejects_non_integers(value):
    with pytest.raises(TypeError, match="Expected n to be an integer. Received: n="):
        check_int(value, name="n")


@pytest.mark.parametrize("value, kwargs, match", [
    (-1, {"minimum": 0}, r"Expected seed >= 0\. Received: seed=-1"),
    (21, {"minimum": 0, "maximum": 20}, r"Expected seed in \[0, 20\]\. Received: seed=21"),
    (5, {"maximum": 4}, r"Expected seed <= 4\. Received: seed=5"),
])
def test_check_int_bounds(value, kwargs, match):
    with pytest.raises(ValueError, match=match):
        check_int(value, name="seed", **kwargs)


def test_check_int_raises_the_given_error_class():
    with pytest.raises(_Custom, match="k >= 1"):
        check_int(0, name="k", minimum=1, error=_Custom)


@pytest.mark.parametrize("value, kwargs", [
    (0.5, {"minimum": 0.0, "maximum": 1.0, "low_open": True, "high_open": True}),
    (0, {"minimum": 0.0}),
    (np.float32(2.5), {}),
])
def test_check_float_accepts(value, kwargs):
    assert check_float(value, name="x", **kwargs) == float(value)


@pytest.mark.parametrize("value, kwargs, match", [
    (0.0, {"minimum": 0.0, "low_open": True}, r"Expected x > 0\.0\. Received: x=0\.0"),
    (1.0, {"minimum": 0.0, "maximum": 1.0, "high_open": True}, r"Expected x in \[0\.0, 1\.0\)"),
    (math.nan, {}, "Expected x to be a finite number"),
    (math.inf, {"minimum": 0.0}, "Expected x to be a finite number"),
])
def test_check_float_rejects(value, kwargs, match):
    with pytest.raises(ValueError, match=match):
        check_float(value, name="x", **kwargs)


@pytest.mark.parametrize("value", [True, "1.0", None])
def test_check_float_rejects_non_numbers(value):
    with pytest.raises(TypeError, match="Expected x to be a number"):
        check_float(value, name="x")


def test_check_range_known_values():
    assert check_range((1, 2), name="r") == (1.0, 2.0)
    with pytest.raises(ValueError, match=r"low <= high\. Received: r=\(2, 1\)"):
        check_range((2, 1), name="r")
    with pytest.raises(ValueError, match="low > 0"):
        check_range((0.0, 1.0), name="r", positive=True)
    with pytest.raises(ValueError, match="low >= 0"):
        check_range((-1.0, 1.0), name="r", minimum=0.0)
    with pytest.raises(ValueError, match=r"\(low, high\) pair\. Received: r=\(1\.0,\)"):
        check_range((1.0,), name="r")


def test_check_bool():
    assert check_bool(np.bool_(False), name="flag") is False
    with pytest.raises(TypeError, match="Expected flag to be true or false. Received: flag=1"):
        check_bool(1, name="flag")


def test_check_shape():
    assert check_shape([2, np.int64(3), 4]) == (2, 3, 4)
    assert check_shape((5, 6), name="window", ndim=2) == (5, 6)
    for bad in ([2, 3], [2, 0, 4], [2, 3.0, 4]):
        with pytest.raises(ValueError, match="Expected window to be 3 positive integers"):
            check_shape(bad, name="window")
    with pytest.raises(TypeError, match="shape"):
        check_shape(3)


def test_check_spacing():
    assert check_spacing((1, 0.5, np.float32(2.5))) == (1.0, 0.5, 2.5)
    for bad in ((1.0, 0.0, 1.0), (1.0, math.nan, 1.0), (1.0, 1.0), "abc", (True, 1.0, 1.0), 3.0):
        with pytest.raises(ValueError, match="Expected target_spacing_mm to be 3 positive finite numbers"):
            check_spacing(bad, name="target_spacing_mm")


def test_check_affine_returns_a_read_only_float64_copy():
    source = np.diag([2, 1, 3, 1])
    out = check_affine(source, name="source_affine")
    assert out.dtype == np.float64 and not out.flags.writeable
    np.testing.assert_array_equal(out, source)


@pytest.mark.parametrize("affine, match", [
    (np.eye(3), r"finite \(4, 4\) affine\. Received: a with shape \(3, 3\)"),
    (np.diag([1.0, np.nan, 1.0, 1.0]), "finite"),
    (np.zeros((4, 4)), "invertible"),
    (np.diag([1.0, 1.0, 1.0, 2.0]), r"last row \[0, 0, 0, 1\]"),
    ("abc", "a to be a finite"),
])
def test_check_affine_rejects(affine, match):
    with pytest.raises(ValueError, match=match):
        check_affine(affine, name="a")


def test_json_safe_known_values():
    data = {1: [np.float32(0.5), math.nan, -math.inf, (np.int64(2), np.bool_(True))],
            "path": Path("a/b"), "nested": {"x": np.float64(math.inf)}}
    out = json_safe(data)
    assert out == {"1": [0.5, None, None, [2, True]], "path": "a/b", "nested": {"x": None}}
    assert type(out["1"][3][0]) is int and type(out["1"][3][1]) is bool
    json.dumps(out, allow_nan=False)
