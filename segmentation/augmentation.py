"""Patch augmentation: NumPy flips / 90-degree rotations plus albumentations.

``build_augmenter(spec, spatial_dims=...)`` returns ``augment(image, mask, seed)``,
a pure function of its inputs and ``seed`` that is safe to call from many
threads at once (tf.data runs it in parallel).

Order: flips (NumPy) -> in-plane 90-degree rotation (NumPy) -> small in-plane
rotation and isotropic scaling (albumentations ``Affine``) -> brightness /
contrast -> gamma -> Gaussian noise -> in-plane Gaussian blur (albumentations).
Scanner effects (off by default, 3D patches only; NumPy/SciPy) come between the
geometric and the intensity transforms: a Gaussian blur along the slice axis (thicker
slices than the training scans') and an in-plane unsharp mask (a sharper reconstruction
kernel, which also raises the noise). They draw from their own stream, so turning them on
leaves every other draw of a sample unchanged.

3D patches ``(I, J, K, C)``: the axial plane is (I, J) and K is the slice axis.
The geometric transform is drawn once and applied identically to every axial
slice (slices are passed as ``images=`` / ``masks=``); intensity transforms are
drawn once per patch, the Gaussian noise is independent per voxel and the blur is
in-plane. Masks use nearest-neighbour interpolation and stay in {0, 1}.

Intensity range: images arrive HU-windowed to [0, 1] or z-scored. albumentations
clips float images to [0, 1] and its gamma is undefined for negative values, so a
patch that is not inside [0, 1] is mapped linearly onto [0, 1] by its own min/max
for the intensity transforms and mapped back afterwards: z-scored data is never
clipped to [0, 1]; its values stay within the patch's original [min, max], and
brightness and noise amplitudes are relative to that range. Patches already in
[0, 1] are transformed as they are (brightness 0.1 is 0.1 of the HU window).

Areas rotated or scaled in from outside the patch take the patch minimum (air)
in the image and 0 in the mask.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from segmentation.lesion_paste import LesionPasteSpec
from segmentation.synthetic_nodules import SyntheticNoduleSpec
from segmentation.validation import check_range

if TYPE_CHECKING:
    import albumentations as A

__all__ = ["AugmentSpec", "Augmenter", "build_augmenter"]

Augmenter = Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]

_MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class AugmentSpec:
    """Augmentation settings; every field has a default (the config loader builds it from YAML).

    Attributes:
        enabled: False makes the augmenter an identity (copies).
        flip_axes: Spatial axes that may be flipped, each with p = 0.5. Axes that a
            2D patch does not have (2) are ignored, so one spec serves 2D and 3D.
        rot90: In-plane (axes 0, 1) rotation by a uniform multiple of 90 degrees;
            only 0 / 180 degrees when the patch is not square in-plane (keeps shape).
        rotate_deg: Small in-plane rotation drawn uniformly in [-rotate_deg, rotate_deg].
        scale: In-plane isotropic zoom range.
        p_affine: Probability of the rotation + scaling.
        brightness: Additive shift range [-b, b] (fraction of the [0, 1] range).
        contrast: Multiplicative range 1 + [-c, c].
        p_intensity: Probability of brightness + contrast.
        gamma: Gamma exponent range (on the [0, 1] working range).
        p_gamma: Probability of gamma.
        noise_std: Standard deviation of additive Gaussian noise (fraction of the
            [0, 1] working range), independent per voxel.
        p_noise: Probability of noise.
        blur_sigma: In-plane Gaussian blur sigma range, in voxels.
        p_blur: Probability of blur.
        slice_blur_sigma: Gaussian blur sigma range along the slice axis K, in voxels
            (3D only): scans reconstructed with thicker slices.
        p_slice_blur: Probability of the slice-axis blur (0: off).
        sharpen_amount: Unsharp-mask amount range ``a``: ``x + a * (x - blur(x))`` with an
            in-plane Gaussian of ``sharpen_sigma`` voxels (3D only): a sharper kernel.
        sharpen_sigma: In-plane sigma of the unsharp mask, in voxels.
        p_sharpen: Probability of the unsharp mask (0: off).
        lesion_paste: Lesion copy-paste (`segmentation.lesion_paste`; off by default).
            Applied by the sampler wrapper `segmentation.nodule_insertion`, before the
            transforms above; ``enabled: false`` here turns it off too.
        synthetic_nodules: Synthetic nodule insertion (`segmentation.synthetic_nodules`;
            off by default), applied there after the paste.
    """

    enabled: bool = True
    flip_axes: tuple[int, ...] = (0, 1, 2)
    rot90: bool = True
    rotate_deg: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)
    p_affine: float = 0.2
    brightness: float = 0.1
    contrast: float = 0.1
    p_intensity: float = 0.3
    gamma: tuple[float, float] = (0.7, 1.5)
    p_gamma: float = 0.2
    noise_std: float = 0.03
    p_noise: float = 0.15
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    p_blur: float = 0.1
    slice_blur_sigma: tuple[float, float] = (0.5, 1.5)
    p_slice_blur: float = 0.0
    sharpen_amount: tuple[float, float] = (0.3, 1.0)
    sharpen_sigma: float = 1.0
    p_sharpen: float = 0.0
    lesion_paste: LesionPasteSpec = field(default_factory=LesionPasteSpec)
    synthetic_nodules: SyntheticNoduleSpec = field(default_factory=SyntheticNoduleSpec)


def _check_spec(spec: AugmentSpec, *, spatial_dims: int) -> tuple[int, ...]:
    """Validates ``spec``; returns the flip axes that exist for ``spatial_dims``."""
    if not isinstance(spec, AugmentSpec):
        raise TypeError(f"Expected spec to be an AugmentSpec. Received: spec={spec!r}")
    if isinstance(spatial_dims, bool) or spatial_dims not in (2, 3):
        raise ValueError(f"Expected spatial_dims to be 2 or 3. Received: spatial_dims={spatial_dims!r}")
    for f in fields(spec):
        if f.name.startswith("p_"):
            p = getattr(spec, f.name)
            if not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"Expected 0 <= spec.{f.name} <= 1. Received: {f.name}={p!r}")
    for name in ("rotate_deg", "brightness", "contrast", "noise_std", "sharpen_sigma"):
        v = getattr(spec, name)
        if not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
            raise ValueError(f"Expected spec.{name} to be a finite number >= 0. Received: {name}={v!r}")
    if spec.noise_std > 1:
        raise ValueError(
            f"Expected spec.noise_std <= 1 (a fraction of the range). Received: noise_std={spec.noise_std!r}"
        )
    check_range(spec.scale, name="spec.scale", positive=True)
    for name, kind in (("lesion_paste", LesionPasteSpec), ("synthetic_nodules", SyntheticNoduleSpec)):
        if not isinstance(getattr(spec, name), kind):
            raise TypeError(f"Expected spec.{name} to be a {kind.__name__}. Received: {name}={getattr(spec, name)!r}")
    check_range(spec.gamma, name="spec.gamma", positive=True)
    check_range(spec.blur_sigma, name="spec.blur_sigma", positive=True)
    check_range(spec.slice_blur_sigma, name="spec.slice_blur_sigma", positive=True)
    check_range(spec.sharpen_amount, name="spec.sharpen_amount", positive=True)
    if spec.p_sharpen > 0 and spec.sharpen_sigma <= 0:
        raise ValueError(
            f"Expected spec.sharpen_sigma > 0 when p_sharpen > 0. Received: sharpen_sigma={spec.sharpen_sigma!r}"
        )
    axes = tuple(spec.flip_axes)
    valid = all(isinstance(a, (int, np.integer)) and not isinstance(a, bool) and 0 <= a <= 2 for a in axes)
    if not valid or len(set(axes)) != len(axes):
        raise ValueError(
            f"Expected spec.flip_axes to be distinct spatial axes in (0, 1, 2). Received: flip_axes={spec.flip_axes!r}"
        )
    return tuple(int(a) for a in axes if a < spatial_dims)


def _albumentations() -> tuple[ModuleType, ModuleType]:
    """albumentations and OpenCV, imported when an augmenter is built (not with the spec).

    Lazy because they are heavy (~0.7 s) and a config only needs `AugmentSpec`, and because
    albumentations checks PyPI for updates on import unless `segmentation.tf_env.
    configure_process` (which sets ``NO_ALBUMENTATIONS_UPDATE``) ran first.
    """
    import albumentations  # heavy, and checks PyPI on import before configure_process
    import cv2

    return albumentations, cv2


def _geometric_compose(spec: AugmentSpec) -> A.Compose | None:
    A, cv2 = _albumentations()
    lo, hi = (float(s) for s in spec.scale)
    if spec.p_affine == 0 or (spec.rotate_deg == 0 and lo == hi == 1.0):
        return None
    affine = A.Affine(
        rotate=(-float(spec.rotate_deg), float(spec.rotate_deg)),
        scale=(lo, hi),
        keep_ratio=True,
        interpolation=cv2.INTER_LINEAR,
        mask_interpolation=cv2.INTER_NEAREST,
        border_mode=cv2.BORDER_CONSTANT,
        fill=0.0,
        fill_mask=0,
        p=float(spec.p_affine),
    )
    return A.Compose([affine])


def _intensity_compose(spec: AugmentSpec) -> A.Compose | None:
    A, _ = _albumentations()
    transforms: list[Any] = []
    if spec.p_intensity > 0 and (spec.brightness > 0 or spec.contrast > 0):
        transforms.append(
            A.RandomBrightnessContrast(
                brightness_limit=(-float(spec.brightness), float(spec.brightness)),
                contrast_limit=(-float(spec.contrast), float(spec.contrast)),
                brightness_by_max=True,
                p=float(spec.p_intensity),
            )
        )
    g_lo, g_hi = (float(g) for g in spec.gamma)
    if spec.p_gamma > 0 and not g_lo == g_hi == 1.0:
        transforms.append(A.RandomGamma(gamma_limit=(g_lo * 100.0, g_hi * 100.0), p=float(spec.p_gamma)))
    if spec.p_noise > 0 and spec.noise_std > 0:
        std = float(spec.noise_std)
        transforms.append(A.GaussNoise(std_range=(std, std), per_channel=True, p=float(spec.p_noise)))
    if spec.p_blur > 0:
        transforms.append(
            A.GaussianBlur(blur_limit=0, sigma_limit=tuple(float(s) for s in spec.blur_sigma), p=float(spec.p_blur))
        )
    return A.Compose(transforms) if transforms else None


def _reseed(compose: A.Compose, seed: int) -> None:
    # One shared stream for the whole Compose. Compose.set_random_seed would give every
    # transform its own generator with the *same* seed, so all "apply?" draws would be
    # equal and the transforms would switch on together.
    compose.set_random_state(np.random.default_rng(seed), random.Random(seed))


def _flip_and_rot90(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, *, axes: tuple[int, ...], rot90: bool
) -> tuple[np.ndarray, np.ndarray]:
    for axis in axes:
        if rng.random() < 0.5:
            image, mask = np.flip(image, axis), np.flip(mask, axis)
    if rot90:
        square = image.shape[0] == image.shape[1]
        k = int(rng.integers(4)) if square else 2 * int(rng.integers(2))
        image, mask = np.rot90(image, k, axes=(0, 1)), np.rot90(mask, k, axes=(0, 1))
    return image, mask


def _apply_affine(compose: A.Compose, image: np.ndarray, mask: np.ndarray, *, spatial_dims: int):
    low = float(image.min())  # shift so the constant fill 0 is the patch minimum (air)
    shifted = np.ascontiguousarray(image - low, dtype=np.float32)
    if spatial_dims == 2:
        out = compose(image=shifted, mask=np.ascontiguousarray(mask))
        return out["image"] + low, out["mask"]
    # (I, J, K, C) -> (K, I, J, C): one transform for every axial slice.
    out = compose(
        images=np.ascontiguousarray(np.moveaxis(shifted, 2, 0)),
        masks=np.ascontiguousarray(np.moveaxis(mask, 2, 0)),
    )
    return np.moveaxis(out["images"], 0, 2) + low, np.moveaxis(out["masks"], 0, 2)


def _apply_intensity(compose: A.Compose, image: np.ndarray) -> np.ndarray:
    low, high = float(image.min()), float(image.max())
    in_unit_range = low >= 0.0 and high <= 1.0
    offset, span = (0.0, 1.0) if in_unit_range else (low, (high - low) or 1.0)
    work = (image - offset) / span
    shape = work.shape
    # Channels of one 2D image: the in-plane axes stay (H, W), the rest become channels.
    flat = np.ascontiguousarray(work.reshape(shape[0], shape[1], -1), dtype=np.float32)
    out = compose(image=flat)["image"].reshape(shape)
    return out * span + offset


def _scanner_effects(image: np.ndarray, spec: AugmentSpec, seed: int) -> np.ndarray:
    """Slice-axis blur and in-plane unsharp mask of a float (I, J, K, C) patch.

    Draws from its own stream of ``seed``; the result stays within the patch's [min, max].
    """
    from scipy import ndimage

    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x7363616E]))
    draws = rng.random(2)
    slice_sigma = float(rng.uniform(*spec.slice_blur_sigma))
    amount = float(rng.uniform(*spec.sharpen_amount))
    if draws[0] < spec.p_slice_blur:
        image = ndimage.gaussian_filter1d(image, slice_sigma, axis=2, mode="nearest")
    if draws[1] < spec.p_sharpen:
        sigma = float(spec.sharpen_sigma)
        smooth = ndimage.gaussian_filter(image, sigma=(sigma, sigma, 0.0, 0.0), mode="nearest")
        # the windowed scan of a sharp kernel stays inside the window: clip to the patch's range
        image = np.clip(image + amount * (image - smooth), image.min(), image.max())
    return image


def build_augmenter(spec: AugmentSpec, *, spatial_dims: int) -> Augmenter:
    """Builds ``augment(image, mask, seed) -> (image, mask)``.

    Args:
        spec: The augmentation settings.
        spatial_dims: 3 for (I, J, K, C) patches, 2 for (I, J, C) (2D / 2.5D).

    Returns:
        A thread-safe function. ``image``: float ``(*patch, C)``; ``mask``:
        ``(*patch, 1)`` with values in {0, 1}; ``seed``: int >= 0. Returns a
        float32 image and a uint8 mask of the input shapes; a pure function of
        the inputs and ``seed`` (one albumentations Compose per thread, reseeded
        on every call).

    Raises:
        ValueError / TypeError: For a bad spec (at build time) or bad inputs (at call).
    """
    flip_axes = _check_spec(spec, spatial_dims=spatial_dims)
    local = threading.local()

    def composes() -> tuple[A.Compose | None, A.Compose | None]:
        if not hasattr(local, "composes"):
            local.composes = (_geometric_compose(spec), _intensity_compose(spec))
        return local.composes

    def augment(image: np.ndarray, mask: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        image, mask = np.asarray(image), np.asarray(mask)
        if image.ndim != spatial_dims + 1 or not np.issubdtype(image.dtype, np.floating):
            raise ValueError(
                f"Expected image to be a float array of shape (*patch, C) with {spatial_dims} spatial axes. "
                f"Received: image.shape={image.shape}, image.dtype={image.dtype}"
            )
        if mask.shape != (*image.shape[:-1], 1):
            raise ValueError(
                f"Expected mask of shape {(*image.shape[:-1], 1)} to match the image. Received: mask.shape={mask.shape}"
            )
        if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= _MAX_SEED:
            raise ValueError(f"Expected seed to be an int in [0, 2**63). Received: seed={seed!r}")
        image = image.astype(np.float32, copy=True)
        mask = (mask > 0).astype(np.uint8)
        if not spec.enabled:
            return image, mask
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x617567]))
        image, mask = _flip_and_rot90(image, mask, rng, axes=flip_axes, rot90=spec.rot90)
        geometric, intensity = composes()
        if geometric is not None:
            _reseed(geometric, int(rng.integers(_MAX_SEED)))
            image, mask = _apply_affine(geometric, image, mask, spatial_dims=spatial_dims)
        if spatial_dims == 3 and (spec.p_slice_blur > 0 or spec.p_sharpen > 0):
            image = _scanner_effects(image, spec, int(seed))
        if intensity is not None:
            _reseed(intensity, int(rng.integers(_MAX_SEED)))
            image = _apply_intensity(intensity, image)
        return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray((mask > 0).astype(np.uint8))

    return augment
