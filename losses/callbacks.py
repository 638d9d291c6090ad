"""Training-loop helpers: per-component metrics and the loss callback.

* ``component_metrics(loss)`` -> Keras metrics for ``model.compile(metrics=...)``,
  one per component, named ``loss_<component>`` (``loss_bce``, ``loss_dice``,
  ...; a single loss gives one metric). Each is the unweighted batch mean of
  the component, averaged over the epoch like Keras's own ``loss``.
* ``LossWeightScheduler(loss)`` -> a Keras callback that (1) sets the linear
  schedule's weights at the start of each epoch, (2) takes one Adam step on
  the learned log-variances after each training batch, (3) writes the current
  training step into the loss for debug-mode messages, and (4) adds
  ``loss_weight_<component>`` to the epoch logs. ``loss_callbacks(loss)``
  returns ``[LossWeightScheduler(loss)]`` when the loss needs it, else ``[]``.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from losses._align import align_shapes
from losses.base import BinaryLoss
from losses.hybrid import HybridLoss


@keras.saving.register_keras_serializable(package="lungseg")
class ComponentMetric(keras.metrics.Mean):
    """Epoch mean of one loss component's unweighted value.

    Args:
        component: a ``BinaryLoss`` (or its serialised dict).
        name: metric name; default ``loss_<component.component_name>``.
        dtype: metric dtype.
    """

    def __init__(self, component: Any, *, name: str | None = None, dtype: Any = None):
        if isinstance(component, dict):
            component = keras.saving.deserialize_keras_object(component)
        if not isinstance(component, BinaryLoss):
            raise TypeError(
                "Expected a DiceLoss, BCELoss, FocalLoss or TverskyLoss. "
                f"Received: component={component!r}"
            )
        super().__init__(name=name or f"loss_{component.component_name}", dtype=dtype)
        self.component = component

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None):
        y_true, y_pred = align_shapes(y_true, y_pred)
        values = self.component.per_sample(y_true, y_pred)
        return super().update_state(values, sample_weight=sample_weight)

    def get_config(self) -> dict:
        return {"component": keras.saving.serialize_keras_object(self.component),
                "name": self.name, "dtype": self.dtype}


def component_metrics(loss: keras.losses.Loss) -> list[ComponentMetric]:
    """One ``loss_<component>`` metric per component of ``loss``.

    Args:
        loss: a ``HybridLoss`` or a single lungseg loss.

    Returns:
        list of ``ComponentMetric`` for ``model.compile(metrics=...)``.
    """
    if isinstance(loss, HybridLoss):
        return [ComponentMetric(c, name=f"loss_{n}")
                for n, c in zip(loss.component_names, loss.components)]
    if isinstance(loss, BinaryLoss):
        return [ComponentMetric(loss)]
    raise TypeError(f"Expected a lungseg loss. Received: loss={loss!r}")


class LossWeightScheduler(keras.callbacks.Callback):
    """Drives a loss's epoch schedule, learned weights and debug step.

    Args:
        loss: the loss given to ``model.compile`` (after ``load_model``, pass
            ``model.loss``).
        log_weights: add ``loss_weight_<component>`` to the epoch logs.
    """

    def __init__(self, loss: keras.losses.Loss, *, log_weights: bool = True):
        super().__init__()
        if not isinstance(loss, (HybridLoss, BinaryLoss)):
            raise TypeError(f"Expected a lungseg loss. Received: loss={loss!r}")
        self.loss = loss
        self.log_weights = log_weights
        self._optimizer = None
        if isinstance(loss, HybridLoss) and loss.weighting == "learned":
            self._optimizer = keras.optimizers.Adam(learning_rate=loss.log_var_learning_rate)

    def on_train_begin(self, logs=None):
        if self.loss.debug and self.model is not None and getattr(self.model, "jit_compile", False):
            raise ValueError(
                "Expected model.compile(jit_compile=False) with a debug-mode loss: XLA drops "
                f"the tf.debugging checks. Received: jit_compile=True for loss '{self.loss.name}'"
            )

    def on_epoch_begin(self, epoch, logs=None):
        if isinstance(self.loss, HybridLoss):
            self.loss.set_epoch(epoch)

    def on_train_batch_begin(self, batch, logs=None):
        if self.loss.debug:
            step = batch
            optimizer = getattr(self.model, "optimizer", None)
            if optimizer is not None:
                step = int(optimizer.iterations.numpy())
            self.loss.debug_step.assign(np.int64(step))

    def on_train_batch_end(self, batch, logs=None):
        if self._optimizer is not None:
            gradient = self.loss.log_var_gradient()
            self._optimizer.apply([keras.ops.convert_to_tensor(gradient)], [self.loss.log_vars])

    def on_epoch_end(self, epoch, logs=None):
        if self.log_weights and logs is not None and isinstance(self.loss, HybridLoss):
            for name, weight in self.loss.effective_weights().items():
                logs[f"loss_weight_{name}"] = weight


def loss_callbacks(loss: keras.losses.Loss) -> list[keras.callbacks.Callback]:
    """The callbacks ``loss`` needs in ``model.fit`` (possibly none)."""
    needs = loss.debug if isinstance(loss, (BinaryLoss, HybridLoss)) else False
    if isinstance(loss, HybridLoss):
        needs = needs or loss.weighting != "fixed"
    return [LossWeightScheduler(loss)] if needs else []
