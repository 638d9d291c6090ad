"""The argument checks every layer shares: one "Expected ... Received: name=value" each.

Each check takes the value and its ``name`` (the word the message uses), returns the value
in its plain Python form (``int``, ``float``, a tuple, a float64 array) and raises
``TypeError`` for a value of the wrong kind or ``ValueError`` (or the ``error`` class given,
e.g. ``ConfigError``) for one out of range. A value is checked once, where it enters: a
config by its loader and spec, a public function's argument at the function.

``json_safe`` turns what a run records (NumPy scalars, paths, NaN) into what strict JSON
(``allow_nan=False``) takes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "check_affine",
    "check_bool",
    "check_float",
    "check_int",
    "check_range",
    "check_shape",
    "check_spacing",
    "json_safe",
]


def _is_int(value: Any) -> bool:
    return not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, np.integer))


def _is_number(value: Any) -> bool:
    return not isinstance(value, (bool, np.bool_)) and isinstance(
        value, (int, float, np.integer, np.floating))


def _bounds(minimum: float | None, maximum: float | None, *, low_open: bool = False,
            high_open: bool = False) -> str:
    if maximum is None:
        return f"{'>' if low_open else '>='} {minimum}"
    if minimum is None:
        return f"{'<' if high_open else '<='} {maximum}"
    return f"in {'(' if low_open else '['}{minimum}, {maximum}{')' if high_open else ']'}"


def _inside(value: float, minimum: float | None, maximum: float | None, *, low_open: bool,
            high_open: bool) -> bool:
    if minimum is not None and (value <= minimum if low_open else value < minimum):
        return False
    return maximum is None or not (value >= maximum if high_open else value > maximum)


def check_int(value: Any, *, name: str, minimum: int | None = None, maximum: int | None = None,
              error: type[Exception] = ValueError) -> int:
    """Checks an integer (Python or NumPy, not bool) within ``[minimum, maximum]``.

    Args:
        value: the value to check.
        name: the argument's name, used in the message.
        minimum: smallest allowed value; None for no bound.
        maximum: largest allowed value; None for no bound.
        error: the exception class for a value out of bounds.

    Returns:
        ``value`` as a Python ``int``.

    Raises:
        TypeError: ``value`` is not an integer.
        ValueError: (or ``error``) ``value`` is outside the bounds.
    """
    if not _is_int(value):
        raise TypeError(f"Expected {name} to be an integer. Received: {name}={value!r}")
    if not _inside(int(value), minimum, maximum, low_open=False, high_open=False):
        raise error(f"Expected {name} {_bounds(minimum, maximum)}. Received: {name}={value!r}")
    return int(value)


def check_float(value: Any, *, name: str, minimum: float | None = None,
                maximum: float | None = None, low_open: bool = False, high_open: bool = False,
                error: type[Exception] = ValueError) -> float:
    """Checks a finite real number (int or float, Python or NumPy, not bool) within bounds.

    Args:
        value: the value to check.
        name: the argument's name, used in the message.
        minimum: lower bound; None for none.
        maximum: upper bound; None for none.
        low_open: True to exclude ``minimum`` itself.
        high_open: True to exclude ``maximum`` itself.
        error: the exception class for a non-finite or out-of-bounds value.

    Returns:
        ``value`` as a Python ``float``.

    Raises:
        TypeError: ``value`` is not a number.
        ValueError: (or ``error``) ``value`` is not finite or outside the bounds.
    """
    if not _is_number(value):
        raise TypeError(f"Expected {name} to be a number. Received: {name}={value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise error(f"Expected {name} to be a finite number. Received: {name}={value!r}")
    if not _inside(number, minimum, maximum, low_open=low_open, high_open=high_open):
        bounds = _bounds(minimum, maximum, low_open=low_open, high_open=high_open)
        raise error(f"Expected {name} {bounds}. Received: {name}={value!r}")
    return number


def check_range(value: Any, *, name: str, positive: bool = False, minimum: float = -math.inf,
                error: type[Exception] = ValueError) -> tuple[float, float]:
    """Checks a finite ``(low, high)`` pair with ``low <= high``.

    Args:
        value: the pair to check.
        name: the argument's name, used in the message.
        positive: also require ``low > 0``.
        minimum: also require ``low >= minimum``.
        error: the exception class raised.

    Returns:
        The pair as two Python floats.

    Raises:
        ValueError: (or ``error``) not a pair of finite numbers in order within the bounds.
    """
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise error(f"Expected {name} to be a (low, high) pair. Received: {name}={value!r}") from None
    if (not (math.isfinite(low) and math.isfinite(high)) or low > high or low < minimum
            or (positive and low <= 0)):
        raise error(
            f"Expected {name} to be a finite (low, high) pair with low <= high"
            f"{' and low > 0' if positive else ''}"
            f"{f' and low >= {minimum:g}' if minimum > -math.inf else ''}. Received: {name}={value!r}"
        )
    return low, high


def check_bool(value: Any, *, name: str) -> bool:
    """Checks a ``bool`` (Python or NumPy); 0 and 1 are not booleans here.

    Raises:
        TypeError: ``value`` is not a boolean.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"Expected {name} to be true or false. Received: {name}={value!r}")
    return bool(value)


