"""Tests for models/unet.py: shapes, divisibility, dtypes, norms, saving and FLOPs."""

import keras
import numpy as np
import pytest

from models import build_unet, count_params, estimate_flops, group_count

TINY = (4, 8, 16)  # depth 2: sizes must be multiples of 4


def predict(model, x):
    return model.predict_on_batch(x)


@pytest.fixture
def mixed_precision():
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    "spatial_dims, in_channels, x_shape",
    [
        (3, 1, (2, 8, 12, 4, 1)),
        (3, 2, (1, 4, 8, 16, 2)),
        (2, 1, (2, 12, 8, 1)),
        (2, 5, (1, 8, 4, 5)),  # 2.5D: five neighbouring slices as channels
    ],
)
def test_output_shape_with_none_dims(spatial_dims, in_channels, x_shape):
    model = build_unet(spatial_dims, in_channels=in_channels, filters=TINY)
    assert tuple(model.input.shape) == (None,) * (spatial_dims + 1) + (in_channels,)
    assert tuple(model.output.shape) == (None,) * (spatial_dims + 1) + (1,)
    out = predict(model, np.zeros(x_shape, dtype=np.float32))
    assert out.shape == x_shape[:-1] + (1,)
    assert out.dtype == np.float32


def test_static_input_shape_with_and_without_channel_entry():
    a = build_unet(3, filters=TINY, input_shape=(8, 4, 12))
    b = build_unet(3, in_channels=2, filters=TINY, input_shape=(8, None, 12, 2))
    assert tuple(a.input.shape) == (None, 8, 4, 12, 1)
    assert tuple(b.output.shape) == (None, 8, None, 12, 1)


@pytest.mark.parametrize(
    "spatial_dims, input_shape, match",
    [
        (3, (8, 10, 8), r"divisible by 2\*\*depth = 4 \(depth=2.*size 10 on spatial axis 1"),
        (2, (6, None), r"divisible by 2\*\*depth = 4.*size 6 on spatial axis 0"),
        (3, (None, None, 2), r"size 2 on spatial axis 2"),
    ],
)
def test_static_size_not_divisible_raises(spatial_dims, input_shape, match):
    with pytest.raises(ValueError, match=match):
        build_unet(spatial_dims, filters=TINY, input_shape=input_shape)


def test_divisor_follows_depth():
    build_unet(2, filters=(4, 8), input_shape=(6, 10))  # depth 1: multiples of 2 are fine
    with pytest.raises(ValueError, match=r"2\*\*depth = 8 \(depth=3"):
        build_unet(2, filters=(2, 4, 4, 8), input_shape=(12, 16))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(spatial_dims=1), ValueError, "spatial_dims"),
        (dict(norm="layer"), ValueError, "norm"),
        (dict(filters=()), ValueError, "filters"),
        (dict(filters=(4, 0, 8)), ValueError, "filters"),
        (dict(dropout=1.0), ValueError, "dropout"),
        (dict(in_channels=0), ValueError, "in_channels"),
        (dict(in_channels=1.5), TypeError, "in_channels"),
        (dict(input_shape=(8, 8)), ValueError, "input_shape"),
        (dict(input_shape=(8, 8, 8, 3)), ValueError, "in_channels=1"),
        (dict(filters=(4,), deep_supervision=True), ValueError, "deep_supervision"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs, error, match):
    kwargs = {"spatial_dims": 3, "filters": TINY, **kwargs}
    with pytest.raises(error, match=match):
        build_unet(kwargs.pop("spatial_dims"), **kwargs)


# --------------------------------------------------------------------------- precision


@pytest.mark.parametrize("deep_supervision", [False, True])
def test_logits_are_float32_under_mixed_precision(mixed_precision, deep_supervision):
    model = build_unet(3, filters=TINY, norm="group", deep_supervision=deep_supervision)
    assert keras.mixed_precision.global_policy().name == "mixed_float16"
    assert model.get_layer("enc0_a_conv").compute_dtype == "float16"  # really mixed inside
    outputs = model.outputs if deep_supervision else [model.output]
    assert all(o.dtype == "float32" for o in outputs)
    out = predict(model, np.random.default_rng(0).normal(size=(1, 8, 8, 8, 1)).astype("float32"))
    for o in (out if deep_supervision else [out]):
        assert o.dtype == np.float32 and np.all(np.isfinite(o))


def test_mixed_precision_fixture_restores_the_policy():
    assert keras.mixed_precision.global_policy().name == "float32"


# --------------------------------------------------------------------------- norms, residual


