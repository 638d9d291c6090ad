"""Tests of segmentation.tf_env: oneDNN and the log level chosen before TensorFlow loads, and a
start without CUDA probe noise on CPUs (in fresh interpreters, as the CLI meets them)."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys

import pytest

from segmentation.tf_env import (
    ALBUMENTATIONS_UPDATE_VARIABLE,
    DEFAULT_LOG_LEVEL,
    LOG_LEVEL_VARIABLE,
    ONEDNN_VARIABLE,
    cpu_flags,
    filter_startup_log,
    onednn_on_by_default,
    prefer_onednn,
)


def _run_fresh_python(code: str, env_value: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != ONEDNN_VARIABLE}
    if env_value is not None:
        env[ONEDNN_VARIABLE] = env_value
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True)


def _in_fresh_python(code: str, env_value: str | None) -> str:
    return _run_fresh_python(code, env_value).stdout.strip().splitlines()[-1]


_CONFIGURE = "from segmentation.tf_env import configure_process\nconfigure_process()\n"


def _changed_by(statement: str) -> set[str]:
    """The environment variables a fresh interpreter's ``statement`` sets, changes or removes."""
    code = (f"import os\nbefore = dict(os.environ)\n{statement}\n"
            "print(sorted(k for k in {**before, **os.environ} if before.get(k) != os.environ.get(k)))")
    env = {k: v for k, v in os.environ.items() if k not in (ONEDNN_VARIABLE, LOG_LEVEL_VARIABLE)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return set(ast.literal_eval(done.stdout.strip().splitlines()[-1]))


@pytest.mark.slow
@pytest.mark.parametrize("package", ["segmentation.tf_env", "models", "losses", "pipelines", "pipelines.cli"])
def test_importing_a_package_changes_no_environment_variable(package):
    # TensorFlow and Keras set a few variables of their own when they load; lungseg adds none.
    allowed = _changed_by("import tensorflow, keras")
    changed = _changed_by(f"import {package}")
    assert changed <= allowed and not changed & {ONEDNN_VARIABLE, LOG_LEVEL_VARIABLE}, changed - allowed


def test_configure_process_prefers_onednn():
    code = _CONFIGURE + f"import os; print(os.environ.get('{ONEDNN_VARIABLE}'))"
    assert _in_fresh_python(code, None) == "1"


def test_the_cli_prefers_onednn_before_parsing_its_arguments():
    code = ("import contextlib, io, os\nfrom pipelines.cli import main\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            "    main(['--help'])\n"
            f"print(os.environ.get('{ONEDNN_VARIABLE}'))")
    assert _in_fresh_python(code, None) == "1"


def test_the_users_choice_is_kept():
    code = _CONFIGURE + f"import os; print(os.environ.get('{ONEDNN_VARIABLE}'))"
    assert _in_fresh_python(code, "0") == "0"


@pytest.mark.slow
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


@pytest.mark.slow
def test_tensorflow_imported_first_warns_where_onednn_stays_off():
    code = ("import warnings\nwarnings.simplefilter('always')\nimport tensorflow\n"
            + _CONFIGURE + "print('configured')")
    result = _run_fresh_python(code, None)
    warned = result.stderr.count("TensorFlow was imported before lungseg")
    expected = 1 if onednn_on_by_default(cpu_flags()) is False else 0
    assert warned == expected, result.stderr[-2000:]


@pytest.mark.slow
def test_no_warning_when_the_user_chose():
    code = "import warnings\nwarnings.simplefilter('always')\nimport tensorflow\n" + _CONFIGURE + "print('ok')"
    result = _run_fresh_python(code, "0")
    assert "TensorFlow was imported before lungseg" not in result.stderr


# --------------------------------------------------------------------------- quiet start

_TF_VARIABLES = (ONEDNN_VARIABLE, LOG_LEVEL_VARIABLE, ALBUMENTATIONS_UPDATE_VARIABLE)


def _fresh(code: str, **env_values: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in _TF_VARIABLES}
    env.update(env_values)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True, timeout=300)


def test_configure_process_sets_defaults_in_a_fresh_interpreter():
    code = ("import os\nfrom segmentation.tf_env import configure_process\nconfigure_process()\n"
            f"print(os.environ['{ONEDNN_VARIABLE}'], os.environ['{LOG_LEVEL_VARIABLE}'])")
    assert _fresh(code).stdout.split() == ["1", DEFAULT_LOG_LEVEL]


