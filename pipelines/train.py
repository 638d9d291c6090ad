"""Training: ``lungseg train --config CONFIG --data DATASET_DIR --out RUN_DIR [--resume]``.

The public face of `pipelines.training` (the trainer, one job per module): `train` is
``model.fit`` plus callbacks, and its building blocks are public so that ``lungseg bench
train`` and ``lungseg study losses`` reuse them. See `pipelines.training.run` for the run
folder and exact resume, `pipelines.training.model` for distribution.
"""

from __future__ import annotations

from pipelines.training.data import (PreparedData, ValCase, data_hash, make_train_dataset,
                                     prepare_data)
from pipelines.training.errors import CheckpointError, TrainingError
from pipelines.training.model import (WarmupDecaySchedule, build_model, compile_model,
                                      make_optimizer, make_strategy)
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