def test_group_count_known_values():
    assert [group_count(c) for c in (1, 4, 8, 12, 16, 7, 256)] == [1, 4, 8, 6, 8, 7, 8]


@pytest.mark.parametrize("norm, expected_groups", [("instance", 4), ("group", 4), ("batch", None)])
def test_each_norm(norm, expected_groups):
    model = build_unet(2, filters=(4, 16), norm=norm)
    first, deeper = model.get_layer("enc0_a_norm"), model.get_layer("bottleneck_a_norm")
    if norm == "batch":
        assert isinstance(first, keras.layers.BatchNormalization)
    else:
        assert isinstance(first, keras.layers.GroupNormalization)
        assert first.groups == expected_groups
        assert deeper.groups == (16 if norm == "instance" else 8)
    out = predict(model, np.random.default_rng(1).normal(size=(2, 8, 4, 1)).astype("float32"))
    assert out.shape == (2, 8, 4, 1) and np.all(np.isfinite(out))


def test_instance_norm_normalises_each_channel_of_each_sample():
    # With groups == channels, a sample's scale does not change the normalised features
    # (the bias-free conv is linear; a shift would not commute with its zero padding).
    model = build_unet(2, filters=(4, 8), norm="instance")
    features = keras.Model(model.input, model.get_layer("enc0_a_norm").output)
    x = np.random.default_rng(2).normal(size=(1, 8, 8, 1)).astype("float32")
    a = features.predict_on_batch(x)
    b = features.predict_on_batch(10.0 * x)
    np.testing.assert_allclose(a, b, atol=1e-3)


def test_residual_adds_shortcuts_and_projections():
    plain = build_unet(3, filters=TINY)
    residual = build_unet(3, filters=TINY, residual=True)
    adds = [l for l in residual.layers if isinstance(l, keras.layers.Add)]
    assert len(adds) == 5  # enc0, enc1, bottleneck, dec1, dec0
    assert not any(isinstance(l, keras.layers.Add) for l in plain.layers)
    assert residual.get_layer("enc0_proj_conv").kernel.shape == (1, 1, 1, 1, 4)
    assert count_params(residual) > count_params(plain)
    out = predict(residual, np.ones((1, 4, 8, 4, 1), dtype="float32"))
    assert out.shape == (1, 4, 8, 4, 1)


def test_dropout_is_active_only_in_training():
    model = build_unet(2, filters=(4, 8), dropout=0.5)
    dropouts = [l for l in model.layers if isinstance(l, keras.layers.SpatialDropout2D)]
    assert [(l.name, l.rate) for l in dropouts] == [("bottleneck_dropout", 0.5)]
    x = np.random.default_rng(3).normal(size=(1, 8, 8, 1)).astype("float32")
    np.testing.assert_array_equal(predict(model, x), predict(model, x))
    train_a = keras.ops.convert_to_numpy(model(x, training=True))
    train_b = keras.ops.convert_to_numpy(model(x, training=True))
    assert not np.allclose(train_a, train_b)


# --------------------------------------------------------------------------- deep supervision


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_deep_supervision_returns_full_resolution_list(spatial_dims):
    filters = (4, 8, 8, 16)  # depth 3: main head + aux at 1/2 and 1/4
    model = build_unet(spatial_dims, filters=filters, deep_supervision=True)
    x_shape = (2,) + (8, 16, 8)[:spatial_dims] + (1,)
    outputs = predict(model, np.random.default_rng(4).normal(size=x_shape).astype("float32"))
    assert isinstance(outputs, list) and len(outputs) == 3
    for o in outputs:
        assert o.shape == x_shape and o.dtype == np.float32
    # The 1/4 auxiliary head is constant on 4x4(x4) blocks (nearest up-sampling).
    quarter = outputs[2]
    coarse = quarter[(slice(None),) + (slice(None, None, 4),) * spatial_dims]
    expected = coarse
    for axis in range(1, spatial_dims + 1):
        expected = np.repeat(expected, 4, axis=axis)
    np.testing.assert_array_equal(quarter, expected)
    assert not np.allclose(quarter, quarter.mean())  # not trivially constant
    assert not np.allclose(outputs[0], outputs[1])


def test_head_bias_sets_the_initial_logit_prior():
    prior = float(np.log(0.01 / 0.99))
    model = build_unet(2, filters=(4, 8, 8), head_bias=prior, deep_supervision=True)
    for name in ("logits", "aux1_logits"):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(model.get_layer(name).bias),
                                   [prior], rtol=1e-6)


