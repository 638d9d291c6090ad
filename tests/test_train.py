"""Tests of the trainer (pipelines/training/): run folder, exact resume, MirroredStrategy, bad input.

Tiny everything: U-Net filters (4, 8), 16^3 patches, a few steps per epoch, and hand-built
MSD datasets of 24-32 voxel scans (the phantom for the end-to-end test).
"""

from __future__ import annotations

import csv
import errno
import json
import logging
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import nibabel as nib
import numpy as np
import pytest

from pipelines import train as train_mod
from pipelines.train import (
    CheckpointError,
    TrainingError,
    WarmupDecaySchedule,
    metric_sort_key,
    prepare_data,
    train,
)
from pipelines.training import data as training_data
from segmentation.config import load_config

REPO = Path(__file__).resolve().parents[1]

TINY = [
    "model.filters=[4,8]",
    "model.norm=instance",
    "train.patch_size=[16,16,16]",
    "train.batch_size=2",
    "train.steps_per_epoch=2",
    "train.epochs=2",
    "train.val_every=1",
    "train.foreground_fraction=0.5",
    "train.num_parallel_calls=2",
    "inference.batch_size=2",
    "inference.overlap=0.0",
    "data.val_fraction=0.3",
]


def _config(*extra: str):
    return load_config(None, overrides=[*TINY, *extra])


# --------------------------------------------------------------------------- tiny datasets


