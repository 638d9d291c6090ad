"""Process-level TensorFlow settings that must be made before TensorFlow is imported.

TensorFlow's x86 wheels turn oneDNN's fused CPU kernels on by default only on CPUs with
AVX-512 VNNI / BF16 / AMX. On an AVX2-only CPU (e.g. an AMD EPYC without AVX-512) they stay
off, and the 3D U-Net's training step of ``configs/cpu.yaml`` is 4.3x slower (2.36 s against
0.55 s per batch of eight 32^3 patches, ``lungseg bench train --config configs/cpu.yaml`` on a
2-core AMD EPYC). ``prefer_onednn`` asks for them unless the user already chose with
``TF_ENABLE_ONEDNN_OPTS``.

`configure_process` is the one place lungseg changes the process environment: the CLI's
``main`` calls it before anything else, and so does the test suite's ``conftest.py``;
importing a lungseg package changes no environment variable. A program that uses lungseg as a
library calls it once at start, before TensorFlow is imported (it has no effect on oneDNN
once TensorFlow is loaded), or sets the variables itself.

Quiet start on CPUs. TensorFlow 2.21 writes its first log lines before its C++ logging reads
``TF_CPP_MIN_LOG_LEVEL`` (``I0000 ... port.cc`` oneDNN notice, ``cudart_stub.cc: Could not find
cuda drivers``), and on a machine without an NVIDIA driver its CUDA probe logs an *error*
(``failed call to cuInit: ... UNKNOWN ERROR (303)``) into every command's output. The CLI calls
`configure_process` (log level 1 unless the user chose one: warnings and errors stay), which
installs a one-shot import hook: whenever TensorFlow is first imported, it loads and enumerates
its devices with the process's standard error captured, and what `filter_startup_log` keeps is
written back (the level applied to the early lines; the CUDA probe's lines dropped where no
NVIDIA driver exists).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import platform
import re
import sys
import tempfile
import warnings
from pathlib import Path
from types import ModuleType

__all__ = [
    "ALBUMENTATIONS_UPDATE_VARIABLE", "DEFAULT_LOG_LEVEL", "LOG_LEVEL_VARIABLE", "ONEDNN_VARIABLE",
    "configure_process", "cpu_flags",
    "filter_startup_log", "import_tensorflow", "nvidia_driver_present", "onednn_on_by_default",
    "prefer_onednn", "quiet_tensorflow_start",
]

ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
LOG_LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
ALBUMENTATIONS_UPDATE_VARIABLE = "NO_ALBUMENTATIONS_UPDATE"
"""Set to 1 by `configure_process`: albumentations then skips its PyPI version check on import."""
DEFAULT_LOG_LEVEL = "1"
"""TensorFlow's C++ log level set by `configure_process`: INFO hidden, warnings and errors kept."""

# Lines of TensorFlow's start that probe for CUDA: noise where no NVIDIA driver exists.
_CUDA_PROBE = re.compile(
    r"cuInit|cudart_stub\.cc|Could not find cuda drivers|Unable to register cu(DNN|FFT|BLAS) "
    r"factory|Could not find TensorRT|TF-TRT Warning|computation placer already registered"
)
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
# A log line's prefix: absl's (TensorFlow >= 2.18: severity, then MMDD) or TensorFlow's own
# before that (a timestamp, then the severity).
_LOG_LINE = re.compile(r"^(?:([IWEF])\d{4} |\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: ([IWEF]) )")
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}


