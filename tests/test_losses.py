"""Tests for losses/: values, shape alignment, numerics, config, serialisation.

Reference values come from hand-computed cases and from straightforward NumPy
re-implementations of the published formulas written below.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from losses import (  # noqa: E402
    LOSS_NAMES, BCELoss, DiceLoss, FocalLoss, HybridLoss, TverskyLoss, align_shapes, get_loss,
)

SINGLE_NAMES = ("bce", "dice", "focal", "tversky", "focal_tversky")
ALL_NAMES = SINGLE_NAMES + ("hybrid", "hybrid_learned", "hybrid_linear")


def make_loss(name, **kwargs):
    if name == "hybrid_learned":
        return get_loss({"name": "hybrid", "weighting": "learned", "components": ["bce", "dice"],
                         **kwargs})
    if name == "hybrid_linear":
        return get_loss({"name": "hybrid", "weighting": "linear", "ramp_epochs": [0, 4],
                         "components": [{"name": "bce", "weight": 1.0, "final_weight": 0.0},
                                        {"name": "focal_tversky", "weight": 0.0,
                                         "final_weight": 1.0}], **kwargs})
    return get_loss({"name": name, **kwargs})


# ----------------------------------------------------------------- NumPy references
def np_sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float64)))


def np_log_sigmoid(x):
    return -np.logaddexp(0.0, -np.asarray(x, np.float64))


def np_dice(y, p, *, smooth=1.0, squared=False):
    """Milletari et al. 2016 soft Dice loss of one sample (or pooled arrays)."""
    y, p = np.asarray(y, np.float64).ravel(), np.asarray(p, np.float64).ravel()
    denom = (p ** 2).sum() + (y ** 2).sum() if squared else p.sum() + y.sum()
    return 1.0 - (2.0 * (p * y).sum() + smooth) / (denom + smooth)


def np_bce(y, x, *, pos_weight=1.0):
    y = np.asarray(y, np.float64)
    return np.mean(-(pos_weight * y * np_log_sigmoid(x) + (1 - y) * np_log_sigmoid(-x)))


def np_focal(y, x, *, alpha, gamma):
    """Lin et al. 2017 with p_t and alpha_t, for binary y."""
    y = np.asarray(y, np.float64)
    p = np_sigmoid(x)
    p_t = np.where(y == 1, p, 1 - p)
    log_p_t = np.where(y == 1, np_log_sigmoid(x), np_log_sigmoid(-x))
    alpha_t = np.ones_like(p) if alpha is None else np.where(y == 1, alpha, 1 - alpha)
    return np.mean(-alpha_t * (1 - p_t) ** gamma * log_p_t)


def np_tversky(y, p, *, alpha, beta, gamma=1.0, smooth=1.0):
    """Salehi et al. 2017 Tversky index; (1 - TI)^gamma (Abraham and Khan 2019)."""
    y, p = np.asarray(y, np.float64).ravel(), np.asarray(p, np.float64).ravel()
    tp, fp, fn = (p * y).sum(), (p * (1 - y)).sum(), ((1 - p) * y).sum()
    ti = (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)
    return (1.0 - ti) ** gamma


def np_reference(name, y, x):
    """Batch-mean reference value of a default-configured loss on logits x."""
    per = []
    for ys, xs in zip(y, x[..., 0]):
        p = np_sigmoid(xs)
        if name == "bce":
            per.append(np_bce(ys, xs))
        elif name == "dice":
            per.append(np_dice(ys, p))
        elif name == "focal":
            per.append(np_focal(ys, xs, alpha=0.25, gamma=2.0))
        elif name == "tversky":
            per.append(np_tversky(ys, p, alpha=0.3, beta=0.7))
        elif name == "focal_tversky":
            per.append(np_tversky(ys, p, alpha=0.3, beta=0.7, gamma=0.75))
        elif name == "hybrid":
            per.append(0.5 * np_bce(ys, xs) + 0.5 * np_dice(ys, p))
    return float(np.mean(per))


def random_case(seed=0, shape=(3, 4, 5, 6)):
    rng = np.random.default_rng(seed)
    y = (rng.random(shape) < 0.2).astype(np.float32)
    y[0] = 0.0  # one empty patch
    x = rng.normal(0.0, 3.0, shape + (1,)).astype(np.float32)
    return y, x


def value(loss, y, x):
    return float(keras.ops.convert_to_numpy(loss(y, x)))


# ---------------------------------------------------------------- hand-computed values
Y4 = np.array([1, 1, 0, 0], np.float32).reshape(1, 1, 2, 2, 1)


@pytest.mark.parametrize(
    "loss, p, expected",
    [
        (DiceLoss(from_logits=False), [1, 0, 1, 0], 1 - 3 / 5),
        (DiceLoss(from_logits=False), [0.5, 0.5, 0, 0], 1 - 3 / 4),
        (DiceLoss(from_logits=False, squared=True), [0.5, 0.5, 0, 0], 1 - 3 / 3.5),
        (DiceLoss(from_logits=False, smooth=0.5), [1, 1, 1, 0], 1 - 4.5 / 5.5),
        (BCELoss(from_logits=False), [0.5, 0.5, 0.5, 0.5], np.log(2)),
        (BCELoss(from_logits=False, pos_weight=3.0), [0.5, 0.5, 0.5, 0.5], 2 * np.log(2)),
        (FocalLoss(from_logits=False), [0.5, 0.5, 0.5, 0.5],
         (2 * 0.25 + 2 * 0.75) * 0.25 * np.log(2) / 4),
        (FocalLoss(from_logits=False, alpha=None, gamma=1.0), [0.5, 0.5, 0.5, 0.5],
         0.5 * np.log(2)),
        (TverskyLoss(from_logits=False), [1, 0, 1, 0], 1 - 2 / 3),
        (TverskyLoss(from_logits=False, gamma=0.75), [1, 0, 1, 0], (1 / 3) ** 0.75),
        (TverskyLoss(from_logits=False, alpha=0.0, beta=1.0), [1, 0, 1, 1], 1 - 2 / 3),
        (HybridLoss(from_logits=False), [0.5, 0.5, 0.5, 0.5], 0.5 * np.log(2) + 0.5 * (1 - 3 / 5)),
    ],
    ids=["dice_half", "dice_soft", "dice_squared", "dice_smooth", "bce", "bce_pos_weight",
         "focal", "focal_no_alpha", "tversky", "focal_tversky", "tversky_fn_only", "hybrid"],
)
def test_hand_computed_values(loss, p, expected):
    p = np.asarray(p, np.float32).reshape(Y4.shape)
    assert value(loss, Y4, p) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("name", SINGLE_NAMES + ("hybrid",))
def test_values_match_numpy_reference(name):
    y, x = random_case(1)
    assert value(get_loss(name), y, x) == pytest.approx(np_reference(name, y, x), rel=1e-5,
                                                         abs=1e-6)


@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (0.5, 0.5), (None, 3.0), (0.9, 0.0)])
def test_focal_matches_lin_et_al(alpha, gamma):
    y, x = random_case(2)
    expected = np.mean([np_focal(a, b, alpha=alpha, gamma=gamma) for a, b in zip(y, x[..., 0])])
    assert value(FocalLoss(alpha=alpha, gamma=gamma), y, x) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("alpha, beta, gamma, smooth",
                         [(0.3, 0.7, 1.0, 1.0), (0.5, 0.5, 1.0, 1e-3), (0.1, 0.9, 0.75, 1.0),
                          (0.7, 0.3, 2.0, 0.5)])
def test_tversky_matches_salehi_et_al(alpha, beta, gamma, smooth):
    y, x = random_case(3)
    expected = np.mean([np_tversky(a, np_sigmoid(b), alpha=alpha, beta=beta, gamma=gamma,
                                   smooth=smooth) for a, b in zip(y, x)])
    loss = TverskyLoss(alpha=alpha, beta=beta, gamma=gamma, smooth=smooth)
    assert value(loss, y, x) == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("squared", [False, True])
def test_dice_matches_milletari_et_al(squared):
    y, x = random_case(4)
    expected = np.mean([np_dice(a, np_sigmoid(b), smooth=1e-2, squared=squared)
                        for a, b in zip(y, x)])
    assert value(DiceLoss(smooth=1e-2, squared=squared), y, x) == pytest.approx(expected, rel=1e-5)


def test_focal_with_gamma_zero_and_no_alpha_equals_bce():
    y, x = random_case(5)
    assert value(FocalLoss(alpha=None, gamma=0.0), y, x) == pytest.approx(
        value(BCELoss(), y, x), rel=1e-6)
    p = np_sigmoid(x).astype(np.float32)
    assert value(FocalLoss(alpha=None, gamma=0.0, from_logits=False), y, p) == pytest.approx(
        value(BCELoss(from_logits=False), y, p), rel=1e-5)


def test_bce_pos_weight_one_equals_keras_bce():
    y, x = random_case(6)
    assert value(BCELoss(pos_weight=1.0), y, x) == pytest.approx(value(BCELoss(), y, x), rel=1e-6)
    keras_bce = keras.losses.BinaryCrossentropy(from_logits=True)(y[..., None], x)
    assert value(BCELoss(), y, x) == pytest.approx(float(keras_bce), rel=1e-6)


def test_tversky_with_half_weights_equals_dice_with_double_smoothing():
    y, x = random_case(7)
    assert value(TverskyLoss(alpha=0.5, beta=0.5, smooth=0.5), y, x) == pytest.approx(
        value(DiceLoss(smooth=1.0), y, x), rel=1e-6)


def test_probabilities_and_logits_agree():
    y, x = random_case(8)
    p = np_sigmoid(x).astype(np.float32)
    for name in ("dice", "tversky", "focal_tversky"):
        assert value(get_loss(name), y, x) == pytest.approx(
            value(get_loss({"name": name, "from_logits": False}), y, p), rel=1e-5)
    for name in ("bce", "focal", "hybrid"):  # clipped logs: agree away from saturation
        assert value(get_loss(name), y, x) == pytest.approx(
            value(get_loss({"name": name, "from_logits": False}), y, p), rel=1e-4)


# ------------------------------------------------------------------ empty cases (Dice)
def test_dice_both_empty_is_zero():
    y = np.zeros((1, 2, 2, 2), np.float32)
    assert value(DiceLoss(from_logits=False), y, np.zeros(y.shape + (1,), np.float32)) == 0.0
    assert value(DiceLoss(), y, np.full(y.shape + (1,), -1e4, np.float32)) == pytest.approx(0.0)


def test_dice_empty_truth_full_prediction():
    y = np.zeros((1, 2, 2, 1), np.float32)
    assert value(DiceLoss(from_logits=False), y, np.ones(y.shape + (1,), np.float32)) == (
        pytest.approx(1 - 1 / 5))


def test_dice_empty_prediction_full_truth():
    y = np.ones((1, 2, 2, 1), np.float32)
    assert value(DiceLoss(from_logits=False), y, np.zeros(y.shape + (1,), np.float32)) == (
        pytest.approx(1 - 1 / 5))


def test_dice_skip_empty_is_mean_over_samples_with_foreground():
    y, x = random_case(41, shape=(4, 4, 5, 6))  # sample 0 has an empty target
    kept = [1, 2, 3]
    expected = np.mean([np_dice(y[i], np_sigmoid(x[i]), smooth=1.0) for i in kept])
    loss = DiceLoss(skip_empty=True)
    assert value(loss, y, x) == pytest.approx(expected, rel=1e-5)
    assert value(loss, y, x) != pytest.approx(value(DiceLoss(), y, x), rel=1e-3)
    assert value(loss, y[kept], x[kept]) == pytest.approx(value(DiceLoss(), y[kept], x[kept]),
                                                          rel=1e-6)


def test_dice_skip_empty_gives_no_gradient_to_empty_samples():
    y, x = random_case(42)  # sample 0 has an empty target
    logits = tf.Variable(x)
    with tf.GradientTape() as tape:
        loss = DiceLoss(skip_empty=True)(y, logits)
    grad = tape.gradient(loss, logits).numpy()
    assert np.all(grad[0] == 0.0)
    assert np.any(grad[1:] != 0.0)


def test_dice_skip_empty_all_samples_empty_is_zero():
    y = np.zeros((3, 2, 2, 2), np.float32)
    assert value(DiceLoss(skip_empty=True), y, np.ones(y.shape + (1,), np.float32)) == 0.0


def test_keras_dice_differs_on_empty_patch():
    """Documents why we do not use keras.losses.Dice: it scores an empty match as 1."""
    y = np.zeros((1, 2, 2, 2, 1), np.float32)
    assert float(keras.losses.Dice()(y, y)) == pytest.approx(1.0)
    assert value(DiceLoss(from_logits=False), y, y) == 0.0


# ----------------------------------------------------------------- perfect prediction
@pytest.mark.parametrize("name", ALL_NAMES)
@pytest.mark.parametrize("target", ["empty", "full", "mask"])
def test_perfect_prediction_is_about_zero(name, target):
    y = {"empty": np.zeros((2, 4, 4, 4), np.float32), "full": np.ones((2, 4, 4, 4), np.float32),
         "mask": random_case(9, (2, 4, 4, 4))[0]}[target]
    logits = np.where(y > 0, 1e4, -1e4).astype(np.float32)[..., None]
    assert value(make_loss(name), y, logits) == pytest.approx(0.0, abs=1e-5)
    assert value(make_loss(name, from_logits=False), y, y[..., None]) == pytest.approx(0.0, abs=1e-5)


# ------------------------------------------------------------------------- numerics
def _loss_and_grad(loss, y, x):
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = loss(y, x)
    return out.numpy(), tape.gradient(out, x).numpy()


@pytest.mark.parametrize("name", ALL_NAMES)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_finite_values_and_gradients_at_extreme_logits(name, dtype):
    rng = np.random.default_rng(10)
    shape = (2, 4, 4, 4)
    targets = {"zeros": np.zeros(shape), "ones": np.ones(shape),
               "noise": (rng.random(shape) < 0.5).astype(float)}
    logits = {"-1e4": np.full(shape + (1,), -1e4), "+1e4": np.full(shape + (1,), 1e4),
              "zero": np.zeros(shape + (1,)),
              "noise": rng.choice([-1e4, -30.0, 0.0, 30.0, 1e4], size=shape + (1,))}
    loss = make_loss(name)
    for tname, y in targets.items():
        for xname, x in logits.items():
            out, grad = _loss_and_grad(loss, y.astype(np.float32), x.astype(dtype))
            assert np.isfinite(out), (name, dtype, tname, xname)
            assert out.dtype == np.float32
            assert np.all(np.isfinite(grad)), (name, dtype, tname, xname)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_finite_gradients_for_saturated_probabilities(name):
    y = random_case(11, (2, 4, 4, 4))[0]
    for p in (np.zeros_like(y), np.ones_like(y), 1.0 - y, y):
        out, grad = _loss_and_grad(make_loss(name, from_logits=False), y, p[..., None])
        assert np.isfinite(out) and np.all(np.isfinite(grad)), name


@pytest.mark.parametrize("name", SINGLE_NAMES + ("hybrid",))
def test_float16_input_computes_in_float32(name):
    y, x = random_case(12)
    x16 = x.astype(np.float16)
    out = get_loss(name)(y.astype(np.uint8), x16)
    assert out.dtype == tf.float32
    assert float(out) == pytest.approx(value(get_loss(name), y, x16.astype(np.float32)), rel=1e-6)


# ------------------------------------------------------------------------ reduction
@pytest.mark.parametrize("name", SINGLE_NAMES + ("hybrid",))
def test_per_sample_reduction_is_mean_of_single_sample_losses(name):
    y, x = random_case(13)
    loss = get_loss(name)
    singles = [value(loss, y[i:i + 1], x[i:i + 1]) for i in range(len(y))]
    assert value(loss, y, x) == pytest.approx(np.mean(singles), rel=1e-6)
    assert loss.call(y, x).shape == (len(y),)


@pytest.mark.parametrize("cls", [DiceLoss, TverskyLoss])
def test_batch_pooling_equals_loss_of_concatenated_batch(cls):
    y, x = random_case(14)
    concat_y = np.concatenate(list(y), axis=0)[None]  # (1, N*D, H, W)
    concat_x = np.concatenate(list(x), axis=0)[None]
    assert value(cls(batch=True), y, x) == pytest.approx(value(cls(), concat_y, concat_x), rel=1e-6)
    assert value(cls(batch=True), y, x) != pytest.approx(value(cls(), y, x), rel=1e-3)


def test_sample_weight_weights_samples():
    y, x = random_case(15)
    loss = DiceLoss()
    singles = np.array([value(loss, y[i:i + 1], x[i:i + 1]) for i in range(3)])
    weights = np.array([0.0, 1.0, 2.0], np.float32)
    assert float(loss(y, x, sample_weight=weights)) == pytest.approx(
        (singles * weights).sum() / 3, rel=1e-6)


# ---------------------------------------------------------------- shape alignment
def test_align_adds_channel_axis_3d_and_2d():
    for shape in [(2, 3, 4, 5), (2, 3, 4)]:
        y = np.ones(shape, np.uint8)
        x = np.zeros(shape + (1,), np.float16)
        at, ap = align_shapes(y, x)
        assert tuple(at.shape) == shape + (1,) and at.dtype == tf.float32
        assert ap.dtype == tf.float32


@pytest.mark.parametrize("name", ALL_NAMES)
def test_label_with_and_without_channel_give_same_loss(name):
    y, x = random_case(16)
    assert value(make_loss(name), y, x) == pytest.approx(value(make_loss(name), y[..., None], x))


@pytest.mark.parametrize(
    "true_shape, pred_shape, match",
    [
        ((2, 4, 4, 3), (2, 4, 4, 4, 1), r"y_true.shape=\(2, 4, 4, 3\), y_pred.shape=\(2, 4, 4, 4, 1\)"),
        ((1, 4, 4, 4), (2, 4, 4, 4, 1), r"same batch and spatial shape.*y_true.shape=\(1, 4, 4, 4\)"),
        ((2, 4, 4, 4, 1), (2, 4, 4, 4, 2), "single channel"),
        ((2, 4, 4, 4, 3), (2, 4, 4, 4, 1), r"y_true.shape=\(2, 4, 4, 4, 3\)"),
        ((2, 4, 4), (2, 4, 4, 4, 1), r"y_true.shape=\(2, 4, 4\)"),
        ((2, 4, 4), (2, 4, 4), r"y_pred of shape.*y_pred.shape=\(2, 4, 4\)"),
        ((2, 4, 1, 1), (2, 4, 4, 1), r"y_true.shape=\(2, 4, 1, 1\)"),  # would broadcast
    ],
    ids=["spatial", "batch", "pred_channels", "true_channels", "rank", "pred_rank", "broadcast"],
)
@pytest.mark.parametrize("name", ["dice", "hybrid"])
def test_mismatched_shapes_raise_naming_both(true_shape, pred_shape, match, name):
    with pytest.raises(ValueError, match=match):
        get_loss(name)(np.zeros(true_shape, np.float32), np.zeros(pred_shape, np.float32))


def test_mismatch_raises_at_trace_time():
    loss = BCELoss()
    fn = tf.function(loss, input_signature=[tf.TensorSpec((None, 4, 4, 4)),
                                            tf.TensorSpec((None, 4, 4, 5, 1))])
    with pytest.raises(ValueError, match=r"y_true.shape=\(None, 4, 4, 4\)"):
        fn.get_concrete_function()


def test_mismatch_of_dims_unknown_at_trace_time_fails_at_run_time():
    loss = DiceLoss()
    fn = tf.function(loss, input_signature=[tf.TensorSpec((None, None, 4, 4)),
                                            tf.TensorSpec((None, None, 4, 4, 1))])
    assert np.isfinite(float(fn(np.zeros((1, 3, 4, 4), np.float32), np.zeros((1, 3, 4, 4, 1), np.float32))))
    with pytest.raises(tf.errors.InvalidArgumentError, match="same batch and spatial shape"):
        fn(np.zeros((1, 3, 4, 4), np.float32), np.zeros((1, 2, 4, 4, 1), np.float32))


# --------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "factory, match",
    [
        (lambda: DiceLoss(smooth=0.0), "smooth > 0.0"),
        (lambda: DiceLoss(batch=1), "batch=1"),
        (lambda: DiceLoss(batch=True, skip_empty=True), "skip_empty=False with batch=True"),
        (lambda: DiceLoss(skip_empty="yes"), "skip_empty='yes'"),
        (lambda: BCELoss(pos_weight=-1.0), "pos_weight > 0.0"),
        (lambda: FocalLoss(alpha=1.5), "alpha <= 1.0"),
        (lambda: FocalLoss(gamma=-1.0), "gamma >= 0.0"),
        (lambda: TverskyLoss(alpha=0.0, beta=0.0), "alpha \\+ beta > 0"),
        (lambda: TverskyLoss(gamma=0.0), "gamma > 0.0"),
        (lambda: TverskyLoss(smooth=float("nan")), "finite number"),
        (lambda: HybridLoss(weighting="cosine"), "weighting='cosine'"),
        (lambda: HybridLoss(weights=[1.0]), "Expected 2 weights"),
        (lambda: HybridLoss(weights=[1.0, -1.0]), r"weights\[1\]"),
        (lambda: HybridLoss(weighting="linear"), "final_weights and ramp_epochs"),
        (lambda: HybridLoss(final_weights=[1, 0], ramp_epochs=[0, 2]), "only with weighting='linear'"),
        (lambda: HybridLoss(weighting="linear", final_weights=[1, 0], ramp_epochs=[3, 3]),
         "ramp_epochs"),
        (lambda: HybridLoss(initial_log_vars=[0.0, 0.0]), "initial_log_vars only"),
        (lambda: HybridLoss([BCELoss(from_logits=False)]), r"components\[0\].from_logits=False"),
        (lambda: HybridLoss([keras.losses.MeanSquaredError()]), r"components\[0\]"),
        (lambda: HybridLoss([]), "at least one component"),
    ],
)
def test_invalid_arguments_raise(factory, match):
    with pytest.raises((ValueError, TypeError), match=match):
        factory()


# ------------------------------------------------------------------------- config
def test_issue_config_builds_default_hybrid():
    loss = get_loss({"name": "hybrid", "components": [{"name": "bce", "weight": 0.5},
                                                      {"name": "dice", "weight": 0.5}]})
    assert isinstance(loss, HybridLoss)
    assert [type(c) for c in loss.components] == [BCELoss, DiceLoss]
    assert loss.weights == [0.5, 0.5]
    y, x = random_case(17)
    assert value(loss, y, x) == pytest.approx(
        0.5 * value(BCELoss(), y, x) + 0.5 * value(DiceLoss(), y, x), rel=1e-6)
    assert value(get_loss("hybrid"), y, x) == pytest.approx(value(loss, y, x), rel=1e-6)


@pytest.mark.parametrize("name, cls", [("bce", BCELoss), ("dice", DiceLoss), ("focal", FocalLoss),
                                       ("tversky", TverskyLoss), ("focal_tversky", TverskyLoss),
                                       ("hybrid", HybridLoss), ("DICE", DiceLoss)])
def test_get_loss_from_string(name, cls):
    assert type(get_loss(name)) is cls


def test_focal_tversky_name_sets_gamma():
    assert get_loss("focal_tversky").gamma == 0.75
    assert get_loss({"name": "focal_tversky", "gamma": 0.5}).gamma == 0.5
    assert get_loss("tversky").gamma == 1.0


def test_get_loss_passes_arguments_and_inherits_from_logits():
    loss = get_loss({"name": "hybrid", "from_logits": False, "components": [
        {"name": "focal", "gamma": 1.0, "alpha": None}, {"name": "dice", "batch": True}]})
    assert loss.from_logits is False
    assert loss.components[0].gamma == 1.0 and loss.components[0].alpha is None
    assert loss.components[1].batch is True and loss.components[1].from_logits is False
    assert loss.weights == [0.5, 0.5]


def test_get_loss_returns_loss_instances_unchanged():
    loss = DiceLoss()
    assert get_loss(loss) is loss


@pytest.mark.parametrize(
    "config, match",
    [
        ("jaccard", r"Expected a loss name in \['bce', 'dice', 'focal', 'focal_tversky', "
                    r"'tversky', 'hybrid'\]. Received: config.name='jaccard'"),
        ({"smooth": 1.0}, "Expected a 'name' key"),
        ({"name": "dice", "smoth": 1.0}, r"Expected arguments among \[.*'smooth'.*\].*smoth"),
        ({"name": "hybrid", "weights": [1, 1]}, r"Expected arguments among \[.*'components'.*weights"),
        ({"name": "hybrid", "components": [{"name": "lovasz"}]}, r"components\[0\].name='lovasz'"),
        ({"name": "hybrid", "components": [{"name": "bce", "gama": 2}]},
         r"'pos_weight'.*'weight'.*components\[0\] \(bce\).*gama"),
        ({"name": "hybrid", "components": [{"name": "bce", "weight": 1}, "dice"]},
         "on every component or on none"),
        ({"name": "hybrid", "components": []}, "non-empty list of components"),
        ({"name": "hybrid", "components": ["hybrid"]}, "Received: config.components\\[0\\].name='hybrid'"),
        (3, "Expected a loss name or a dict"),
    ],
)
def test_get_loss_errors_list_allowed(config, match):
    with pytest.raises((ValueError, TypeError), match=match):
        get_loss(config)


def test_get_loss_builds_schedules():
    linear = make_loss("hybrid_linear")
    assert linear.weighting == "linear" and linear.final_weights == [0.0, 1.0]
    assert linear.ramp_epochs == [0, 4]
    learned = make_loss("hybrid_learned")
    assert learned.weighting == "learned"
    assert learned.log_vars.numpy().tolist() == [0.0, 0.0]


# -------------------------------------------------------------- object serialisation
@pytest.mark.parametrize("name", ALL_NAMES)
def test_config_round_trip(name):
    loss = make_loss(name)
    if name == "hybrid_learned":
        loss.log_vars.assign([0.3, -0.2])
    clone = type(loss).from_config(loss.get_config())
    assert clone.get_config() == loss.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()
    y, x = random_case(18)
    assert value(restored, y, x) == pytest.approx(value(loss, y, x), rel=1e-6)


@pytest.mark.parametrize("loss", [
    DiceLoss(smooth=0.5, batch=True, squared=True, from_logits=False, name="d"),
    DiceLoss(skip_empty=True),
    BCELoss(pos_weight=4.0, reduction="sum"), FocalLoss(alpha=None, gamma=1.5),
    TverskyLoss(alpha=0.2, beta=0.8, gamma=0.5, smooth=2.0, batch=True)],
    ids=["dice", "dice_skip_empty", "bce", "focal", "tversky"])
def test_get_config_holds_every_argument(loss):
    import inspect

    config = loss.get_config()
    expected = {p for p in inspect.signature(type(loss).__init__).parameters if p != "self"}
    assert set(config) == expected
    assert type(loss)(**config).get_config() == config


def test_hybrid_get_config_holds_every_argument():
    import inspect

    config = make_loss("hybrid_linear").get_config()
    expected = {p for p in inspect.signature(HybridLoss.__init__).parameters if p != "self"}
    assert set(config) == expected


def test_registered_names():
    for cls in (DiceLoss, BCELoss, FocalLoss, TverskyLoss, HybridLoss):
        assert keras.saving.get_registered_name(cls) == f"lungseg>{cls.__name__}"
    assert set(LOSS_NAMES) == set(SINGLE_NAMES) | {"hybrid"}