def _write_case(root: Path, name: str, *, shape=(24, 24, 20), nodules=((12, 12, 10, 3),), seed=0):
    """A body ellipsoid (40 HU) in air (-1000 HU) with spherical nodules (label 1)."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(np.float32)
    centre = (np.array(shape) - 1) / 2
    radii = np.array(shape) * 0.45
    body = (((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0) <= 1
    image = np.where(body, -850.0, -1000.0) + rng.normal(0, 10, shape)
    label = np.zeros(shape, np.uint8)
    for i, j, k, r in nodules:
        ball = ((grid[0] - i) ** 2 + (grid[1] - j) ** 2 + (grid[2] - k) ** 2) <= r * r
        label[ball] = 1
        image[ball] = 40.0
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    nib.save(nib.Nifti1Image(image.astype(np.int16), affine), root / "imagesTr" / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"{name}.nii.gz")


def _write_dataset(root: Path, n_cases: int = 4, *, empty_labels: bool = False) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir(parents=True)
    training = []
    for index in range(n_cases):
        name = f"case_{index:03d}"
        nodules = () if empty_labels else ((8 + index, 12, 10, 2.5), (17, 15, 12, 1.2))
        _write_case(root, name, nodules=nodules, seed=index)
        training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"name": "tiny", "training": training, "test": []}))
    return root


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return _write_dataset(tmp_path_factory.mktemp("data") / "tiny")


def _history(run: Path) -> list[dict]:
    with open(run / "history.csv") as handle:
        return list(csv.DictReader(handle))


# --------------------------------------------------------------------------- schedule and keys


def test_cosine_schedule_known_values():
    schedule = WarmupDecaySchedule(1.0, 10, kind="cosine")
    values = [float(schedule(s)) for s in (0, 5, 10, 20)]
    np.testing.assert_allclose(values, [1.0, 0.5, 0.0, 0.0], atol=1e-6)


def test_poly_schedule_with_warmup_known_values():
    schedule = WarmupDecaySchedule(2.0, 12, warmup_steps=2, kind="poly", power=2.0)
    # warm-up: 2 * (s + 1) / 2; then 2 * (1 - (s - 2) / 10) ** 2
    values = [float(schedule(s)) for s in (0, 1, 2, 7, 12)]
    np.testing.assert_allclose(values, [1.0, 2.0, 2.0, 0.5, 0.0], atol=1e-6)


def test_schedule_round_trips_through_config():
    schedule = WarmupDecaySchedule(0.1, 7, warmup_steps=3, kind="constant")
    again = WarmupDecaySchedule.from_config(schedule.get_config())
    assert [float(again(s)) for s in (0, 5)] == pytest.approx([0.1 / 3, 0.1])


def test_schedule_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind='step'"):
        WarmupDecaySchedule(0.1, 7, kind="step")


def test_metric_sort_key_lexicographic_with_nan_worst_and_lower_better():
    a = {"lesion_recall": 1.0, "dice_mean": 0.5, "fp_per_scan": 2.0}
    b = {"lesion_recall": 1.0, "dice_mean": 0.7, "fp_per_scan": 1.0}
    c = {"lesion_recall": None, "dice_mean": 0.9, "fp_per_scan": 0.0}
    names = ("lesion_recall", "dice_mean")
    assert metric_sort_key(b, names) > metric_sort_key(a, names) > metric_sort_key(c, names)
    assert metric_sort_key(b, ("fp_per_scan",)) > metric_sort_key(a, ("fp_per_scan",))
    assert metric_sort_key({"dice_mean": float("nan")}, ("dice_mean",)) == (-math.inf,)


def test_metric_sort_key_unknown_metric_is_an_error():
    with pytest.raises(ValueError, match="train.best_metric"):
        metric_sort_key({"dice_mean": 0.5}, ("dice",))


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_two_epoch_end_to_end_on_phantom(tmp_path):
    from segmentation.phantom import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "ph", n_cases=4, seed=3, size=(48, 48, 32),
                                 spacing_mm=(2.5, 2.5, 3.0))
    config = _config("preprocess.target_spacing_mm=[3.5,3.5,3.5]", "model.norm=batch",
                     "data.val_fraction=0.25")
    run = tmp_path / "run"
    summary = train(config, data_dir=data, out_dir=run, progress=False)

    for name in ("config.yaml", "model.keras", "history.csv", "summary.json", "manifest.json",
                 "checkpoints/last.keras", "checkpoints/best.keras", "checkpoints/state.json"):
        assert (run / name).is_file(), name
    assert list((run / "logs").rglob("events.out.tfevents.*"))
    assert list((run / "logs" / "images").glob("events.out.tfevents.*"))
    assert not list(run.rglob("*.tmp*")) and not (run / "checkpoints" / "state.json.pending").exists()

    rows = _history(run)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for column in ("loss", "loss_bce", "loss_dice", "lr", "wall_time_s", "val_dice_mean",
                   "val_iou_mean", "val_lesion_recall", "val_small_lesion_recall",
                   "val_lesion_precision", "val_fp_per_scan"):
        assert column in rows[0], column
    assert float(rows[1]["wall_time_s"]) > float(rows[0]["wall_time_s"]) > 0
    assert float(rows[1]["lr"]) < float(rows[0]["lr"])  # cosine decay

    assert summary == json.loads((run / "summary.json").read_text())
    assert summary["epochs_completed"] == 2 and summary["status"] == "completed"
    assert summary["n_train_cases"] == 3 and summary["n_val_cases"] == 1
    assert summary["best_epoch"] in (1, 2)
    assert set(summary["best_metric"]) == {"lesion_recall", "dice_mean"}
    assert summary["train_patches_per_s"] > 0
    # the phantom's nodules.json reaches validation (its string/bool fields are the attributes)
    assert set(summary["recall_by_attribute"]) == {"kind", "location", "touches_pleura",
                                                   "touches_vessel"}
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["seed"] == 0 and len(manifest["data_hash"]) == 64
    assert manifest["libraries"]["tensorflow"] and manifest["libraries"]["keras"]
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 2 and state["optimizer_step"] == 4

    model = keras.saving.load_model(run / "model.keras", safe_mode=True)
    out = model(np.zeros((1, 16, 16, 16, 1), np.float32))
    assert out.shape == (1, 16, 16, 16, 1)


# --------------------------------------------------------------------------- resume


class _KillAfter(keras.callbacks.Callback):
    """Simulates a kill: raises after ``n_batches`` training batches of epoch ``epoch`` (0-based)."""

    def __init__(self, epoch: int, n_batches: int) -> None:
        super().__init__()
        self.epoch, self.n_batches, self.current = epoch, n_batches, -1

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch + 1 >= self.n_batches:
            raise KeyboardInterrupt("simulated kill")


def _weights(run: Path, name: str = "checkpoints/last.keras"):
    model = keras.saving.load_model(run / name)
    return model, [w.numpy() for w in model.weights]


@pytest.mark.slow
def test_resume_after_kill_mid_epoch_equals_uninterrupted_run(tiny_data, tmp_path):
    config = _config("train.deterministic=true", "train.steps_per_epoch=3",
                     "train.tensorboard_images=false")
    full = tmp_path / "full"
    train(config, data_dir=tiny_data, out_dir=full, progress=False)

    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train(config, data_dir=tiny_data, out_dir=cut, progress=False,
              callbacks=[_KillAfter(epoch=1, n_batches=2)])
    assert [r["epoch"] for r in _history(cut)] == ["1"]  # epoch 2 was lost mid-way, epoch 1 kept
    train(config, data_dir=tiny_data, out_dir=cut, resume=True, progress=False)

    rows_full, rows_cut = _history(full), _history(cut)
    assert [r["epoch"] for r in rows_cut] == ["1", "2"]
    for a, b in zip(rows_full, rows_cut):
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-4)
        assert float(a["lr"]) == pytest.approx(float(b["lr"]), rel=1e-6)
    model_full, w_full = _weights(full)
    model_cut, w_cut = _weights(cut)
    steps = [int(keras.ops.convert_to_numpy(m.optimizer.iterations)) for m in (model_cut, model_full)]
    assert steps == [6, 6]
    for a, b in zip(w_full, w_cut):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    manifest = json.loads((cut / "manifest.json").read_text())
    assert manifest["resumed"][0]["epoch"] == 1


@pytest.mark.slow
def test_resume_rolls_forward_a_commit_interrupted_between_renames(tiny_data, tmp_path):
    config = _config("train.epochs=1", "train.tensorboard_images=false")
    run = tmp_path / "run"
    train(config, data_dir=tiny_data, out_dir=run, progress=False)
    ckpt = run / "checkpoints"
    state = json.loads((ckpt / "state.json").read_text())
    # a crash after last.keras was renamed but before state.json.pending was
    (ckpt / "state.json.pending").write_text(json.dumps(state))
    (ckpt / "state.json").write_text(json.dumps({**state, "epoch": 0, "optimizer_step": 0}))
    summary = train(config, data_dir=tiny_data, out_dir=run, resume=True, progress=False)
    assert summary["epochs_completed"] == 1
    assert not (ckpt / "state.json.pending").exists()


@pytest.mark.slow
def test_resume_with_another_config_is_an_error(tiny_data, tmp_path):
    run = tmp_path / "run"
    train(_config("train.epochs=1", "train.tensorboard_images=false"), data_dir=tiny_data,
          out_dir=run, progress=False)
    with pytest.raises(ValueError, match="optim.learning_rate"):
        train(_config("train.epochs=1", "optim.learning_rate=0.5"), data_dir=tiny_data,
              out_dir=run, resume=True, progress=False)


# --------------------------------------------------------------------------- bad input


def test_missing_dataset_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        train(_config(), data_dir=tmp_path / "nowhere", out_dir=tmp_path / "run", progress=False)


def test_empty_dataset_is_an_error(tmp_path):
    root = tmp_path / "empty"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps({"training": [], "test": []}))
    with pytest.raises(ValueError, match="case"):
        train(_config(), data_dir=root, out_dir=tmp_path / "run", progress=False)


def test_dataset_without_any_label_voxel_is_an_error(tmp_path):
    root = _write_dataset(tmp_path / "nolabels", 3, empty_labels=True)
    with pytest.raises(ValueError, match="no foreground voxel"):
        train(_config(), data_dir=root, out_dir=tmp_path / "run", progress=False)


def test_rejected_dataset_leaves_no_run_folder(tmp_path):
    root = _write_dataset(tmp_path / "nolabels", 3, empty_labels=True)
    with pytest.raises(ValueError, match="no foreground voxel"):
        train(_config(), data_dir=root, out_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(ValueError, match="no foreground voxel"):
        train(_config(), data_dir=root, out_dir=tmp_path / "empty_run", progress=False)
    assert list((tmp_path / "empty_run").iterdir()) == []  # the cache written meanwhile is gone


def test_multilabel_dataset_names_the_option_and_leaves_no_run_folder(tmp_path):
    root = _write_dataset(tmp_path / "multi", 3)
    label_path = root / "labelsTr" / "case_001.nii.gz"
    label = nib.load(label_path)
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj) * 2, label.affine), label_path)
    with pytest.raises(ValueError, match="binarize=True"):
        train(_config(), data_dir=root, out_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    prepared = prepare_data(_config("data.binarize_labels=true"), data_dir=root, run_dir=tmp_path / "b",
                            progress=False)
    assert all(set(np.unique(np.asarray(c.mask))) <= {0, 1} for c in prepared.train_cases)


def test_non_hu_scan_is_refused_before_any_run_folder(tmp_path):
    root = _write_dataset(tmp_path / "u8", 3)
    image_path = root / "imagesTr" / "case_002.nii.gz"
    image = nib.load(image_path)
    nib.save(nib.Nifti1Image(np.zeros(image.shape, np.uint8) + 7, image.affine), image_path)
    with pytest.raises(ValueError, match=r"Hounsfield.*case_002"):
        train(_config(), data_dir=root, out_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_resume_without_a_run_is_an_error(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="drop --resume"):
        train(_config(), data_dir=tiny_data, out_dir=tmp_path / "run", resume=True, progress=False)
    assert not (tmp_path / "run").exists()


def test_used_run_dir_without_resume_is_an_error(tiny_data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("{}")
    with pytest.raises(FileExistsError, match="--resume"):
        train(_config(), data_dir=tiny_data, out_dir=run, progress=False)


@pytest.mark.slow
def test_patch_larger_than_scan_is_padded(tiny_data, tmp_path):
    # scans are 24 x 24 x 20 voxels; patches and windows of 32^3 are padded
    config = _config("train.patch_size=[32,32,32]", "train.epochs=1", "train.steps_per_epoch=1",
                     "train.tensorboard_images=false")
    summary = train(config, data_dir=tiny_data, out_dir=tmp_path / "run", progress=False)
    assert summary["epochs_completed"] == 1 and summary["val_metrics"]["n_cases"] >= 1


@pytest.mark.slow
def test_disk_full_during_checkpoint_keeps_the_last_good_one(tiny_data, tmp_path, monkeypatch):
    config = _config("train.tensorboard_images=false")
    run = tmp_path / "run"
    original_save = keras.Model.save

    class _FillDisk(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                def full(self_, *args, **kwargs):
                    raise OSError(errno.ENOSPC, "No space left on device")
                monkeypatch.setattr(keras.Model, "save", full)

    with pytest.raises(CheckpointError, match="intact"):
        train(config, data_dir=tiny_data, out_dir=run, progress=False, callbacks=[_FillDisk()])
    monkeypatch.setattr(keras.Model, "save", original_save)
    model, _ = _weights(run)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 2  # epoch 1, the last good one
    assert json.loads((run / "checkpoints" / "state.json").read_text())["epoch"] == 1
    assert not list((run / "checkpoints").glob(".*tmp*"))
    summary = train(config, data_dir=tiny_data, out_dir=run, resume=True, progress=False)
    assert summary["epochs_completed"] == 2


@pytest.mark.slow
def test_nan_loss_names_epoch_and_step(tiny_data, tmp_path):
    class _Poison(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 0:
                for w in self.model.trainable_weights:
                    w.assign(np.full(w.shape, np.nan, np.float32))

    config = _config("train.epochs=1", "train.steps_per_epoch=3")
    with pytest.raises(TrainingError, match=r"epoch 1, batch 2 of 3 \(global step 2\)"):
        train(config, data_dir=tiny_data, out_dir=tmp_path / "run", progress=False,
              callbacks=[_Poison()])


# --------------------------------------------------------------------------- MirroredStrategy

_MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    import keras, numpy as np
    from segmentation.config import load_config
    from pipelines.train import build_model, compile_model, make_strategy

    overrides = json.loads(sys.argv[1])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 16, 16, 16, 1)).astype("float32")
    y = (rng.uniform(size=(4, 16, 16, 16, 1)) > 0.9).astype("float32")

    def run(distribute, devices):
        config = load_config(None, overrides=overrides + [f"train.distribute={distribute}"])
        keras.utils.set_random_seed(0)
        strategy = make_strategy(config, devices=devices)
        with strategy.scope():
            model = build_model(config)
            compile_model(model, config, total_steps=10)
        initial = model.get_weights()
        data = tf.data.Dataset.from_tensors((x, y)).repeat()
        history = model.fit(data, epochs=1, steps_per_epoch=2, verbose=0)
        update = max(float(np.max(np.abs(a - b))) for a, b in zip(initial, model.get_weights()))
        return strategy.num_replicas_in_sync, history.history["loss"][0], model.get_weights(), update

    n1, loss1, w1, update = run("none", None)
    n2, loss2, w2, _ = run("mirrored", ["/cpu:0", "/cpu:1"])
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(w1, w2))
    print(json.dumps({"replicas": [n1, n2], "loss": [loss1, loss2], "max_weight_diff": diff,
                      "max_update": update}))
    """
)


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus_matches_single_device():
    # plain SGD: unlike Adam, its update is proportional to the gradient, so a wrong loss
    # scale (1/replicas) or a per-replica batch treated as global would show in the weights
    overrides = [*TINY, "train.batch_size=4", "optim.clipnorm=null", "optim.optimizer=sgd",
                 "optim.momentum=0.0", "optim.weight_decay=0.0", "optim.learning_rate=0.5"]
    result = subprocess.run(
        [sys.executable, "-c", _MIRRORED_SCRIPT, json.dumps(overrides)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["replicas"] == [1, 2]
    assert out["loss"][1] == pytest.approx(out["loss"][0], rel=1e-4)
    assert out["max_update"] > 1e-2  # the two steps moved the weights
    assert out["max_weight_diff"] < 1e-4


@pytest.mark.slow
def test_batch_not_divisible_by_replicas_is_an_error(tmp_path):
    script = _MIRRORED_SCRIPT.split("overrides = json.loads")[0] + textwrap.dedent(
        """
        from pipelines.train import train
        config = load_config(None, overrides=json.loads(sys.argv[1]))
        try:
            train(config, data_dir=sys.argv[2], out_dir=sys.argv[3], progress=False,
                  devices=["/cpu:0", "/cpu:1"])
        except ValueError as error:
            print("ERROR", error)
        """
    )
    data = _write_dataset(tmp_path / "d", 2)
    overrides = [*TINY, "train.batch_size=3", "train.distribute=mirrored"]
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(overrides), str(data), str(tmp_path / "run")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert "multiple of the 2 replicas" in result.stdout, result.stderr[-3000:]


# --------------------------------------------------------------------------- mixed precision


@pytest.mark.slow
def test_mixed_precision_uses_loss_scaling_and_restores_the_policy(tiny_data, tmp_path):
    config = _config("train.mixed_precision=true", "train.epochs=1", "train.steps_per_epoch=1",
                     "train.tensorboard_images=false")
    before = keras.mixed_precision.global_policy().name
    summary = train(config, data_dir=tiny_data, out_dir=tmp_path / "run", progress=False)
    assert keras.mixed_precision.global_policy().name == before
    assert summary["epochs_completed"] == 1
    model = keras.saving.load_model(tmp_path / "run" / "checkpoints" / "last.keras")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert any(layer.dtype_policy.name == "mixed_float16" for layer in model.layers)
    assert model(np.zeros((1, 16, 16, 16, 1), np.float32)).dtype == "float32"  # float32 logits


def test_bfloat16_on_a_cpu_without_avx512_is_refused_before_anything_is_written(tiny_data, tmp_path,
                                                                               monkeypatch):
    import pipelines.training.model as training_model

    monkeypatch.setattr(training_model, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    config = _config("train.mixed_precision=bfloat16")
    with pytest.raises(ValueError, match=r"Expected a GPU or an AVX-512 CPU for "
                                         r"train.mixed_precision=bfloat16"):
        train(config, data_dir=tiny_data, out_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_bfloat16_run_is_not_resumed_where_onednn_cannot_run_it(tiny_data, tmp_path, monkeypatch):
    import pipelines.training.model as training_model

    config = _config("train.epochs=2", "train.steps_per_epoch=1", "train.val_every=2",
                     "train.tensorboard_images=false", "train.mixed_precision=auto")
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):  # epoch 1 committed
        train(config, data_dir=tiny_data, out_dir=run, progress=False,
              callbacks=[_KillAfter(epoch=1, n_batches=1)])
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["precision"] = "mixed_bfloat16"  # as if started with auto on an AVX512_BF16 CPU
    (run / "manifest.json").write_text(json.dumps(manifest))
    before = sorted(p.name for p in run.rglob("*"))
    monkeypatch.setattr(training_model, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    with pytest.raises(ValueError, match=r"Expected a GPU or an AVX-512 CPU to resume the run in "
                                         r".*trains in mixed_bfloat16 \(manifest.json\)"):
        train(config, data_dir=tiny_data, out_dir=run, resume=True, progress=False)
    assert sorted(p.name for p in run.rglob("*")) == before  # nothing touched


def test_a_float16_run_resumed_without_a_gpu_warns_and_trains(tiny_data, tmp_path, caplog,
                                                               monkeypatch):
    import pipelines.training.run as training_run

    config = _config("train.epochs=2", "train.steps_per_epoch=1", "train.val_every=2",
                     "train.tensorboard_images=false")
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):  # epoch 1 committed
        train(config, data_dir=tiny_data, out_dir=run, progress=False,
              callbacks=[_KillAfter(epoch=1, n_batches=1)])
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["precision"] = "mixed_float16"  # as if started on a GPU
    (run / "manifest.json").write_text(json.dumps(manifest))
    # the machine as a CPU-only one sees it (also where the suite runs beside a GPU)
    devices = training_run.tf.config.list_physical_devices
    monkeypatch.setattr(training_run.tf.config, "list_physical_devices",
                        lambda kind=None: [] if kind == "GPU" else devices(kind))
    with caplog.at_level(logging.WARNING, logger="pipelines.training.run"):
        train(config, data_dir=tiny_data, out_dir=run, resume=True, progress=False)
    assert re.search(r"Resuming .* without a GPU: it trains in mixed_float16 \(manifest.json\)",
                     caplog.text)
    assert json.loads((run / "checkpoints" / "state.json").read_text())["epoch"] == 2



# --------------------------------------------------------------------------- background sampling


@pytest.mark.slow
@pytest.mark.parametrize("background", ["uniform", "body"])
def test_train_background_reaches_the_sampler(tiny_data, tmp_path, background):
    from pipelines.predictor import body_level

    config = _config(f"train.background={background}", "train.foreground_fraction=0.0")
    prepared = prepare_data(config, data_dir=tiny_data, run_dir=tmp_path, progress=False)
    threshold = prepared.sampler.background_threshold
    if background == "uniform":
        assert threshold is None
        return
    # -900 HU in the default window [-1000, 400]: (1000 - 900) / 1400
    assert threshold == pytest.approx(body_level(config)) and threshold == pytest.approx(100 / 1400)
    for i in range(100):
        loc = prepared.sampler.locate(i)
        image = prepared.train_cases[loc.case_index].image
        centre = tuple(int(s + p // 2) for s, p in zip(loc.start, config.train.patch_size))
        assert image[centre] > threshold


# --------------------------------------------------------------------------- nodule attributes


def test_validation_reports_recall_by_attribute_from_nodules_json(tmp_path, monkeypatch):
    from scipy import ndimage

    import pipelines.predictor as predictor

    data = _write_dataset(tmp_path / "tiny")
    # the two nodules of _write_dataset's case `index`, world mm = voxel * (1.5, 1.5, 2.0)
    nodules = [{"case_id": f"case_{index:03d}", "centre_mm": centre, "kind": kind}
               for index in range(4)
               for centre, kind in (([(8 + index) * 1.5, 18.0, 20.0], "solid"),
                                    ([25.5, 22.5, 24.0], "ground_glass"))]
    (data / "nodules.json").write_text(json.dumps({
        "coordinate_system": "RAS+ world mm",
        "cases": {f"case_{i:03d}": {} for i in range(4)}, "nodules": nodules}))
    prepared = prepare_data(_config(), data_dir=data, run_dir=tmp_path / "run", progress=False)
    assert prepared.nodule_table is not None and len(prepared.nodule_table.rows) == 8

    def only_the_largest_nodule(model, image_net, *, config, predict_fn=None, tta=None):
        case = next(c for c in prepared.val_cases if np.array_equal(c.image_net, image_net))
        labels, n = ndimage.label(np.asarray(case.mask_net) > 0)
        largest = np.argmax(np.bincount(labels.ravel())[1:]) + 1
        return (labels == largest).astype(np.float32)

    monkeypatch.setattr(predictor, "make_predict_fn", lambda model, batch_size: None)
    monkeypatch.setattr(predictor, "predict_probabilities", only_the_largest_nodule)
    summary = train_mod.validate(None, prepared.config, prepared)
    n = summary["n_cases"]
    assert n >= 1 and summary["n_lesions"] == 2 * n
    assert summary["recall_by_attribute"] == {"kind": {
        "ground_glass": {"recall": 0.0, "count": n, "detected": 0},
        "solid": {"recall": 1.0, "count": n, "detected": n}}}
    info = summary["nodule_attributes"]
    assert info["n_rows_evaluated"] == 2 * n and info["n_unmatched"] == 0
    assert info["n_rows_other_cases"] == 8 - 2 * n


@pytest.mark.parametrize("overrides, expected", [
    ([], False),
    (["inference.tta=true"], True),
    (["inference.tta=true", "train.val_tta=false"], False),
    (["train.val_tta=true"], True),
])
def test_validation_mirrors_as_val_tta_says_else_as_inference_tta(tiny_data, tmp_path, monkeypatch,
                                                                    overrides, expected):
    import pipelines.predictor as predictor

    prepared = prepare_data(_config(*overrides), data_dir=tiny_data, run_dir=tmp_path / "run",
                            progress=False)
    seen = []

    def record_tta(model, image_net, *, config, predict_fn=None, tta=None):
        seen.append(tta)
        return np.zeros(np.shape(image_net), np.float32)

    monkeypatch.setattr(predictor, "make_predict_fn", lambda model, batch_size: None)
    monkeypatch.setattr(predictor, "predict_probabilities", record_tta)
    train_mod.validate(None, prepared.config, prepared)
    assert seen and set(seen) == {expected}


def test_dataset_without_nodule_table_validates_without_attributes(tiny_data, tmp_path):
    prepared = prepare_data(_config(), data_dir=tiny_data, run_dir=tmp_path / "run",
                            progress=False)
    assert prepared.nodule_table is None


def test_unreadable_dataset_nodule_table_is_left_out_with_a_warning(tmp_path, caplog):
    (tmp_path / "nodules.json").write_text('{"nodules": [{"case_id": "a", "centre_mm": [1]}]}')
    with caplog.at_level("WARNING", logger="pipelines.training.data"):
        assert training_data._dataset_nodule_table(tmp_path) is None
    assert "nodules.json" in caplog.text and "centre_mm" in caplog.text
