"""Tests of the lungseg command line (argument parsing and error reporting)."""

from __future__ import annotations

import pytest

from segmentation.cli import build_parser, main


@pytest.mark.parametrize("command", ["demo", "phantom", "train", "evaluate", "predict", "bench", "study"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    assert command in capsys.readouterr().out


def test_missing_required_argument_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", "x.yaml"])
    assert exit_info.value.code == 2
    assert "--data" in capsys.readouterr().err


def test_bad_config_is_reported_with_exit_2(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  epochz: 1\n")
    status = main(["train", "--config", str(config), "--data", str(tmp_path), "--out", str(tmp_path / "run")])
    assert status == 2
    err = capsys.readouterr().err
    assert "train.epochz" in err and "c.yaml" in err


@pytest.mark.parametrize("prefix", [["train"], ["bench", "train"], ["study", "losses"]])
def test_set_takes_several_pairs_and_repeats(prefix):
    required = {"train": ["--config", "c.yaml", "--data", "d", "--out", "o"],
                "bench": ["--config", "c.yaml"],
                "study": ["--config", "c.yaml", "--data", "d", "--out", "o"]}[prefix[0]]
    args = build_parser().parse_args(
        [*prefix, *required, "--set", "train.epochs=2", "data.max_val_cases=1", "--set", "train.seed=3"])
    assert args.overrides == ["train.epochs=2", "data.max_val_cases=1", "train.seed=3"]
