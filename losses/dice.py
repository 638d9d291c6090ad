"""Soft Dice loss (Milletari et al. 2016) with smoothing in both terms."""

from __future__ import annotations

from typing import Any

import keras

from losses import functional
from losses.base import BinaryLoss
from segmentation.validation import check_bool, check_float


@keras.saving.register_keras_serializable(package="lungseg")
class DiceLoss(BinaryLoss):
    """Soft Dice loss ``1 - (2 sum(p y) + s) / (sum(p) + sum(y) + s)``.

    Per sample by default (each patch its own Dice, then the batch mean);
    ``batch=True`` pools all samples (nnU-Net's batch Dice). An empty target
    with an empty prediction gives 0.

    Args:
        smooth: smoothing ``s`` added to numerator and denominator (> 0).
        batch: pool sums over the batch.
        squared: ``sum(p^2) + sum(y^2)`` in the denominator (V-Net's form).
        skip_empty: per-sample Dice averaged over the samples that hold
            foreground only (see ``functional.soft_dice_loss``); pair it with
            BCE, which sees the empty patches.
        from_logits, debug, reduction, name: see ``BinaryLoss``.

    Example:
        >>> loss = DiceLoss()
        >>> value = loss(y_true, logits)  # y_true (N, D, H, W[, 1]), logits (N, D, H, W, 1)
    """

    short_name = "dice"

    def __init__(self, *, smooth: float = 1.0, batch: bool = False, squared: bool = False,
                 skip_empty: bool = False, from_logits: bool = True, debug: bool = False,
                 reduction: str | None = "sum_over_batch_size", name: str = "dice_loss"):
        super().__init__(from_logits=from_logits, debug=debug, reduction=reduction, name=name)
        self.smooth = check_float(smooth, name="smooth", minimum=0.0, low_open=True)
        self.batch = check_bool(batch, name="batch")
        self.squared = check_bool(squared, name="squared")
        self.skip_empty = check_bool(skip_empty, name="skip_empty")
        functional.check_dice_options(batch=self.batch, skip_empty=self.skip_empty)

    def per_sample(self, y_true: Any, y_pred: Any) -> Any:
        return functional.soft_dice_loss(
            y_true, y_pred, from_logits=self.from_logits, smooth=self.smooth,
            batch=self.batch, squared=self.squared, skip_empty=self.skip_empty,
        )

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"smooth": self.smooth, "batch": self.batch, "squared": self.squared,
                       "skip_empty": self.skip_empty})
        return config
