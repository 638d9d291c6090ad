"""Which Keras dtype policy a run trains in (``train.mixed_precision``).

``train.mixed_precision`` takes ``false`` (float32), ``true`` or ``"float16"``
(``mixed_float16`` with loss scaling, for GPUs), ``"bfloat16"`` (``mixed_bfloat16``; no loss
scaling: bfloat16 has float32's exponent range) or ``"auto"``: ``mixed_float16`` when
TensorFlow sees a GPU, ``mixed_bfloat16`` on a CPU with native bfloat16 arithmetic
(AVX512_BF16 or AMX_BF16), float32 anywhere else. Without native support bfloat16 is
emulated at half the float32 speed (AVX-512 without BF16) or not run at all (oneDNN has no
bfloat16 convolution below AVX-512), which is why ``auto`` asks the CPU first.

`resolve_precision` is a pure function of the setting and the machine's facts, so its
answer for every machine is testable here; `cpu_flags` reads the facts (Linux
``/proc/cpuinfo``; an empty set elsewhere, i.e. float32 on CPUs).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["BF16_CPU_FLAGS", "POLICIES", "cpu_flags", "inference_policy", "resolve_precision"]

#: CPU flags (as ``/proc/cpuinfo`` spells them) that mean native bfloat16 arithmetic.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})

#: The policies `resolve_precision` returns.
POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")

_SETTINGS = (False, True, "float16", "bfloat16", "auto")


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags of this machine (empty where ``path`` cannot be read).

    Args:
        path: The cpuinfo file (Linux); tests pass their own.

    Returns:
        Lower-case flag names of the first processor listed, e.g. ``{"avx2", "fma", ...}``.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    return frozenset(value.lower().split())
    except OSError:
        pass
    return frozenset()


def resolve_precision(setting: Any, *, gpu_count: int, flags: Iterable[str]) -> str:
    """The Keras dtype policy for a ``train.mixed_precision`` setting on a machine.

    Args:
        setting: ``False``, ``True``, ``"float16"``, ``"bfloat16"`` or ``"auto"``.
        gpu_count: GPUs TensorFlow sees.
        flags: The CPU's feature flags (`cpu_flags`).

    Returns:
        ``"float32"``, ``"mixed_float16"`` or ``"mixed_bfloat16"``.

    Raises:
        ValueError: For any other setting, or ``bfloat16`` on a CPU-only machine without
            AVX-512 (TensorFlow's oneDNN convolutions fail there).
    """
    if setting is False:
        return "float32"
    if setting is True or setting == "float16":
        return "mixed_float16"
    if setting == "bfloat16":
        if gpu_count == 0 and not ({"avx512f"} | BF16_CPU_FLAGS) & {flag.lower() for flag in flags}:
            raise ValueError(
                "Expected a GPU or an AVX-512 CPU for train.mixed_precision=bfloat16 (oneDNN has "
                "no bfloat16 convolution below AVX-512). Received: a CPU without avx512f; use "
                "train.mixed_precision=auto or false"
            )
        return "mixed_bfloat16"
    if setting == "auto":
        if gpu_count > 0:
            return "mixed_float16"
        if BF16_CPU_FLAGS & {flag.lower() for flag in flags}:
            return "mixed_bfloat16"
        return "float32"
    raise ValueError(
        f"Expected train.mixed_precision to be one of {list(_SETTINGS)}. "
        f"Received: train.mixed_precision={setting!r}"
    )


def inference_policy(model_policy: str, *, gpu_count: int, flags: Iterable[str]) -> str:
    """The dtype policy a saved model predicts in on this machine.

    A model keeps the policy it was trained in, but a machine that cannot run that policy
    natively runs it slowly or not at all (TensorFlow 2.21 on an AMD EPYC with oneDNN limited
    by ``ONEDNN_MAX_CPU_ISA``: a ``mixed_bfloat16`` model fails in oneDNN at AVX2 and is
    twice as slow as float32 at AVX-512 without BF16; a ``mixed_float16`` model is 7-8x
    slower than float32 at either). So the model's own policy is kept where ``auto`` would
    choose it here, and float32 is used everywhere else (the weights are float32 in every
    policy).

    Args:
        model_policy: The policy of the model's layers (``float32``, ``mixed_float16`` or
            ``mixed_bfloat16``).
        gpu_count: GPUs TensorFlow sees.
        flags: The CPU's feature flags (`cpu_flags`).

    Returns:
        ``model_policy`` or ``"float32"``.

    Raises:
        ValueError: For a policy outside `POLICIES`.
    """
    if model_policy not in POLICIES:
        raise ValueError(
            f"Expected a model policy in {list(POLICIES)}. Received: model_policy={model_policy!r}")
    native = resolve_precision("auto", gpu_count=gpu_count, flags=flags)
    return model_policy if model_policy == native else "float32"