# CPU features with which TensorFlow's x86 wheels turn oneDNN on by themselves.
_ONEDNN_DEFAULT_FLAGS = frozenset({"avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile"})
_warned = False


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str] | None:
    """The x86 CPU feature flags of this machine, or None where they cannot be read.

    Args:
        cpuinfo: The Linux ``/proc/cpuinfo`` file (a test may pass another).
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def onednn_on_by_default(flags: frozenset[str] | None) -> bool | None:
    """Whether TensorFlow turns oneDNN on by itself on a CPU with ``flags`` (None: unknown)."""
    if flags is None:
        return None
    return bool(flags & _ONEDNN_DEFAULT_FLAGS)


def prefer_onednn() -> bool:
    """Sets ``TF_ENABLE_ONEDNN_OPTS=1`` unless it is set or TensorFlow is already imported.

    When TensorFlow was imported first, the variable is unset and this CPU does not turn
    oneDNN on by itself (an x86 CPU without AVX-512 VNNI / BF16 / AMX), a ``RuntimeWarning``
    says so once: training then runs about 4x slower.

    Returns:
        True when the variable was set by this call.
    """
    global _warned
    if ONEDNN_VARIABLE in os.environ:
        return False
    if "tensorflow" in sys.modules:
        if not _warned and onednn_on_by_default(cpu_flags()) is False:
            _warned = True
            warnings.warn(
                "TensorFlow was imported before lungseg without TF_ENABLE_ONEDNN_OPTS, and this "
                "CPU (no AVX-512 VNNI / BF16 / AMX) does not turn oneDNN on by itself: the 3D "
                "U-Net trains about 4x slower. Expected TF_ENABLE_ONEDNN_OPTS=1 in the "
                "environment, or configure_process() called before TensorFlow is imported. "
                "Received: TensorFlow "
                "already imported, TF_ENABLE_ONEDNN_OPTS unset",
                RuntimeWarning, stacklevel=2,
            )
        return False
    os.environ[ONEDNN_VARIABLE] = "1"
    return True


def configure_process() -> None:
    """The process settings made before TensorFlow loads: the one place lungseg sets them.

    Called by the CLI's ``main`` and the tests' ``conftest.py``. oneDNN as in
    `prefer_onednn`; ``TF_CPP_MIN_LOG_LEVEL`` = `DEFAULT_LOG_LEVEL` with the quiet start of
    `quiet_tensorflow_start` unless the environment already sets the level; and no network
    check when albumentations is imported (``NO_ALBUMENTATIONS_UPDATE=1`` unless set).
    """
    prefer_onednn()
    os.environ.setdefault(ALBUMENTATIONS_UPDATE_VARIABLE, "1")
    if LOG_LEVEL_VARIABLE not in os.environ:
        os.environ[LOG_LEVEL_VARIABLE] = DEFAULT_LOG_LEVEL
        quiet_tensorflow_start()


def nvidia_driver_present() -> bool:
    """Whether this machine has an NVIDIA kernel driver (the CUDA probe can succeed)."""
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists()


def filter_startup_log(text: str, *, min_log_level: int, drop_cuda_probe: bool) -> str:
    """What TensorFlow's start wrote to standard error, less the lines to hide.

    Args:
        text: The captured standard error.
        min_log_level: Lines of lower severity (I=0, W=1, E=2, F=3) are dropped, with the
            continuation lines that follow them; also absl's preamble about early messages.
        drop_cuda_probe: Drop the CUDA probe's lines whatever their severity (a machine
            without an NVIDIA driver: the probe cannot succeed, its error says nothing).

    Returns:
        The kept lines, each with its newline.
    """
    kept: list[str] = []
    dropping = False
    for line in text.splitlines(keepends=True):
        match = _LOG_LINE.match(line)
        if match:
            dropping = (_SEVERITY[match.group(1) or match.group(2)] < min_log_level
                        or (drop_cuda_probe and bool(_CUDA_PROBE.search(line))))
        elif line.rstrip("\n") == _ABSL_PREAMBLE:
            dropping = min_log_level > 0
        elif drop_cuda_probe and _CUDA_PROBE.search(line):
            dropping = True
        if not dropping:
            kept.append(line)
    return "".join(kept)


@contextlib.contextmanager
def _filtered_stderr():
    """Captures file descriptor 2 for the block, then writes back what `filter_startup_log` keeps."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", errors="replace")
            kept = filter_startup_log(text, min_log_level=int(DEFAULT_LOG_LEVEL),
                                      drop_cuda_probe=not nvidia_driver_present())
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


class _QuietStartLoader(importlib.abc.Loader):
    """Runs TensorFlow's own loader, then lists its devices, with stderr filtered."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with _filtered_stderr():
            self._loader.exec_module(module)
            module.config.list_physical_devices()  # the CUDA probe runs here


class _QuietStartFinder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` once, the first time anything imports it, for `_QuietStartLoader`."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "tensorflow":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietStartLoader(spec.loader)
        return spec


def quiet_tensorflow_start() -> bool:
    """Makes the first import of TensorFlow, wherever it happens, go through `_filtered_stderr`.

    Commands check their arguments before they load TensorFlow, so the import happens deep in
    the pipelines; a one-shot import hook lets it stay there. Installed by `configure_process`
    when it chose the log level. Returns True when the hook was installed.
    """
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietStartFinder) for f in sys.meta_path):
        return False
    sys.meta_path.insert(0, _QuietStartFinder())
    return True


def import_tensorflow() -> ModuleType:
    """Imports TensorFlow and lists its devices (through the quiet start when it is installed).

    A no-op returning the module when TensorFlow is loaded.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    import tensorflow as tf  # this module's work is done before TensorFlow loads

    tf.config.list_physical_devices()
    return tf
