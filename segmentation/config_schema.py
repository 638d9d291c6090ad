"""The run configuration's schema: the frozen dataclass sections and their own checks.

`Config` is the root (`DataConfig`, `PreprocessSpec`, `ModelConfig`, the loss mapping,
`OptimConfig`, `TrainConfig`, `AugmentSpec`, `InferenceConfig`, `EvaluationConfig`); each
section validates its values in ``__post_init__`` and raises `ConfigError`. Loading YAML into
these classes, overrides and saving: `segmentation.config`, which re-exports every name here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from segmentation.augmentation import AugmentSpec
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
    "DEFAULT_LOSS",
]


class ConfigError(ValueError):
    """A config file, key or value is not valid."""


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
        val_tta: Mirror test-time augmentation in these validations (``null``: as
            ``inference.tta``). ``false`` with ``inference.tta: true`` keeps the validations
            5-8 times faster while `lungseg predict` still mirrors; the best epoch is then
            chosen on plain predictions.
        early_stopping_patience: Validations without improvement before stopping (0: off).
        best_metric: Validation metrics that choose the ``best`` checkpoint, compared in order
            (ties broken by the next one). Keys of the evaluation summary.
        mixed_precision: ``false`` (float32), ``true`` / ``float16`` (``mixed_float16`` with
            loss scaling, for GPUs), ``bfloat16`` (``mixed_bfloat16``: faster on CPUs with
            AVX512_BF16 or AMX, slower where bfloat16 is emulated) or ``auto`` (``float16``
            on a GPU, ``bfloat16`` on a CPU with native bfloat16, else float32;
            `pipelines.training.precision`). The policy in effect is recorded in
            ``manifest.json``; the saved model keeps its layers' policy.
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
    val_tta: bool | None = None
    early_stopping_patience: int = 0
    best_metric: tuple[str, ...] = ("lesion_recall", "dice_mean")
    mixed_precision: bool | Literal["float16", "bfloat16", "auto"] = False
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
        grow_threshold: ``null``, or a lower threshold that grows each component found at
            ``threshold`` into its neighbours down to this probability (hysteresis): the
            same lesions, with their fainter rims. Must not exceed ``threshold``; a
            ``lungseg predict --threshold`` below it turns the growing off.
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
    grow_threshold: float | None = None
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
        if self.grow_threshold is not None:
            check_float(self.grow_threshold, name="inference.grow_threshold",
                        minimum=0.0, maximum=self.threshold, low_open=True, error=ConfigError)
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
