"""Tests of pipelines/study.py: statistics, verdicts, and `lungseg study losses` end to end."""

from __future__ import annotations

import csv
import math
import os

import pytest

from pipelines import study
from pipelines.study import (convergence, interval, judge_claim, run_config, study_loss,
                             study_losses)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CPU_CONFIG = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "cpu.yaml")
TINY = (
    "model.filters=[4,8]",
    "train.patch_size=[16,16,16]",
    "train.batch_size=2",
    "train.steps_per_epoch=2",
    "train.val_every=1",
    "train.tensorboard_images=false",
    "inference.batch_size=2",
    "preprocess.target_spacing_mm=null",
)


# --------------------------------------------------------------------------- interval


def test_interval_three_values_known():
    # mean 2, sd 1, t(0.975, 2) = 4.302653 -> half width 4.302653 / sqrt(3)
    result = interval([1.0, 2.0, 3.0])
    assert result["n"] == 3
    assert result["mean"] == pytest.approx(2.0)
    assert result["half_width"] == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert result["low"] == pytest.approx(2.0 - 4.302653 / math.sqrt(3), rel=1e-5)


def test_interval_one_seed_has_no_width():
    result = interval([0.7])
    assert result == {"n": 1, "mean": 0.7, "half_width": None, "low": None, "high": None}


def test_interval_empty_and_none_values():
    assert interval([])["mean"] is None
    assert interval([None, None])["n"] == 0
    assert interval([None, 1.0, 3.0])["mean"] == pytest.approx(2.0)


# --------------------------------------------------------------------------- convergence


CURVE = [(2, 0.30, 10.0), (4, 0.55, 20.5), (6, 0.52, 31.0), (8, 0.70, 41.0)]


@pytest.mark.parametrize("target, expected", [
    (0.25, (2, 10.0)),
    (0.55, (4, 20.5)),  # reaching the target exactly counts
    (0.60, (8, 41.0)),
    (0.71, (None, None)),
])
def test_convergence_first_epoch_at_target(target, expected):
    assert convergence(CURVE, target_iou=target) == expected


def test_convergence_empty_curve_not_reached():
    assert convergence([], target_iou=0.1) == (None, None)


def test_validation_curve_skips_unvalidated_epochs():
    history = [
        {"epoch": "1", "wall_time_s": "5.0", "val_iou_mean": ""},
        {"epoch": "2", "wall_time_s": "11.0", "val_iou_mean": "0.4"},
        {"epoch": "3", "wall_time_s": "15.0", "val_iou_mean": ""},
        {"epoch": "4", "wall_time_s": "21.5", "val_iou_mean": "0.5"},
    ]
    assert study.validation_curve(history) == [(2, 0.4, 11.0), (4, 0.5, 21.5)]


# --------------------------------------------------------------------------- verdicts


def _stat(values):
    return interval(values)


IOU_CLAIM = study.CLAIMS[0]
CONVERGENCE_CLAIM = study.CLAIMS[1]


@pytest.mark.parametrize("hybrid, bce, verdict", [
    ([0.70, 0.71, 0.72], [0.50, 0.51, 0.52], "holds"),           # +39%, intervals apart
    ([0.52, 0.53, 0.54], [0.50, 0.51, 0.52], "inconclusive"),    # intervals overlap
    ([0.40, 0.41, 0.42], [0.50, 0.51, 0.52], "does not hold"),   # apart, opposite way
    ([0.525, 0.526, 0.527], [0.50, 0.501, 0.502], "does not hold"),  # apart, +5% << 18%
    ([0.7], [0.5], "inconclusive"),                              # one seed
])
def test_judge_iou_claim(hybrid, bce, verdict):
    result = judge_claim(IOU_CLAIM, _stat(hybrid), _stat(bce))
    assert result["verdict"] == verdict
    assert IOU_CLAIM["label"] in result["text"]


