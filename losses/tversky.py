"""Tversky loss (Salehi et al. 2017) and focal Tversky (Abraham and Khan 2019)."""

from __future__ import annotations

from typing import Any

import keras

from losses import functional
from losses.base import BinaryLoss
from segmentation.validation import check_bool, check_float

FOCAL_TVERSKY_GAMMA = 0.75  # Abraham and Khan's 1/gamma with gamma = 4/3


@keras.saving.register_keras_serializable(package="lungseg")
class TverskyLoss(BinaryLoss):
    """(Focal) Tversky loss ``(1 - TI)^gamma``, per sample by default.

    ``TI = (TP + s) / (TP + alpha FP + beta FN + s)``. ``alpha = beta = 0.5``
    gives soft Dice (with smoothing ``2 s``); ``beta > alpha`` penalises missed
    nodule voxels more. ``gamma`` is applied as the exponent itself; use
    ``gamma=0.75`` (``get_loss("focal_tversky")``) for the focal Tversky loss.

    Args:
        alpha: weight of false positives (>= 0). Default 0.3 (Salehi et al.).
        beta: weight of false negatives (>= 0). Default 0.7 (Salehi et al.).
        gamma: exponent (> 0); 1 is the plain Tversky loss.
        smooth: smoothing ``s`` (> 0).
        batch: pool the soft counts over the batch.
        from_logits, debug, reduction, name: see ``BinaryLoss``.
    """

    def __init__(self, *, alpha: float = 0.3, beta: float = 0.7, gamma: float = 1.0,
                 smooth: float = 1.0, batch: bool = False, from_logits: bool = True,
                 debug: bool = False, reduction: str | None = "sum_over_batch_size",
                 name: str = "tversky_loss"):
        super().__init__(from_logits=from_logits, debug=debug, reduction=reduction, name=name)
        self.alpha = check_float(alpha, name="alpha", minimum=0.0)
        self.beta = check_float(beta, name="beta", minimum=0.0)
        if self.alpha + self.beta == 0.0:
            raise ValueError(
                f"Expected alpha + beta > 0. Received: alpha={self.alpha}, beta={self.beta}"
            )
        self.gamma = check_float(gamma, name="gamma", minimum=0.0, low_open=True)
        self.smooth = check_float(smooth, name="smooth", minimum=0.0, low_open=True)
        self.batch = check_bool(batch, name="batch")

    @property
    def component_name(self) -> str:
        return "tversky" if self.gamma == 1.0 else "focal_tversky"

    def per_sample(self, y_true: Any, y_pred: Any) -> Any:
        return functional.tversky_loss(
            y_true, y_pred, from_logits=self.from_logits, alpha=self.alpha, beta=self.beta,
            gamma=self.gamma, smooth=self.smooth, batch=self.batch,
        )

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"alpha": self.alpha, "beta": self.beta, "gamma": self.gamma,
                       "smooth": self.smooth, "batch": self.batch})
        return config
