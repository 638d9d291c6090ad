"""Binary focal loss (Lin et al. 2017), stable at any logit."""

from __future__ import annotations

from typing import Any

import keras

from losses import functional
from losses.base import BinaryLoss
from segmentation.validation import check_float


@keras.saving.register_keras_serializable(package="lungseg")
class FocalLoss(BinaryLoss):
    """Binary focal loss, mean over voxels per sample.

    ``-alpha y (1-p)^gamma log p - (1-alpha)(1-y) p^gamma log(1-p)``, computed
    through log-sigmoid. ``gamma=0, alpha=None`` equals ``BCELoss()``.

    Args:
        alpha: foreground weight in [0, 1] (background gets ``1 - alpha``);
            ``None`` weights both by 1. Default 0.25 as in Lin et al.
        gamma: focusing exponent >= 0. Default 2 as in Lin et al.
        from_logits, debug, reduction, name: see ``BinaryLoss``.
    """

    short_name = "focal"

    def __init__(self, *, alpha: float | None = 0.25, gamma: float = 2.0,
                 from_logits: bool = True, debug: bool = False,
                 reduction: str | None = "sum_over_batch_size", name: str = "focal_loss"):
        super().__init__(from_logits=from_logits, debug=debug, reduction=reduction, name=name)
        if alpha is not None:  # two checks: the message names the bound that is broken
            alpha = check_float(check_float(alpha, name="alpha", minimum=0.0), name="alpha", maximum=1.0)
        self.alpha = alpha
        self.gamma = check_float(gamma, name="gamma", minimum=0.0)

    def per_sample(self, y_true: Any, y_pred: Any) -> Any:
        return functional.focal_loss(
            y_true, y_pred, from_logits=self.from_logits, alpha=self.alpha, gamma=self.gamma
        )

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"alpha": self.alpha, "gamma": self.gamma})
        return config
