"""Array plumbing of the shape contract: padding undone, batch and channel axes.

:func:`unpad` (the undo of a :class:`segmentation.geometry_steps.Pad`), :func:`add_channel_axis`
(the one place a channel axis is added: a training sample, a batch of sliding windows) with
:func:`to_model_input` (a single case: batch and channel axes) and :func:`from_model_output`
(the one place they are removed). `segmentation.alignment` re-exports all four.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "unpad",
    "add_channel_axis",
    "to_model_input",
    "from_model_output",
]


def _check_pad_width(pad_width: Any, *, ndim: int | None, name: str = "pad_width") -> tuple[tuple[int, int], ...]:
    try:
        pairs = tuple(tuple(p) for p in pad_width)
    except TypeError:
        raise ValueError(f"Expected {name} as (before, after) pairs. Received: {name}={pad_width!r}") from None
    ok = all(
        len(p) == 2 and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0 for v in p)
        for p in pairs
    )
    if not ok or (ndim is not None and len(pairs) != ndim):
        expected = f"{ndim} " if ndim is not None else ""
        raise ValueError(
            f"Expected {name} as {expected}(before, after) pairs of non-negative ints. Received: {name}={pad_width!r}"
        )
    return tuple((int(a), int(b)) for a, b in pairs)


def unpad(array: np.ndarray, pad_width: Sequence[Sequence[int]]) -> np.ndarray:
    """Removes the padding of a :class:`Pad` step (leading axes; trailing axes untouched).

    Args:
        array: ndarray with at least ``len(pad_width)`` axes.
        pad_width: (before, after) pairs of non-negative ints.

    Returns:
        A view of ``array`` without the padding.

    Raises:
        ValueError: When the padding does not fit the array.
    """
    array = np.asarray(array)
    pairs = _check_pad_width(pad_width, ndim=None)
    if len(pairs) > array.ndim or any(a + b >= n for (a, b), n in zip(pairs, array.shape)):
        raise ValueError(
            f"Expected pad_width smaller than the array on every padded axis. "
            f"Received: pad_width={pairs}, array.shape={array.shape}"
        )
    return array[tuple(slice(a, n - b) for (a, b), n in zip(pairs, array.shape))]


def add_channel_axis(array: np.ndarray) -> np.ndarray:
    """Adds a trailing channel axis of size 1: ``(*shape)`` -> ``(*shape, 1)``.

    The one place a channel axis is added: a training sample ``(*patch_size)`` (tf.data adds
    the batch axis), a stack of sliding windows ``(B, *window)``, a single case in
    :func:`to_model_input`.

    Args:
        array: ndarray of any shape.

    Returns:
        A view of ``array`` with one more axis, same dtype.
    """
    return np.asarray(array)[..., np.newaxis]


def to_model_input(array: np.ndarray) -> np.ndarray:
    """Adds the batch (and channel) axes: (I, J, K) -> (1, I, J, K, 1); (I, J, K, C) -> (1, I, J, K, C).

    The batch axis of a single case; the channel axis through :func:`add_channel_axis`.

    Args:
        array: Real ndarray of shape (I, J, K) or (I, J, K, C).

    Returns:
        C-contiguous float32 ndarray of shape (1, I, J, K, C).

    Raises:
        ValueError: For any other number of axes.
    """
    array = np.asarray(array)
    if array.ndim == 3:
        array = add_channel_axis(array)
    elif array.ndim != 4:
        raise ValueError(f"Expected array of shape (I, J, K) or (I, J, K, C). Received: array.shape={array.shape}")
    return np.ascontiguousarray(array[np.newaxis], dtype=np.float32)


def from_model_output(array: np.ndarray) -> np.ndarray:
    """Removes the batch (and single channel) axes: (1, I, J, K, 1) -> (I, J, K).

    The one place where these axes are removed; (1, I, J, K, C) with C > 1 gives (I, J, K, C).

    Args:
        array: ndarray of shape (1, I, J, K, C) (a model output for one case).

    Returns:
        ndarray of shape (I, J, K) (or (I, J, K, C)), same dtype.

    Raises:
        ValueError: For another rank or a batch of more than one case.
    """
    array = np.asarray(array)
    if array.ndim != 5 or array.shape[0] != 1:
        raise ValueError(f"Expected array of shape (1, I, J, K, C). Received: array.shape={array.shape}")
    return array[0, ..., 0] if array.shape[-1] == 1 else array[0]
