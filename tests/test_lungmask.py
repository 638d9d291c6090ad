"""Tests of segmentation.lungmask on small hand-built chests (HU, cranio-caudal axis last)."""

import logging

import numpy as np
import pytest

from segmentation.lungmask import LUNG_AIR_HU, drop_components_outside, lung_region

SHAPE = (64, 48, 24)


def ball(centre, radius, spacing=(1.0, 1.0, 1.0), shape=SHAPE):
    grid = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2


def chest(spacing=(1.0, 1.0, 1.0)):
    """Air around a soft-tissue body with two lungs, a vessel inside the right lung, a
    juxtapleural nodule inside the left lung touching its lateral wall and a blob in the body wall.

    Coordinates are millimetres; the same anatomy at another spacing has another shape.
    """
    shape = tuple(int(round(e / s)) for e, s in zip((64.0, 48.0, 24.0), spacing))
    grid = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    x, y, z = grid
    image = np.full(shape, -1000.0, np.float32)
    body = ((x - 32) / 30) ** 2 + ((y - 24) / 22) ** 2 <= 1
    image[body] = 0.0
    right = ((x - 18) / 10) ** 2 + ((y - 24) / 14) ** 2 + ((z - 12) / 10) ** 2 <= 1
    left = ((x - 46) / 10) ** 2 + ((y - 24) / 14) ** 2 + ((z - 12) / 10) ** 2 <= 1
    image[right | left] = -850.0
    vessel = ball((18, 24, 12), 2.5, spacing, shape)
    image[vessel] = 40.0
    nodule = ball((53.0, 24, 12), 3.0, spacing, shape)  # touching the left lung's lateral pleura
    image[nodule] = 20.0
    wall = ball((32, 5, 12), 2.5, spacing, shape)  # in the anterior body wall, outside the lungs
    return image, {"right": right & ~vessel, "left": left & ~nodule, "vessel": vessel,
                   "nodule_all": nodule, "wall": wall, "body": body}


def test_lung_region_holds_both_lungs_and_their_vessels_not_the_air_or_the_wall():
    image, parts = chest()
    region = lung_region(image, spacing_mm=(1.0, 1.0, 1.0))
    assert region[parts["right"]].all() and region[parts["left"]].all()
    assert region[parts["vessel"]].all()
    assert not region[~parts["body"]].any()
    assert not region[parts["wall"]].any()


def test_closing_takes_back_a_juxtapleural_nodule():
    image, parts = chest()
    with_closing = lung_region(image, spacing_mm=(1.0, 1.0, 1.0), closing_mm=10.0)
    without = lung_region(image, spacing_mm=(1.0, 1.0, 1.0), closing_mm=0.0)
    # the voxels on the pleura itself stay outside; the component is kept (>= half inside)
    assert with_closing[parts["nodule_all"]].mean() >= 0.75
    assert without[parts["nodule_all"]].mean() < 0.5


def test_anisotropic_spacing_gives_the_same_anatomy():
    spacing = (1.0, 1.0, 3.0)
    image, parts = chest(spacing)
    region = lung_region(image, spacing_mm=spacing)
    assert region[parts["right"]].all() and region[parts["vessel"]].all()
    assert region[parts["nodule_all"]].mean() >= 0.75
    assert not region[parts["wall"]].any()


def test_threshold_in_normalised_units():
    image, parts = chest()
    normalised = (image + 1000.0) / 1400.0  # hu_window [-1000, 400]
    region = lung_region(normalised, spacing_mm=(1.0, 1.0, 1.0),
                         threshold=(LUNG_AIR_HU + 1000.0) / 1400.0)
    np.testing.assert_array_equal(region, lung_region(image, spacing_mm=(1.0, 1.0, 1.0)))


def test_small_gas_pocket_is_not_lung():
    image, parts = chest()
    gas = ball((32, 38, 4), 1.5)
    image[gas] = -1000.0  # bowel gas, inside the body, far smaller than a lung
    region = lung_region(image, spacing_mm=(1.0, 1.0, 1.0), closing_mm=0.0)
    assert not region[gas].any()


