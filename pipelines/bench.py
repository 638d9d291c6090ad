"""``lungseg bench train|infer|evaluate``: speed and memory figures on this machine.

Every result is a JSON-safe dict with the machine (`machine_info`), the config path and
overrides, and ``peak_rss_mib`` (the process's peak resident memory from
``resource.getrusage``, i.e. over the whole command). Phases that matter on their own also
carry ``phase_peak_rss_mib``: the peak of that phase alone, measured by resetting the
kernel's high-water mark (``/proc/self/clear_refs``; None where the kernel does not allow it).

* ``train``: parameters and analytic FLOPs per patch of the configured model; training-step
  throughput (patches/s) of the configured model, loss and optimizer on one random in-memory
  batch of the configured patch size (``model.train_on_batch`` after warm-up steps, no input
  pipeline); input-pipeline throughput (patches/s) of the real patch pipeline (lesion-balanced
  sampler + augmentation + tf.data, `pipelines.data`) on a small phantom written to a temporary
  folder and preprocessed with the config. ``pipeline_to_step_ratio`` > 1 means the pipeline
  keeps up with training. Both figures are measured one after the other on the same cores; in
  a real run they share them.
* ``infer``: a synthetic scan (``shape``, default 512 x 512 x 300 voxels of 0.7 x 0.7 x 1.25 mm)
  through the full predict path, `pipelines.infer.predict_volume` (preprocess, sliding window,
  geometry back to the scan, threshold), with an untrained model of the config (timing does not
  depend on the weights), without and with mirror TTA. The scan is a
  `segmentation.phantom.generate_case` chest phantom when its field of view is valid and its
  size at most 512 x 512 x 320 voxels (about 20 s to generate on 2 cores), else a cheaper
  synthetic chest (ellipses and spheres with noise); ``scan_source`` says which.
* ``evaluate``: a truth/prediction pair of ``shape`` with seven lesions (3-25 mm; one missed,
  two false positives) and a probability map through `segmentation.metrics.evaluate_case`;
  the target is under 3 s for 512 x 512 x 300.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipelines.bench_machine import _Phase, machine_info, peak_rss_mib
from pipelines.bench_synthetic import (
    _pipeline_phantom_geometry,
    _random_batch,
    synthetic_chest_hu,
    synthetic_lesion_pair,
)
from segmentation.validation import check_int, check_shape, check_spacing, json_safe

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_SCAN_SHAPE",
    "DEFAULT_SCAN_SPACING_MM",
    "EVALUATE_TARGET_S",
    "run_bench",
    "machine_info",
    "peak_rss_mib",
    "bench_train_speed",
    "bench_infer_speed",
    "bench_evaluate_speed",
    "synthetic_chest_hu",
    "synthetic_lesion_pair",
]

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cpu.yaml"
DEFAULT_SCAN_SHAPE = (512, 512, 300)
DEFAULT_SCAN_SPACING_MM = (0.7, 0.7, 1.25)
EVALUATE_TARGET_S = 3.0
DEFAULT_TRAIN_STEPS = 10
_WARMUP_STEPS = 2
_PHANTOM_MAX_VOXELS = 512 * 512 * 320
_WHATS = ("train", "infer", "evaluate")


# --------------------------------------------------------------------------- train


def bench_train_speed(config, *, steps: int = DEFAULT_TRAIN_STEPS, warmup_steps: int = _WARMUP_STEPS,
                      seed: int = 0) -> dict:
    """Model size, training-step throughput and input-pipeline throughput of a config.

    Args:
        config: A `segmentation.config.Config`.
        steps: Timed training steps and pipeline batches (after ``warmup_steps`` each).
        warmup_steps: Untimed steps first (tracing, thread pools).
        seed: Seed of the random batch and of the model's initial weights.

    Returns:
        JSON-safe dict: ``params, trainable_params, flops_per_patch_forward,
        train_gflops_per_s`` (3 x forward FLOPs per trained patch, an estimate),
        ``train_step_s, train_patches_per_s, pipeline_patches_per_s,
        pipeline_to_step_ratio, bottleneck`` ("input pipeline" or "training step"),
        ``precision`` (the dtype policy ``train.mixed_precision`` means here),
        ``batch_size, patch_size, spatial_dims, steps, warmup_steps, pipeline_phantom``
        and ``phase_peak_rss_mib`` (of the training steps).
    """
    import keras

    from models.unet import count_params, estimate_flops
    from pipelines.data import measure_pipeline_throughput
    from pipelines.training.data import make_train_dataset, prepare_data
    from pipelines.training.model import build_model, compile_model, precision_policy
    from segmentation.phantom import write_phantom_dataset

    steps = check_int(steps, name="steps", minimum=1)
    keras.utils.set_random_seed(seed)
    with precision_policy(config.train.mixed_precision) as policy:
        model = build_model(config)
        n_outputs = len(model.outputs)
        compile_model(model, config, total_steps=steps + warmup_steps)
        params = count_params(model)
        trainable = count_params(model, trainable_only=True)
        patch = tuple(config.train.patch_size)
        flops = estimate_flops(model, patch)
        x, y = _random_batch(config, n_outputs=n_outputs, seed=seed)
        for _ in range(warmup_steps):
            model.train_on_batch(x, y)
        with _Phase() as step_phase:
            for _ in range(steps):
                model.train_on_batch(x, y)
        step_s = step_phase.seconds / steps
        train_pps = config.train.batch_size / step_s
        del model
        keras.backend.clear_session()

    size, spacing = _pipeline_phantom_geometry(config)
    # The pipeline is measured on its own phantom and cache, never in the user's cache_dir.
    pipe_config = dataclasses.replace(
        config, data=dataclasses.replace(config.data, cache_dir=None, n_folds=0, val_fraction=0.25))
    with tempfile.TemporaryDirectory(prefix="lungseg_bench_") as tmp:
        data_dir = write_phantom_dataset(Path(tmp) / "data", n_cases=4, seed=seed, size=size,
                                         spacing_mm=spacing)
        prepared = prepare_data(pipe_config, data_dir=data_dir, run_dir=Path(tmp) / "run",
                                progress=False)
        dataset = make_train_dataset(prepared.config, prepared)
        pipeline_pps = measure_pipeline_throughput(dataset, n_batches=steps,
                                                   warmup_batches=warmup_steps)
        n_pipeline_cases = len(prepared.train_cases)
        del dataset, prepared
    ratio = pipeline_pps / train_pps
    return {
        "params": params,
        "trainable_params": trainable,
        "flops_per_patch_forward": flops,
        "train_gflops_per_s": 3.0 * flops * train_pps / 1e9,
        "train_step_s": step_s,
        "train_patches_per_s": train_pps,
        "pipeline_patches_per_s": pipeline_pps,
        "pipeline_to_step_ratio": ratio,
        "bottleneck": "input pipeline" if ratio < 1.0 else "training step",
        "precision": policy,
        "batch_size": config.train.batch_size,
        "patch_size": list(patch),
        "spatial_dims": config.model.spatial_dims,
        "steps": steps,
        "warmup_steps": warmup_steps,
        "pipeline_phantom": {"n_train_cases": n_pipeline_cases, "size": list(size),
                             "spacing_mm": [round(s, 4) for s in spacing],
                             "augmentation": bool(config.augment.enabled)},
        "phase_peak_rss_mib": step_phase.peak_rss_mib,
    }


# --------------------------------------------------------------------------- infer


def _scan_source(shape: tuple[int, int, int], spacing: tuple[float, float, float],
                 scan: str) -> str:
    from segmentation.phantom import MIN_FOV_INPLANE_MM, MIN_FOV_SLICE_MM, MAX_FOV_INPLANE_MM

    fov = [n * s for n, s in zip(shape, spacing)]
    phantom_ok = (all(MIN_FOV_INPLANE_MM <= f <= MAX_FOV_INPLANE_MM for f in fov[:2])
                  and fov[2] >= MIN_FOV_SLICE_MM and min(shape) >= 16
                  and math.prod(shape) <= _PHANTOM_MAX_VOXELS)
    if scan == "phantom" and not phantom_ok:
        raise ValueError(
            "Expected a phantom-compatible scan (fields of view 100-700 mm in-plane, >= 30 mm along "
            f"the slices, at most {_PHANTOM_MAX_VOXELS} voxels). Received: shape={list(shape)}, "
            f"spacing_mm={list(spacing)} (fov_mm={[round(f, 1) for f in fov]})"
        )
    if scan == "auto":
        return "phantom" if phantom_ok else "synthetic"
    return scan


def _count_windows(image_net: np.ndarray, config) -> tuple[int, int]:
    """(windows tiling the network-space image, windows not skipped as air) of the config."""
    from pipelines.predictor import inference_window, skip_air_window_fn
    from segmentation.sliding_window import window_positions

    window = inference_window(config)
    if config.model.spatial_dims == 2:
        window = (*window, 1)
    padded = tuple(max(s, w) for s, w in zip(image_net.shape, window))
    positions = window_positions(padded, window, config.inference.overlap)
    if not config.inference.skip_empty_windows:
        return len(positions), len(positions)
    if padded != image_net.shape:
        return len(positions), len(positions)  # the padded image: counted as evaluated
    skip = skip_air_window_fn(image_net, config=config)
    return len(positions), sum(not skip(p) for p in positions)


def bench_infer_speed(config, *, shape: Sequence[int] = DEFAULT_SCAN_SHAPE,
                      spacing_mm: Sequence[float] = DEFAULT_SCAN_SPACING_MM,
                      scan: Literal["auto", "phantom", "synthetic"] = "auto", seed: int = 0) -> dict:
    """Seconds per scan of the full predict path, without and with mirror TTA.

    Args:
        config: A `segmentation.config.Config`; an untrained model of ``config.model`` is used.
        shape: Scan shape (I, J, K) in voxels.
        spacing_mm: Scan voxel size (I, J, K) in mm.
        scan: ``"phantom"`` (`segmentation.phantom.generate_case`), ``"synthetic"``
            (`synthetic_chest_hu`) or ``"auto"`` (phantom when it takes the geometry).
        seed: Scan and model seed.

    Returns:
        JSON-safe dict: ``scan_source, scan_generation_s, shape, spacing_mm, network_shape,
        preprocess_s, windows, windows_evaluated`` (not skipped as air), ``window, overlap,
        inference_batch_size``, ``precision`` (the policy `lungseg predict` would run a model
        trained with ``train.mixed_precision`` in, here) and ``no_tta`` / ``tta`` entries
        with ``seconds_per_scan, windows_per_s`` (evaluated windows / scan seconds), ``forward_passes`` (windows x
        mirror flips), ``phase_peak_rss_mib``.

    Raises:
        ValueError: bad shape/spacing, or ``scan="phantom"`` for a geometry it does not take.
    """
    import keras

    from pipelines.infer import predict_volume
    from pipelines.infer_inputs import model_policy, native_precision
    from pipelines.predictor import inference_window
    from pipelines.training.model import build_model, precision_policy
    from segmentation.io import volume_from_array
    from segmentation.preprocessing import preprocess_volume

    shape = check_shape(shape)
    spacing = check_spacing(spacing_mm)
    if scan not in ("auto", "phantom", "synthetic"):
        raise ValueError(f"Expected scan in ('auto', 'phantom', 'synthetic'). Received: scan={scan!r}")
    source = _scan_source(shape, spacing, scan)
    start = time.perf_counter()
    if source == "phantom":
        from segmentation.phantom import generate_case

        case = generate_case(seed=seed, size=shape, spacing_mm=spacing)
        array, affine = case.image_hu, case.affine
        del case
    else:
        array = synthetic_chest_hu(shape, spacing_mm=spacing, seed=seed)
        affine = np.diag([*spacing, 1.0])
    generation_s = time.perf_counter() - start
    volume = volume_from_array(array, affine, kind="image")
    del array

    with _Phase() as pre_phase:
        pre = preprocess_volume(volume, spec=config.preprocess)
    image_net = np.asarray(pre.image)
    n_windows, n_evaluated = _count_windows(image_net, config)
    network_shape = list(image_net.shape)
    del pre, image_net

    keras.utils.set_random_seed(seed)
    with precision_policy(config.train.mixed_precision):
        model = build_model(config)
    model = native_precision(model)  # as lungseg predict runs a run's model on this machine
    rank = 3 if config.model.spatial_dims == 3 else 2
    result: dict[str, Any] = {
        "scan_source": source,
        "scan_generation_s": generation_s,
        "shape": list(shape),
        "spacing_mm": list(spacing),
        "network_shape": network_shape,
        "preprocess_s": pre_phase.seconds,
        "windows": n_windows,
        "windows_evaluated": n_evaluated,
        "window": list(inference_window(config)),
        "overlap": config.inference.overlap,
        "inference_batch_size": config.inference.batch_size,
        "precision": model_policy(model),
    }
    for key, tta in (("no_tta", False), ("tta", True)):
        run_config = dataclasses.replace(config, inference=dataclasses.replace(config.inference, tta=tta))
        with _Phase() as phase:
            probs, mask = predict_volume(model, run_config, volume)
        if tuple(np.shape(probs)) != tuple(volume.source_shape) or np.shape(mask) != np.shape(probs):
            raise ValueError(
                f"Expected predict_volume to return arrays of the scan's shape {volume.source_shape}. "
                f"Received: probs.shape={np.shape(probs)}, mask.shape={np.shape(mask)}"
            )
        del probs, mask
        flips = 2**rank if tta else 1
        result[key] = {
            "seconds_per_scan": phase.seconds,
            "windows_per_s": n_evaluated / phase.seconds,
            "forward_passes": n_evaluated * flips,
            "phase_peak_rss_mib": phase.peak_rss_mib,
        }
    return result


# --------------------------------------------------------------------------- evaluate


def bench_evaluate_speed(*, shape: Sequence[int] = DEFAULT_SCAN_SHAPE,
                         spacing_mm: Sequence[float] = DEFAULT_SCAN_SPACING_MM, seed: int = 0) -> dict:
    """Seconds and peak memory of `segmentation.metrics.evaluate_case` on one large pair.

    Returns:
        JSON-safe dict: ``seconds, target_s, meets_target, shape, spacing_mm, n_lesions,
        n_detected, n_false_positives, dice, cpm_ready`` (probabilities given) and
        ``phase_peak_rss_mib`` (of evaluate_case alone).
    """
    from segmentation.metrics import evaluate_case

    shape = check_shape(shape)
    spacing = check_spacing(spacing_mm)
    truth, pred, probs = synthetic_lesion_pair(shape, spacing_mm=spacing, seed=seed)
    with _Phase() as phase:
        result = evaluate_case(truth, pred, spacing_mm=spacing, probs=probs, case_id="bench")
    return {
        "seconds": phase.seconds,
        "target_s": EVALUATE_TARGET_S,
        "meets_target": phase.seconds < EVALUATE_TARGET_S,
        "shape": list(shape),
        "spacing_mm": list(spacing),
        "n_lesions": result.n_lesions,
        "n_detected": result.n_detected,
        "n_false_positives": result.n_false_positives,
        "dice": result.voxel["dice"],
        "cpm_ready": result.has_probabilities,
        "phase_peak_rss_mib": phase.peak_rss_mib,
    }


# --------------------------------------------------------------------------- entry point


def _write_json(path: Path, data: dict) -> Path:
    from segmentation.io import atomic_write

    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _check_bench_memory(what: str, config, *, shape: tuple[int, int, int],
                        spacing_mm: tuple[float, float, float], max_memory_gb: float | None) -> None:
    """Refuses a ``shape`` whose bench would not fit the memory budget, before allocating."""
    from segmentation.plausibility import (
        ScanLimits,
        check_memory,
        estimate_evaluation_bytes,
        estimate_inference_bytes,
        format_bytes,
    )

    if what == "train":
        return
    limits = ScanLimits(max_memory_gb=max_memory_gb)
    if what == "evaluate":
        n_bytes = estimate_evaluation_bytes(shape)
        details = f"shape {list(shape)}"
    else:
        window = config.inference.window or config.train.patch_size
        parts = estimate_inference_bytes(
            shape, spacing_mm, target_spacing_mm=config.preprocess.target_spacing_mm,
            window=window, batch_size=config.inference.batch_size,
            channels=config.model.in_channels, filters=config.model.filters,
            tta=config.inference.tta, source_itemsize=4)
        n_bytes = parts["total"]
        details = (f"shape {list(shape)}, window {list(window)}; " + ", ".join(
            f"{k} {format_bytes(v)}" for k, v in parts.items() if k not in ("total", "network_voxels")))
    check_memory(n_bytes, limits=limits, what=f"bench {what} of --shape {' '.join(map(str, shape))}",
                 details=details)


def run_bench(what: Literal["train", "infer", "evaluate"], *,
              config_path: str | os.PathLike | None = None, overrides: Sequence[str] = (),
              steps: int | None = None, shape: Sequence[int] | None = None,
              out: str | os.PathLike | None = None,
              spacing_mm: Sequence[float] = DEFAULT_SCAN_SPACING_MM,
              scan: Literal["auto", "phantom", "synthetic"] = "auto", seed: int = 0,
              max_memory_gb: float | None = None) -> dict:
    """Runs one benchmark and returns its figures (what ``lungseg bench`` prints).

    Args:
        what: ``"train"``, ``"infer"`` or ``"evaluate"`` (see the module docstring).
        config_path: YAML config; None is ``configs/cpu.yaml`` of this repository.
        overrides: ``key=value`` config overrides (``--set``).
        steps: Timed training steps (train; default 10).
        shape: Scan shape (infer, evaluate; default 512 x 512 x 300).
        out: Also write the result here as JSON (atomically).
        spacing_mm: Scan voxel size (infer, evaluate; default 0.7 x 0.7 x 1.25 mm).
        scan: Scan source of the infer bench (``auto``, ``phantom``, ``synthetic``).
        seed: Seed of the synthetic data and the model.
        max_memory_gb: Memory budget (None: 80 % of the machine's); a ``shape`` whose bench
            is estimated to need more is refused before anything is allocated.

    Returns:
        JSON-safe dict: ``what, config, overrides, machine, peak_rss_mib, bench_seconds`` (the
        whole bench) and the figures of `bench_train_speed`, `bench_infer_speed` or
        `bench_evaluate_speed`.

    Raises:
        ValueError: unknown ``what``, bad ``steps``/``shape``/``spacing_mm``, bad config,
            or a ``shape`` over the memory budget (`segmentation.plausibility.PlausibilityError`).
        TypeError: non-integer ``steps`` or ``shape``.
    """
    from segmentation.config import load_config

    if what not in _WHATS:
        raise ValueError(f"Expected what in {_WHATS}. Received: what={what!r}")
    if steps is not None:
        steps = check_int(steps, name="steps", minimum=1)
    shape = DEFAULT_SCAN_SHAPE if shape is None else check_shape(shape)
    spacing = check_spacing(spacing_mm)
    overrides = [str(o) for o in overrides]
    path = DEFAULT_CONFIG if config_path is None else Path(config_path)
    config = load_config(path, overrides=overrides)
    _check_bench_memory(what, config, shape=shape, spacing_mm=spacing, max_memory_gb=max_memory_gb)
    start = time.perf_counter()
    if what == "train":
        figures = bench_train_speed(config, steps=steps or DEFAULT_TRAIN_STEPS, seed=seed)
    elif what == "infer":
        figures = bench_infer_speed(config, shape=shape, spacing_mm=spacing, scan=scan, seed=seed)
    else:
        figures = bench_evaluate_speed(shape=shape, spacing_mm=spacing, seed=seed)
    result = {
        "what": what,
        "config": str(path),
        "overrides": overrides,
        **figures,
        "bench_seconds": time.perf_counter() - start,
        "peak_rss_mib": peak_rss_mib(),
        "machine": machine_info(),
    }
    result = json_safe(result)
    if out is not None:
        result["out"] = str(_write_json(Path(out), result))
    return result
