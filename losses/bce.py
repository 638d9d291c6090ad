"""Binary cross-entropy with an optional foreground weight."""

from __future__ import annotations

from typing import Any

import keras

from losses import functional
from losses.base import BinaryLoss
from segmentation.validation import check_float


@keras.saving.register_keras_serializable(package="lungseg")
class BCELoss(BinaryLoss):
    """Binary cross-entropy, mean over voxels per sample.

    Args:
        pos_weight: multiplier of the foreground term (> 0), for the rare
            nodule voxels; ``None`` uses Keras's own binary cross-entropy.
        from_logits, debug, reduction, name: see ``BinaryLoss``.
    """

    short_name = "bce"

    def __init__(self, *, pos_weight: float | None = None, from_logits: bool = True,
                 debug: bool = False, reduction: str | None = "sum_over_batch_size",
                 name: str = "bce_loss"):
        super().__init__(from_logits=from_logits, debug=debug, reduction=reduction, name=name)
        self.pos_weight = (
            None if pos_weight is None
            else check_float(pos_weight, name="pos_weight", minimum=0.0, low_open=True)
        )

    def per_sample(self, y_true: Any, y_pred: Any) -> Any:
        return functional.binary_crossentropy_loss(
            y_true, y_pred, from_logits=self.from_logits, pos_weight=self.pos_weight
        )

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"pos_weight": self.pos_weight})
        return config
