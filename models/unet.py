"""A configurable 2D / 3D U-Net that returns float32 logits.

The network is a plain Keras 3 functional model built only from built-in layers, channels-last
(NHWC for 2D, NDHWC for 3D), so that a saved ``model.keras`` reloads with
``keras.saving.load_model(path, safe_mode=True)`` and no ``custom_objects``.

Layout (``depth = len(filters) - 1``)::

    input ─ enc0 ────────────────────────────── dec0 ─ head ─ logits (full resolution)
              └ pool ─ enc1 ─────────────── dec1 ┘   (aux head, upsampled x2)
                         └ pool ─ ... ─ bottleneck ┘

Each block is two ``3**n`` convolutions, each followed by a normalisation and a LeakyReLU
(optionally with a residual shortcut). Down-sampling is 2x max pooling, up-sampling a 2x
transposed convolution, skips are concatenated. The head is a 1x1 convolution with
``dtype="float32"``, so logits are float32 even under a ``mixed_float16`` policy.

2.5D: the 2D model (``spatial_dims=2``) accepts ``in_channels=k`` neighbouring axial slices
stacked as channels ``(N, H, W, k)``; it predicts the centre slice ``(N, H, W, 1)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import keras
import numpy as np
from keras import layers

from segmentation.validation import check_int

__all__ = ["build_unet", "count_params", "estimate_flops", "group_count"]

_NORMS = ("batch", "instance", "group")
_MAX_GROUPS = 8
_LEAKY_SLOPE = 0.01

_CONV = {2: layers.Conv2D, 3: layers.Conv3D}
_CONV_TRANSPOSE = {2: layers.Conv2DTranspose, 3: layers.Conv3DTranspose}
_POOL = {2: layers.MaxPooling2D, 3: layers.MaxPooling3D}
_UPSAMPLE = {2: layers.UpSampling2D, 3: layers.UpSampling3D}
_SPATIAL_DROPOUT = {2: layers.SpatialDropout2D, 3: layers.SpatialDropout3D}


# --------------------------------------------------------------------------- validation


def _check_filters(filters) -> tuple[int, ...]:
    if isinstance(filters, (str, bytes)) or not isinstance(filters, Sequence) or not filters:
        raise ValueError(
            "Expected filters to be a non-empty sequence of positive ints, one per level. "
            f"Received: filters={filters!r}"
        )
    for n in filters:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(
                "Expected filters to be a non-empty sequence of positive ints, one per level. "
                f"Received: filters={filters!r}"
            )
    return tuple(int(n) for n in filters)


def _check_input_shape(input_shape, *, spatial_dims: int, in_channels: int, depth: int):
    """Returns the full channels-last input shape ``(*spatial, in_channels)``."""
    if input_shape is None:
        return (None,) * spatial_dims + (in_channels,)
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence):
        raise TypeError(
            f"Expected input_shape to be a tuple of {spatial_dims} spatial sizes (optionally "
            f"followed by the channel count). Received: input_shape={input_shape!r}"
        )
    shape = tuple(input_shape)
    if len(shape) == spatial_dims + 1:
        if shape[-1] != in_channels:
            raise ValueError(
                f"Expected the channel entry of input_shape to equal in_channels={in_channels}. "
                f"Received: input_shape={input_shape!r}"
            )
        shape = shape[:-1]
    if len(shape) != spatial_dims:
        raise ValueError(
            f"Expected input_shape to have {spatial_dims} spatial sizes (spatial_dims="
            f"{spatial_dims}), optionally followed by the channel count. "
            f"Received: input_shape={input_shape!r}"
        )
    divisor = 2**depth
    for axis, size in enumerate(shape):
        if size is None:
            continue
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(
                "Expected input_shape sizes to be positive ints or None. "
                f"Received: input_shape={input_shape!r}"
            )
        if size % divisor:
            raise ValueError(
                f"Expected every static spatial size to be divisible by 2**depth = {divisor} "
                f"(depth={depth} = len(filters) - 1); pad the input to a multiple of {divisor}. "
                f"Received: input_shape={input_shape!r} (size {size} on spatial axis {axis})"
            )
    return tuple(None if s is None else int(s) for s in shape) + (in_channels,)


def group_count(channels: int, *, max_groups: int = _MAX_GROUPS) -> int:
    """Number of groups for group normalisation of ``channels`` channels.

    The largest divisor of ``channels`` that is at most ``max_groups`` (8 for 16 channels,
    4 for 4 channels, 6 for 12 channels), so that every group has the same size.
    """
    channels = check_int(channels, name="channels", minimum=1)
    max_groups = check_int(max_groups, name="max_groups", minimum=1)
    return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


# --------------------------------------------------------------------------- building blocks


def _norm(x, *, norm: str, name: str):
    channels = x.shape[-1]
    if norm == "batch":
        return layers.BatchNormalization(name=name)(x)
    groups = channels if norm == "instance" else group_count(channels)
    return layers.GroupNormalization(groups=groups, epsilon=1e-5, name=name)(x)


def _conv_norm_act(x, n_filters: int, *, spatial_dims: int, norm: str, name: str, act=True):
    x = _CONV[spatial_dims](n_filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = _norm(x, norm=norm, name=f"{name}_norm")
    if act:
        x = layers.LeakyReLU(negative_slope=_LEAKY_SLOPE, name=f"{name}_act")(x)
    return x


def _conv_block(x, n_filters: int, *, spatial_dims: int, norm: str, residual: bool,
                dropout: float, name: str):
    """Two conv-norm-activation units; with ``residual`` a (projected) shortcut is added
    before the second activation; channel dropout at the end when ``dropout > 0``."""
    shortcut = x
    x = _conv_norm_act(x, n_filters, spatial_dims=spatial_dims, norm=norm, name=f"{name}_a")
    x = _conv_norm_act(x, n_filters, spatial_dims=spatial_dims, norm=norm, name=f"{name}_b",
                       act=not residual)
    if residual:
        if shortcut.shape[-1] != n_filters:
            shortcut = _CONV[spatial_dims](n_filters, 1, use_bias=False,
                                           name=f"{name}_proj_conv")(shortcut)
            shortcut = _norm(shortcut, norm=norm, name=f"{name}_proj_norm")
        x = layers.Add(name=f"{name}_add")([x, shortcut])
        x = layers.LeakyReLU(negative_slope=_LEAKY_SLOPE, name=f"{name}_b_act")(x)
    if dropout > 0.0:
        x = _SPATIAL_DROPOUT[spatial_dims](dropout, name=f"{name}_dropout")(x)
    return x


def _down(x, *, spatial_dims: int, name: str):
    # Pooling runs in float32: TensorFlow has no float16 MaxPool3D kernel on the CPU, so a
    # mixed_float16 model would otherwise fail there (on a GPU this costs only two casts).
    return _POOL[spatial_dims](pool_size=2, dtype="float32", name=name)(x)


def _up(x, n_filters: int, *, spatial_dims: int, name: str):
    return _CONV_TRANSPOSE[spatial_dims](n_filters, 2, strides=2, name=name)(x)


def _head(x, *, spatial_dims: int, bias: float, name: str):
    """1x1 convolution to one float32 logit channel (safe under mixed precision)."""
    return _CONV[spatial_dims](
        1, 1, dtype="float32", bias_initializer=keras.initializers.Constant(bias), name=name
    )(x)


def _upsample_to_full(x, factor: int, *, spatial_dims: int, name: str):
    """Nearest-neighbour up-sampling of auxiliary logits to full resolution, in float32."""
    return _UPSAMPLE[spatial_dims](size=factor, dtype="float32", name=name)(x)


# --------------------------------------------------------------------------- the model


def build_unet(
    spatial_dims: Literal[2, 3] = 3,
    *,
    in_channels: int = 1,
    filters: Sequence[int] = (16, 32, 64, 128, 256),
    norm: Literal["batch", "instance", "group"] = "batch",
    residual: bool = False,
    dropout: float = 0.0,
    deep_supervision: bool = False,
    input_shape: Sequence[int | None] | None = None,
    head_bias: float = 0.0,
    name: str = "unet",
) -> keras.Model:
    """Builds a channels-last U-Net that returns float32 logits.

    Args:
        spatial_dims: 3 for volumes ``(N, D, H, W, C)``, 2 for slices ``(N, H, W, C)``.
        in_channels: Input channels ``C``. For a 2.5D model use ``spatial_dims=2`` and
            ``in_channels=k``: ``k`` neighbouring slices (odd ``k``, centre slice in the
            middle) stacked as channels; the output is the centre slice's logits.
        filters: Channels per level, highest resolution first. ``depth = len(filters) - 1``
            poolings; the last entry is the bottleneck.
        norm: ``"batch"`` (BatchNormalization), ``"instance"`` (GroupNormalization with
            groups == channels) or ``"group"`` (GroupNormalization with ``group_count``
            groups, at most 8).
        residual: Add a (1x1-projected when channels change) shortcut around each block.
        dropout: Channel (spatial) dropout rate after the bottleneck block (as in the
            original U-Net, at the end of the contracting path), in ``[0, 1)``.
        deep_supervision: Return a list of logits: full resolution first, then one auxiliary
            head per coarser decoder level (1/2, 1/4, ...), each upsampled (nearest) to full
            resolution so that the same loss applies to every output.
        input_shape: Spatial sizes, optionally followed by the channel count; ``None``
            entries (the default: all ``None``) accept any size divisible by ``2**depth``.
            Static sizes must be divisible by ``2**depth``.
        head_bias: Initial bias of the logit heads. With foreground prior ``p`` (nodules:
            ``p`` ~ 1e-3), ``log(p / (1 - p))`` stabilises early training with focal loss.
        name: Model name.

    Returns:
        A ``keras.Model`` mapping float ``(N, *spatial, in_channels)`` to float32 logits
        ``(N, *spatial, 1)``, or with ``deep_supervision`` a list of ``depth`` such tensors
        (``depth == 1`` gives a one-element list).

    Raises:
        ValueError: Bad ``spatial_dims``, ``filters``, ``norm``, ``dropout``, or a static
            input size that is not divisible by ``2**depth``.
        TypeError: Non-integer ``in_channels`` or a non-sequence ``input_shape``.
    """
    if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
        raise ValueError(
            f"Expected spatial_dims to be 2 or 3. Received: spatial_dims={spatial_dims!r}"
        )
    in_channels = check_int(in_channels, name="in_channels", minimum=1)
    filters = _check_filters(filters)
    if norm not in _NORMS:
        raise ValueError(f"Expected norm to be one of {_NORMS}. Received: norm={norm!r}")
    if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"Expected dropout in [0, 1). Received: dropout={dropout!r}")
    if not isinstance(head_bias, (int, float)) or not math.isfinite(head_bias):
        raise ValueError(
            f"Expected head_bias to be a finite float. Received: head_bias={head_bias!r}"
        )
    depth = len(filters) - 1
    if deep_supervision and depth < 1:
        raise ValueError(
            "Expected at least two levels (len(filters) >= 2) for deep_supervision=True. "
            f"Received: filters={filters!r}"
        )
    shape = _check_input_shape(input_shape, spatial_dims=spatial_dims,
                               in_channels=in_channels, depth=depth)
    block = dict(spatial_dims=spatial_dims, norm=norm, residual=bool(residual))

    inputs = keras.Input(shape=shape, name="image")

    # Encoder: down the ladder.
    skips = []
    x = inputs
    for level in range(depth):
        x = _conv_block(x, filters[level], dropout=0.0, name=f"enc{level}", **block)
        skips.append(x)
        x = _down(x, spatial_dims=spatial_dims, name=f"down{level}")
    x = _conv_block(x, filters[depth], dropout=float(dropout), name="bottleneck", **block)

    # Decoder: up the ladder; decoder_features[level] has resolution 1 / 2**level.
    decoder_features = {}
    for level in reversed(range(depth)):
        x = _up(x, filters[level], spatial_dims=spatial_dims, name=f"up{level}")
        x = layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = _conv_block(x, filters[level], dropout=0.0, name=f"dec{level}", **block)
        decoder_features[level] = x

    logits = _head(x, spatial_dims=spatial_dims, bias=float(head_bias), name="logits")
    if not deep_supervision:
        return keras.Model(inputs, logits, name=name)

    outputs = [logits]
    for level in range(1, depth):
        aux = _head(decoder_features[level], spatial_dims=spatial_dims,
                    bias=float(head_bias), name=f"aux{level}_logits")
        outputs.append(_upsample_to_full(aux, 2**level, spatial_dims=spatial_dims,
                                         name=f"aux{level}_upsample"))
    return keras.Model(inputs, outputs, name=name)


# --------------------------------------------------------------------------- accounting


def count_params(model: keras.Model, *, trainable_only: bool = False) -> int:
    """Number of parameters of a built model.

    Args:
        model: A built ``keras.Model``.
        trainable_only: Count only trainable weights (BatchNormalization moving statistics
            are non-trainable).

    Returns:
        The parameter count, an int.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"Expected a keras.Model. Received: model={type(model).__name__}")
    weights = model.trainable_weights if trainable_only else model.weights
    return int(sum(math.prod(w.shape) for w in weights))


