"""Debug-mode checks (TensorFlow backend): NaN/Inf per component, label range.

The checks are ``tf.debugging.Assert`` ops chained with control dependencies,
so the first failing check (inputs first, then components in order, then the
total) stops the step with an ``InvalidArgumentError`` whose message names
the component and the training step. The step is read from a variable that
``losses.callbacks.LossWeightScheduler`` sets before each training batch
(``-1`` when no such callback runs). XLA drops ``Assert`` ops, so debug mode
needs ``model.compile(jit_compile=False)``; the callback enforces it.
"""

from __future__ import annotations

from typing import Any

import keras


def require_tensorflow(name: str) -> None:
    """Raises if debug mode is asked for under a backend without tf.debugging."""
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ValueError(
            "Expected the TensorFlow backend for debug mode (tf.debugging checks). "
            f"Received: debug=True for loss '{name}' with backend={backend!r}"
        )


def make_step_variable(name: str) -> keras.Variable:
    """A non-trainable int64 scalar holding the current training step."""
    return keras.Variable(-1, dtype="int64", trainable=False, name=f"{name}_debug_step")


def after(x: Any, deps: list) -> Any:
    import tensorflow as tf  # debug mode on the TensorFlow backend only

    if not deps:
        return x
    with tf.control_dependencies(deps):
        return tf.identity(x)


def check_inputs(y_true: Any, y_pred: Any, *, loss_name: str, step: keras.Variable):
    """Checks labels in [0, 1] and finite predictions; returns guarded tensors."""
    import tensorflow as tf  # debug mode on the TensorFlow backend only

    step_value = step.value
    labels_ok = tf.logical_and(
        tf.reduce_all(y_true >= 0.0), tf.reduce_all(y_true <= 1.0)
    )
    labels = tf.debugging.Assert(
        labels_ok,
        [
            f"lungseg debug ({loss_name}): Expected y_true labels in [0, 1]. Received: "
            "y_true min/max =",
            tf.reduce_min(y_true),
            tf.reduce_max(y_true),
            "at training step",
            step_value,
        ],
    )
    with tf.control_dependencies([labels]):
        preds = tf.debugging.Assert(
            tf.reduce_all(tf.math.is_finite(y_pred)),
            [
                f"lungseg debug ({loss_name}): Expected finite y_pred (model output). "
                "Received: NaN or Inf in y_pred at training step",
                step_value,
            ],
        )
    return after(y_true, [labels, preds]), after(y_pred, [labels, preds])


def check_finite(value: Any, *, component: str, loss_name: str, step: keras.Variable) -> Any:
    """Stops the step if ``value`` has a NaN/Inf; the error names ``component``."""
    import tensorflow as tf  # debug mode on the TensorFlow backend only

    check = tf.debugging.Assert(
        tf.reduce_all(tf.math.is_finite(value)),
        [
            f"lungseg debug ({loss_name}): loss component={component} is NaN or Inf "
            "at training step",
            step.value,
        ],
    )
    return after(value, [check])