@pytest.mark.parametrize("image", [np.zeros(SHAPE, np.float32),
                                   np.full(SHAPE, -1000.0, np.float32)],
                         ids=["no_air", "only_outside_air"])
def test_no_lung_found_gives_the_whole_volume(image, caplog):
    with caplog.at_level(logging.WARNING, logger="segmentation.lungmask"):
        region = lung_region(image, spacing_mm=(1.0, 1.0, 1.0))
    assert region.all()
    assert "whole volume" in caplog.text


@pytest.mark.parametrize("kwargs, match", [
    ({"image": np.zeros((4, 4))}, r"Expected a 3D image.*image.shape=\(4, 4\)"),
    ({"spacing_mm": (1.0, 0.0, 1.0)}, r"3 positive finite floats.*spacing_mm=\(1.0, 0.0, 1.0\)"),
    ({"spacing_mm": (1.0, 1.0)}, r"spacing_mm=\(1.0, 1.0\)"),
    ({"closing_mm": -1.0}, "closing_mm >= 0. Received: closing_mm=-1.0"),
    ({"min_share": 0.0}, "0 < min_share <= 1. Received: min_share=0.0"),
])
def test_lung_region_errors(kwargs, match):
    args = {"image": np.zeros((4, 4, 4)), "spacing_mm": (1.0, 1.0, 1.0), **kwargs}
    image = args.pop("image")
    with pytest.raises(ValueError, match=match):
        lung_region(image, **args)


# ------------------------------------------------------------------ drop_components_outside
def test_drop_components_outside_known_values():
    mask = np.zeros((8, 4, 4), bool)
    mask[0:2, 0, 0] = True  # 2 voxels, 1 inside: half inside, kept
    mask[4:8, 0, 0] = True  # 4 voxels, 1 inside: a quarter, dropped
    mask[0:2, 3, 3] = True  # 2 voxels, both inside
    region = np.zeros_like(mask)
    region[0, 0, 0] = region[4, 0, 0] = True
    region[0:2, 3, 3] = True
    out = drop_components_outside(mask, region)
    expected = mask.copy()
    expected[4:8, 0, 0] = False
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(drop_components_outside(mask, region, min_inside=0.25), mask)


def test_drop_components_outside_uses_connectivity():
    mask = np.zeros((3, 3, 3), bool)
    mask[0, 0, 0] = mask[1, 1, 1] = True  # one component at 26-, two at 6-connectivity
    region = np.zeros_like(mask)
    region[1, 1, 1] = True
    np.testing.assert_array_equal(drop_components_outside(mask, region, connectivity=26), mask)
    np.testing.assert_array_equal(drop_components_outside(mask, region, connectivity=6), region)


def test_drop_components_outside_empty_mask_stays_empty():
    mask = np.zeros((3, 3, 3), bool)
    assert not drop_components_outside(mask, np.ones_like(mask)).any()


def test_chest_wall_blob_is_dropped_and_lung_nodules_kept():
    image, parts = chest()
    region = lung_region(image, spacing_mm=(1.0, 1.0, 1.0))
    mask = parts["wall"] | parts["nodule_all"] | parts["vessel"]
    out = drop_components_outside(mask, region)
    np.testing.assert_array_equal(out, parts["nodule_all"] | parts["vessel"])


@pytest.mark.parametrize("kwargs, match", [
    ({"region": np.zeros((3, 3, 2), bool)},
     r"same shape. Received: mask.shape=\(3, 3, 3\), region.shape=\(3, 3, 2\)"),
    ({"min_inside": 0.0}, "0 < min_inside <= 1. Received: min_inside=0.0"),
    ({"connectivity": 4}, r"connectivity in \(6, 18, 26\). Received: connectivity=4"),
])
def test_drop_components_outside_errors(kwargs, match):
    args = {"mask": np.zeros((3, 3, 3), bool), "region": np.zeros((3, 3, 3), bool), **kwargs}
    with pytest.raises(ValueError, match=match):
        drop_components_outside(**args)
