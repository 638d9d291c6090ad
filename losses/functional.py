"""Pure ``keras.ops`` loss functions on aligned tensors.

Each function takes ``y_true`` and ``y_pred`` already aligned by
:func:`losses._align.align_shapes` (float32, shape ``(N, *spatial, 1)``) and
returns one loss value per sample, a float32 tensor of shape ``(N,)``.
Nothing here imports TensorFlow, so the same code runs under the JAX backend.

Stability: from logits, ``log p`` and ``log(1 - p)`` come from
``log_sigmoid(x)`` and ``log_sigmoid(-x)``, which are finite with finite
gradients for any finite logit. From probabilities, ``p`` is clipped to
``[PROB_EPS, 1 - PROB_EPS]`` before any log or fractional power.
"""

from __future__ import annotations

from typing import Any

from keras import ops

from losses._align import reduction_axes

PROB_EPS = 1e-7  # clip for probabilities before log / fractional powers
POWER_FLOOR = 1e-7  # floor of (1 - Tversky index) before a fractional power


def probabilities(y_pred: Any, *, from_logits: bool) -> Any:
    """Foreground probability ``p`` of shape ``y_pred.shape``."""
    return ops.sigmoid(y_pred) if from_logits else y_pred


def log_probabilities(y_pred: Any, *, from_logits: bool) -> tuple[Any, Any]:
    """``(log p, log(1 - p))``, both finite for any logit or probability."""
    if from_logits:
        return ops.log_sigmoid(y_pred), ops.log_sigmoid(-y_pred)
    p = ops.clip(y_pred, PROB_EPS, 1.0 - PROB_EPS)
    return ops.log(p), ops.log(1.0 - p)


def _broadcast_to_batch(scalar: Any, like: Any) -> Any:
    """Repeats a pooled scalar once per sample of ``like`` -> shape ``(N,)``."""
    per_sample = ops.sum(ops.zeros_like(like), axis=reduction_axes(like))
    return per_sample + scalar


def check_dice_options(*, batch: bool, skip_empty: bool) -> None:
    """Raises ``ValueError`` for ``skip_empty`` with ``batch`` (nothing per sample to skip)."""
    if skip_empty and batch:
        raise ValueError(
            "Expected skip_empty=False with batch=True (a pooled Dice has no per-sample "
            f"targets to skip). Received: batch={batch!r}, skip_empty={skip_empty!r}")


def soft_dice_loss(
    y_true: Any,
    y_pred: Any,
    *,
    from_logits: bool = True,
    smooth: float = 1.0,
    batch: bool = False,
    squared: bool = False,
    skip_empty: bool = False,
) -> Any:
    """Soft Dice loss ``1 - (2 sum(p y) + s) / (sum(p) + sum(y) + s)``.

    With ``squared=True`` the denominator is ``sum(p^2) + sum(y^2)`` (the exact
    V-Net form of Milletari et al. 2016). The smoothing ``s`` sits in the
    numerator and the denominator, so an empty target with an empty prediction
    gives 0, not 1.

    Args:
        y_true: float32 ``(N, *spatial, 1)`` labels in [0, 1].
        y_pred: float32 ``(N, *spatial, 1)`` logits or probabilities.
        from_logits: whether ``y_pred`` holds logits.
        smooth: the smoothing ``s`` (> 0).
        batch: pool the sums over the whole batch (nnU-Net's batch Dice); the
            pooled value is repeated for each sample.
        squared: use squared terms in the denominator.
        skip_empty: per-sample Dice over the samples whose target holds
            foreground only: an empty-target sample gets 0 and the others are
            scaled by ``N / n_nonempty``, so that the batch mean is their mean
            (0 when no sample has foreground). Each lesion patch then weighs
            the same whatever the lesion's size, and empty patches, whose Dice
            can only push predictions to zero, are left to a voxel-wise loss.
            Not with ``batch=True``.

    Returns:
        float32 tensor of shape ``(N,)``.
    """
    check_dice_options(batch=batch, skip_empty=skip_empty)
    p = probabilities(y_pred, from_logits=from_logits)
    axes = reduction_axes(p, batch=batch)
    intersection = ops.sum(p * y_true, axis=axes)
    if squared:
        denominator = ops.sum(p * p, axis=axes) + ops.sum(y_true * y_true, axis=axes)
    else:
        denominator = ops.sum(p, axis=axes) + ops.sum(y_true, axis=axes)
    loss = 1.0 - (2.0 * intersection + smooth) / (denominator + smooth)
    if batch:
        return _broadcast_to_batch(loss, p)
    if skip_empty:
        nonempty = ops.cast(ops.sum(y_true, axis=axes) > 0, loss.dtype)
        n_samples = ops.cast(ops.shape(loss)[0], loss.dtype)
        loss = loss * nonempty * n_samples / ops.maximum(ops.sum(nonempty), 1.0)
    return loss


