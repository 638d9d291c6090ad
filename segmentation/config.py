"""Run configuration: YAML files loaded into frozen dataclasses.

A config is a tree of frozen dataclasses (`Config` at the root). Loading is strict:

* an unknown key is an error that names it and lists the allowed keys;
* a value of the wrong type, or outside its allowed choices, is an error that names the
  dotted key, what was expected and what was received;
* ``overrides`` (``--set key=value`` on the command line) use dotted keys and YAML values,
  e.g. ``train.epochs=3`` or ``model.filters=[8,16,32]``.

The run directory keeps the resolved config (``config.yaml``) beside ``model.keras``, so
inference reads exactly the preprocessing the model was trained with.

Example:
    >>> config = load_config("configs/cpu.yaml", overrides=["train.epochs=2"])
    >>> config.train.epochs
    2
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from segmentation.augmentation import AugmentSpec
from segmentation.io import atomic_write
from segmentation.preprocessing import PreprocessSpec
from segmentation.validation import check_float, check_int

__all__ = [
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "InferenceConfig",
    "EvaluationConfig",
    "Config",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "save_config",
    "apply_overrides",
    "DEFAULT_LOSS",
    "CONFIG_FORMAT_VERSION",
    "config_hash",
]


class ConfigError(ValueError):
    """A config file, key or value is not valid."""


CONFIG_FORMAT_VERSION = 1
"""Format of a saved config: `save_config` writes it (``format_version``) and the config's
`config_hash` (``config_sha256``) at the top of the file; `load_config` reads and drops them."""
_META_KEYS = ("format_version", "config_sha256")


DEFAULT_LOSS: dict[str, Any] = {
    "name": "hybrid",
    "components": [{"name": "bce", "weight": 0.5}, {"name": "dice", "weight": 0.5}],
}


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """How cases are split into training and validation.

    Attributes:
        val_fraction: Share of cases held out for validation when ``n_folds`` is 0.
        split_seed: Seed of the case-level split.
        n_folds: 0 for a single split; k >= 2 for k-fold cross-validation.
        fold: The validation fold when ``n_folds`` >= 2.
        cache_dir: Where preprocessed cases are cached; ``None`` puts the cache in the run
            directory (``RUN_DIR/cache``).
        max_val_cases: Cap on the number of validation scans evaluated each time (``None``:
            all of them).
        binarize_labels: Map every integral label > 0 to 1 (multi-label masks, e.g. nodules
            numbered 1..n); otherwise labels other than 0 and 1 are an error.
    """

    val_fraction: float = 0.2
    split_seed: int = 0
    n_folds: int = 0
    fold: int = 0
    cache_dir: str | None = None
    max_val_cases: int | None = None
    binarize_labels: bool = False

    def __post_init__(self) -> None:
        check_float(self.val_fraction, name="data.val_fraction",
                    minimum=0.0, maximum=1.0, low_open=True, high_open=True, error=ConfigError)
        if self.n_folds == 1 or self.n_folds < 0:
            raise ConfigError(
                f"Expected data.n_folds to be 0 (single split) or >= 2. Received: data.n_folds={self.n_folds}"
            )
        if self.n_folds >= 2 and not 0 <= self.fold < self.n_folds:
            raise ConfigError(
                f"Expected data.fold in [0, {self.n_folds - 1}]. Received: data.fold={self.fold}"
            )
        if self.max_val_cases is not None:
            check_int(self.max_val_cases, name="data.max_val_cases", minimum=1, error=ConfigError)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The U-Net (see `models.build_unet`).

    Attributes:
        spatial_dims: 3 for a 3D U-Net on volumes, 2 for a 2D (or 2.5D) U-Net on axial slices.
        filters: Filters per level; the depth is ``len(filters) - 1`` and patch sizes must be
            multiples of ``2**depth``.
        norm: ``batch``, ``instance`` or ``group`` normalisation.
        residual: Residual convolution blocks.
        dropout: Dropout rate in the bottleneck.
        deep_supervision: Auxiliary heads at lower resolutions (training only).
        context_slices: 2D only: ``c`` neighbouring slices on each side as channels (2.5D),
            so the model sees ``2c + 1`` channels.
        head_bias: Initial bias of the logit head: ``log(p / (1 - p))`` for a foreground
            prior ``p`` (e.g. -4.0 for about 2 % nodule voxels) skips the first hundreds of
            steps in which the model only learns that most voxels are background.
    """

    spatial_dims: Literal[2, 3] = 3
    filters: tuple[int, ...] = (16, 32, 64, 128, 256)
    norm: Literal["batch", "instance", "group"] = "batch"
    residual: bool = False
    dropout: float = 0.0
    deep_supervision: bool = False
    context_slices: int = 0
    head_bias: float = 0.0

    def __post_init__(self) -> None:
        if len(self.filters) < 2 or any(f < 1 for f in self.filters):
            raise ConfigError(
                "Expected model.filters to hold at least two positive integers. "
                f"Received: model.filters={list(self.filters)}"
            )
        check_float(self.dropout, name="model.dropout",
                    minimum=0.0, maximum=1.0, high_open=True, error=ConfigError)
        check_int(self.context_slices, name="model.context_slices", minimum=0, error=ConfigError)
        if self.context_slices and self.spatial_dims != 2:
            raise ConfigError(
                "Expected model.context_slices = 0 for a 3D model (2.5D is a 2D option). "
                f"Received: model.context_slices={self.context_slices}, model.spatial_dims=3"
            )

    @property
    def depth(self) -> int:
        """Number of down-sampling steps."""
        return len(self.filters) - 1

    @property
    def in_channels(self) -> int:
        """Channels of the model input (``2 * context_slices + 1``)."""
        return 2 * self.context_slices + 1


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimizer and learning-rate schedule.

    Attributes:
        optimizer: ``adamw`` or ``sgd`` (Nesterov momentum).
        learning_rate: Peak learning rate.
        weight_decay: Decoupled weight decay (AdamW) or L2-style decay (SGD).
        momentum: SGD momentum.
        schedule: ``cosine`` (to 0 over all steps), ``poly`` (nnU-Net's ``(1 - t)**0.9``) or
            ``constant``.
        warmup_epochs: Linear warm-up epochs.
        poly_power: Exponent of the poly schedule.
        clipnorm: Global gradient-norm clipping; ``null`` disables it.
    """

    optimizer: Literal["adamw", "sgd"] = "adamw"
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    momentum: float = 0.99
    schedule: Literal["cosine", "poly", "constant"] = "cosine"
    warmup_epochs: int = 0
    poly_power: float = 0.9
    clipnorm: float | None = 12.0

    def __post_init__(self) -> None:
        check_float(self.learning_rate, name="optim.learning_rate",
                    minimum=0.0, low_open=True, error=ConfigError)
        check_float(self.weight_decay, name="optim.weight_decay", minimum=0.0, error=ConfigError)
        check_float(self.momentum, name="optim.momentum",
                    minimum=0.0, maximum=1.0, high_open=True, error=ConfigError)
        check_int(self.warmup_epochs, name="optim.warmup_epochs", minimum=0, error=ConfigError)
        if self.clipnorm is not None:
            check_float(self.clipnorm, name="optim.clipnorm", minimum=0.0, low_open=True, error=ConfigError)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The training loop.

    Attributes:
        patch_size: Patch size in voxels (3 values for 3D, 2 for 2D), each a multiple of
            ``2**model.depth``; also the sliding window at inference.
        batch_size: Global batch size (split across replicas under tf.distribute).
        epochs: Number of epochs.
        steps_per_epoch: Training steps per epoch.
        foreground_fraction: Share of patches centred on a lesion (lesion-balanced).
        background: Where the other patches are centred: ``uniform`` over the scan, or
            ``body`` (a voxel denser than -900 HU: lungs and soft tissue, not the air
            around the patient).
        seed: Seed of sampling, augmentation and weight initialisation.
        val_every: Validate on whole validation scans every N epochs.
        early_stopping_patience: Validations without improvement before stopping (0: off).
        best_metric: Validation metrics that choose the ``best`` checkpoint, compared in order
            (ties broken by the next one). Keys of the evaluation summary.
        mixed_precision: Train with ``mixed_float16`` (GPU).
        jit_compile: XLA-compile the training step. Slow on CPUs for 3D convolutions: keep off there.
        deterministic: Enable TensorFlow's deterministic ops.
        debug: Check every loss component and the labels for NaN/Inf at every step.
        distribute: ``auto`` (MirroredStrategy over all GPUs when there are several, else the
            default strategy), ``none``, ``mirrored`` or ``multi_worker`` (reads TF_CONFIG).
        num_parallel_calls: Parallel patch workers (``null``: tf.data AUTOTUNE).
        tensorboard_images: Write CT slices with truth/prediction outlines to TensorBoard.
    """

    patch_size: tuple[int, ...] = (64, 64, 64)
    batch_size: int = 2
    epochs: int = 50
    steps_per_epoch: int = 100
    foreground_fraction: float = 1.0 / 3.0
    background: Literal["uniform", "body"] = "uniform"
    seed: int = 0
    val_every: int = 1
    early_stopping_patience: int = 0
    best_metric: tuple[str, ...] = ("lesion_recall", "dice_mean")
    mixed_precision: bool = False
    jit_compile: bool = False
    deterministic: bool = False
    debug: bool = False
    distribute: Literal["auto", "none", "mirrored", "multi_worker"] = "auto"
    num_parallel_calls: int | None = None
    tensorboard_images: bool = True

    def __post_init__(self) -> None:
        if len(self.patch_size) not in (2, 3) or any(p < 1 for p in self.patch_size):
            raise ConfigError(
                "Expected train.patch_size to be 2 or 3 positive integers. "
                f"Received: train.patch_size={list(self.patch_size)}"
            )
        for name in ("batch_size", "epochs", "steps_per_epoch", "val_every"):
            check_int(getattr(self, name), name=f"train.{name}", minimum=1, error=ConfigError)
        check_float(self.foreground_fraction, name="train.foreground_fraction",
                    minimum=0.0, maximum=1.0, error=ConfigError)
        check_int(self.early_stopping_patience, name="train.early_stopping_patience", minimum=0,
                  error=ConfigError)
        if not self.best_metric:
            raise ConfigError("Expected train.best_metric to name at least one metric. Received: []")
        if self.num_parallel_calls is not None:
            check_int(self.num_parallel_calls, name="train.num_parallel_calls", minimum=1, error=ConfigError)


@dataclasses.dataclass(frozen=True)
class InferenceConfig:
    """Sliding-window inference (training-time validation and ``lungseg predict``).

    Attributes:
        overlap: Overlap of neighbouring windows, in [0, 1).
        batch_size: Windows per forward pass.
        sigma_scale: Gaussian importance sigma as a share of the window.
        tta: Mirror test-time augmentation.
        threshold: Probability threshold of the mask.
        min_size_mm3: Predicted components smaller than this are removed.
        skip_empty_windows: Skip windows entirely outside the body (air only).
        lung_mask: Drop predicted components that lie mostly outside the lungs (a region
            found by thresholds and morphology, `segmentation.lungmask`).
        window: Sliding-window size in voxels (``null``: ``train.patch_size``); like the
            patch, one value per spatial axis, each a multiple of ``2**depth``. The U-Net is
            fully convolutional, so it runs on windows larger than its training patches:
            fewer, larger forward passes and fewer window borders (faster for 2.5D models on
            whole slices; slower for the 3D ``cpu.yaml`` model, which skips less air: README).
    """

    overlap: float = 0.5
    batch_size: int = 2
    sigma_scale: float = 0.125
    tta: bool = False
    threshold: float = 0.5
    min_size_mm3: float = 0.0
    skip_empty_windows: bool = True
    lung_mask: bool = False
    window: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.window is not None and (
                len(self.window) not in (2, 3) or any(w < 1 for w in self.window)):
            raise ConfigError(
                "Expected inference.window to be 2 or 3 positive integers or null. "
                f"Received: inference.window={list(self.window)}"
            )
        check_float(self.overlap, name="inference.overlap",
                    minimum=0.0, maximum=1.0, high_open=True, error=ConfigError)
        check_float(self.threshold, name="inference.threshold",
                    minimum=0.0, maximum=1.0, low_open=True, high_open=True, error=ConfigError)
        check_float(self.sigma_scale, name="inference.sigma_scale",
                    minimum=0.0, low_open=True, error=ConfigError)
        check_float(self.min_size_mm3, name="inference.min_size_mm3", minimum=0.0, error=ConfigError)
        check_int(self.batch_size, name="inference.batch_size", minimum=1, error=ConfigError)


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """Lesion-level evaluation rules (see `segmentation.metrics`).

    Attributes:
        connectivity: 6, 18 or 26-connectivity of lesions.
        match: ``overlap`` (any overlap) or ``iou`` (IoU >= ``iou_threshold``).
        iou_threshold: Threshold of the ``iou`` matching rule.
        small_lesion_mm: Lesions with an equivalent diameter below this are small.
        size_bins_mm: Edges of the recall-by-size bins (the last bin is open).
        tolerance_mm: Tolerance of the normalised surface Dice.
    """

    connectivity: Literal[6, 18, 26] = 26
    match: Literal["overlap", "iou"] = "overlap"
    iou_threshold: float = 0.1
    small_lesion_mm: float = 10.0
    size_bins_mm: tuple[float, ...] = (3.0, 6.0, 10.0, 20.0)
    tolerance_mm: float = 1.0

    def __post_init__(self) -> None:
        check_float(self.iou_threshold, name="evaluation.iou_threshold",
                    minimum=0.0, maximum=1.0, low_open=True, error=ConfigError)
        check_float(self.small_lesion_mm, name="evaluation.small_lesion_mm",
                    minimum=0.0, low_open=True, error=ConfigError)
        check_float(self.tolerance_mm, name="evaluation.tolerance_mm", minimum=0.0, error=ConfigError)
        edges = list(self.size_bins_mm)
        if len(edges) < 1 or edges != sorted(set(edges)) or edges[0] < 0:
            raise ConfigError(
                "Expected evaluation.size_bins_mm to be strictly increasing non-negative edges. "
                f"Received: {edges}"
            )


@dataclasses.dataclass(frozen=True)
class Config:
    """The whole run configuration."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    preprocess: PreprocessSpec = dataclasses.field(default_factory=PreprocessSpec)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    loss: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_LOSS))
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    augment: AugmentSpec = dataclasses.field(default_factory=AugmentSpec)
    inference: InferenceConfig = dataclasses.field(default_factory=InferenceConfig)
    evaluation: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.loss, Mapping) or "name" not in self.loss:
            raise ConfigError(
                "Expected loss to be a mapping with a 'name' (e.g. {name: hybrid, components: "
                f"[...]}}). Received: loss={self.loss!r}"
            )
        patch = self.train.patch_size
        divisor = 2**self.model.depth
        sizes = [("train.patch_size", patch)]
        if self.inference.window is not None:
            sizes.append(("inference.window", self.inference.window))
        for key, size in sizes:
            if len(size) != self.model.spatial_dims:
                raise ConfigError(
                    f"Expected {key} to have {self.model.spatial_dims} values for "
                    f"model.spatial_dims={self.model.spatial_dims}. Received: {key}={list(size)}"
                )
            if any(p % divisor for p in size):
                raise ConfigError(
                    f"Expected every {key} value to be a multiple of 2**depth = {divisor} "
                    f"(depth {self.model.depth} from model.filters). Received: {key}={list(size)}"
                )


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, *, overrides: Iterable[str] = ()) -> Config:
    """Loads a YAML config file (or the defaults) and applies ``key=value`` overrides.

    Args:
        path: A YAML file; ``None`` starts from the defaults.
        overrides: Dotted ``key=value`` strings; values are parsed as YAML.

    Returns:
        The validated, frozen `Config`.

    Raises:
        ConfigError: The file is missing or not YAML, or a key or value is not valid. The
            message names the file and the dotted key.
    """
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"Expected a YAML config file. Received: config={path} (no such file)")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise ConfigError(f"Expected valid YAML in config={path}. Received: {error}") from error
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"Expected a mapping at the top of config={path}. Received: {type(loaded).__name__}"
            )
        data = _drop_meta_keys(loaded, source=source)
    overrides = list(overrides)
    try:
        return config_from_dict(apply_overrides(data, overrides))
    except ConfigError as error:
        raise ConfigError(f"{error} ({_blame(error, data, overrides, source)})") from None


def _drop_meta_keys(data: dict[str, Any], *, source: str) -> dict[str, Any]:
    """``data`` without ``format_version`` / ``config_sha256`` (checked, not applied)."""
    version = data.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int) or version > CONFIG_FORMAT_VERSION:
        raise ConfigError(
            f"Expected format_version <= {CONFIG_FORMAT_VERSION} (this lungseg) in config={source}. "
            f"Received: format_version={version!r} (written by a newer lungseg?)"
        )
    return {k: v for k, v in data.items() if k not in _META_KEYS}


def _blame(error: ConfigError, data: Mapping[str, Any], overrides: list[str], source: str) -> str:
    """Names what caused ``error``: the ``--set`` items whose keys it names, or the file."""
    text = str(error)
    named = [o for o in overrides if o.split("=", 1)[0].strip() and o.split("=", 1)[0].strip() in text]
    if not named and overrides:
        try:
            config_from_dict(data)
        except ConfigError:
            named = []
        else:  # the file alone is valid: the overrides broke it
            named = overrides
    if named:
        return "from --set " + " ".join(named)
    return f"config: {source}"


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Returns a copy of ``data`` with dotted ``key=value`` overrides applied.

    Raises:
        ConfigError: An override is not of the form ``section.key=value``.
    """
    result = _deep_copy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"Expected an override of the form key=value. Received: --set {item!r}")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"Expected a dotted key before '='. Received: --set {item!r}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise ConfigError(f"Expected a YAML value in --set {item!r}. Received: {error}") from error
        node = result
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = {}
                node[part] = child
            if not isinstance(child, dict):
                raise ConfigError(f"Expected {part!r} to be a section in --set {item!r}. Received: {child!r}")
            node = child
        node[parts[-1]] = value
    return result


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Builds a validated `Config` from a nested mapping (unknown keys are errors)."""
    return _build(Config, data, "")


def config_to_dict(config: Any) -> dict[str, Any]:
    """Converts a config (or any of its sections) to plain YAML/JSON-safe Python types."""
    return _plain(config)


def save_config(config: Config, path: str | Path) -> Path:
    """Writes the resolved config as YAML, atomically (temp file, then rename).

    The file starts with ``format_version`` and ``config_sha256`` (`config_hash`), so a
    reader can tell a truncated or edited file from the one training wrote.
    """
    meta = {"format_version": CONFIG_FORMAT_VERSION, "config_sha256": config_hash(config)}
    text = yaml.safe_dump({**meta, **config_to_dict(config)}, sort_keys=False)
    return atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))


def config_hash(config: Config | Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a config, or of the mapping read from a saved one: its sorted YAML.

    This is the ``config_hash`` of ``manifest.json`` and the ``config_sha256`` of a saved
    ``config.yaml``; hashing the mapping as read (not a re-built `Config`) keeps the hashes
    of files written before a key was added valid.
    """
    data = config if isinstance(config, Mapping) else config_to_dict(config)
    data = {k: v for k, v in data.items() if k not in _META_KEYS}
    text = yaml.safe_dump(data, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- helpers


def _build(cls: type, data: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "config"
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"Expected a mapping for {where}. Received: {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"Unknown key{'s' if len(unknown) > 1 else ''} {', '.join(prefix + str(k) for k in unknown)}. "
            f"Expected one of: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:
        raise ConfigError(f"Invalid value in {where}: {error}") from error


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"Invalid value for {key}: {value!r}")
    if origin is Literal:
        if value not in args or isinstance(value, bool) != any(isinstance(a, bool) for a in args):
            raise ConfigError(f"Expected {key} to be one of {list(args)}. Received: {key}={value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"Expected {key} to be a list. Received: {key}={value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"Expected {key} to have {len(args)} values. Received: {key}={list(value)}")
        return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if hint in (dict, Mapping) or origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"Expected {key} to be a mapping. Received: {key}={value!r}")
        return _deep_copy(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"Expected {key} to be true or false. Received: {key}={value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"Expected {key} to be an integer. Received: {key}={value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"Expected {key} to be a number. Received: {key}={value!r}")
        if not math.isfinite(float(value)):
            raise ConfigError(f"Expected {key} to be finite. Received: {key}={value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"Expected {key} to be a string. Received: {key}={value!r}")
        return value
    return value


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # NumPy scalars
        return value.item()
    return value


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value
