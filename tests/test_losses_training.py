"""Tests for losses/ inside Keras training: save/load, schedules, learned weights,
per-component metrics, debug mode, and a 20-step tiny U-Net run per loss."""

import functools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402

from losses import (  # noqa: E402
    BCELoss, DiceLoss, HybridLoss, LossWeightScheduler, component_metrics, get_loss,
    loss_callbacks,
)
from losses.base import BinaryLoss  # noqa: E402

pytestmark = pytest.mark.slow  # the tests here train tiny models

ALL_CONFIGS = {
    "bce": "bce", "dice": "dice", "focal": "focal", "tversky": "tversky",
    "focal_tversky": "focal_tversky", "hybrid": "hybrid",
    "hybrid_learned": {"name": "hybrid", "weighting": "learned", "components": ["bce", "dice"]},
    "hybrid_linear": {"name": "hybrid", "weighting": "linear", "ramp_epochs": [0, 2],
                      "components": [{"name": "bce", "weight": 1.0, "final_weight": 0.2},
                                     {"name": "dice", "weight": 0.0, "final_weight": 0.8}]},
}


def sphere_patches(n, size=8, seed=0, empty_every=3):
    """Bright spheres on noise; every ``empty_every``-th patch has no nodule."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"), axis=-1)
    images = rng.normal(0.0, 0.2, (n, size, size, size, 1)).astype(np.float32)
    masks = np.zeros((n, size, size, size), np.float32)
    for i in range(n):
        if i % empty_every == empty_every - 1:
            continue
        centre = rng.uniform(size * 0.3, size * 0.7, 3)
        radius = rng.uniform(size * 0.12, size * 0.25)
        masks[i] = (np.linalg.norm(grid - centre, axis=-1) <= radius).astype(np.float32)
        images[i, ..., 0] += masks[i]
    return images, masks


def tiny_net(size=8):
    inputs = keras.Input((size, size, size, 1))
    x = keras.layers.Conv3D(4, 3, padding="same", activation="relu")(inputs)
    outputs = keras.layers.Conv3D(1, 1, dtype="float32")(x)
    return keras.Model(inputs, outputs)


# ------------------------------------------------------------- save / load / resume
@pytest.mark.parametrize("key", sorted(ALL_CONFIGS))
def test_compiled_model_saves_reloads_without_custom_objects_and_trains(key, tmp_path):
    keras.utils.set_random_seed(0)
    x, y = sphere_patches(4)
    loss = get_loss(ALL_CONFIGS[key])
    model = tiny_net()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss,
                  metrics=component_metrics(loss))
    model.fit(x, y, batch_size=2, epochs=1, verbose=0, callbacks=loss_callbacks(loss))
    before = model.evaluate(x, y, batch_size=4, verbose=0, return_dict=True)
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)  # no custom_objects
    assert type(reloaded.loss) is type(loss)
    assert reloaded.loss.get_config() == loss.get_config()
    after = reloaded.evaluate(x, y, batch_size=4, verbose=0, return_dict=True)
    for name, val in before.items():
        assert after[name] == pytest.approx(val, rel=1e-5), name
    history = reloaded.fit(x, y, batch_size=2, epochs=1, verbose=0,
                           callbacks=loss_callbacks(reloaded.loss))
    assert np.isfinite(history.history["loss"]).all()


def test_learned_log_vars_survive_save_and_load(tmp_path):
    loss = get_loss(ALL_CONFIGS["hybrid_learned"])
    model = tiny_net()
    model.compile(optimizer="adam", loss=loss)
    model.optimizer.build(model.trainable_variables)
    loss.log_vars.assign([0.7, -0.4])
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(reloaded.loss.log_vars.numpy(), [0.7, -0.4])


# --------------------------------------------------------------- component logging
def test_component_metrics_log_each_component_on_its_own():
    keras.utils.set_random_seed(1)
    x, y = sphere_patches(4)
    loss = get_loss({"name": "hybrid", "components": [{"name": "bce", "weight": 0.3},
                                                      {"name": "dice", "weight": 0.7}]})
    model = tiny_net()
    model.compile(optimizer="adam", loss=loss, metrics=component_metrics(loss))
    result = model.evaluate(x, y, batch_size=4, verbose=0, return_dict=True)
    logits = model(x)
    expected_bce = float(BCELoss()(y, logits))
    expected_dice = float(DiceLoss()(y, logits))
    assert result["loss_bce"] == pytest.approx(expected_bce, rel=1e-5)
    assert result["loss_dice"] == pytest.approx(expected_dice, rel=1e-5)
    assert result["loss"] == pytest.approx(0.3 * expected_bce + 0.7 * expected_dice, rel=1e-5)
    values = loss.component_values(y, logits)
    assert float(values["bce"]) == pytest.approx(expected_bce, rel=1e-5)


def test_component_names_are_unique():
    loss = HybridLoss([DiceLoss(), DiceLoss(batch=True), BCELoss()])
    assert loss.component_names == ["dice", "dice_2", "bce"]
    assert [m.name for m in component_metrics(loss)] == ["loss_dice", "loss_dice_2", "loss_bce"]
    assert [m.name for m in component_metrics(get_loss("focal_tversky"))] == ["loss_focal_tversky"]


def test_fixed_hybrid_needs_no_callback():
    assert loss_callbacks(get_loss("hybrid")) == []
    assert loss_callbacks(get_loss("dice")) == []
    assert len(loss_callbacks(get_loss(ALL_CONFIGS["hybrid_linear"]))) == 1
    assert len(loss_callbacks(get_loss({"name": "dice", "debug": True}))) == 1


# ------------------------------------------------------------------- linear schedule
def test_linear_ramp_weights_by_epoch():
    loss = get_loss(ALL_CONFIGS["hybrid_linear"])  # (1, 0) -> (0.2, 0.8) over epochs 0..2
    np.testing.assert_allclose(loss.weights_at_epoch(0), [1.0, 0.0])
    np.testing.assert_allclose(loss.weights_at_epoch(1), [0.6, 0.4])
    np.testing.assert_allclose(loss.weights_at_epoch(2), [0.2, 0.8])
    np.testing.assert_allclose(loss.weights_at_epoch(10), [0.2, 0.8])
    late = HybridLoss(weights=[1.0, 0.0], weighting="linear", final_weights=[0.0, 1.0],
                      ramp_epochs=[2, 4])
    np.testing.assert_allclose(late.weights_at_epoch(1), [1.0, 0.0])
    np.testing.assert_allclose(late.weights_at_epoch(3), [0.5, 0.5])


def test_scheduler_sets_weights_used_by_the_loss_each_epoch():
    keras.utils.set_random_seed(2)
    x, y = sphere_patches(4)
    loss = get_loss(ALL_CONFIGS["hybrid_linear"])
    model = tiny_net()
    model.compile(optimizer="adam", loss=loss, metrics=component_metrics(loss))
    history = model.fit(x, y, batch_size=4, epochs=3, verbose=0, callbacks=loss_callbacks(loss))
    np.testing.assert_allclose(history.history["loss_weight_bce"], [1.0, 0.6, 0.2], rtol=1e-6)
    np.testing.assert_allclose(history.history["loss_weight_dice"], [0.0, 0.4, 0.8], atol=1e-6)
    logits = model(x)  # the loss now uses epoch 2's weights
    expected = 0.2 * float(BCELoss()(y, logits)) + 0.8 * float(DiceLoss()(y, logits))
    assert float(loss(y, logits)) == pytest.approx(expected, rel=1e-5)
    # one step per epoch: the logged loss is that step's value with that epoch's weights
    first = history.history
    assert first["loss"][0] == pytest.approx(first["loss_bce"][0], rel=1e-5)


# ------------------------------------------------------------------- learned weights
def test_learned_total_follows_kendall_et_al():
    loss = HybridLoss(weighting="learned", initial_log_vars=[0.5, -1.0])
    x, y = sphere_patches(2)
    logits = ops.convert_to_tensor(np.random.default_rng(0).normal(size=x.shape).astype("float32"))
    bce, dice = float(BCELoss()(y, logits)), float(DiceLoss()(y, logits))
    expected = (0.5 * np.exp(-0.5) * bce + 0.25) + (0.5 * np.exp(1.0) * dice - 0.5)
    assert float(loss(y, logits)) == pytest.approx(expected, rel=1e-5)


def test_learned_gradient_matches_autodiff():
    loss = HybridLoss(weighting="learned", initial_log_vars=[0.3, -0.2])
    x, y = sphere_patches(2)
    logits = tf.constant(np.random.default_rng(1).normal(size=x.shape).astype("float32"))
    with tf.GradientTape() as tape:
        total = loss(y, logits)
    autodiff = tape.gradient(total, loss.log_vars.value).numpy()
    np.testing.assert_allclose(loss.log_var_gradient(), autodiff, rtol=1e-5)


def test_learned_log_vars_converge_to_stationary_point():
    """With fixed component values L_i, s_i -> log(2 w_i L_i)."""
    loss = HybridLoss(weighting="learned", log_var_learning_rate=0.05)
    callback = LossWeightScheduler(loss)
    x, y = sphere_patches(2)
    logits = tf.constant(np.random.default_rng(2).normal(size=x.shape).astype("float32"))
    values = loss.component_values(y, logits)
    for step in range(600):
        loss(y, logits)
        callback.on_train_batch_end(step)
    expected = np.log(2 * 0.5 * np.array([float(values["bce"]), float(values["dice"])]))
    np.testing.assert_allclose(loss.log_vars.numpy(), expected, atol=0.02)


def test_learned_log_vars_move_during_fit():
    keras.utils.set_random_seed(3)
    x, y = sphere_patches(4)
    loss = get_loss(ALL_CONFIGS["hybrid_learned"])
    model = tiny_net()
    model.compile(optimizer="adam", loss=loss, metrics=component_metrics(loss))
    history = model.fit(x, y, batch_size=2, epochs=2, verbose=0, callbacks=loss_callbacks(loss))
    log_vars = loss.log_vars.numpy()
    assert np.all(np.abs(log_vars) > 1e-3)
    # L_bce ~ 0.7 and L_dice ~ 0.9 give 0.5 - 0.5 L > 0: the optimum log(L) < 0.
    assert np.all(log_vars < 0)
    assert history.history["loss_weight_bce"][-1] == pytest.approx(0.5 * np.exp(-log_vars[0]))


# ------------------------------------------------------------------------ debug mode
class NaNOnFullPatch(BinaryLoss):
    """Test component that is NaN when a patch has >= ``limit`` foreground voxels."""

    short_name = "nan_probe"

    def __init__(self, *, limit=50.0, **kwargs):
        super().__init__(**kwargs)
        self.limit = limit

    def per_sample(self, y_true, y_pred):
        count = ops.sum(y_true, axis=(1, 2, 3, 4))
        return ops.log(self.limit - 0.5 - count) * 0.0 + ops.mean(y_pred, axis=(1, 2, 3, 4)) * 0.0


def test_debug_mode_names_first_nan_component():
    y = np.ones((1, 4, 4, 4), np.float32)
    loss = HybridLoss([BCELoss(), NaNOnFullPatch(limit=10.0), NaNOnFullPatch(limit=20.0)],
                      debug=True)
    assert loss.component_names == ["bce", "nan_probe", "nan_probe_2"]
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"component=nan_probe is NaN or Inf at training step"):
        loss(y, np.zeros(y.shape + (1,), np.float32))
    without_debug = HybridLoss([BCELoss(), NaNOnFullPatch(limit=10.0)])
    assert np.isnan(float(without_debug(y, np.zeros(y.shape + (1,), np.float32))))


def test_debug_mode_rejects_labels_outside_unit_interval():
    y = np.zeros((1, 2, 2, 2), np.float32)
    y[0, 0, 0, 0] = 2.0
    for loss in (DiceLoss(debug=True), get_loss({"name": "hybrid", "debug": True})):
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"y_true labels in \[0, 1\]"):
            loss(y, np.zeros(y.shape + (1,), np.float32))


def test_debug_mode_rejects_non_finite_predictions():
    y = np.zeros((1, 2, 2, 2), np.float32)
    x = np.zeros(y.shape + (1,), np.float32)
    x[0, 1, 1, 1, 0] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="finite y_pred"):
        BCELoss(debug=True)(y, x)


def test_debug_mode_stops_fit_naming_component_and_step():
    keras.utils.set_random_seed(4)
    x, y = sphere_patches(4, empty_every=10)
    y[2:] = 1.0  # batches 0 (samples 0-1) fine, batch 1 (samples 2-3) full patches
    loss = HybridLoss([BCELoss(), NaNOnFullPatch(limit=300.0)], debug=True)
    model = tiny_net()
    model.compile(optimizer="adam", loss=loss, jit_compile=False)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"(?s)component=nan_probe is NaN or Inf at training step.*\b1\b"):
        model.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0,
                  callbacks=loss_callbacks(loss))


def test_debug_mode_stops_fit_on_bad_labels_with_step():
    x, y = sphere_patches(6)
    y[4, 0, 0, 0] = 255.0  # third batch: an uint8 mask that was never binarised
    loss = get_loss({"name": "dice", "debug": True})
    model = tiny_net()
    model.compile(optimizer="adam", loss=loss, jit_compile=False)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"(?s)y_true labels in \[0, 1\].*255.*training step.*\b2\b"):
        model.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0,
                  callbacks=loss_callbacks(loss))


def test_debug_mode_requires_jit_compile_off():
    x, y = sphere_patches(2)
    loss = get_loss({"name": "hybrid", "debug": True})
    model = tiny_net()
    model.compile(optimizer="adam", loss=loss, jit_compile=True)
    with pytest.raises(ValueError, match="jit_compile=False"):
        model.fit(x, y, batch_size=2, epochs=1, verbose=0, callbacks=loss_callbacks(loss))


# ------------------------------------------- 20-step training of a tiny U-Net per loss
@functools.lru_cache(maxsize=1)
def _training_patches():
    """Phantom 16^3 patches (segmentation.phantom) when available, else spheres."""
    try:
        from segmentation.phantom import generate_case
    except ImportError:
        return sphere_patches(8, size=16, seed=5)
    return _phantom_patches(generate_case)


def _phantom_patches(generate_case, n=8, size=16):
    """Half the patches contain a nodule voxel near their centre, half are random."""
    rng = np.random.default_rng(5)
    images, masks = [], []
    seed = 0
    while len(images) < n:
        case = generate_case(seed=seed, size=(64, 64, 40), spacing_mm=(2.0, 2.0, 2.0),
                             n_nodules=3)
        seed += 1
        mask = (np.asarray(case.mask) > 0).astype(np.float32)
        fg = np.argwhere(mask)
        if not len(fg):
            continue
        image = np.clip((case.image_hu.astype(np.float32) + 1000.0) / 1400.0, 0.0, 1.0)
        for centre in (fg[rng.integers(len(fg))],
                       [rng.integers(size // 2, s - size // 2) for s in mask.shape]):
            lo = [int(np.clip(c - size // 2, 0, s - size)) for c, s in zip(centre, mask.shape)]
            sl = tuple(slice(a, a + size) for a in lo)
            images.append(image[sl][..., None])
            masks.append(mask[sl])
    return np.stack(images[:n]), np.stack(masks[:n])


@pytest.mark.parametrize("key", sorted(ALL_CONFIGS))
def test_twenty_steps_of_tiny_unet_lower_the_loss_without_nan(key):
    from models.unet import build_unet

    keras.utils.set_random_seed(6)
    x, y = _training_patches()
    assert y[::2].reshape(4, -1).max(axis=1).min() == 1.0  # nodule patches hold nodules
    loss = get_loss(ALL_CONFIGS[key])
    model = build_unet(3, filters=(4, 8), norm="instance", input_shape=(16, 16, 16, 1))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss, jit_compile=False)
    start = model.evaluate(x, y, batch_size=8, verbose=0)
    batch_losses = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda b, logs: batch_losses.append(logs["loss"]))
    model.fit(x, y, batch_size=2, epochs=5, verbose=0,  # 4 steps x 5 epochs = 20 steps
              callbacks=[*loss_callbacks(loss), record, keras.callbacks.TerminateOnNaN()])
    if isinstance(loss, HybridLoss):
        loss.set_epoch(0)  # compare like with like: the start weights
    end = model.evaluate(x, y, batch_size=8, verbose=0)
    assert len(batch_losses) == 20
    assert np.isfinite(batch_losses).all()
    assert np.isfinite(model.predict(x, verbose=0)).all()
    assert end < start, (key, start, end)
