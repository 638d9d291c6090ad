"""Tests of pipelines/training/callbacks.py: each of the run's callbacks on its own.

The callbacks see a stand-in model (an optimizer step and learning rate, ``stop_training``),
or a one-layer Keras model where a checkpoint is written; validation is a stand-in, so
nothing here trains.
"""

from __future__ import annotations

import csv
import json
import math
import os
from types import SimpleNamespace

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from pipelines.training import callbacks as cb
from pipelines.training.errors import TrainingError
from pipelines.training.validation import HISTORY_VAL_KEYS
from segmentation.config import load_config


def _model(step: int = 7, learning_rate: float = 0.25):
    optimizer = SimpleNamespace(iterations=np.int64(step), learning_rate=np.float32(learning_rate))
    return SimpleNamespace(optimizer=optimizer, stop_training=False)


def _with_model(callback, model=None):
    callback.set_model(model or _model())
    return callback


# --------------------------------------------------------------------------- learning rate


def test_learning_rate_log_puts_the_rate_into_the_logs():
    logs = {"loss": 1.0}
    _with_model(cb.LearningRateLog(), _model(learning_rate=0.5)).on_epoch_end(0, logs)
    assert logs == {"loss": 1.0, "learning_rate": 0.5}


# --------------------------------------------------------------------------- throughput


def test_throughput_meter_leaves_the_first_batch_of_each_epoch_untimed(monkeypatch):
    clock = iter([0.0, 1.0, 3.0, 10.0, 14.0])
    monkeypatch.setattr(cb.time, "perf_counter", lambda: next(clock))
    meter = _with_model(cb.ThroughputMeter(batch_size=2))
    assert meter.patches_per_s() is None
    meter.on_epoch_begin(0)
    for batch in range(3):  # t = 0 (untimed), 1, 3
        meter.on_train_batch_end(batch)
    assert meter.patches_per_s() == pytest.approx(4 / 3)
    meter.on_epoch_begin(1)
    meter.on_train_batch_end(0)  # t = 10: a new epoch's first batch, untimed
    meter.on_train_batch_end(1)  # t = 14
    assert meter.patches_per_s() == pytest.approx(6 / 7)


# --------------------------------------------------------------------------- divergence


def _guard(*, debug: bool = False, kept_epoch: int = 1):
    guard = _with_model(cb.DivergenceGuard(steps_per_epoch=5, debug=debug,
                                           state={"epoch": kept_epoch}))
    guard.on_epoch_begin(1)
    return guard


def test_divergence_guard_lets_finite_losses_pass():
    _guard().on_train_batch_end(0, {"loss": 0.3, "loss_dice": 0.1})


@pytest.mark.parametrize("loss", [float("nan"), float("inf")])
def test_divergence_guard_names_epoch_batch_step_and_the_kept_checkpoint(loss):
    with pytest.raises(TrainingError, match=r"epoch 2, batch 3 of 5 \(global step 7\)") as info:
        _guard(kept_epoch=1).on_train_batch_end(2, {"loss": loss})
    assert "holds epoch 1" in str(info.value) and "train.debug=true" in str(info.value)


def test_divergence_guard_names_the_non_finite_components():
    with pytest.raises(TrainingError, match="Non-finite components: loss_dice"):
        _guard().on_train_batch_end(0, {"loss": math.nan, "loss_dice": math.nan, "loss_bce": 0.2})


def test_divergence_guard_in_debug_mode_does_not_ask_for_debug():
    with pytest.raises(TrainingError) as info:
        _guard(debug=True).on_train_batch_end(0, {"loss": math.nan})
    assert "train.debug" not in str(info.value)


# --------------------------------------------------------------------------- validation


def _summary(**values):
    return {key: values.get(key, 0.5) for key in (*HISTORY_VAL_KEYS, "hd95_mean")}


