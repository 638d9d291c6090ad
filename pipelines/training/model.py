"""The model side of training: strategy, U-Net, schedule, optimizer, loss and precision.

* `make_strategy`: ``train.distribute`` -- ``auto`` (MirroredStrategy over all GPUs when
  there are several), ``none``, ``mirrored`` (``devices=`` or all GPUs) or ``multi_worker``
  (``MultiWorkerMirroredStrategy`` configured by ``TF_CONFIG``; only the chief, `is_chief`,
  writes the run folder). The dataset yields the global batch, which must be divisible by
  the number of replicas; Keras splits it and scales the loss by ``1 / replicas``. Caveat:
  Keras clips gradients (``optim.clipnorm``) per replica before the all-reduce, so with
  clipping a multi-replica step differs slightly from a single-device step.
* `build_model` and `compile_model`: AdamW or SGD on a `WarmupDecaySchedule` (a function of
  ``optimizer.iterations``, saved with the optimizer, so a resumed run continues it),
  optional global-norm clipping, the loss and its component metrics, ``jit_compile``.
* `precision_policy` (mixed float16 for the run, the previous policy restored after) and
  `seed_everything`.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from losses import component_metrics, get_loss, loss_callbacks
from models.unet import build_unet
from pipelines.training.precision import cpu_flags, resolve_precision
from segmentation.config import Config

__all__ = [
    "WarmupDecaySchedule",
    "make_strategy",
    "is_chief",
    "build_model",
    "make_optimizer",
    "compile_model",
    "model_loss_callbacks",
    "precision_policy",
    "training_policy",
    "seed_everything",
]


def make_strategy(config: Config, *, devices: Sequence[str] | None = None) -> tf.distribute.Strategy:
    """The tf.distribute strategy of ``train.distribute`` (see the module docstring).

    Raises:
        ValueError: ``multi_worker`` without ``TF_CONFIG``, or ``devices`` with ``none``.
    """
    mode = config.train.distribute
    if mode == "none":
        if devices:
            raise ValueError(
                f"Expected no devices with train.distribute=none. Received: devices={list(devices)}"
            )
        return tf.distribute.get_strategy()
    if mode == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ValueError(
                "Expected the TF_CONFIG environment variable for train.distribute=multi_worker "
                "(cluster and task of this worker). Received: TF_CONFIG is not set"
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    if devices:
        return tf.distribute.MirroredStrategy(devices=list(devices))
    gpus = tf.config.list_logical_devices("GPU")
    if mode == "mirrored" or len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this worker writes the run folder (always, except the non-chief workers of multi_worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type == "chief" or (task_type == "worker" and task_id == 0
                                    and "chief" not in resolver.cluster_spec().as_dict())


def build_model(config: Config) -> keras.Model:
    """The U-Net of ``config.model`` with dynamic spatial dims (seeded by ``train.seed``)."""
    m = config.model
    return build_unet(
        m.spatial_dims,
        in_channels=m.in_channels,
        filters=m.filters,
        norm=m.norm,
        residual=m.residual,
        dropout=m.dropout,
        deep_supervision=m.deep_supervision,
        head_bias=m.head_bias,
        input_shape=(*([None] * m.spatial_dims), m.in_channels),
    )


@keras.saving.register_keras_serializable(package="lungseg")
class WarmupDecaySchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up then cosine (to ``final_learning_rate``), poly or constant decay.

    A pure function of the optimizer step, saved with the optimizer, so a resumed run
    continues the schedule exactly.

    Args:
        peak_learning_rate: Rate after warm-up.
        total_steps: Steps of the whole run (warm-up included).
        warmup_steps: Linear warm-up steps (rate ``peak * (step + 1) / warmup_steps``).
        kind: ``cosine``, ``poly`` (``peak * (1 - t)**power``) or ``constant``.
        power: Poly exponent.
        final_learning_rate: Cosine end value.
    """

    def __init__(self, peak_learning_rate: float, total_steps: int, *, warmup_steps: int = 0,
                 kind: str = "cosine", power: float = 0.9, final_learning_rate: float = 0.0) -> None:
        if kind not in ("cosine", "poly", "constant"):
            raise ValueError(f"Expected kind in (cosine, poly, constant). Received: kind={kind!r}")
        if total_steps < 1 or warmup_steps < 0:
            raise ValueError(
                "Expected total_steps >= 1 and warmup_steps >= 0. "
                f"Received: total_steps={total_steps}, warmup_steps={warmup_steps}"
            )
        self.peak_learning_rate = float(peak_learning_rate)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.kind = kind
        self.power = float(power)
        self.final_learning_rate = float(final_learning_rate)

    def __call__(self, step):
        ops = keras.ops
        step = ops.cast(step, "float32")
        peak = self.peak_learning_rate
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        t = ops.clip((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        if self.kind == "cosine":
            decayed = self.final_learning_rate + (peak - self.final_learning_rate) * 0.5 * (
                1.0 + ops.cos(math.pi * t))
        elif self.kind == "poly":
            decayed = peak * ops.power(1.0 - t, self.power)
        else:
            decayed = ops.convert_to_tensor(peak, "float32") + 0.0 * t
        if self.warmup_steps == 0:
            return decayed
        warm = peak * (step + 1.0) / self.warmup_steps
        return ops.where(step < self.warmup_steps, warm, decayed)

    def get_config(self) -> dict:
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "kind": self.kind,
            "power": self.power,
            "final_learning_rate": self.final_learning_rate,
        }


def make_optimizer(config: Config, *, total_steps: int) -> keras.optimizers.Optimizer:
    """AdamW or SGD (Nesterov) on a `WarmupDecaySchedule`; LossScaleOptimizer under mixed precision."""
    o = config.optim
    schedule = WarmupDecaySchedule(
        o.learning_rate,
        total_steps,
        warmup_steps=o.warmup_epochs * config.train.steps_per_epoch,
        kind=o.schedule,
        power=o.poly_power,
    )
    clip = {"global_clipnorm": o.clipnorm} if o.clipnorm is not None else {}
    if o.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=o.weight_decay, **clip)
    else:
        optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=o.momentum, nesterov=True,
                                         weight_decay=o.weight_decay or None, **clip)
    if training_policy(config.train.mixed_precision) == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def _make_loss(config: Config):
    spec = dict(config.loss)
    if config.train.debug:
        spec["debug"] = True
    return get_loss(spec)


