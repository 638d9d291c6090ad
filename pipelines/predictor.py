"""The model wrapper of sliding-window inference, shared by training-time validation and
``lungseg predict``.

There is one sliding-window implementation (`segmentation.sliding_window`); this module
only turns a Keras model into the ``predict_fn`` it expects and decides the window, the
channels and which windows to skip:

* 3D models (``model.spatial_dims: 3``): 3D windows of ``inference.window`` (default
  ``train.patch_size``, `inference_window`) over the network-space volume ``(I, J, K)``.
* 2D and 2.5D models (``model.spatial_dims: 2``): axial slices, i.e. windows of
  ``(*window, 1)`` over the volume, slice-wise along the last canonical axis K.
  With ``model.context_slices = c`` the ``2c + 1`` neighbouring slices (edge slices
  replicated, exactly as the training sampler does) are the channels. The stitched
  channel stack costs ``(2c + 1)`` times the volume in memory.

The forward pass is compiled once per (model, batch shape): windows are always sent in
batches of exactly ``inference.batch_size`` (the last batch is padded with zeros and the
padding dropped), so nothing is retraced between scans of different sizes.

Probabilities are returned in network space. `postprocess` is the one post-processing
chain that training-time validation and ``lungseg predict`` (and with it ``lungseg demo``
and ``lungseg study``) share: probabilities back to the scan's own grid with
``Geometry.inverse(probs, order=1)`` *before* thresholding, threshold, minimum component
size (`probabilities_to_mask`), optional lung filter (`lung_filter`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from segmentation import preprocessing
from segmentation.alignment import add_channel_axis, spacing_from_affine
from segmentation.config import Config
from segmentation.lungmask import LUNG_AIR_HU, drop_components_outside, lung_region
from segmentation.preprocessing import AIR_HU, normalised_level
from segmentation.sliding_window import sliding_window_inference
from segmentation.thresholding import probabilities_to_mask

__all__ = [
    "AIR_HU",  # re-exported from segmentation.preprocessing, the owner of the HU levels
    "make_predict_fn",
    "context_stack",
    "air_level",
    "body_level",
    "skip_air_window_fn",
    "predict_probabilities",
    "probabilities_to_mask",  # re-exported from segmentation.thresholding (no TensorFlow)
    "lung_filter",
    "postprocess",
]

logger = logging.getLogger(__name__)

_MIN_BODY_SHARE = 0.01  # a window with fewer body voxels lies outside the body


def make_predict_fn(model: Any, *, batch_size: int) -> Callable[[np.ndarray], np.ndarray]:
    """Wraps a Keras model as a fixed-batch, compiled, sigmoid-probability function.

    Args:
        model: A Keras model returning logits ``(N, *spatial, 1)`` (a list with deep
            supervision: the first, full-resolution output is used).
        batch_size: Every call to the model gets exactly this many windows.

    Returns:
        ``predict_fn(batch)``: float32 ``(B, *spatial, C)`` with ``B <= batch_size`` ->
        float32 probabilities ``(B, *spatial, 1)``.

    Raises:
        ValueError: ``batch_size`` is not positive.
    """
    if batch_size < 1:
        raise ValueError(f"Expected batch_size >= 1. Received: batch_size={batch_size}")

    @tf.function(reduce_retracing=True)
    def forward(batch: tf.Tensor) -> tf.Tensor:
        logits = model(batch, training=False)
        if isinstance(logits, (list, tuple)):
            logits = logits[0]
        return tf.sigmoid(tf.cast(logits, tf.float32))

    def predict_fn(batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)
        n = batch.shape[0]
        if n > batch_size:
            raise ValueError(
                f"Expected at most {batch_size} windows per call. Received: batch.shape={batch.shape}"
            )
        if n < batch_size:
            pad = np.zeros((batch_size - n, *batch.shape[1:]), dtype=np.float32)
            batch = np.concatenate([batch, pad], axis=0)
        probs = forward(tf.constant(batch)).numpy()
        return probs[:n]

    predict_fn.tracing_count = forward.experimental_get_tracing_count  # type: ignore[attr-defined]
    return predict_fn


def context_stack(image: np.ndarray, *, context_slices: int) -> np.ndarray:
    """Stacks neighbouring axial slices as channels (2.5D), edge slices replicated.

    Args:
        image: float32 ``(I, J, K)``.
        context_slices: ``c`` slices on each side.

    Returns:
        float32 ``(I, J, K, 2c + 1)``; channel ``c`` is the slice itself, channel
        ``c + d`` is slice ``clip(k + d, 0, K - 1)``.

    Raises:
        ValueError: ``image`` is not 3D or ``context_slices`` is negative.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"Expected image of shape (I, J, K). Received: image.shape={image.shape}")
    if context_slices < 0:
        raise ValueError(f"Expected context_slices >= 0. Received: context_slices={context_slices}")
    n_k = image.shape[2]
    offsets = range(-context_slices, context_slices + 1)
    index = [np.clip(np.arange(n_k) + d, 0, n_k - 1) for d in offsets]
    return np.stack([image[:, :, idx] for idx in index], axis=-1)


