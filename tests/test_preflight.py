"""Tests of segmentation/preflight.py: output locations and cheap arguments, before any work."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from segmentation.preflight import (
    PreflightError,
    check_output_dir,
    check_output_file,
    check_run_dir,
    check_threshold,
    check_window,
)



def test_new_output_folder_is_accepted_and_not_created(tmp_path):
    out = tmp_path / "a" / "b"
    assert check_output_dir(out) == out
    assert not (tmp_path / "a").exists()


def test_existing_output_folder_is_accepted(tmp_path):
    assert check_output_dir(tmp_path) == tmp_path


def test_output_folder_that_is_a_file_is_an_error(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("x")
    with pytest.raises(PreflightError, match=r"--out to be a folder.*f\.txt' is a file"):
        check_output_dir(path)


def test_output_folder_below_a_file_is_an_error(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("x")
    with pytest.raises(PreflightError, match=r"lies below '.*f\.txt', which is a file"):
        check_output_dir(path / "sub" / "dir")


def test_output_folder_that_is_an_input_is_an_error(tmp_path):
    with pytest.raises(PreflightError, match=r"--out to be another folder than --pred"):
        check_output_dir(tmp_path / "x" / "..", inputs=[("--pred", tmp_path)])


def test_output_file_checks(tmp_path):
    assert check_output_file(tmp_path / "new" / "r.json") == tmp_path / "new" / "r.json"
    with pytest.raises(PreflightError, match="is a folder"):
        check_output_file(tmp_path)
    blocker = tmp_path / "b"
    blocker.write_text("")
    with pytest.raises(PreflightError, match="which is a file"):
        check_output_file(blocker / "r.json")
    with pytest.raises(PreflightError, match="--config"):
        check_output_file(blocker, inputs=[("--config", blocker)])


def test_path_type_is_checked():
    with pytest.raises(TypeError, match="--out"):
        check_output_dir(3)


@pytest.mark.parametrize("value", [0.0, 1.0, 2, -0.5, True, "0.5", float("nan")])
def test_bad_threshold_is_named(value):
    with pytest.raises(PreflightError, match="--threshold"):
        check_threshold(value)


def test_good_threshold():
    assert check_threshold(0.25) == 0.25


@pytest.mark.parametrize("window, match", [([], "positive integers"), ([0, 16, 16], "positive integers"),
                                           ([16, 16], "3 values"), ([16, 16, 24], "multiple of 16"),
                                           ("16", "positive integers")])
def test_bad_window_is_named(window, match):
    with pytest.raises(PreflightError, match=match):
        check_window(window, spatial_dims=3, divisor=16)


def test_good_window():
    assert check_window([32, 32, 16], spatial_dims=3, divisor=16) == (32, 32, 16)


def test_new_run_in_a_used_folder_is_an_error(tmp_path):
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(FileExistsError, match="--resume"):
        check_run_dir(tmp_path, resume=False)


@pytest.mark.parametrize("prepare, state", [(lambda p: None, "does not exist"),
                                            (lambda p: p.mkdir(), "is empty"),
                                            (lambda p: (p.mkdir(), (p / "notes.txt").write_text("")),
                                             "holds no run")])
def test_resume_without_a_run_is_an_error(tmp_path, prepare, state):
    run = tmp_path / "run"
    prepare(run)
    with pytest.raises(PreflightError, match=f"resuming.*{state}.*drop --resume"):
        check_run_dir(run, resume=True)


@pytest.mark.parametrize("marker", ["config.yaml", "cache"])
def test_resume_with_a_run_is_accepted(tmp_path, marker):
    (tmp_path / marker).mkdir() if marker == "cache" else (tmp_path / marker).write_text("")
    assert check_run_dir(tmp_path, resume=True) == tmp_path


def test_unwritable_output_folder_is_an_error_even_as_root(tmp_path, monkeypatch):
    # os.access is what a read-only mount or folder answers (root included on a read-only mount)
    import segmentation.preflight as preflight

    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(preflight.os, "access", lambda path, mode: Path(path) != locked)
    with pytest.raises(PreflightError, match=r"--out to be writable.*its parent '.*locked' is not writable"):
        check_output_dir(locked / "out")
    with pytest.raises(PreflightError, match=r"the folder '.*locked' is not writable"):
        check_output_dir(locked)
    assert not (locked / "out").exists()
