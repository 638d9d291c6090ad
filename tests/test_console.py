"""Tests of segmentation.console: bars on a terminal, one line per epoch elsewhere."""

from __future__ import annotations

import io

import pytest

from segmentation.console import is_terminal, keras_verbose, progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class _Closed(io.StringIO):
    def isatty(self) -> bool:
        raise ValueError("I/O operation on closed file")


@pytest.mark.parametrize("stream, expected", [
    (_Terminal(), True), (io.StringIO(), False), (None, False), (_Closed(), False), (object(), False),
])
def test_is_terminal(stream, expected):
    assert is_terminal(stream) is expected


@pytest.mark.parametrize("enabled, stream, expected", [
    (True, _Terminal(), 1),     # Keras's interactive bar
    (True, io.StringIO(), 2),   # a log file: one line per epoch
    (False, _Terminal(), 0),
    (False, io.StringIO(), 0),
])
def test_keras_verbose_follows_the_stream(enabled, stream, expected):
    assert keras_verbose(enabled, stream=stream) == expected


def test_progress_bar_draws_on_a_terminal():
    stream = _Terminal()
    assert list(progress_bar(range(3), enabled=True, desc="predict", unit="scan", stream=stream)) == [0, 1, 2]
    assert "predict" in stream.getvalue() and "3/3" in stream.getvalue()


@pytest.mark.parametrize("enabled, stream", [(True, io.StringIO()), (False, _Terminal())])
def test_progress_bar_is_silent_in_a_file_or_when_off(enabled, stream):
    assert list(progress_bar(range(3), enabled=enabled, desc="predict", unit="scan", stream=stream)) == [0, 1, 2]
    assert stream.getvalue() == ""
