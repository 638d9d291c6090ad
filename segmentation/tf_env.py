"""Process-level TensorFlow settings that must be made before TensorFlow is imported.

TensorFlow's x86 wheels turn oneDNN's fused CPU kernels on by default only on CPUs with
AVX-512 VNNI / BF16 / AMX. On an AVX2-only CPU (e.g. an AMD EPYC without AVX-512) they stay
off, and the 3D U-Net's training step of ``configs/cpu.yaml`` is 4.3x slower (2.36 s against
0.55 s per batch of eight 32^3 patches, ``lungseg bench train --config configs/cpu.yaml`` on a
2-core AMD EPYC). ``prefer_onednn`` asks for them unless the user already chose with
``TF_ENABLE_ONEDNN_OPTS``.

Every package that imports TensorFlow (``models``, ``losses``, ``pipelines``) calls it first;
the CLI reaches TensorFlow only through them. It has no effect once TensorFlow is imported; a
program that imports TensorFlow itself before lungseg sets the variable itself.
"""

from __future__ import annotations

import os
import platform
import sys
import warnings

__all__ = ["ONEDNN_VARIABLE", "cpu_flags", "onednn_on_by_default", "prefer_onednn"]

ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"


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
                "environment, or lungseg imported before TensorFlow. Received: TensorFlow "
                "already imported, TF_ENABLE_ONEDNN_OPTS unset",
                RuntimeWarning, stacklevel=2,
            )
        return False
    os.environ[ONEDNN_VARIABLE] = "1"
    return True
