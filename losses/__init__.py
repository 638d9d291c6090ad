"""lungseg: losses for binary lung-nodule segmentation (``keras.ops`` only).

Public API::

    from losses import (DiceLoss, BCELoss, FocalLoss, TverskyLoss, HybridLoss, get_loss,
                        component_metrics, loss_callbacks, LossWeightScheduler, align_shapes)

Every loss takes ``(y_true, y_pred)``: ``y_pred`` logits (``from_logits=True``,
default) or probabilities of shape ``(N, D, H, W, 1)`` / ``(N, H, W, 1)``,
``y_true`` the same shape with or without the channel axis (aligned by
``align_shapes``; any mismatch is a ``ValueError`` naming both shapes). Math
is float32 whatever the input dtype. All losses are registered under the
``lungseg`` package, so a compiled model reloads with
``keras.saving.load_model`` without ``custom_objects``.

Training loop usage::

    loss = get_loss(cfg["loss"])          # e.g. {"name": "hybrid", "components": [...]}
    model.compile(optimizer=..., loss=loss, metrics=component_metrics(loss),
                  jit_compile=False if loss.debug else "auto")
    model.fit(..., callbacks=[*loss_callbacks(loss), ...])

``component_metrics`` logs each component as ``loss_<component>`` (and
``val_loss_<component>``). ``loss_callbacks`` returns the
``LossWeightScheduler`` when the loss has a linear schedule, learned weights
(Kendall et al. 2018) or ``debug=True``: it sets the epoch's weights, trains
the log-variances, writes the training step used in debug messages and logs
``loss_weight_<component>``. After ``load_model`` pass ``model.loss`` to
``loss_callbacks``.

Debug mode (``debug=True``, TensorFlow backend, ``jit_compile=False``): labels
outside [0, 1], a non-finite ``y_pred``, or a NaN/Inf in any component or the
total stop the step with ``tf.errors.InvalidArgumentError`` naming the check,
the component and the training step.
"""

from losses._align import align_shapes
from losses.bce import BCELoss
from losses.callbacks import (ComponentMetric, LossWeightScheduler, component_metrics,
                              loss_callbacks)
from losses.dice import DiceLoss
from losses.factory import LOSS_NAMES, get_loss
from losses.focal import FocalLoss
from losses.hybrid import HybridLoss
from losses.tversky import TverskyLoss

__all__ = [
    "BCELoss", "ComponentMetric", "DiceLoss", "FocalLoss", "HybridLoss", "LOSS_NAMES",
    "LossWeightScheduler", "TverskyLoss", "align_shapes", "component_metrics", "get_loss",
    "loss_callbacks",
]