def _items(value: Any, *, ndim: int, message: str, not_a_sequence: type[Exception]) -> tuple:
    """``value`` as a tuple of ``ndim`` entries; a string is not a sequence here."""
    if isinstance(value, (str, bytes)):
        raise not_a_sequence(message)
    try:
        items = tuple(value)
    except TypeError:
        raise not_a_sequence(message) from None
    if len(items) != ndim:
        raise ValueError(message)
    return items


def check_shape(value: Any, *, name: str = "shape", ndim: int = 3) -> tuple[int, ...]:
    """Checks ``ndim`` positive integers (a spatial shape or a window).

    Returns:
        The shape as a tuple of Python ints.

    Raises:
        TypeError: ``value`` is not a sequence.
        ValueError: wrong length, or an entry that is not a positive integer.
    """
    message = f"Expected {name} to be {ndim} positive integers. Received: {name}={value!r}"
    items = _items(value, ndim=ndim, message=message, not_a_sequence=TypeError)
    if not all(_is_int(s) and s >= 1 for s in items):
        raise ValueError(message)
    return tuple(int(s) for s in items)


def check_spacing(value: Any, *, name: str = "spacing_mm", ndim: int = 3) -> tuple[float, ...]:
    """Checks a voxel spacing: ``ndim`` positive finite numbers (mm).

    Returns:
        The spacing as a tuple of Python floats.

    Raises:
        ValueError: not a sequence of ``ndim`` positive finite numbers.
    """
    message = f"Expected {name} to be {ndim} positive finite numbers (mm). Received: {name}={value!r}"
    items = _items(value, ndim=ndim, message=message, not_a_sequence=ValueError)
    if not all(_is_number(v) and math.isfinite(float(v)) and float(v) > 0 for v in items):
        raise ValueError(message)
    return tuple(float(v) for v in items)


def check_affine(value: Any, *, name: str = "affine") -> np.ndarray:
    """Checks a finite, invertible (4, 4) voxel -> world affine with last row [0, 0, 0, 1].

    Returns:
        A float64 (4, 4) read-only copy.

    Raises:
        ValueError: wrong shape, non-finite entries, a singular 3x3 part or a bad last row.
    """
    try:
        matrix = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"Expected {name} to be a finite (4, 4) affine. Received: {name}={value!r}") from None
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        raise ValueError(
            f"Expected {name} to be a finite (4, 4) affine. Received: {name} with shape {matrix.shape}"
            + (f", {name}={matrix.tolist()}" if matrix.shape == (4, 4) else "")
        )
    if not np.allclose(matrix[3], [0.0, 0.0, 0.0, 1.0]) or abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
        raise ValueError(
            f"Expected {name} to be an invertible affine with last row [0, 0, 0, 1]. "
            f"Received: {name}={matrix.tolist()}"
        )
    matrix.setflags(write=False)
    return matrix


def json_safe(value: Any) -> Any:
    """Converts ``value`` into what ``json.dumps(..., allow_nan=False)`` takes.

    NaN and +-inf become None (JSON ``null``), NumPy scalars their Python value, paths
    strings, tuples lists and mapping keys strings; containers are converted recursively.
    """
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value
