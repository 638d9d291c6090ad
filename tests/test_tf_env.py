"""Tests of segmentation.tf_env (oneDNN preference set before TensorFlow is imported)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from segmentation.tf_env import ONEDNN_VARIABLE, prefer_onednn


def _in_fresh_python(code: str, env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != ONEDNN_VARIABLE}
    if env_value is not None:
        env[ONEDNN_VARIABLE] = env_value
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            check=True)
    return result.stdout.strip().splitlines()[-1]


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