def test_judge_convergence_lower_is_better():
    result = judge_claim(CONVERGENCE_CLAIM, _stat([4, 4, 5]), _stat([10, 10, 11]),
                         n_runs=(3, 3))
    assert result["verdict"] == "holds"
    assert result["relative_change"] == pytest.approx((13 / 3 - 31 / 3) / (31 / 3))


def test_judge_convergence_not_reached_is_inconclusive():
    result = judge_claim(CONVERGENCE_CLAIM, _stat([4, 4]), _stat([10, 10, 11]), n_runs=(3, 3))
    assert result["verdict"] == "inconclusive"
    assert "2/3 hybrid" in result["text"]


# --------------------------------------------------------------------------- configs


def test_run_config_changes_only_loss_and_seed():
    from segmentation.config import config_to_dict, load_config

    base = load_config(CPU_CONFIG)
    a = config_to_dict(run_config(base, loss="bce", seed_index=2))
    b = config_to_dict(run_config(base, loss="hybrid", seed_index=2))
    assert a["loss"] == {"name": "bce"} and b["loss"] == config_to_dict(base)["loss"]
    assert a["train"]["seed"] == base.train.seed + 2
    a.pop("loss"), b.pop("loss")
    assert a == b


def test_each_arm_takes_the_configs_own_loss_settings():
    from segmentation.config import load_config

    base = load_config(CPU_CONFIG)  # hybrid of bce (0.5) and skip-empty per-sample dice (0.5)
    assert run_config(base, loss="dice", seed_index=0).loss == {"name": "dice", "skip_empty": True}
    assert run_config(base, loss="bce", seed_index=0).loss == {"name": "bce"}
    assert run_config(base, loss="hybrid", seed_index=0).loss == base.loss
    assert run_config(base, loss="focal", seed_index=0).loss == {"name": "focal"}  # not in the config


def test_a_set_override_of_the_loss_reaches_every_arm():
    from segmentation.config import load_config

    base = load_config(CPU_CONFIG, overrides=[
        "loss={name: hybrid, components: [{name: bce, weight: 0.3, pos_weight: 2.0}, "
        "{name: dice, weight: 0.7, smooth: 0.5}]}"])
    assert run_config(base, loss="bce", seed_index=0).loss == {"name": "bce", "pos_weight": 2.0}
    assert run_config(base, loss="dice", seed_index=0).loss == {"name": "dice", "smooth": 0.5}
    assert run_config(base, loss="hybrid", seed_index=0).loss["components"][1]["weight"] == 0.7


@pytest.mark.parametrize("base_loss, name, expected", [
    ({"name": "dice", "batch": True}, "dice", {"name": "dice", "batch": True}),
    ({"name": "dice", "batch": True}, "hybrid", {"name": "hybrid"}),
    ({"name": "hybrid", "components": ["bce", "dice"]}, "dice", {"name": "dice"}),
    ({"name": "hybrid", "components": [{"name": "tversky", "alpha": 0.3, "weight": 1.0,
                                        "final_weight": 0.5}]}, "tversky",
     {"name": "tversky", "alpha": 0.3}),
])
def test_study_loss_known_values(base_loss, name, expected):
    assert study_loss(base_loss, name) == expected


def test_unknown_loss_is_an_error_naming_it(tmp_path):
    with pytest.raises(ValueError, match="nope"):
        study_losses(config_path=CPU_CONFIG, data_dir=tmp_path, out_dir=tmp_path / "out",
                     losses=["bce", "nope"], n_seeds=1)
    assert not (tmp_path / "out").exists()


def test_bad_seed_count_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="n_seeds"):
        study_losses(config_path=CPU_CONFIG, data_dir=tmp_path, out_dir=tmp_path / "out",
                     losses=["bce"], n_seeds=0)


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from segmentation.phantom import write_phantom_dataset

    root = tmp_path_factory.mktemp("study")
    data = write_phantom_dataset(root / "data", n_cases=4, seed=0, size=(48, 48, 32), n_test=2)
    return root, data