def binary_crossentropy_loss(
    y_true: Any,
    y_pred: Any,
    *,
    from_logits: bool = True,
    pos_weight: float | None = None,
) -> Any:
    """Mean voxel binary cross-entropy per sample.

    Without ``pos_weight`` this is Keras's own ``ops.binary_crossentropy``.
    With it, the foreground term is multiplied by ``pos_weight``:
    ``-(w y log p + (1 - y) log(1 - p))``.

    Returns:
        float32 tensor of shape ``(N,)``.
    """
    if pos_weight is None:
        voxel = ops.binary_crossentropy(y_true, y_pred, from_logits=from_logits)
    else:
        log_p, log_q = log_probabilities(y_pred, from_logits=from_logits)
        voxel = -(pos_weight * y_true * log_p + (1.0 - y_true) * log_q)
    return ops.mean(voxel, axis=reduction_axes(voxel))


def focal_loss(
    y_true: Any,
    y_pred: Any,
    *,
    from_logits: bool = True,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
) -> Any:
    """Binary focal loss (Lin et al. 2017), mean over voxels per sample.

    ``FL = -alpha y (1 - p)^gamma log p - (1 - alpha)(1 - y) p^gamma log(1 - p)``;
    ``alpha=None`` weights both classes by 1. The modulating factors are
    ``exp(gamma * log(1 - p))`` and ``exp(gamma * log p)`` so that everything
    goes through log-sigmoid. ``gamma=0, alpha=None`` is exactly BCE.

    Returns:
        float32 tensor of shape ``(N,)``.
    """
    log_p, log_q = log_probabilities(y_pred, from_logits=from_logits)
    alpha_pos = 1.0 if alpha is None else alpha
    alpha_neg = 1.0 if alpha is None else 1.0 - alpha
    if gamma == 0:
        mod_pos, mod_neg = 1.0, 1.0
    else:
        mod_pos = ops.exp(gamma * log_q)  # (1 - p)^gamma
        mod_neg = ops.exp(gamma * log_p)  # p^gamma
    voxel = -(alpha_pos * y_true * mod_pos * log_p + alpha_neg * (1.0 - y_true) * mod_neg * log_q)
    return ops.mean(voxel, axis=reduction_axes(voxel))


def tversky_loss(
    y_true: Any,
    y_pred: Any,
    *,
    from_logits: bool = True,
    alpha: float = 0.3,
    beta: float = 0.7,
    gamma: float = 1.0,
    smooth: float = 1.0,
    batch: bool = False,
) -> Any:
    """(Focal) Tversky loss ``(1 - TI)^gamma``.

    ``TI = (TP + s) / (TP + alpha FP + beta FN + s)`` (Salehi et al. 2017) with
    soft counts ``TP = sum(p y)``, ``FP = sum(p (1 - y))``,
    ``FN = sum((1 - p) y)``. ``1 - TI`` is computed as
    ``(alpha FP + beta FN) / (TP + alpha FP + beta FN + s)``, which is never
    negative. ``gamma`` is the exponent itself (Abraham and Khan 2019 write it
    as ``1/gamma``; their recommended 4/3 is ``gamma=0.75`` here). For
    ``gamma < 1`` the base is floored at ``POWER_FLOOR`` so the gradient stays
    finite at a perfect prediction.

    Returns:
        float32 tensor of shape ``(N,)``.
    """
    p = probabilities(y_pred, from_logits=from_logits)
    axes = reduction_axes(p, batch=batch)
    tp = ops.sum(p * y_true, axis=axes)
    fp = ops.sum(p * (1.0 - y_true), axis=axes)
    fn = ops.sum((1.0 - p) * y_true, axis=axes)
    penalty = alpha * fp + beta * fn
    loss = penalty / (tp + penalty + smooth)
    if gamma != 1.0:
        loss = ops.power(ops.maximum(loss, POWER_FLOOR), gamma)
    return _broadcast_to_batch(loss, p) if batch else loss
