"""The machine behind a ``lungseg bench`` figure: CPU, memory, GPUs and library versions
(`machine_info`), the process's peak resident memory (`peak_rss_mib`) and the timer of one
phase with its own peak (`_Phase`). Re-exported by `pipelines.bench`.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from typing import Any

import numpy as np

__all__ = ["machine_info", "peak_rss_mib"]


# --------------------------------------------------------------------------- machine, memory


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _ram_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 2)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 2)
    except (ValueError, OSError, AttributeError):
        return None


def machine_info() -> dict:
    """The machine and library versions behind a benchmark figure.

    Returns:
        ``{"cpu_model", "logical_cores", "usable_cores", "ram_gib", "gpus", "python",
        "tensorflow", "keras", "numpy", "platform"}``; ``gpus`` lists the GPUs TensorFlow sees.
    """
    import keras
    import tensorflow as tf

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    return {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "ram_gib": _ram_gib(),
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "python": sys.version.split()[0],
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (``resource.getrusage``)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 2**20 if sys.platform == "darwin" else 2**10  # bytes on macOS, KiB on Linux
    return round(peak / scale, 1)


def _reset_phase_peak() -> bool:
    """Resets the kernel's peak-RSS mark (VmHWM) of this process; False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _phase_peak_mib() -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


class _Phase:
    """Times a block and measures its own peak RSS (MiB, None where unsupported)."""

    def __enter__(self) -> "_Phase":
        self._resettable = _reset_phase_peak()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self._start
        self.peak_rss_mib = _phase_peak_mib() if self._resettable else None