def test_lesion_validation_runs_every_val_every_epochs_and_after_the_last():
    config = load_config(None, overrides=["train.val_every=2", "train.epochs=5"])
    calls = []

    def fake_validate(model, config_, prepared, *, return_first_probs):
        calls.append(return_first_probs)
        return _summary(lesion_recall=None), np.zeros((2, 2, 2), np.float32)

    validation = _with_model(cb.LesionValidation(config=config, prepared=None,
                                                 validate_fn=fake_validate))
    validated = []
    for epoch in range(5):
        logs = {"loss": 1.0}
        validation.on_epoch_begin(epoch)
        validation.on_epoch_end(epoch, logs)
        validated.append(validation.summary is not None)
        assert (validation.probs is not None) == validated[-1]
        if validated[-1]:
            assert set(logs) == {"loss", *(f"val_{k}" for k in HISTORY_VAL_KEYS)}
            assert math.isnan(logs["val_lesion_recall"]) and logs["val_dice_mean"] == 0.5
        else:
            assert logs == {"loss": 1.0}
    assert validated == [False, True, False, True, True] and calls == [True] * 3


class _Validation:
    summary = None
    probs = None


def _best(state):
    validation = _Validation()
    best = _with_model(cb.BestValidation(validation=validation, state=state,
                                         best_metric=("lesion_recall", "dice_mean")))
    return best, validation


def test_best_validation_is_lexicographic_and_counts_validations_without_improvement():
    state: dict = {}
    best, validation = _best(state)
    sequence = [  # (summary or None, improved)
        (_summary(lesion_recall=0.5, dice_mean=0.4), True),
        (None, False),  # no validation this epoch: the counter does not move
        (_summary(lesion_recall=0.5, dice_mean=0.3), False),
        (_summary(lesion_recall=None, dice_mean=0.9), False),  # NaN/None is the worst
        (_summary(lesion_recall=0.5, dice_mean=0.6), True),
        (_summary(lesion_recall=0.4, dice_mean=0.9), False),
    ]
    counters = []
    for epoch, (summary, improved) in enumerate(sequence):
        validation.summary = summary
        best.on_epoch_end(epoch)
        assert best.improved is improved, epoch
        counters.append(state.get("validations_without_improvement"))
    assert counters == [0, 0, 1, 2, 0, 1]
    assert state["best_epoch"] == 5 and state["best_key"] == [0.5, 0.6]


def test_best_validation_continues_from_the_state_of_a_resumed_run():
    state = {"best_key": [None, 0.5], "best_epoch": 2, "validations_without_improvement": 3}
    best, validation = _best(state)  # a saved best whose recall was NaN (written as null)
    validation.summary = _summary(lesion_recall=None, dice_mean=0.4)
    best.on_epoch_end(4)
    assert not best.improved and state["validations_without_improvement"] == 4
    validation.summary = _summary(lesion_recall=0.1, dice_mean=0.0)
    best.on_epoch_end(5)
    assert best.improved and state["best_epoch"] == 6


# --------------------------------------------------------------------------- early stopping


@pytest.mark.parametrize("patience, count, stops", [(2, 1, False), (2, 2, True), (0, 9, False)])
def test_early_stopping_reads_the_counter_in_the_state(patience, count, stops):
    state = {"validations_without_improvement": count}
    model = _model()
    _with_model(cb.EarlyStoppingOnValidations(state=state, patience=patience), model).on_epoch_end(0)
    assert model.stop_training is stops and state.get("stopped_early", False) is stops


# --------------------------------------------------------------------------- images


def test_outline_image_is_radiological_with_green_truth_and_red_prediction():
    image = np.zeros((4, 3), np.float32)
    image[0, 0] = 1.0
    truth = np.zeros((4, 3), bool)
    truth[0, 0] = True  # patient's right-most, posterior-most voxel
    pred = np.zeros((4, 3), bool)
    pred[3, 2] = True  # left-most, anterior-most
    rgb = cb.outline_image(image, truth, pred)
    assert rgb.shape == (3, 4, 3)  # rows = J (anterior at top), columns = I (right on the left)
    np.testing.assert_array_equal(rgb[2, 3], [0, 1, 0])  # bottom-right: truth, green
    np.testing.assert_array_equal(rgb[0, 0], [1, 0, 0])  # top-left: prediction, red
    np.testing.assert_array_equal(rgb[1, 1], [0, 0, 0])


