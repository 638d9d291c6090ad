"""Tests of segmentation/synthetic_nodules.py: sizes in mm, kinds relative to the parenchyma."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from segmentation.phantom import NODULE_KINDS
from segmentation.synthetic_nodules import (
    NODULE_SHAPES,
    SyntheticNoduleSpec,
    draw_nodule,
    insert_nodules,
    parenchyma_stats,
    rasterize_nodule,
)

UNITS_PER_HU = 1 / 1400  # HU window [-1000, 400]
PARENCHYMA = 150 / 1400  # -850 HU
BELOW = 500 / 1400  # -500 HU: parenchyma level
NOISE = 0.01


def _equivalent_diameter_mm(mask: np.ndarray, spacing_mm) -> float:
    return (6.0 * mask.sum() * np.prod(spacing_mm) / math.pi) ** (1 / 3)


def _one_hot(n: int, index: int) -> tuple[float, ...]:
    return tuple(1.0 if i == index else 0.0 for i in range(n))


@pytest.mark.parametrize("shape", NODULE_SHAPES)
@pytest.mark.parametrize("spacing_mm", [(0.7, 0.7, 2.5), (1.5, 1.5, 1.5), (2.0, 0.8, 1.2)])
def test_sizes_within_the_requested_mm_range_on_anisotropic_grids(shape, spacing_mm):
    spec = SyntheticNoduleSpec(diameter_mm=(8.0, 12.0), shape_weights=_one_hot(3, NODULE_SHAPES.index(shape)))
    for seed in range(10):
        nodule = draw_nodule(np.random.default_rng(seed), spec, spacing_mm=spacing_mm)
        assert nodule.shape == shape and 8.0 <= nodule.diameter_mm <= 12.0
        _, mask, _ = rasterize_nodule(nodule, spacing_mm=spacing_mm)
        # equal-volume diameter in mm: the nominal one within voxel quantisation
        assert 0.85 * nodule.diameter_mm <= _equivalent_diameter_mm(mask, spacing_mm) <= 1.15 * nodule.diameter_mm
        n_labels = ndi.label(mask, structure=np.ones((3, 3, 3)))[1]
        assert n_labels == 1


def test_sphere_of_10_mm_has_its_volume():
    spec = SyntheticNoduleSpec(diameter_mm=(10.0, 10.0), shape_weights=(1.0, 0.0, 0.0))
    nodule = draw_nodule(np.random.default_rng(0), spec, spacing_mm=(0.5, 0.5, 0.5))
    nodule = type(nodule)(**{**nodule.__dict__, "axes": np.ones(3), "offset_mm": np.zeros(3)})
    alpha, mask, _ = rasterize_nodule(nodule, spacing_mm=(0.5, 0.5, 0.5))
    volume_mm3 = mask.sum() * 0.125
    assert volume_mm3 == pytest.approx(math.pi / 6 * 1000, rel=0.03)
    assert np.all(alpha[mask] == 1.0) and alpha.max() <= 1.0 and alpha.min() >= 0.0


def test_spiculated_nodules_reach_beyond_their_body():
    def reach(shape_index):
        spec = SyntheticNoduleSpec(diameter_mm=(10.0, 10.0), shape_weights=_one_hot(3, shape_index))
        alpha, _, _ = rasterize_nodule(draw_nodule(np.random.default_rng(1), spec, spacing_mm=(1, 1, 1)),
                                       spacing_mm=(1, 1, 1))
        return max(alpha.shape)

    assert reach(2) > reach(0) + 2


def test_drawn_kinds_follow_the_weights():
    spec = SyntheticNoduleSpec(kind_weights=(0.0, 0.0, 1.0))
    kinds = {draw_nodule(np.random.default_rng(s), spec, spacing_mm=(1, 1, 1)).kind for s in range(20)}
    assert kinds == {"ground_glass"} and set(NODULE_KINDS) == {"solid", "part_solid", "ground_glass"}


# --------------------------------------------------------------------------- painting


def _patch(level=PARENCHYMA, shape=(40, 40, 40), seed=0):
    rng = np.random.default_rng(seed)
    image = (level + NOISE * rng.standard_normal(shape)).astype(np.float32)
    lung = np.zeros(shape, bool)
    lung[2:38, 2:38, 2:38] = True
    lung[:, 19:21, :] = False  # a fissure
    image[~lung] = 0.74
    mask = np.zeros(shape, np.uint8)
    mask[6:9, 6:9, 6:9] = 1
    image[6:9, 6:9, 6:9] = 0.74
    return image, mask, lung


def _paint(image, mask, lung, spec, seed):
    return insert_nodules(image, mask, lung, spec=spec, rng=np.random.default_rng(seed), spacing_mm=(1.5, 1.5, 1.5),
                          units_per_hu=UNITS_PER_HU, parenchyma_level=BELOW)


@pytest.mark.parametrize("seed", range(8))
def test_nodules_land_in_the_lung_away_from_lesions_with_their_mask(seed):
    image, mask, lung = _patch()
    spec = SyntheticNoduleSpec(max_count=2, diameter_mm=(4.0, 12.0))
    out, out_mask, n = _paint(image, mask, lung, spec, seed)
    assert n >= 1
    changed = np.abs(out - image) > 1e-6
    new = (out_mask > 0) & ~(mask > 0)
    assert not np.any(changed & ~lung) and not np.any(new & ~lung)
    near_old = ndi.binary_dilation(mask > 0, ndi.generate_binary_structure(3, 1), iterations=spec.edge_vox)
    assert not np.any(changed & near_old)
    assert np.all(changed[new])  # never a mask without its image
    assert np.all(out[new] > PARENCHYMA + 100 * UNITS_PER_HU)  # at least faint ground glass above -850 HU


@pytest.mark.parametrize("level_hu", [-880.0, -800.0])
def test_solid_intensity_is_relative_to_the_parenchyma(level_hu):
    level = (level_hu + 1000) / 1400
    image, mask, lung = _patch(level=level)
    spec = SyntheticNoduleSpec(kind_weights=(1, 0, 0), diameter_mm=(10.0, 12.0), solid_delta_hu=(800.0, 800.0))
    out, out_mask, n = _paint(image, mask, lung, spec, seed=3)
    assert n == 1
    core = ndi.binary_erosion((out_mask > 0) & ~(mask > 0), iterations=1)
    assert np.mean(out[core]) == pytest.approx(level + 800 * UNITS_PER_HU, abs=0.01)
    assert np.std(out[core]) == pytest.approx(NOISE, rel=0.35)  # noise matched to the patch's


@pytest.mark.parametrize("level_hu", [-880.0, -800.0])
def test_ground_glass_is_added_to_what_is_there(level_hu):
    level = (level_hu + 1000) / 1400
    image, mask, lung = _patch(level=level)
    image[2:38, 10, 2:38] = 0.74  # a vessel sheet
    spec = SyntheticNoduleSpec(kind_weights=(0, 0, 1), diameter_mm=(12.0, 16.0), ground_glass_delta_hu=(300.0, 300.0))
    for seed in range(4):
        out, out_mask, n = _paint(image, mask, lung, spec, seed=seed)
        assert n == 1
        assert np.all(out >= image - 1e-6)  # the underlying maximum is kept
        new = (out_mask > 0) & ~(mask > 0)
        on_parenchyma = new & (image < 0.3)
        np.testing.assert_allclose(out[on_parenchyma] - image[on_parenchyma], 300 * UNITS_PER_HU, atol=1e-5)
        assert out.max() <= image.max()  # capped at the patch's brightest voxel


def test_part_solid_has_a_solid_core_in_ground_glass():
    image, mask, lung = _patch()
    spec = SyntheticNoduleSpec(kind_weights=(0, 1, 0), shape_weights=(1, 0, 0), diameter_mm=(16.0, 18.0),
                               solid_delta_hu=(800.0, 800.0), ground_glass_delta_hu=(300.0, 300.0))
    out, out_mask, n = _paint(image, mask, lung, spec, seed=0)
    assert n == 1
    values = out[(out_mask > 0) & ~(mask > 0)]
    assert np.any(values > PARENCHYMA + 700 * UNITS_PER_HU)  # core
    assert np.any(np.abs(values - (PARENCHYMA + 300 * UNITS_PER_HU)) < 0.03)  # ground-glass rim


def test_patch_without_parenchyma_gets_nothing():
    image, mask, lung = _patch()
    out, out_mask, n = _paint(image, mask, np.zeros_like(lung), SyntheticNoduleSpec(), seed=0)
    assert n == 0 and np.array_equal(out, image) and np.array_equal(out_mask, mask)


def test_parenchyma_stats_known_values():
    image = np.array([0.1, 0.1, 0.2, 0.3, 5.0] * 20)
    level, noise = parenchyma_stats(image, np.ones_like(image, bool))
    assert level == pytest.approx(0.2) and noise == pytest.approx(1.4826 * 0.1)
    assert parenchyma_stats(image[:10], np.ones(10, bool)) is None


@pytest.mark.parametrize("kwargs, match", [
    ({"probability": -0.1}, "augment.synthetic_nodules.probability"),
    ({"max_count": 0}, "augment.synthetic_nodules.max_count"),
    ({"diameter_mm": (30.0, 3.0)}, "augment.synthetic_nodules.diameter_mm"),
    ({"kind_weights": (1.0, 1.0)}, "augment.synthetic_nodules.kind_weights"),
    ({"shape_weights": (0.0, 0.0, 0.0)}, "augment.synthetic_nodules.shape_weights"),
    ({"ground_glass_delta_hu": (-10.0, 100.0)}, "augment.synthetic_nodules.ground_glass_delta_hu"),
])
def test_spec_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticNoduleSpec(**kwargs)