def _conv_macs(layer, input_shape, output_shape) -> int:
    """Multiply-accumulates of one (transposed) convolution for one sample."""
    kernel = math.prod(layer.kernel_size)
    groups = int(getattr(layer, "groups", 1) or 1)
    c_in, c_out = int(input_shape[-1]), int(output_shape[-1])
    if isinstance(layer, (layers.Conv1DTranspose, layers.Conv2DTranspose, layers.Conv3DTranspose)):
        # Every input voxel is scattered through the whole kernel into every output channel.
        return math.prod(input_shape[1:-1]) * c_in * (c_out // groups) * kernel
    # Every output voxel gathers a kernel window over c_in / groups channels.
    return math.prod(output_shape[1:-1]) * c_out * (c_in // groups) * kernel


def estimate_flops(model: keras.Model, patch_shape: Sequence[int]) -> int:
    """Analytic FLOPs of one forward pass over one patch (``2 * MACs``).

    Counts convolutions, transposed convolutions and dense layers (normalisation,
    activations, pooling and additions are cheap in comparison and not counted). Shapes are
    propagated on a weight-free copy of the model built for a static ``patch_shape``; the
    model itself is left untouched.

    Args:
        model: A functional or sequential ``keras.Model`` with one channels-last input.
        patch_shape: Spatial sizes of the patch, e.g. ``(96, 96, 96)``; the channel count
            is taken from the model input.

    Returns:
        FLOPs per patch (batch size 1), an int.

    Raises:
        ValueError: ``patch_shape`` does not match the model input rank or its static sizes.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"Expected a keras.Model. Received: model={type(model).__name__}")
    if len(model.inputs) != 1:
        raise ValueError(
            f"Expected a model with one input. Received: model with {len(model.inputs)} inputs"
        )
    model_shape = tuple(model.inputs[0].shape)
    spatial = model_shape[1:-1]
    if (isinstance(patch_shape, (str, bytes)) or not isinstance(patch_shape, Sequence)
            or len(patch_shape) != len(spatial)
            or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1
                   for s in patch_shape)):
        raise ValueError(
            f"Expected patch_shape to be {len(spatial)} positive ints (the model's spatial "
            f"rank; model input shape {model_shape}). Received: patch_shape={patch_shape!r}"
        )
    for size, static in zip(patch_shape, spatial):
        if static is not None and static != size:
            raise ValueError(
                f"Expected patch_shape to match the model's static input shape {model_shape}. "
                f"Received: patch_shape={tuple(patch_shape)!r}"
            )
    patch_input = keras.Input(batch_shape=(1, *map(int, patch_shape), model_shape[-1]))
    probe = keras.models.clone_model(model, input_tensors=patch_input)

    flops = 0
    for layer in probe.layers:
        if isinstance(layer, layers.Dense):
            in_shape = tuple(layer.input.shape)
            flops += 2 * math.prod(in_shape[:-1]) * in_shape[-1] * layer.units
        elif isinstance(layer, (layers.Conv1D, layers.Conv2D, layers.Conv3D,
                                layers.Conv1DTranspose, layers.Conv2DTranspose,
                                layers.Conv3DTranspose)):
            in_shape, out_shape = tuple(layer.input.shape), tuple(layer.output.shape)
            if None in in_shape or None in out_shape:
                raise ValueError(
                    f"Expected static shapes for layer {layer.name!r} (nested models are not "
                    f"supported). Received: input {in_shape}, output {out_shape}"
                )
            flops += 2 * _conv_macs(layer, in_shape, out_shape)
    return int(flops)