def air_level(config: Config) -> float:
    """The preprocessed intensity of air (`segmentation.preprocessing.air_level`)."""
    return preprocessing.air_level(config.preprocess)


def body_level(config: Config) -> float:
    """The preprocessed intensity above which a voxel is body (denser than -900 HU).

    `segmentation.preprocessing.body_level`: lung parenchyma (about -850 HU) is body; the air
    around the patient is not. When the normalisation clips above -900 HU, the floor (air) is
    returned: only voxels above it count.
    """
    return preprocessing.body_level(config.preprocess)


def skip_air_window_fn(image: np.ndarray, *, config: Config) -> Callable[[tuple[slice, ...]], bool]:
    """Returns ``skip_window(slices)``: True for a window that lies outside the body.

    A window is outside the body when fewer than 1 % of its voxels are denser than -900 HU.
    A share, not the maximum: CT noise in air (10 to 40 HU) puts single air voxels far above
    -1000 HU in every large window, and lung parenchyma (about -850 HU) is inside the body.
    When the normalisation clips above -900 HU, only windows entirely at the floor are skipped.

    Args:
        image: The preprocessed network-space image ``(I, J, K)`` (or with channels).
        config: The run config (its ``preprocess`` section gives the normalisation).
    """
    threshold = body_level(config)

    def skip_window(slices: tuple[slice, ...]) -> bool:
        window = image[tuple(slices)]
        return bool(np.count_nonzero(window > threshold) < _MIN_BODY_SHARE * window.size)

    return skip_window


def inference_window(config: Config) -> tuple[int, ...]:
    """The sliding window of a config: ``inference.window``, or ``train.patch_size``.

    Returns:
        One size per spatial axis of the model (2 for 2D / 2.5D, 3 for 3D), in voxels.
    """
    window = config.inference.window
    return tuple(int(w) for w in (config.train.patch_size if window is None else window))