def test_configure_process_turns_the_albumentations_update_check_off_unless_chosen():
    code = ("import os\nfrom segmentation.tf_env import configure_process\nconfigure_process()\n"
            f"print(os.environ['{ALBUMENTATIONS_UPDATE_VARIABLE}'])")
    assert _fresh(code).stdout.split() == ["1"]
    assert _fresh(code, **{ALBUMENTATIONS_UPDATE_VARIABLE: "0"}).stdout.split() == ["0"]


def test_configure_process_keeps_the_users_log_level():
    code = ("import os\nfrom segmentation.tf_env import configure_process\nconfigure_process()\n"
            f"print(os.environ['{LOG_LEVEL_VARIABLE}'])")
    assert _fresh(code, **{LOG_LEVEL_VARIABLE: "0"}).stdout.split() == ["0"]


@pytest.mark.slow
@pytest.mark.parametrize("statement", ["import keras", "from models import build_unet"])
def test_first_tensorflow_import_anywhere_writes_no_cuda_probe_error_or_info_lines(statement):
    code = ("from segmentation.tf_env import configure_process\nconfigure_process()\n"
            f"{statement}\nimport tensorflow as tf\nprint(len(tf.config.list_physical_devices()))")
    done = _fresh(code)
    assert int(done.stdout.split()[-1]) >= 1
    assert "cuInit" not in done.stderr
    assert not _INFO_LINE.search(done.stderr), done.stderr


@pytest.mark.slow
def test_a_users_log_level_gets_tensorflows_own_output():
    code = ("from segmentation.tf_env import configure_process, import_tensorflow\n"
            "configure_process()\nimport_tensorflow()")
    done = _fresh(code, **{LOG_LEVEL_VARIABLE: "0"})
    assert _INFO_LINE.search(done.stderr), done.stderr  # nothing filtered


# An INFO line of TensorFlow's C++ log: absl's prefix (TensorFlow >= 2.18) or the older one.
_INFO_LINE = re.compile(r"^(I\d{4} |\d{4}-\d\d-\d\d [\d:.]+: I )", flags=re.M)

_STARTUP = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1.1 1 port.cc:153] oneDNN custom operations are on.\n"
    "I0000 00:00:1.2 1 cpu_feature_guard.cc:227] This TensorFlow binary is optimized.\n"
    "To enable the following instructions: AVX2, in other operations, rebuild.\n"
    "I0000 00:00:1.3 1 cudart_stub.cc:31] Could not find cuda drivers on your machine.\n"
    "W0000 00:00:1.4 1 some.cc:1] A real warning.\n"
    "E0000 00:00:1.5 1 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)\n"
    "E0000 00:00:1.6 1 other.cc:9] A real error.\n"
    "  with a second line\n"
)


def test_filter_startup_log_drops_info_and_the_cuda_probe_keeps_warnings_and_errors():
    kept = filter_startup_log(_STARTUP, min_log_level=1, drop_cuda_probe=True)
    assert kept == ("W0000 00:00:1.4 1 some.cc:1] A real warning.\n"
                    "E0000 00:00:1.6 1 other.cc:9] A real error.\n"
                    "  with a second line\n")


def test_filter_startup_log_keeps_the_probe_error_where_a_driver_exists():
    kept = filter_startup_log(_STARTUP, min_log_level=1, drop_cuda_probe=False)
    assert "failed call to cuInit" in kept
    assert "cudart_stub" not in kept  # an INFO line, below the level


def test_filter_startup_log_at_level_zero_keeps_everything_but_the_probe():
    kept = filter_startup_log(_STARTUP, min_log_level=0, drop_cuda_probe=True)
    assert "AVX2" in kept and "oneDNN" in kept and "InitializeLog" in kept
    assert "cuInit" not in kept and "cudart_stub" not in kept


def test_filter_startup_log_reads_the_older_tensorflow_prefix():
    text = ("2026-12-02 18:12:31.038382: I tensorflow/core/util/port.cc:113] oneDNN on.\n"
            "2026-12-02 18:12:31.067845: E external/cuda_fft.cc:479] Unable to register cuFFT "
            "factory: Attempting to register factory for plugin cuFFT\n"
            "2026-12-02 18:12:36.501367: W tensorflow/some.cc:38] A real warning.\n")
    kept = filter_startup_log(text, min_log_level=1, drop_cuda_probe=True)
    assert kept == "2026-12-02 18:12:36.501367: W tensorflow/some.cc:38] A real warning.\n"


def test_filter_startup_log_of_nothing_is_nothing():
    assert filter_startup_log("", min_log_level=1, drop_cuda_probe=True) == ""
