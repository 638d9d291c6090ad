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
import sys

__all__ = ["ONEDNN_VARIABLE", "prefer_onednn"]

ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"


def prefer_onednn() -> bool:
    """Sets ``TF_ENABLE_ONEDNN_OPTS=1`` unless it is set or TensorFlow is already imported.

    Returns:
        True when the variable was set by this call.
    """
    if ONEDNN_VARIABLE in os.environ or "tensorflow" in sys.modules:
        return False
    os.environ[ONEDNN_VARIABLE] = "1"
    return True