def predict_probabilities(model: Any, image_net: np.ndarray, *, config: Config,
                          tta: bool | None = None, predict_fn=None) -> np.ndarray:
    """Sliding-window foreground probabilities of a preprocessed (network-space) volume.

    Args:
        model: Keras model (logits out), 3D or 2D as ``config.model.spatial_dims``.
        image_net: float32 ``(I, J, K)`` preprocessed volume in canonical order.
        config: Run config: window = `inference_window`; ``inference.overlap``,
            ``batch_size``, ``sigma_scale``, ``tta``, ``skip_empty_windows``.
        tta: Overrides ``inference.tta`` (mirror axes: all three in 3D, the in-plane two
            in 2D).
        predict_fn: A ready `make_predict_fn` result to reuse across scans (optional).

    Returns:
        float32 ``(I, J, K)`` probabilities in [0, 1], network space.

    Raises:
        ValueError: ``image_net`` is not 3D or not finite.
    """
    image = np.asarray(image_net, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(
            f"Expected image_net of shape (I, J, K). Received: image_net.shape={image.shape}"
        )
    if not np.isfinite(image).all():
        raise ValueError(
            f"Expected finite values in image_net. Received: {int((~np.isfinite(image)).sum())} "
            "non-finite voxels"
        )
    inference = config.inference
    use_tta = inference.tta if tta is None else tta
    if predict_fn is None:
        predict_fn = make_predict_fn(model, batch_size=inference.batch_size)
    skip = skip_air_window_fn(image, config=config) if inference.skip_empty_windows else None
    if config.model.spatial_dims == 3:
        return sliding_window_inference(
            add_channel_axis(image),
            predict_fn,
            window=inference_window(config),
            overlap=inference.overlap,
            batch_size=inference.batch_size,
            sigma_scale=inference.sigma_scale,
            skip_window=skip,
            mirror_axes=(0, 1, 2) if use_tta else None,
        ).astype(np.float32)

    stack = context_stack(image, context_slices=config.model.context_slices)

    def predict_slices(batch: np.ndarray) -> np.ndarray:
        # (B, H, W, 1, C) windows one slice thick -> the 2D model's (B, H, W, C).
        probs = predict_fn(batch[:, :, :, 0, :])
        return probs[:, :, :, None, :]

    return sliding_window_inference(
        stack,
        predict_slices,
        window=(*inference_window(config), 1),
        overlap=inference.overlap,
        batch_size=inference.batch_size,
        sigma_scale=inference.sigma_scale,
        skip_window=skip,
        mirror_axes=(0, 1) if use_tta else None,
    ).astype(np.float32)


def lung_filter(mask: np.ndarray, *, image_net: np.ndarray, geometry: Any,
                config: Config) -> np.ndarray:
    """Drops predicted components outside the lungs when ``inference.lung_mask`` is on.

    The lung region is found on the preprocessed image (network space, cranio-caudal axis
    last) at the config's normalisation of -400 HU, brought back to the scan's own grid with
    the recorded geometry, and components with less than half their voxels in it are removed.
    A normalisation that clips -400 HU to its floor (a ``ct_zscore`` whose lower bound is above
    it) leaves no air to find: the region is then the whole scan (with a warning), no filter.

    Args:
        mask: bool ``(I, J, K)`` mask in the scan's own grid.
        image_net: The preprocessed image ``(I, J, K)`` or ``(I, J, K, 1)``.
        geometry: The `segmentation.alignment.Geometry` from the scan to ``image_net``.
        config: The run config (``inference.lung_mask``, normalisation, connectivity).

    Returns:
        bool ``(I, J, K)``; ``mask`` unchanged when ``inference.lung_mask`` is off.
    """
    if not config.inference.lung_mask:
        return mask
    image = np.asarray(image_net)
    if image.ndim == 4:
        image = image[..., 0]
    region_net = lung_region(image, spacing_mm=geometry.spacing_mm,
                             threshold=normalised_level(LUNG_AIR_HU, spec=config.preprocess))
    region = geometry.inverse(region_net.astype(np.float32), order=0, fill=0.0) > 0.5
    return drop_components_outside(mask, region, connectivity=config.evaluation.connectivity)


def postprocess(probs_net: np.ndarray, *, geometry: Any, config: Config,
                image_net: np.ndarray | None = None, threshold: float | None = None,
                min_size_mm3: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The post-processing chain: network-grid probabilities to the scan's probabilities and mask.

    Probabilities (not labels) go back to the scan's own grid and voxel order with
    ``geometry.inverse(order=1)`` and are clipped to [0, 1]; then ``>= threshold`` (a
    hysteresis down to ``inference.grow_threshold`` when it is set below it), removal
    of connected components smaller than ``min_size_mm3`` (spacing of the scan's grid,
    connectivity ``evaluation.connectivity``) and, with ``inference.lung_mask``, `lung_filter`.

    The options enter checked, through the config loader (``inference.threshold``,
    ``inference.min_size_mm3``) or the option checks of `pipelines.infer.predict` and
    `pipelines.infer.predict_volume`; `segmentation.thresholding.probabilities_to_mask`
    checks them once more (a few comparisons).

    Args:
        probs_net: float32 ``(I, J, K)`` probabilities in network space (`predict_probabilities`).
        geometry: The `segmentation.alignment.Geometry` from the scan to network space.
        config: The run config (``inference`` and ``evaluation.connectivity``).
        image_net: The preprocessed image ``(I, J, K)``; needed only with ``inference.lung_mask``.
        threshold: None: ``inference.threshold``.
        min_size_mm3: None: ``inference.min_size_mm3``.

    Returns:
        ``(probs, mask)`` of shape ``geometry.source_shape``: float32 probabilities in [0, 1]
        and the bool mask.

    Raises:
        ValueError: ``inference.lung_mask`` is on and ``image_net`` is None, or an option
            out of range (`probabilities_to_mask`).
    """
    inference = config.inference
    if inference.lung_mask and image_net is None:
        raise ValueError("Expected image_net with inference.lung_mask on. Received: image_net=None")
    probs = np.ascontiguousarray(geometry.inverse(probs_net, order=1, fill=0.0), dtype=np.float32)
    del probs_net
    if not probs.flags.writeable:
        probs = probs.copy()
    np.clip(probs, 0.0, 1.0, out=probs)
    mask = probabilities_to_mask(
        probs,
        threshold=inference.threshold if threshold is None else threshold,
        spacing_mm=spacing_from_affine(geometry.source_affine),
        min_size_mm3=inference.min_size_mm3 if min_size_mm3 is None else min_size_mm3,
        connectivity=config.evaluation.connectivity,
        grow_threshold=inference.grow_threshold,
    )
    if inference.lung_mask:
        mask = lung_filter(mask, image_net=image_net, geometry=geometry, config=config)
    return probs, mask
