"""Tests of segmentation/runfolder.py: a run folder's config checked as a whole before use."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path

import pytest
import yaml

from segmentation.config import (
    CONFIG_FORMAT_VERSION,
    ConfigError,
    config_hash,
    config_to_dict,
    load_config,
    save_config,
)
from segmentation.runfolder import RunFolderError, load_run_config

REPO = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, config=None, *, model: bool = True) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    config = config or load_config(REPO / "configs" / "quick.yaml")
    save_config(config, run / "config.yaml")
    if model:
        (run / "model.keras").write_bytes(b"never loaded here")
    return run


def test_saved_config_carries_version_and_hash_and_loads_back(tmp_path):
    config = load_config(REPO / "configs" / "quick.yaml")
    run = _run(tmp_path, config)
    data = yaml.safe_load((run / "config.yaml").read_text())
    assert data["format_version"] == CONFIG_FORMAT_VERSION
    assert data["config_sha256"] == config_hash(config)
    assert load_run_config(run) == config


def test_every_shipped_config_round_trips_with_its_hash(tmp_path):
    for index, path in enumerate(sorted((REPO / "configs").glob("*.yaml"))):
        config = load_config(path)
        folder = tmp_path / str(index)
        folder.mkdir()
        save_config(config, folder / "config.yaml")
        assert load_run_config(folder, need_model=False) == config, path.name


def test_empty_config_is_an_error_not_the_defaults(tmp_path):
    run = _run(tmp_path)
    (run / "config.yaml").write_text("")
    with pytest.raises(RunFolderError, match=r"complete config.*config\.yaml.*an empty file"):
        load_run_config(run)


def test_truncated_config_names_the_missing_sections(tmp_path):
    run = _run(tmp_path)
    lines = (run / "config.yaml").read_text().splitlines()
    (run / "config.yaml").write_text("\n".join(lines[:8]) + "\n")  # head -n 8
    with pytest.raises(RunFolderError, match=r"no preprocess, model, .*inference, evaluation section"):
        load_run_config(run)


def test_config_cut_inside_the_last_section_fails_its_hash(tmp_path):
    run = _run(tmp_path)
    lines = (run / "config.yaml").read_text().splitlines()
    (run / "config.yaml").write_text("\n".join(lines[:-2]) + "\n")
    with pytest.raises(RunFolderError, match="config_sha256"):
        load_run_config(run)


def test_edited_config_fails_its_hash_and_names_the_options(tmp_path):
    run = _run(tmp_path)
    original = (run / "config.yaml").read_text()
    text = re.sub(r"(?m)^  threshold: .*$", "  threshold: 0.3", original)
    assert text != original  # the edit must land, whatever threshold the config holds
    (run / "config.yaml").write_text(text)
    with pytest.raises(RunFolderError, match=r"edited or cut.*--threshold"):
        load_run_config(run)


def test_config_that_is_not_the_models_fails_the_manifest_hash(tmp_path):
    run = _run(tmp_path)
    (run / "manifest.json").write_text(json.dumps({"config_hash": "0" * 64}))
    with pytest.raises(RunFolderError, match=r"trained with.*manifest\.json"):
        load_run_config(run)


def test_manifest_with_the_right_hash_is_accepted(tmp_path):
    config = load_config(REPO / "configs" / "quick.yaml")
    run = _run(tmp_path, config)
    (run / "manifest.json").write_text(json.dumps({"config_hash": config_hash(config)}))
    assert load_run_config(run) == config


def test_legacy_config_without_version_is_still_read(tmp_path):
    config = load_config(REPO / "configs" / "quick.yaml")
    run = _run(tmp_path, config)
    (run / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    (run / "manifest.json").write_text(json.dumps({"config_hash": config_hash(config)}))
    assert load_run_config(run) == config


def test_legacy_config_missing_a_key_warns_and_names_it(tmp_path, caplog):
    config = load_config(REPO / "configs" / "quick.yaml")
    run = _run(tmp_path, config)
    data = config_to_dict(config)
    del data["data"]["max_val_cases"]
    (run / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    with caplog.at_level(logging.WARNING):
        loaded = load_run_config(run)
    assert "data.max_val_cases" in caplog.text
    assert loaded == dataclasses.replace(config, data=dataclasses.replace(config.data, max_val_cases=None))


def test_newer_format_is_an_error(tmp_path):
    run = _run(tmp_path)
    text = (run / "config.yaml").read_text().replace(
        f"format_version: {CONFIG_FORMAT_VERSION}", f"format_version: {CONFIG_FORMAT_VERSION + 1}")
    (run / "config.yaml").write_text(text)
    with pytest.raises(ConfigError, match="newer lungseg"):
        load_run_config(run)


@pytest.mark.parametrize("missing", ["config.yaml", "model.keras"])
def test_missing_file_is_named(tmp_path, missing):
    run = _run(tmp_path)
    (run / missing).unlink()
    with pytest.raises(RunFolderError, match=f"{missing}.*'{run}'"):
        load_run_config(run)


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(RunFolderError, match="not found"):
        load_run_config(tmp_path / "nowhere")


def test_not_yaml_is_named(tmp_path):
    run = _run(tmp_path)
    (run / "config.yaml").write_text("train: [unclosed\n")
    with pytest.raises(RunFolderError, match=r"readable YAML.*config\.yaml"):
        load_run_config(run)


def test_user_config_copied_from_a_run_loads_with_its_meta_keys(tmp_path):
    run = _run(tmp_path)
    assert load_config(run / "config.yaml", overrides=["train.epochs=3"]).train.epochs == 3


def test_bad_set_is_blamed_on_set_not_on_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"from --set train\.epochs=-1") as info:
        load_config(REPO / "configs" / "quick.yaml", overrides=["train.epochs=-1"])
    assert "quick.yaml" not in str(info.value)


def test_bad_file_is_still_blamed_on_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 0\n")
    with pytest.raises(ConfigError, match=r"config: .*c\.yaml"):
        load_config(path, overrides=["train.seed=1"])


def test_override_that_breaks_a_valid_file_elsewhere_is_blamed_on_set(tmp_path):
    # model.filters of depth 3 makes the file's 32^3 patch fine but its 2^depth rule fail
    with pytest.raises(ConfigError, match=r"from --set model\.filters"):
        load_config(REPO / "configs" / "quick.yaml", overrides=["model.filters=[4,8,16,32,64,128,256]"])
