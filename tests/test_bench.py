"""Tests of pipelines/bench.py on tiny settings (figures are checked for presence, not speed)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from pipelines import bench
from pipelines.bench import run_bench, synthetic_chest_hu, synthetic_lesion_pair

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TINY = ("model.filters=[4,8]", "train.patch_size=[16,16,16]", "train.batch_size=2",
        "inference.batch_size=2")
MACHINE_KEYS = {"cpu_model", "logical_cores", "usable_cores", "ram_gib", "gpus", "python",
                "tensorflow", "keras", "numpy", "platform"}


def _check_common(result: dict, what: str) -> None:
    assert result["what"] == what
    assert result["config"].endswith("cpu.yaml")
    assert result["overrides"] == list(TINY) or what == "evaluate"
    assert MACHINE_KEYS <= set(result["machine"])
    assert result["machine"]["logical_cores"] >= 1
    assert result["peak_rss_mib"] > 0
    assert result["bench_seconds"] > 0
    json.dumps(result, allow_nan=False)  # JSON-safe


@pytest.mark.slow
def test_bench_train_tiny():
    result = run_bench("train", overrides=TINY, steps=2)
    _check_common(result, "train")
    for key in ("params", "trainable_params", "flops_per_patch_forward", "train_step_s",
                "train_patches_per_s", "pipeline_patches_per_s", "pipeline_to_step_ratio",
                "train_gflops_per_s"):
        assert result[key] > 0, key
    assert result["pipeline_to_step_ratio"] == pytest.approx(
        result["pipeline_patches_per_s"] / result["train_patches_per_s"])
    assert result["bottleneck"] in ("input pipeline", "training step")
    assert result["patch_size"] == [16, 16, 16] and result["batch_size"] == 2
    assert result["steps"] == 2
    assert result["pipeline_phantom"]["n_train_cases"] >= 1
    assert result["precision"] == "float32"


@pytest.mark.slow
def test_bench_train_measures_the_configured_precision():
    import keras

    from pipelines.training.precision import cpu_flags

    overrides = (*TINY, "train.mixed_precision=bfloat16")
    if "avx512f" not in cpu_flags():  # this machine cannot run bfloat16: the error says so
        with pytest.raises(ValueError, match="Expected a GPU or an AVX-512 CPU"):
            run_bench("train", overrides=overrides, steps=1)
    else:
        result = run_bench("train", overrides=overrides, steps=1)
        assert result["precision"] == "mixed_bfloat16"
        assert result["train_step_s"] > 0
    assert keras.mixed_precision.global_policy().name == "float32"  # restored


def test_bench_infer_tiny(tmp_path):
    out = tmp_path / "figures" / "infer.json"
    result = run_bench("infer", overrides=TINY, shape=(32, 32, 32), out=out)
    _check_common(result, "infer")
    assert result["scan_source"] == "synthetic"  # 22 mm field of view: no phantom
    assert result["shape"] == [32, 32, 32]
    assert result["windows"] >= result["windows_evaluated"] >= 1
    for key in ("no_tta", "tta"):
        assert result[key]["seconds_per_scan"] > 0
        assert result[key]["windows_per_s"] > 0
    assert result["tta"]["forward_passes"] == 8 * result["no_tta"]["forward_passes"]
    assert result["precision"] == "float32"
    written = json.loads(out.read_text())
    assert written["no_tta"] == result["no_tta"] and written["machine"] == result["machine"]


def test_bench_evaluate_tiny():
    result = run_bench("evaluate", shape=(32, 32, 32))
    _check_common(result, "evaluate")
    assert 0 < result["seconds"] <= result["bench_seconds"] and result["target_s"] == 3.0
    assert isinstance(result["meets_target"], bool)
    assert result["n_lesions"] >= 1
    assert result["cpm_ready"] is True


def test_unknown_bench_is_an_error():
    with pytest.raises(ValueError, match="what"):
        run_bench("predict")


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, "steps"),
    ({"shape": (32, 32)}, "shape"),
    ({"shape": (32, 0, 32)}, "shape"),
])
def test_bad_arguments_are_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        run_bench("evaluate", **kwargs)


def test_synthetic_lesion_pair_known_structure():
    truth, pred, probs = synthetic_lesion_pair((96, 96, 64), spacing_mm=(1.0, 1.0, 1.0), seed=3)
    assert truth.dtype == bool and pred.dtype == bool and probs.dtype == np.float32
    assert truth.shape == pred.shape == probs.shape == (96, 96, 64)
    np.testing.assert_allclose(probs[pred], 0.9)
    np.testing.assert_allclose(probs[truth & ~pred], 0.6)
    np.testing.assert_allclose(probs[~truth & ~pred], 0.02)
    # a 25 mm ball holds about 4/3 pi 12.5^3 = 8181 voxels of 1 mm^3 (unless clipped)
    assert 1000 < truth.sum() < 20000


def test_synthetic_chest_known_values():
    image = synthetic_chest_hu((64, 64, 8), spacing_mm=(2.0, 2.0, 2.0), seed=0)
    assert image.shape == (64, 64, 8) and image.dtype == np.float32
    assert abs(float(image[0, 0].mean()) + 1000.0) < 30.0     # air in the corner
    assert abs(float(image[32, 10].mean()) - 40.0) < 30.0      # body wall, front
    lung = image[int(0.3 * 64), 32, :]                         # centre of the right lung
    assert abs(float(np.median(lung)) + 850.0) < 60.0


def test_peak_rss_is_positive():
    assert bench.peak_rss_mib() > 0


def test_bench_infer_runs_the_model_in_the_policy_predict_would_use():
    from pipelines.training.precision import cpu_flags, resolve_precision

    result = run_bench("infer", overrides=(*TINY, "train.mixed_precision=auto"), shape=(32, 32, 32))
    expected = resolve_precision("auto", gpu_count=len(result["machine"]["gpus"]), flags=cpu_flags())
    assert result["precision"] == expected  # mixed_bfloat16 on an AVX512_BF16 CPU, else float32
    assert result["tta"]["seconds_per_scan"] > 0
