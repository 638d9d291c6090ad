"""Tests of segmentation.tf_env (oneDNN preference set before TensorFlow is imported)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from segmentation.tf_env import ONEDNN_VARIABLE, cpu_flags, onednn_on_by_default, prefer_onednn


def _run_fresh_python(code: str, env_value: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != ONEDNN_VARIABLE}
    if env_value is not None:
        env[ONEDNN_VARIABLE] = env_value
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True)


def _in_fresh_python(code: str, env_value: str | None) -> str:
    return _run_fresh_python(code, env_value).stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("package", ["models", "losses", "pipelines"])
def test_importing_a_tensorflow_package_prefers_onednn(package):
    code = f"import os, {package}; print(os.environ.get('{ONEDNN_VARIABLE}'))"
    assert _in_fresh_python(code, None) == "1"


def test_the_users_choice_is_kept():
    code = f"import os, pipelines; print(os.environ.get('{ONEDNN_VARIABLE}'))"
    assert _in_fresh_python(code, "0") == "0"


def test_no_effect_once_tensorflow_is_imported():
    code = (f"import tensorflow, os\nfrom segmentation.tf_env import prefer_onednn\n"
            f"print(prefer_onednn(), os.environ.get('{ONEDNN_VARIABLE}'))")
    assert _in_fresh_python(code, None) == "False None"


def test_already_set_returns_false(monkeypatch):
    monkeypatch.setenv(ONEDNN_VARIABLE, "0")
    assert prefer_onednn() is False
    assert os.environ[ONEDNN_VARIABLE] == "0"


def test_onednn_default_follows_the_cpu_flags():
    assert onednn_on_by_default(frozenset({"sse2", "avx2", "fma"})) is False
    assert onednn_on_by_default(frozenset({"avx2", "avx512f", "avx512_vnni"})) is True
    assert onednn_on_by_default(frozenset({"avx2", "amx_tile"})) is True
    assert onednn_on_by_default(None) is None


def test_cpu_flags_reads_the_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 fma\n\n")
    flags = cpu_flags(str(info))
    if flags is None:  # not an x86 machine: the flags are never read
        import platform
        assert platform.machine().lower() not in ("x86_64", "amd64")
    else:
        assert flags == frozenset({"fpu", "sse2", "avx2", "fma"})


def test_cpu_flags_of_a_missing_file_is_none(tmp_path):
    assert cpu_flags(str(tmp_path / "absent")) is None


def test_tensorflow_imported_first_warns_where_onednn_stays_off():
    code = ("import warnings\nwarnings.simplefilter('always')\nimport tensorflow\n"
            "import models, losses, pipelines\nprint('imported')")
    result = _run_fresh_python(code, None)
    warned = result.stderr.count("TensorFlow was imported before lungseg")
    expected = 1 if onednn_on_by_default(cpu_flags()) is False else 0
    assert warned == expected, result.stderr[-2000:]


def test_no_warning_when_the_user_chose():
    code = "import warnings\nwarnings.simplefilter('always')\nimport tensorflow\nimport pipelines\nprint('ok')"
    result = _run_fresh_python(code, "0")
    assert "TensorFlow was imported before lungseg" not in result.stderr