def _component_metrics(loss) -> list:
    return list(component_metrics(loss))


def compile_model(model: keras.Model, config: Config, *, total_steps: int) -> keras.Model:
    """Compiles ``model`` for training (call inside the strategy's scope).

    Deep-supervision models (several outputs) get one loss per output with weights
    ``1, 1/2, 1/4, ...`` normalised to sum 1; loss components are logged for the first.
    """
    n_outputs = len(model.outputs)
    loss = _make_loss(config)
    metrics = _component_metrics(loss)
    kwargs: dict[str, Any] = {}
    if n_outputs > 1:
        weights = np.array([0.5**i for i in range(n_outputs)])
        kwargs["loss_weights"] = list(weights / weights.sum())
        metrics = [metrics] + [[] for _ in range(n_outputs - 1)]
        loss = [loss] + [_make_loss(config) for _ in range(n_outputs - 1)]
    model.compile(
        optimizer=make_optimizer(config, total_steps=total_steps),
        loss=loss,
        metrics=metrics or None,
        jit_compile=bool(config.train.jit_compile),
        **kwargs,
    )
    return model




def model_loss_callbacks(model: keras.Model) -> list:
    """The losses package's callbacks (weight schedules, learned weights, debug step)."""
    loss = model.loss[0] if isinstance(model.loss, (list, tuple)) else model.loss
    return list(loss_callbacks(loss))


def training_policy(setting: Any) -> str:
    """The dtype policy ``train.mixed_precision`` means on this machine (`resolve_precision`)."""
    return resolve_precision(setting, gpu_count=len(tf.config.list_physical_devices("GPU")),
                             flags=cpu_flags())


@contextlib.contextmanager
def precision_policy(setting: Any) -> Iterator[str]:
    """Sets the policy of ``train.mixed_precision`` inside the block; restores the previous one.

    Yields:
        The policy name in effect (``float32``, ``mixed_float16`` or ``mixed_bfloat16``).
    """
    previous = keras.mixed_precision.global_policy()
    policy = training_policy(setting)
    if policy != "float32":
        keras.mixed_precision.set_global_policy(policy)
    try:
        yield policy
    finally:
        keras.mixed_precision.set_global_policy(previous)


def seed_everything(config: Config) -> None:
    """Seeds Python, NumPy and TensorFlow with ``train.seed``; op determinism when asked."""
    keras.utils.set_random_seed(config.train.seed)
    if config.train.deterministic:
        tf.config.experimental.enable_op_determinism()