@pytest.fixture(scope="module")
def first_study(phantom):
    root, data = phantom
    out = root / "out"
    result = study_losses(config_path=CPU_CONFIG, data_dir=data, out_dir=out,
                          losses=["bce", "hybrid"], n_seeds=1, epochs=1, overrides=TINY)
    return out, result


@pytest.mark.slow
def test_study_writes_csv_with_documented_columns(first_study):
    out, result = first_study
    with open(out / "study.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["loss"], r["seed_index"]) for r in rows] == [("bce", "0"), ("hybrid", "0")]
    for column in study.STUDY_COLUMNS:
        assert column in rows[0], column
    for row in rows:
        assert 0.0 <= float(row["iou"]) <= 1.0
        assert 0.0 <= float(row["lesion_recall"]) <= 1.0
        assert float(row["fp_per_scan"]) >= 0.0
        assert row["epochs_completed"] == "1"
        assert row["n_heldout"] == "2" and row["heldout_split"] == "test"
        assert row["epochs_to_target"] == "not reached" or int(row["epochs_to_target"]) == 1
    assert result["n_trained"] == 2
    assert [r["status"] for r in result["rows"]] == ["trained", "trained"]


@pytest.mark.slow
def test_study_md_states_each_claim(first_study):
    out, result = first_study
    text = (out / "study.md").read_text()
    for claim in study.CLAIMS:
        assert claim["label"] in text
    assert "inconclusive" in text  # one seed: nothing can be concluded
    assert "n/a (1 seed)" in text
    assert "lungseg study losses" in text and "--losses bce,hybrid" in text
    assert "| bce |" in text and "| hybrid |" in text
    assert result["text"].startswith("| loss |")


@pytest.mark.slow
def test_study_writes_figures(first_study):
    out, result = first_study
    for name in ("convergence.png", "small_lesion_recall.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
    assert set(result["paths"]) == {"csv", "md", "convergence", "small_lesion_recall"}


@pytest.mark.slow
def test_heldout_scores_are_those_of_lungseg_evaluate(first_study):
    import json

    out, result = first_study
    for row in result["rows"]:
        summary = json.loads((out / "runs" / f"{row['loss']}_seed0" / "heldout_eval" / "summary.json").read_text())
        assert row["iou"] == summary["iou_mean"]
        assert row["small_lesion_recall"] == summary["small_lesion_recall"]


@pytest.mark.slow
def test_second_call_keeps_finished_runs(first_study, phantom):
    out, _ = first_study
    root, data = phantom
    models = {p: p.stat().st_mtime_ns for p in sorted((out / "runs").glob("*/model.keras"))}
    assert len(models) == 2
    again = study_losses(config_path=CPU_CONFIG, data_dir=data, out_dir=out,
                         losses=["bce", "hybrid"], n_seeds=1, epochs=1, overrides=TINY)
    assert again["n_trained"] == 0
    assert [r["status"] for r in again["rows"]] == ["kept", "kept"]
    assert {p: p.stat().st_mtime_ns for p in models} == models


@pytest.mark.slow
def test_finished_run_with_other_config_is_an_error(first_study, phantom):
    out, _ = first_study
    root, data = phantom
    with pytest.raises(ValueError, match="bce_seed0"):
        study_losses(config_path=CPU_CONFIG, data_dir=data, out_dir=out, losses=["bce"],
                     n_seeds=1, epochs=2, overrides=TINY)


@pytest.mark.slow
def test_interrupted_run_is_resumed_not_redone(first_study, phantom):
    out, _ = first_study
    root, data = phantom
    run = out / "runs" / "hybrid_seed0"
    (run / "summary.json").unlink()  # as if killed after its last checkpoint
    again = study_losses(config_path=CPU_CONFIG, data_dir=data, out_dir=out,
                         losses=["bce", "hybrid"], n_seeds=1, epochs=1, overrides=TINY)
    assert [r["status"] for r in again["rows"]] == ["kept", "resumed"]
    assert (run / "summary.json").exists()
    assert again["rows"][1]["epochs_completed"] == 1
