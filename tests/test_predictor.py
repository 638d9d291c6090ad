"""Tests of pipelines/predictor.py: the model wrapper of sliding-window inference.

Analytic models make the expected output known: a 1x1 convolution with kernel 1 and bias 0
returns its input as logits, so the stitched probabilities must equal ``sigmoid(image)``
everywhere (the MONAI-style ``x + 1`` test, through the Keras wrapper).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from pipelines.predictor import (
    air_level,
    context_stack,
    inference_window,
    lung_filter,
    make_predict_fn,
    postprocess,
    predict_probabilities,
    skip_air_window_fn,
)
from segmentation.config import load_config
from test_thresholding import _two_blobs  # a found lesion with a rim, and a rim-only blob


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _identity_model(spatial_dims: int, *, channels: int = 1, pick: int = 0) -> keras.Model:
    """Logits = channel ``pick`` of the input (1x1 conv, kernel one-hot, bias 0)."""
    inputs = keras.Input((*([None] * spatial_dims), channels))
    conv = (keras.layers.Conv3D if spatial_dims == 3 else keras.layers.Conv2D)(1, 1)
    outputs = conv(inputs)
    kernel = np.zeros(conv.kernel.shape, dtype=np.float32)
    kernel[..., pick, 0] = 1.0
    conv.set_weights([kernel, np.zeros(1, np.float32)])
    return keras.Model(inputs, outputs)


def _config(spatial_dims: int = 3, **inference):
    overrides = [f"inference.{k}={v}" for k, v in inference.items()]
    if spatial_dims == 3:
        overrides += ["model.filters=[4,8]", "train.patch_size=[8,8,8]"]
    else:
        overrides += ["model.spatial_dims=2", "model.filters=[4,8]", "train.patch_size=[8,8]",
                      "model.context_slices=1"]
    return load_config(None, overrides=overrides)


# --------------------------------------------------------------------------- context stack


def test_context_stack_known_values_with_replicated_edges():
    image = np.zeros((1, 1, 3), np.float32)
    image[0, 0] = [10, 20, 30]
    stack = context_stack(image, context_slices=1)
    assert stack.shape == (1, 1, 3, 3)
    np.testing.assert_array_equal(stack[0, 0], [[10, 10, 20], [10, 20, 30], [20, 30, 30]])


def test_context_stack_zero_context_is_the_image():
    image = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(context_stack(image, context_slices=0)[..., 0], image)


def test_context_stack_rejects_2d_input():
    with pytest.raises(ValueError, match="image.shape"):
        context_stack(np.zeros((3, 3)), context_slices=1)


# --------------------------------------------------------------------------- forward


def test_predict_fn_pads_partial_batches_and_traces_once():
    model = _identity_model(3)
    predict_fn = make_predict_fn(model, batch_size=3)
    rng = np.random.default_rng(0)
    for n in (1, 3, 2):
        batch = rng.normal(size=(n, 4, 4, 4, 1)).astype(np.float32)
        out = predict_fn(batch)
        assert out.shape == (n, 4, 4, 4, 1) and out.dtype == np.float32
        np.testing.assert_allclose(out, _sigmoid(batch), atol=1e-6)
    assert predict_fn.tracing_count() == 1


def test_predict_fn_rejects_oversized_batch():
    predict_fn = make_predict_fn(_identity_model(3), batch_size=2)
    with pytest.raises(ValueError, match="at most 2 windows"):
        predict_fn(np.zeros((3, 4, 4, 4, 1), np.float32))


def test_predict_fn_uses_first_output_of_deep_supervision_model():
    inputs = keras.Input((None, None, None, 1))
    conv = keras.layers.Conv3D(1, 1)
    full = conv(inputs)
    aux = keras.layers.Lambda(lambda t: t * 0.0 - 5.0)(full)
    conv.set_weights([np.ones((1, 1, 1, 1, 1), np.float32), np.zeros(1, np.float32)])
    model = keras.Model(inputs, [full, aux])
    batch = np.full((1, 2, 2, 2, 1), 2.0, np.float32)
    np.testing.assert_allclose(make_predict_fn(model, batch_size=1)(batch), _sigmoid(batch), atol=1e-6)


# --------------------------------------------------------------------------- whole volumes


@pytest.mark.parametrize("shape", [(13, 9, 11), (5, 6, 7)])  # larger and smaller than the window
@pytest.mark.parametrize("tta", [False, True])
def test_predict_probabilities_3d_equals_sigmoid_everywhere(shape, tta):
    config = _config(3, overlap=0.5, batch_size=3, skip_empty_windows=False, tta=tta)
    image = np.random.default_rng(1).uniform(-2, 2, size=shape).astype(np.float32)
    probs = predict_probabilities(_identity_model(3), image, config=config)
    assert probs.shape == shape and probs.dtype == np.float32
    np.testing.assert_allclose(probs, _sigmoid(image), atol=1e-5)


@pytest.mark.parametrize("tta", [False, True])
def test_predict_probabilities_2p5d_is_slice_wise_on_the_centre_channel(tta):
    config = _config(2, overlap=0.25, batch_size=4, skip_empty_windows=False, tta=tta)
    image = np.random.default_rng(2).uniform(-2, 2, size=(11, 9, 5)).astype(np.float32)
    # channel 0 of a 3-channel stack is slice k - 1: the output must be the previous slice
    model = _identity_model(2, channels=3, pick=0)
    probs = predict_probabilities(model, image, config=config)
    expected = _sigmoid(image[:, :, [0, 0, 1, 2, 3]])
    assert probs.shape == image.shape
    np.testing.assert_allclose(probs, expected, atol=1e-5)


@pytest.mark.parametrize("spatial_dims", [3, 2])
def test_predict_probabilities_runs_the_inference_window_not_the_patch(spatial_dims):
    window = [16] * spatial_dims
    config = _config(spatial_dims, overlap=0.25, batch_size=2, skip_empty_windows=False,
                     window=str(window).replace(" ", ""))
    assert config.train.patch_size == (8,) * spatial_dims
    assert inference_window(config) == (16,) * spatial_dims
    channels = 1 if spatial_dims == 3 else 3
    model = _identity_model(spatial_dims, channels=channels, pick=channels // 2)
    wrapped = make_predict_fn(model, batch_size=2)
    seen = []

    def predict_fn(batch):
        seen.append(batch.shape[1:1 + spatial_dims])
        return wrapped(batch)

    image = np.random.default_rng(3).uniform(-2, 2, size=(20, 18, 9)).astype(np.float32)
    probs = predict_probabilities(model, image, config=config, predict_fn=predict_fn)
    np.testing.assert_allclose(probs, _sigmoid(image), atol=1e-5)
    assert seen and set(seen) == {(16,) * spatial_dims}


def test_inference_window_defaults_to_the_training_patch():
    assert inference_window(_config(3)) == (8, 8, 8)
    assert inference_window(_config(2)) == (8, 8)


def test_predict_probabilities_skips_air_windows():
    config = _config(3, overlap=0.0, batch_size=2, skip_empty_windows=True)
    image = np.zeros((16, 8, 8), np.float32)  # HU-windowed: 0.0 is air
    image[:8] = 0.7  # tissue fills the first window only
    probs = predict_probabilities(_identity_model(3), image, config=config)
    np.testing.assert_allclose(probs[:8], _sigmoid(np.float32(0.7)), atol=1e-5)
    np.testing.assert_array_equal(probs[8:], 0.0)  # skipped: no prediction, not sigmoid(0)=0.5


def test_predict_probabilities_rejects_non_finite_image():
    image = np.zeros((8, 8, 8), np.float32)
    image[1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        predict_probabilities(_identity_model(3), image, config=_config(3))


def test_predict_probabilities_rejects_channel_axis():
    with pytest.raises(ValueError, match="image_net.shape"):
        predict_probabilities(_identity_model(3), np.zeros((8, 8, 8, 1)), config=_config(3))


# --------------------------------------------------------------------------- air level


def test_air_level_of_hu_window_is_zero_and_body_is_one_percent_above_minus_900_hu():
    config = _config(3)  # window (-1000, 400)
    assert air_level(config) == 0.0
    image = np.zeros((10, 10, 10), np.float32)
    image.flat[:9] = 0.9  # 9 of 1000 voxels far above air (noise spikes): still outside the body
    skip = skip_air_window_fn(image, config=config)
    assert skip((slice(0, 10),) * 3)
    image.flat[:10] = 99.0 / 1400.0  # 10 voxels at -901 HU: not body
    assert skip((slice(0, 10),) * 3)
    image.flat[:10] = 101.0 / 1400.0  # 10 voxels at -899 HU: 1 % body
    assert not skip((slice(0, 10),) * 3)


def test_noisy_air_window_is_skipped_and_lung_window_is_not():
    config = _config(3)
    rng = np.random.default_rng(0)
    air = (-1000 + rng.normal(0, 35, (32, 32, 32)) + 1000) / 1400  # air with CT noise, windowed
    lung = (-850 + rng.normal(0, 35, (32, 32, 32)) + 1000) / 1400
    image = np.clip(np.concatenate([air, lung]), 0, 1).astype(np.float32)
    skip = skip_air_window_fn(image, config=config)
    assert skip((slice(0, 32), slice(None), slice(None)))
    assert not skip((slice(32, 64), slice(None), slice(None)))


def test_air_level_of_ct_zscore_uses_the_stats():
    from segmentation.preprocessing import CTStats

    config = _config(3)
    stats = CTStats(lower_hu=-1100.0, upper_hu=300.0, mean_hu=-500.0, std_hu=250.0)
    import dataclasses

    config = dataclasses.replace(
        config, preprocess=dataclasses.replace(config.preprocess, normalisation="ct_zscore", ct_stats=stats))
    assert air_level(config) == pytest.approx((-1000.0 + 500.0) / 250.0)


def test_air_level_of_ct_zscore_without_stats_is_an_error():
    from types import SimpleNamespace

    # PreprocessSpec itself refuses ct_zscore without stats; a duck-typed config reaches ours
    config = SimpleNamespace(preprocess=SimpleNamespace(normalisation="ct_zscore", ct_stats=None))
    with pytest.raises(ValueError, match="preprocess.ct_stats"):
        air_level(config)


# --------------------------------------------------------------------------- lung filter
def _flipped_geometry(shape):
    """A scan stored with its first two axes flipped (LPS-like) and 1 mm voxels."""
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    from segmentation.alignment import Geometry, Reorient

    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    ornt = ornt_transform(io_orientation(affine), axcodes2ornt("RAS"))
    return Geometry(shape, affine, steps=(Reorient(ornt, in_shape=shape),))


def test_lung_filter_drops_components_outside_the_lungs_in_the_scans_own_grid():
    from test_lungmask import chest

    image_hu, parts = chest()
    geometry = _flipped_geometry(image_hu.shape)
    image_net = (np.clip(image_hu, -1000.0, 400.0)[..., None] + 1000.0) / 1400.0  # hu_window
    to_source = lambda a: geometry.inverse(a.astype(np.float32), order=0) > 0.5  # noqa: E731
    mask = to_source(parts["wall"] | parts["nodule_all"] | parts["vessel"])
    kept = lung_filter(mask, image_net=image_net, geometry=geometry,
                       config=_config(lung_mask=True))
    np.testing.assert_array_equal(kept, to_source(parts["nodule_all"] | parts["vessel"]))
    off = lung_filter(mask, image_net=image_net, geometry=geometry, config=_config())
    assert off is mask


# --------------------------------------------------------------------------- the chain


def _anisotropic_geometry():
    """Source (4, 6, 3) at (1, 1, 2) mm, first two axes flipped; network space (4, 6, 6) at 1 mm."""
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    from segmentation.alignment import Geometry, Reorient, Resample

    affine = np.diag([-1.0, -1.0, 2.0, 1.0])
    ornt = ornt_transform(io_orientation(affine), axcodes2ornt("RAS"))
    return Geometry((4, 6, 3), affine, steps=(Reorient(ornt, in_shape=(4, 6, 3)),
                                              Resample((4, 6, 3), (4, 6, 6))))


def test_postprocess_brings_probabilities_back_before_thresholding():
    geometry = _anisotropic_geometry()
    probs_net = np.zeros(geometry.shape, np.float32)
    probs_net[1, 2, 2:4] = 1.2  # out of [0, 1]: clipped; k = 2, 3 in network space = source k 1
    probs, mask = postprocess(probs_net, geometry=geometry, config=_config())
    expected = np.clip(geometry.inverse(probs_net, order=1), 0.0, 1.0)
    assert probs.shape == mask.shape == (4, 6, 3) and probs.dtype == np.float32 and mask.dtype == bool
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    assert probs.max() == 1.0 and mask.any()
    np.testing.assert_array_equal(mask, expected >= 0.5)


def test_postprocess_threshold_and_minimum_size_in_the_scans_own_spacing():
    geometry = _flipped_geometry((6, 6, 6))  # 1 mm voxels
    probs_net = np.zeros((6, 6, 6), np.float32)
    probs_net[0, 0, 0] = 0.6  # 1 mm3
    probs_net[3:5, 3:5, 3:5] = 0.45  # 8 mm3, below the config's threshold
    config = _config(min_size_mm3=2.0)
    assert not postprocess(probs_net, geometry=geometry, config=config)[1].any()
    _, mask = postprocess(probs_net, geometry=geometry, config=config, threshold=0.4)
    assert mask.sum() == 8
    _, mask = postprocess(probs_net, geometry=geometry, config=config, threshold=0.4, min_size_mm3=0.0)
    assert mask.sum() == 9


def test_postprocess_grows_by_the_configs_grow_threshold():
    geometry = _flipped_geometry((12, 12, 12))
    probs_net = _two_blobs()
    assert postprocess(probs_net, geometry=geometry, config=_config())[1].sum() == 1
    _, mask = postprocess(probs_net, geometry=geometry, config=_config(grow_threshold=0.25))
    assert mask.sum() == 125
    # a lower --threshold than the grow threshold: plain thresholding at it
    _, mask = postprocess(probs_net, geometry=geometry, config=_config(grow_threshold=0.4),
                          threshold=0.2)
    assert mask.sum() == 125 + 27


def test_postprocess_with_the_lung_filter_needs_the_image():
    geometry = _flipped_geometry((4, 4, 4))
    with pytest.raises(ValueError, match="image_net"):
        postprocess(np.zeros((4, 4, 4), np.float32), geometry=geometry, config=_config(lung_mask=True))


def test_postprocess_applies_the_lung_filter_as_lung_filter_does():
    from test_lungmask import chest

    image_hu, parts = chest()
    geometry = _flipped_geometry(image_hu.shape)
    image_net = (np.clip(image_hu, -1000.0, 400.0) + 1000.0) / 1400.0
    probs_net = (parts["wall"] | parts["nodule_all"]).astype(np.float32)
    config = _config(lung_mask=True)
    _, mask = postprocess(probs_net, geometry=geometry, config=config, image_net=image_net)
    _, unfiltered = postprocess(probs_net, geometry=geometry, config=_config())
    np.testing.assert_array_equal(
        mask, lung_filter(unfiltered, image_net=image_net, geometry=geometry, config=config))
    assert unfiltered.sum() > mask.sum() > 0
