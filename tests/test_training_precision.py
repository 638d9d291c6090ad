"""Tests of pipelines/training/precision.py: the dtype policy of ``train.mixed_precision``."""

from __future__ import annotations

import pytest

from pipelines.training.precision import (BF16_CPU_FLAGS, POLICIES, cpu_flags, inference_policy,
                                          resolve_precision)

AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma"})
ZEN4 = AVX2 | {"avx512f", "avx512bw", "avx512_bf16", "avx512_vnni"}
SAPPHIRE_RAPIDS = AVX2 | {"avx512f", "amx_tile", "amx_bf16", "amx_int8"}


@pytest.mark.parametrize("setting, gpus, flags, expected", [
    (False, 0, ZEN4, "float32"),
    (False, 2, AVX2, "float32"),
    (True, 0, AVX2, "mixed_float16"),          # the old meaning of true, kept
    ("float16", 1, AVX2, "mixed_float16"),
    ("bfloat16", 0, AVX2 | {"avx512f"}, "mixed_bfloat16"),  # asked for: given, though emulated
    ("bfloat16", 1, AVX2, "mixed_bfloat16"),   # on a GPU
    ("auto", 1, AVX2, "mixed_float16"),        # a GPU first
    ("auto", 1, ZEN4, "mixed_float16"),
    ("auto", 0, ZEN4, "mixed_bfloat16"),       # AVX512_BF16
    ("auto", 0, SAPPHIRE_RAPIDS, "mixed_bfloat16"),  # AMX
    ("auto", 0, AVX2, "float32"),              # bfloat16 would be emulated: slower
    ("auto", 0, frozenset(), "float32"),       # flags unknown (not Linux)
])
def test_resolve_precision_known_answers(setting, gpus, flags, expected):
    assert resolve_precision(setting, gpu_count=gpus, flags=flags) == expected
    assert expected in POLICIES


def test_resolve_precision_reads_flags_in_any_case():
    assert resolve_precision("auto", gpu_count=0, flags=["AVX512_BF16"]) == "mixed_bfloat16"
    assert BF16_CPU_FLAGS == {"avx512_bf16", "amx_bf16"}


@pytest.mark.parametrize("setting", ["bf16", "mixed_bfloat16", 1, None])
def test_resolve_precision_rejects_other_settings(setting):
    with pytest.raises(ValueError, match=r"Expected train.mixed_precision to be one of .*Received: "
                                         r"train.mixed_precision="):
        resolve_precision(setting, gpu_count=0, flags=AVX2)


def test_cpu_flags_reads_the_first_flags_line(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 AVX512_BF16 fma\n\n"
                       "processor\t: 1\nflags\t\t: fpu sse\n")
    assert cpu_flags(str(cpuinfo)) == {"fpu", "avx2", "avx512_bf16", "fma"}


def test_cpu_flags_reads_arm_features(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert cpu_flags(str(cpuinfo)) == {"fp", "asimd", "bf16"}


def test_cpu_flags_of_a_missing_file_is_empty(tmp_path):
    assert cpu_flags(str(tmp_path / "absent")) == frozenset()


@pytest.mark.parametrize("policy, gpus, flags, expected", [
    ("float32", 0, AVX2, "float32"),
    ("mixed_bfloat16", 0, ZEN4, "mixed_bfloat16"),
    ("mixed_bfloat16", 0, AVX2, "float32"),
    ("mixed_bfloat16", 0, AVX2 | {"avx512f"}, "float32"),  # AVX-512 without BF16: 2x slower
    ("mixed_bfloat16", 1, ZEN4, "float32"),      # on a GPU, auto is float16
    ("mixed_float16", 1, AVX2, "mixed_float16"),
    ("mixed_float16", 0, ZEN4, "float32"),       # float16 on a CPU: 7-8x slower
])
def test_inference_policy_keeps_only_native_policies(policy, gpus, flags, expected):
    assert inference_policy(policy, gpu_count=gpus, flags=flags) == expected


def test_inference_policy_rejects_an_unknown_policy():
    with pytest.raises(ValueError, match=r"Expected a model policy in .*Received: model_policy='bf16'"):
        inference_policy("bf16", gpu_count=0, flags=AVX2)


def test_bfloat16_on_an_avx2_cpu_is_an_error_that_says_what_to_use():
    with pytest.raises(ValueError, match=r"Expected a GPU or an AVX-512 CPU for "
                                         r"train.mixed_precision=bfloat16.*use train.mixed_precision=auto"):
        resolve_precision("bfloat16", gpu_count=0, flags=AVX2)
