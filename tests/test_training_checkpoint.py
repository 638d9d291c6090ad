"""Tests of pipelines/training/checkpoint.py: the atomic epoch commit and the resume state.

A one-layer compiled Keras model stands in for the U-Net; nothing here trains.
"""

from __future__ import annotations

import csv
import errno
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from pipelines.training import checkpoint as ck
from pipelines.training.errors import CheckpointError


def _model() -> keras.Model:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def _state(epoch: int, step: int) -> dict:
    return {"epoch": epoch, "optimizer_step": step, "history": [{"epoch": epoch, "loss": 0.5}]}


def test_commit_writes_last_best_model_and_state_and_leaves_no_temporary_file(tmp_path):
    ck.commit_epoch(_model(), run_dir=tmp_path, state=_state(1, 0), improved=True)
    ckpt = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpt.iterdir()) == ["best.keras", "last.keras", "state.json"]
    assert (tmp_path / "model.keras").is_file()
    assert ck.checkpoint_step(ckpt / "last.keras") == ck.checkpoint_step(ckpt / "best.keras") == 0
    assert json.loads((ckpt / "state.json").read_text())["epoch"] == 1
    assert not list(tmp_path.rglob("*tmp*"))


def test_commit_without_improvement_keeps_the_best(tmp_path):
    ck.commit_epoch(_model(), run_dir=tmp_path, state=_state(1, 0), improved=False)
    assert not (tmp_path / "checkpoints" / "best.keras").exists()
    assert not (tmp_path / "model.keras").exists()


def test_a_failed_save_raises_checkpoint_error_and_keeps_the_previous_commit(tmp_path, monkeypatch):
    model = _model()
    ck.commit_epoch(model, run_dir=tmp_path, state=_state(1, 0), improved=True)
    before = (tmp_path / "checkpoints" / "last.keras").read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(model, "save", full)
    with pytest.raises(CheckpointError, match=r"last\.keras is intact.*--resume"):
        ck.commit_epoch(model, run_dir=tmp_path, state=_state(2, 0), improved=True)
    assert (tmp_path / "checkpoints" / "last.keras").read_bytes() == before
    assert json.loads((tmp_path / "checkpoints" / "state.json").read_text())["epoch"] == 1
    assert not list(tmp_path.rglob("*tmp*"))
    assert not (tmp_path / "checkpoints" / "state.json.pending").exists()


def test_read_state_of_a_new_run_is_none(tmp_path):
    assert ck.read_state(tmp_path) is None


@pytest.mark.parametrize("pending_step, epoch", [(0, 2), (5, 1)])
def test_read_state_rolls_a_pending_record_forward_only_when_its_step_is_the_checkpoints(
        tmp_path, pending_step, epoch):
    ck.commit_epoch(_model(), run_dir=tmp_path, state=_state(1, 0), improved=False)
    ckpt = tmp_path / "checkpoints"
    (ckpt / "state.json.pending").write_text(json.dumps(_state(2, pending_step)))
    assert ck.read_state(tmp_path)["epoch"] == epoch
    assert not (ckpt / "state.json.pending").exists()


def test_read_state_of_corrupt_json_is_an_error(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "state.json").write_text("{")
    with pytest.raises(ValueError, match="cannot be resumed"):
        ck.read_state(tmp_path)


def test_load_last_checkpoint_checks_the_optimizer_step(tmp_path):
    ck.commit_epoch(_model(), run_dir=tmp_path, state=_state(1, 0), improved=False)
    assert isinstance(ck.load_last_checkpoint(tmp_path, _state(1, 0)), keras.Model)
    with pytest.raises(ValueError, match="optimizer step 4"):
        ck.load_last_checkpoint(tmp_path, _state(1, 4))


def test_history_puts_validation_columns_last_and_leaves_missing_values_empty(tmp_path):
    rows = [{"epoch": 1, "loss": 0.5, "val_dice_mean": None, "lr": 0.1},
            {"epoch": 2, "loss": float("nan"), "val_dice_mean": 0.25, "lr": 0.05, "loss_dice": 0.2}]
    ck.write_history(tmp_path / "history.csv", rows)
    with open(tmp_path / "history.csv") as handle:
        reader = csv.DictReader(handle)
        read = list(reader)
    assert reader.fieldnames == ["epoch", "loss", "lr", "loss_dice", "val_dice_mean"]
    assert read[0]["val_dice_mean"] == "" and read[1]["loss"] == "" and read[1]["val_dice_mean"] == "0.25"


def test_atomic_json_writes_non_finite_values_and_numpy_scalars_as_json(tmp_path):
    ck.atomic_json(tmp_path / "a.json", {"x": float("nan"), "y": np.float32(0.5), "p": Path("/r"),
                                         "z": (np.int64(3), float("inf"))})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": None, "y": 0.5, "p": "/r", "z": [3, None]}
