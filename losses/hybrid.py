"""Weighted sums of losses: fixed, scheduled over epochs, or learned.

``HybridLoss`` composes the other losses (it never switches their algorithm):

* ``weighting="fixed"``: ``sum_i w_i L_i`` (default ``0.5 BCE + 0.5 Dice``).
* ``weighting="linear"``: the weights ramp linearly from ``weights`` to
  ``final_weights`` between ``ramp_epochs = (start, end)``; before ``start``
  they are ``weights``, after ``end`` they are ``final_weights``. The current
  weights live in a non-trainable variable that
  ``losses.callbacks.LossWeightScheduler`` sets at the start of each epoch.
* ``weighting="learned"``: homoscedastic uncertainty weighting (Kendall et al.
  2018, classification form): ``sum_i w_i exp(-s_i) L_i + 0.5 s_i`` with
  ``s_i = log(sigma_i^2)`` trainable, starting at ``initial_log_vars`` (0:
  the fixed weighting). ``s_i`` is trained by gradient descent (Adam) on this
  objective by ``LossWeightScheduler`` after every training batch, from the
  batch's component values that the loss records (its stationary point is
  ``s_i = log(2 w_i L_i)``). ``get_config`` stores the current ``s_i``, so they
  survive a ``.keras`` save/load.

Component values (unweighted batch means) are available through
:meth:`HybridLoss.component_values` and, for ``model.compile(metrics=...)``,
through ``losses.callbacks.component_metrics``.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np
from keras import ops

from losses import _debug
from losses._align import align_shapes
from losses.base import BinaryLoss
from losses.bce import BCELoss
from losses.dice import DiceLoss
from segmentation.validation import check_bool, check_float

WEIGHTINGS = ("fixed", "linear", "learned")


def _check_weights(weights: Any, name: str, n_components: int) -> list[float]:
    if not isinstance(weights, (list, tuple, np.ndarray)):
        raise TypeError(f"Expected a list of {n_components} weights. Received: {name}={weights!r}")
    weights = list(weights)
    if len(weights) != n_components:
        raise ValueError(
            f"Expected {n_components} weights, one per component. Received: {name}={weights}"
        )
    return [check_float(w, name=f"{name}[{i}]", minimum=0.0) for i, w in enumerate(weights)]


def ramp_weights(epoch: int, *, weights: Sequence[float], final_weights: Sequence[float],
                 ramp_epochs: Sequence[int]) -> list[float]:
    """Linear ramp from ``weights`` (at ``ramp_epochs[0]``) to ``final_weights``."""
    start, end = ramp_epochs
    fraction = min(max((epoch - start) / float(end - start), 0.0), 1.0)
    return [w0 + (w1 - w0) * fraction for w0, w1 in zip(weights, final_weights)]


def _unique_names(components: Sequence[BinaryLoss]) -> list[str]:
    names: list[str] = []
    for component in components:
        base = component.component_name
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


@keras.saving.register_keras_serializable(package="lungseg")
class HybridLoss(keras.losses.Loss):
    """Weighted sum of lungseg losses.

    Args:
        components: loss instances (``DiceLoss``, ``BCELoss``, ``FocalLoss``,
            ``TverskyLoss``) or their serialised dicts; default
            ``[BCELoss(), DiceLoss()]``. All must share ``from_logits``.
        weights: one non-negative weight per component; default 0.5/0.5 for
            the default components, else ``1 / n`` each.
        weighting: ``"fixed"`` (alias ``"constant"``), ``"linear"`` or
            ``"learned"``.
        final_weights: end weights of the linear ramp (``"linear"`` only).
        ramp_epochs: ``(start, end)`` epochs of the ramp, ``0 <= start < end``
            (``"linear"`` only).
        initial_log_vars: starting ``s_i`` (``"learned"`` only); default 0.
        log_var_learning_rate: Adam learning rate for ``s_i`` (``"learned"``).
        from_logits: ``y_pred`` holds logits (default) or probabilities.
        debug: check inputs, each component and the total for NaN/Inf
            (TensorFlow backend).
        reduction, name: Keras loss options.

    ``call`` returns the per-sample total, shape ``(N,)``.
    """

    def __init__(self, components: Sequence[Any] | None = None,
                 weights: Sequence[float] | None = None, *, weighting: str = "fixed",
                 final_weights: Sequence[float] | None = None,
                 ramp_epochs: Sequence[int] | None = None,
                 initial_log_vars: Sequence[float] | None = None,
                 log_var_learning_rate: float = 0.01, from_logits: bool = True,
                 debug: bool = False, reduction: str | None = "sum_over_batch_size",
                 name: str = "hybrid_loss"):
        super().__init__(name=name, reduction=reduction, dtype="float32")
        self.from_logits = check_bool(from_logits, name="from_logits")
        self.debug = check_bool(debug, name="debug")
        default_components = components is None
        if default_components:
            components = [BCELoss(from_logits=from_logits), DiceLoss(from_logits=from_logits)]
        self.components = [self._resolve_component(c, i) for i, c in enumerate(components)]
        if not self.components:
            raise ValueError("Expected at least one component. Received: components=[]")
        n = len(self.components)
        self.component_names = _unique_names(self.components)
        if weights is None:
            weights = [0.5, 0.5] if default_components else [1.0 / n] * n
        self.weights = _check_weights(weights, "weights", n)

        if weighting == "constant":
            weighting = "fixed"
        if weighting not in WEIGHTINGS:
            raise ValueError(
                f"Expected weighting in {WEIGHTINGS + ('constant',)}. Received: weighting={weighting!r}"
            )
        self.weighting = weighting
        self._check_mode_arguments(final_weights, ramp_epochs, initial_log_vars)
        self.log_var_learning_rate = check_float(
            log_var_learning_rate, name="log_var_learning_rate", minimum=0.0, low_open=True
        )
        self.final_weights = None
        self.ramp_epochs = None
        if weighting == "linear":
            self.final_weights = _check_weights(final_weights, "final_weights", n)
            self.ramp_epochs = self._check_ramp(ramp_epochs)
            self.current_weights = keras.Variable(
                np.asarray(self.weights_at_epoch(0), dtype="float32"),
                trainable=False, name=f"{self.name}_current_weights",
            )
        if weighting == "learned":
            start = [0.0] * n if initial_log_vars is None else _check_log_vars(initial_log_vars, n)
            self.log_vars = keras.Variable(
                np.asarray(start, dtype="float32"), trainable=True, name=f"{self.name}_log_vars"
            )
            self.last_component_values = keras.Variable(
                np.zeros(n, dtype="float32"), trainable=False,
                name=f"{self.name}_last_component_values", aggregation="mean",
            )
        if self.debug:
            _debug.require_tensorflow(self.name)
            self.debug_step = _debug.make_step_variable(self.name)

    def _resolve_component(self, component: Any, index: int) -> BinaryLoss:
        if isinstance(component, dict):
            component = keras.saving.deserialize_keras_object(component)
        if not isinstance(component, BinaryLoss):
            raise TypeError(
                "Expected each component to be a DiceLoss, BCELoss, FocalLoss or TverskyLoss. "
                f"Received: components[{index}]={component!r}"
            )
        if component.from_logits != self.from_logits:
            raise ValueError(
                f"Expected every component to have from_logits={self.from_logits} like the "
                f"hybrid. Received: components[{index}].from_logits={component.from_logits}"
            )
        return component

    def _check_mode_arguments(self, final_weights, ramp_epochs, initial_log_vars) -> None:
        linear = self.weighting == "linear"
        if linear and (final_weights is None or ramp_epochs is None):
            raise ValueError(
                "Expected final_weights and ramp_epochs with weighting='linear'. "
                f"Received: final_weights={final_weights}, ramp_epochs={ramp_epochs}"
            )
        if not linear and (final_weights is not None or ramp_epochs is not None):
            raise ValueError(
                "Expected final_weights and ramp_epochs only with weighting='linear'. "
                f"Received: weighting={self.weighting!r}, final_weights={final_weights}, "
                f"ramp_epochs={ramp_epochs}"
            )
        if self.weighting != "learned" and initial_log_vars is not None:
            raise ValueError(
                "Expected initial_log_vars only with weighting='learned'. "
                f"Received: weighting={self.weighting!r}, initial_log_vars={initial_log_vars}"
            )

    @staticmethod
    def _check_ramp(ramp_epochs: Any) -> list[int]:
        ok = (isinstance(ramp_epochs, (list, tuple)) and len(ramp_epochs) == 2
              and all(isinstance(e, int) and not isinstance(e, bool) for e in ramp_epochs))
        if not ok or not 0 <= ramp_epochs[0] < ramp_epochs[1]:
            raise ValueError(
                "Expected ramp_epochs=(start, end) integers with 0 <= start < end. "
                f"Received: ramp_epochs={ramp_epochs!r}"
            )
        return [int(ramp_epochs[0]), int(ramp_epochs[1])]

    # -- weights -----------------------------------------------------------
    def weights_at_epoch(self, epoch: int) -> list[float]:
        """Scheduled weights at ``epoch`` (0-based); fixed/learned: ``weights``."""
        if self.weighting != "linear":
            return list(self.weights)
        return ramp_weights(epoch, weights=self.weights, final_weights=self.final_weights,
                            ramp_epochs=self.ramp_epochs)

    def set_epoch(self, epoch: int) -> None:
        """Sets the scheduled weights for ``epoch`` (no-op unless linear)."""
        if self.weighting == "linear":
            self.current_weights.assign(np.asarray(self.weights_at_epoch(epoch), dtype="float32"))

    def effective_weights(self) -> dict[str, float]:
        """Current multiplier of each component's value, by component name."""
        if self.weighting == "linear":
            values = np.asarray(self.current_weights.numpy(), dtype=float)
        elif self.weighting == "learned":
            values = np.asarray(self.weights) * np.exp(-np.asarray(self.log_vars.numpy(), float))
        else:
            values = np.asarray(self.weights, dtype=float)
        return dict(zip(self.component_names, values.tolist()))

    def log_var_gradient(self) -> np.ndarray:
        """d(total)/d(s_i) = 0.5 - w_i exp(-s_i) L_i for the last recorded batch."""
        if self.weighting != "learned":
            raise ValueError(
                f"Expected weighting='learned'. Received: weighting={self.weighting!r}"
            )
        s = np.asarray(self.log_vars.numpy(), dtype="float32")
        values = np.asarray(self.last_component_values.numpy(), dtype="float32")
        return (0.5 - np.asarray(self.weights, "float32") * np.exp(-s) * values).astype("float32")

    # -- values ------------------------------------------------------------
    def _component_per_sample(self, y_true: Any, y_pred: Any) -> list[Any]:
        values, previous = [], None
        for name, component in zip(self.component_names, self.components):
            inputs = y_pred if previous is None or not self.debug else _debug.after(y_pred, [previous])
            value = component.per_sample(y_true, inputs)
            if self.debug:
                value = _debug.check_finite(value, component=name, loss_name=self.name,
                                            step=self.debug_step)
            values.append(value)
            previous = value
        return values

    def component_values(self, y_true: Any, y_pred: Any) -> dict[str, Any]:
        """Unweighted batch-mean value of each component, by component name."""
        y_true, y_pred = align_shapes(y_true, y_pred)
        values = self._component_per_sample(y_true, y_pred)
        return {name: ops.mean(v) for name, v in zip(self.component_names, values)}

    def call(self, y_true: Any, y_pred: Any) -> Any:
        y_true, y_pred = align_shapes(y_true, y_pred)
        if self.debug:
            y_true, y_pred = _debug.check_inputs(y_true, y_pred, loss_name=self.name,
                                                 step=self.debug_step)
        values = self._component_per_sample(y_true, y_pred)
        if self.weighting == "linear":
            current = self.current_weights.value
            total = sum(current[i] * v for i, v in enumerate(values))
        elif self.weighting == "learned":
            s = self.log_vars.value
            self.last_component_values.assign(
                ops.stop_gradient(ops.stack([ops.mean(v) for v in values]))
            )
            total = sum(w * ops.exp(-s[i]) * v + 0.5 * s[i]
                        for i, (w, v) in enumerate(zip(self.weights, values)))
        else:
            total = sum(w * v for w, v in zip(self.weights, values))
        if self.debug:
            total = _debug.check_finite(total, component="total", loss_name=self.name,
                                        step=self.debug_step)
        return total

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({
            "components": [keras.saving.serialize_keras_object(c) for c in self.components],
            "weights": list(self.weights),
            "weighting": self.weighting,
            "final_weights": None if self.final_weights is None else list(self.final_weights),
            "ramp_epochs": None if self.ramp_epochs is None else list(self.ramp_epochs),
            "initial_log_vars": (
                [float(v) for v in self.log_vars.numpy()] if self.weighting == "learned" else None
            ),
            "log_var_learning_rate": self.log_var_learning_rate,
            "from_logits": self.from_logits,
            "debug": self.debug,
        })
        return config


def _check_log_vars(values: Any, n: int) -> list[float]:
    if not isinstance(values, (list, tuple, np.ndarray)) or len(values) != n:
        raise ValueError(
            f"Expected {n} initial_log_vars, one per component. Received: initial_log_vars={values!r}"
        )
    return [check_float(v, name=f"initial_log_vars[{i}]") for i, v in enumerate(values)]
