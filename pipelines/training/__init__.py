"""The trainer (``lungseg train``), one job per module.

* `pipelines.training.data`: discovery, split, preprocessing cache, the patch feed.
* `pipelines.training.model`: strategy, U-Net, schedule, optimizer, loss, precision.
* `pipelines.training.validation`: lesion-level validation, the "best" ordering.
* `pipelines.training.callbacks`: the run's Keras callbacks, one job each.
* `pipelines.training.checkpoint`: the atomic epoch commit, resume state, history.
* `pipelines.training.run`: `train`, the ``model.fit`` wiring.
"""

from pipelines.training.data import PreparedData, ValCase, data_hash, make_train_dataset, prepare_data
from pipelines.training.errors import CheckpointError, TrainingError
from pipelines.training.model import (WarmupDecaySchedule, build_model, compile_model, make_optimizer,
                                      make_strategy)
from pipelines.training.run import train
from pipelines.training.validation import HISTORY_VAL_KEYS, metric_sort_key, validate

__all__ = [
    "TrainingError",
    "CheckpointError",
    "ValCase",
    "PreparedData",
    "WarmupDecaySchedule",
    "HISTORY_VAL_KEYS",
    "prepare_data",
    "make_strategy",
    "build_model",
    "make_optimizer",
    "compile_model",
    "make_train_dataset",
    "validate",
    "train",
    "metric_sort_key",
    "data_hash",
]
