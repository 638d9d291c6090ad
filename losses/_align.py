"""Explicit shape alignment shared by every lungseg loss.

Every loss calls :func:`align_shapes` first, so the rules below hold for all
of them, and nothing is ever broadcast silently:

* ``y_pred`` is the model output, channels-last with one channel:
  ``(N, D, H, W, 1)`` (3D) or ``(N, H, W, 1)`` (2D).
* ``y_true`` is either the same shape, or the same shape without the channel
  axis: ``(N, D, H, W)`` / ``(N, H, W)``. The channel axis is added here, and
  only here.
* Any other rank, a channel axis other than 1, or a batch/spatial mismatch is a
  ``ValueError`` raised at trace time that names both shapes. Dimensions that
  are unknown at trace time (``None``) are checked when the step runs
  (TensorFlow backend; JAX always traces with concrete shapes).
* Both tensors come back as float32, whatever the input dtype (bool, uint8,
  float16 under mixed precision, ...).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

COMPUTE_DTYPE = "float32"


def _static_shape(x: Any) -> tuple:
    return tuple(x.shape)


def _shape_message(y_true_shape: tuple, y_pred_shape: tuple, expected: str) -> str:
    return (
        f"Expected {expected}. Received: y_true.shape={y_true_shape}, "
        f"y_pred.shape={y_pred_shape}"
    )


def align_shapes(y_true: Any, y_pred: Any) -> tuple[Any, Any]:
    """Aligns a label tensor with a one-channel prediction tensor.

    Args:
        y_true: Labels, array-like of shape ``(N, *spatial)`` or
            ``(N, *spatial, 1)`` with 2 or 3 spatial axes; any numeric or bool
            dtype.
        y_pred: Logits or probabilities of shape ``(N, *spatial, 1)``; any float
            dtype.

    Returns:
        ``(y_true, y_pred)``, both float32 tensors of shape
        ``(N, *spatial, 1)``.

    Raises:
        ValueError: if a rank, the channel axis or a batch/spatial size does not
            match; the message names both shapes.
    """
    y_pred = ops.cast(ops.convert_to_tensor(y_pred), COMPUTE_DTYPE)
    y_true = ops.cast(ops.convert_to_tensor(y_true), COMPUTE_DTYPE)
    pred_shape = _static_shape(y_pred)
    true_shape = _static_shape(y_true)
    if len(pred_shape) not in (4, 5):
        raise ValueError(
            _shape_message(
                true_shape,
                pred_shape,
                "y_pred of shape (N, H, W, 1) or (N, D, H, W, 1) (channels-last, "
                "one channel)",
            )
        )
    if pred_shape[-1] not in (1, None):
        raise ValueError(
            _shape_message(
                true_shape, pred_shape, "y_pred with a single channel (last axis of size 1)"
            )
        )
    if len(true_shape) == len(pred_shape) - 1:
        y_true = ops.expand_dims(y_true, axis=-1)
    elif len(true_shape) == len(pred_shape):
        if true_shape[-1] not in (1, None):
            raise ValueError(
                _shape_message(
                    true_shape,
                    pred_shape,
                    "y_true of shape (N, *spatial) or (N, *spatial, 1) matching y_pred",
                )
            )
    else:
        raise ValueError(
            _shape_message(
                true_shape,
                pred_shape,
                "y_true of shape (N, *spatial) or (N, *spatial, 1) matching y_pred "
                "(N, *spatial, 1)",
            )
        )
    aligned_true_shape = _static_shape(y_true)
    dynamic = False
    for dim_true, dim_pred in zip(aligned_true_shape[:-1], pred_shape[:-1]):
        if dim_true is None or dim_pred is None:
            dynamic = True
        elif dim_true != dim_pred:
            raise ValueError(
                _shape_message(
                    true_shape,
                    pred_shape,
                    "y_true and y_pred to have the same batch and spatial shape "
                    "(no broadcasting)",
                )
            )
    if dynamic and keras.backend.backend() == "tensorflow":
        y_true = _assert_same_shape_tf(y_true, y_pred, true_shape, pred_shape)
    return y_true, y_pred


def _assert_same_shape_tf(y_true, y_pred, true_shape, pred_shape):
    """Runtime shape check for dimensions unknown at trace time (TF only)."""
    import tensorflow as tf  # TensorFlow backend only: the losses are keras.ops otherwise

    check = tf.debugging.assert_equal(
        tf.shape(y_true)[:-1],
        tf.shape(y_pred)[:-1],
        message=_shape_message(
            true_shape, pred_shape, "y_true and y_pred to have the same batch and spatial shape"
        ),
    )
    with tf.control_dependencies([check]):
        return tf.identity(y_true)


def reduction_axes(x: Any, *, batch: bool = False) -> tuple[int, ...]:
    """Axes to sum over: all but the batch axis, or all of them if ``batch``."""
    start = 0 if batch else 1
    return tuple(range(start, len(x.shape)))
