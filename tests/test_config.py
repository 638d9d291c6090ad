"""Tests of segmentation.config: strict YAML loading into frozen dataclasses."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from segmentation.config import (
    Config,
    ConfigError,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["default.yaml", "cpu.yaml", "unet2d.yaml"])
def test_shipped_configs_load(name):
    config = load_config(CONFIG_DIR / name)
    assert isinstance(config, Config)
    assert len(config.train.patch_size) == config.model.spatial_dims


def test_defaults_without_file():
    config = load_config(None)
    assert config.train.foreground_fraction == pytest.approx(1 / 3)
    assert config.preprocess.hu_window == (-1000.0, 400.0)
    assert config.loss["name"] == "hybrid"


def test_config_is_frozen():
    config = load_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.train.epochs = 3  # type: ignore[misc]


def test_unknown_top_level_key_lists_allowed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trian:\n  epochs: 2\n")
    with pytest.raises(ConfigError, match=r"Unknown key trian.*Expected one of: .*train"):
        load_config(path)


def test_unknown_nested_key_names_dotted_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epoch: 2\n")
    with pytest.raises(ConfigError, match=r"train\.epoch\b.*steps_per_epoch"):
        load_config(path)


def test_bad_type_names_key_and_value():
    with pytest.raises(ConfigError, match=r"train\.epochs.*integer.*'many'"):
        config_from_dict({"train": {"epochs": "many"}})


def test_bad_choice_lists_choices():
    with pytest.raises(ConfigError, match=r"model\.norm.*\['batch', 'instance', 'group'\].*'layer'"):
        config_from_dict({"model": {"norm": "layer"}})


def test_bool_is_not_an_int():
    with pytest.raises(ConfigError, match="train.batch_size"):
        config_from_dict({"train": {"batch_size": True}})


def test_patch_not_multiple_of_depth_divisor():
    with pytest.raises(ConfigError, match=r"multiple of 2\*\*depth = 8.*\[20, 48, 48\]"):
        config_from_dict({"model": {"filters": [8, 16, 32, 64]}, "train": {"patch_size": [20, 48, 48]}})


def test_patch_rank_must_match_model():
    with pytest.raises(ConfigError, match=r"2 values for model.spatial_dims=2"):
        config_from_dict({"model": {"spatial_dims": 2}, "train": {"patch_size": [64, 64, 64]}})


def test_inference_window_not_multiple_of_depth_divisor():
    with pytest.raises(ConfigError, match=r"inference.window value to be a multiple of 2\*\*depth = 8.*\[60, 64, 64\]"):
        config_from_dict({"model": {"filters": [8, 16, 32, 64]}, "train": {"patch_size": [32, 32, 32]},
                          "inference": {"window": [60, 64, 64]}})


def test_inference_window_rank_must_match_model():
    with pytest.raises(ConfigError, match=r"inference.window to have 2 values for model.spatial_dims=2"):
        config_from_dict({"model": {"spatial_dims": 2}, "train": {"patch_size": [64, 64]},
                          "inference": {"window": [64, 64, 64]}})


@pytest.mark.parametrize("window", [[0, 32, 32], [32], [32, 32, 32, 32]])
def test_inference_window_must_be_two_or_three_positive_sizes(window):
    with pytest.raises(ConfigError, match=r"inference.window to be 2 or 3 positive integers"):
        config_from_dict({"inference": {"window": window}})


def test_inference_window_larger_than_the_patch_is_accepted():
    config = config_from_dict({"model": {"filters": [8, 16, 32, 64]}, "train": {"patch_size": [32, 32, 32]},
                               "inference": {"window": [64, 64, 48]}})
    assert config.inference.window == (64, 64, 48)
    assert config_from_dict({}).inference.window is None


def test_range_error_names_key():
    with pytest.raises(ConfigError, match=r"inference\.overlap in \[0\.0, 1\.0\).*1\.5"):
        config_from_dict({"inference": {"overlap": 1.5}})


@pytest.mark.parametrize("grow, match", [
    (0.6, r"inference\.grow_threshold in \(0\.0, 0\.5\]\. Received: inference\.grow_threshold=0\.6"),
    (0.0, r"inference\.grow_threshold in \(0\.0, 0\.5\]\. Received: inference\.grow_threshold=0\.0"),
])
def test_grow_threshold_above_the_threshold_or_zero_is_an_error(grow, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict({"inference": {"threshold": 0.5, "grow_threshold": grow}})


def test_grow_threshold_and_val_tta_default_to_off_and_to_the_inference_tta():
    config = config_from_dict({})
    assert config.inference.grow_threshold is None and config.train.val_tta is None
    config = config_from_dict({"inference": {"grow_threshold": 0.25}, "train": {"val_tta": False}})
    assert config.inference.grow_threshold == 0.25 and config.train.val_tta is False


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_apply_yaml_values():
    config = load_config(CONFIG_DIR / "cpu.yaml", overrides=["train.epochs=3", "model.filters=[4, 8, 16, 32]",
                                                             "inference.tta=true"])
    assert config.train.epochs == 3
    assert config.model.filters == (4, 8, 16, 32)
    assert config.inference.tta is True


def test_override_without_equals_is_error():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["train.epochs"])


def test_override_unknown_key_is_error():
    with pytest.raises(ConfigError, match=r"train\.epochz"):
        load_config(None, overrides=["train.epochz=2"])


def test_round_trip_through_yaml(tmp_path):
    config = load_config(CONFIG_DIR / "unet2d.yaml", overrides=["train.seed=7"])
    path = save_config(config, tmp_path / "config.yaml")
    assert load_config(path) == config
    assert config_to_dict(config)["train"]["seed"] == 7


def test_loss_must_have_a_name():
    with pytest.raises(ConfigError, match="loss"):
        config_from_dict({"loss": {"components": []}})


def test_bad_background_lists_choices():
    with pytest.raises(ConfigError, match=r"train\.background.*\['uniform', 'body'\].*'lungs'"):
        config_from_dict({"train": {"background": "lungs"}})


@pytest.mark.parametrize("value, expected", [("false", False), ("true", True), ("float16", "float16"),
                                             ("bfloat16", "bfloat16"), ("auto", "auto")])
def test_mixed_precision_accepts_a_bool_or_a_precision(value, expected):
    config = load_config(None, overrides=[f"train.mixed_precision={value}"])
    assert config.train.mixed_precision == expected
    assert type(config.train.mixed_precision) is type(expected)


def test_mixed_precision_other_value_names_both_forms():
    with pytest.raises(ConfigError, match=r"Invalid value for train.mixed_precision: 'bf16'\. "
                                          r"Expected train.mixed_precision to be true or false.* "
                                          r"Or: Expected train.mixed_precision to be one of "
                                          r"\['float16', 'bfloat16', 'auto'\]"):
        load_config(None, overrides=["train.mixed_precision=bf16"])