def test_largest_lesion_slice_is_the_centre_of_the_largest_component():
    mask = np.zeros((6, 6, 10), np.uint8)
    mask[1, 1, 1] = 1
    mask[3:5, 3:5, 5:8] = 1
    assert cb.largest_lesion_slice(mask) == 6
    assert cb.largest_lesion_slice(np.zeros((4, 4, 9))) == 4


def test_validation_images_write_an_event_file_only_after_a_validation(tmp_path):
    case = SimpleNamespace(case_id="c1", image_net=np.random.default_rng(0).normal(size=(8, 8, 6)),
                           mask_net=np.pad(np.ones((2, 2, 2), np.uint8), 3)[:8, :8, :6])
    validation = _Validation()
    images = _with_model(cb.ValidationImages(validation=validation,
                                             prepared=SimpleNamespace(val_cases=[case]),
                                             log_dir=tmp_path / "images", threshold=0.5))
    images.on_epoch_end(0)
    assert not (tmp_path / "images").exists()
    validation.probs = np.full((8, 8, 6), 0.9, np.float32)
    images.on_epoch_end(1)
    assert list((tmp_path / "images").glob("events.out.tfevents.*"))


# --------------------------------------------------------------------------- epoch commit


def test_epoch_commit_of_a_non_chief_updates_the_state_and_writes_nothing(tmp_path):
    config = load_config(None, overrides=["train.steps_per_epoch=3", "train.batch_size=2"])
    state = {"epoch": 0, "history": [], "train_patches_per_s": 12.0}
    validation = _Validation()
    validation.summary = _summary(dice_mean=0.75)
    meter = cb.ThroughputMeter(batch_size=2)  # nothing timed: the state's figure is kept
    commit = _with_model(cb.EpochCommit(
        run_dir=tmp_path / "run", prepared=SimpleNamespace(config=config), state=state,
        best=SimpleNamespace(improved=True), validation=validation, meter=meter, chief=False,
        wall_time_s=lambda: 1.23456), _model(step=3, learning_rate=0.125))
    commit.on_epoch_end(0, {"loss": 0.5, "loss_dice": 0.25, "val_dice_mean": 0.75})
    assert not (tmp_path / "run").exists()
    assert state["epoch"] == 1 and state["optimizer_step"] == 3 and state["sample_index"] == 6
    assert state["wall_time_s"] == 1.235 and state["train_patches_per_s"] == 12.0
    row = state["history"][0]
    assert list(row)[:5] == ["epoch", "loss", "loss_dice", "lr", "wall_time_s"]
    assert row["lr"] == 0.125 and row["val_dice_mean"] == 0.75


def test_epoch_commit_of_the_chief_commits_and_rewrites_history_and_summary(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.125), loss="mse")
    config = load_config(None, overrides=["train.steps_per_epoch=3", "train.batch_size=2"])
    prepared = SimpleNamespace(config=config, train_cases=[1, 2], val_cases=[3], train_ids=["a", "b"],
                               val_ids=["c"])
    state = {"epoch": 0, "history": []}
    validation = _Validation()
    run = tmp_path / "run"
    commit = _with_model(cb.EpochCommit(
        run_dir=run, prepared=prepared, state=state, best=SimpleNamespace(improved=False),
        validation=validation, meter=cb.ThroughputMeter(batch_size=2), chief=True,
        wall_time_s=lambda: 2.0), model)
    for epoch in range(2):
        commit.on_epoch_end(epoch, {"loss": 0.5 - epoch / 10})
    with open(run / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["epoch"] for r in rows] == ["1", "2"] and rows[1]["loss"] == "0.4"
    assert rows[0]["val_dice_mean"] == ""  # no validation: the column is there, empty
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "running" and summary["epochs_completed"] == 2
    assert json.loads((run / "checkpoints" / "state.json").read_text())["epoch"] == 2
    assert (run / "checkpoints" / "last.keras").is_file() and not (run / "model.keras").exists()
