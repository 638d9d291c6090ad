"""Base class shared by the binary segmentation losses."""

from __future__ import annotations

from typing import Any

import keras

from losses import _debug
from losses._align import align_shapes
from segmentation.validation import check_bool


class BinaryLoss(keras.losses.Loss):
    """A binary segmentation loss: align, compute per sample, optional checks.

    Subclasses implement :meth:`per_sample` on aligned float32 tensors and
    extend :meth:`get_config`. ``call`` returns one value per sample, shape
    ``(N,)``; Keras then reduces (default: mean over the batch).

    Args:
        from_logits: ``y_pred`` holds logits (default) or probabilities.
        debug: check labels in [0, 1], finite inputs and a finite loss with
            ``tf.debugging`` (TensorFlow backend only).
        reduction: a Keras reduction.
        name: the loss name.
    """

    short_name = "loss"

    def __init__(self, *, from_logits: bool = True, debug: bool = False,
                 reduction: str | None = "sum_over_batch_size", name: str | None = None):
        super().__init__(name=name, reduction=reduction, dtype="float32")
        self.from_logits = check_bool(from_logits, name="from_logits")
        self.debug = check_bool(debug, name="debug")
        if self.debug:
            _debug.require_tensorflow(self.name)
            self.debug_step = _debug.make_step_variable(self.name)

    @property
    def component_name(self) -> str:
        """Short name used for logging (``loss_<component_name>``)."""
        return self.short_name

    def per_sample(self, y_true: Any, y_pred: Any) -> Any:
        """Loss per sample, float32 ``(N,)``, from aligned float32 tensors."""
        raise NotImplementedError

    def call(self, y_true: Any, y_pred: Any) -> Any:
        y_true, y_pred = align_shapes(y_true, y_pred)
        if self.debug:
            y_true, y_pred = _debug.check_inputs(
                y_true, y_pred, loss_name=self.name, step=self.debug_step
            )
        value = self.per_sample(y_true, y_pred)
        if self.debug:
            value = _debug.check_finite(
                value, component=self.component_name, loss_name=self.name, step=self.debug_step
            )
        return value

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"from_logits": self.from_logits, "debug": self.debug})
        return config