# --------------------------------------------------------------------------- saving


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(spatial_dims=3, norm="batch", residual=True, deep_supervision=True),
        dict(spatial_dims=2, in_channels=3, norm="instance", dropout=0.2),
        dict(spatial_dims=3, norm="group"),
    ],
)
def test_save_load_round_trip_gives_identical_predictions(tmp_path, kwargs):
    model = build_unet(kwargs.pop("spatial_dims"), filters=TINY, **kwargs)
    # Move BatchNorm statistics away from their initial values so that loading them matters.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(np.full(layer.moving_mean.shape, 0.3, "float32"))
            layer.moving_variance.assign(np.full(layer.moving_variance.shape, 2.0, "float32"))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    shape = (1,) + (8,) * (len(model.input.shape) - 2) + (model.input.shape[-1],)
    x = np.random.default_rng(5).normal(size=shape).astype("float32")
    before, after = predict(model, x), predict(loaded, x)
    assert isinstance(after, list) == isinstance(before, list)
    before, after = (v if isinstance(v, list) else [v] for v in (before, after))
    assert len(after) == len(before)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert loaded.name == model.name and count_params(loaded) == count_params(model)


# --------------------------------------------------------------------------- accounting


def test_count_params_known_value():
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, use_bias=True)(inputs)  # 3*3*3*4 + 4 = 112
    x = keras.layers.BatchNormalization()(x)             # 4 * 4 = 16 (8 trainable)
    model = keras.Model(inputs, x)
    assert count_params(model) == 128
    assert count_params(model, trainable_only=True) == 120


@pytest.mark.parametrize(
    "layer, patch, expected_flops",
    [
        # Conv2D(4, 3x3, same) on (8, 8, 2): 8*8 outputs * 4 * (2*9) MACs, times 2.
        (keras.layers.Conv2D(4, 3, padding="same"), (8, 8), 2 * 8 * 8 * 4 * 2 * 9),
        # valid padding: 6*6 outputs.
        (keras.layers.Conv2D(4, 3), (8, 8), 2 * 6 * 6 * 4 * 2 * 9),
        # Conv3D(3, 3x3x3, same, stride 2) on (4, 6, 8, 2): 2*3*4 outputs.
        (keras.layers.Conv3D(3, 3, strides=2, padding="same"), (4, 6, 8), 2 * 24 * 3 * 2 * 27),
        # Conv2DTranspose(5, 2, stride 2) on (4, 4, 2): 16 inputs * 2 * 5 * 4 kernel taps.
        (keras.layers.Conv2DTranspose(5, 2, strides=2), (4, 4), 2 * 16 * 2 * 5 * 4),
    ],
)
def test_estimate_flops_one_layer_model_known_value(layer, patch, expected_flops):
    inputs = keras.Input((None,) * len(patch) + (2,))
    model = keras.Model(inputs, layer(inputs))
    assert estimate_flops(model, patch) == expected_flops
    # The model is left untouched: its layer still has one node and dynamic shapes.
    assert tuple(model.output.shape)[1:-1] == (None,) * len(patch)


def test_estimate_flops_unet_scales_with_patch_volume():
    model = build_unet(3, filters=TINY, residual=True, deep_supervision=True)
    small, large = estimate_flops(model, (8, 8, 8)), estimate_flops(model, (16, 16, 16))
    assert small > 0 and large == 8 * small


def test_estimate_flops_unet_known_value_2d():
    # filters (2, 4), depth 1, patch 4x4, in_channels 1; every conv is "same".
    model = build_unet(2, filters=(2, 4))
    hw, hw2 = 16, 4
    expected = 2 * (
        hw * 2 * 1 * 9 + hw * 2 * 2 * 9        # enc0: 1->2, 2->2
        + hw2 * 4 * 2 * 9 + hw2 * 4 * 4 * 9    # bottleneck at 2x2: 2->4, 4->4
        + hw2 * 4 * 2 * 4                      # up0: transposed 2x2, 4->2 from 2x2 inputs
        + hw * 2 * 4 * 9 + hw * 2 * 2 * 9      # dec0: concat 4->2, 2->2
        + hw * 1 * 2 * 1                       # head 1x1: 2->1
    )
    assert estimate_flops(model, (4, 4)) == expected


@pytest.mark.parametrize("patch", [(8, 8), (8, 8, 0), (8, 8, 8.0)])
def test_estimate_flops_bad_patch_shape_raises(patch):
    model = build_unet(3, filters=TINY)
    with pytest.raises(ValueError, match="patch_shape"):
        estimate_flops(model, patch)


def test_estimate_flops_patch_must_match_static_shape():
    model = build_unet(2, filters=TINY, input_shape=(8, 8))
    with pytest.raises(ValueError, match="static input shape"):
        estimate_flops(model, (16, 16))
