"""Tests of segmentation/lesion_paste.py on hand-built 3D patches (normalised units).

Levels as the HU window [-1000, 400] gives them: parenchyma -850 HU = 0.107, soft tissue /
solid nodule 40 HU = 0.743, ground glass -450 HU = 0.393.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from scipy import ndimage as ndi

from segmentation.lesion_paste import (
    BankLesion,
    LesionPasteSpec,
    blend,
    build_lesion_bank,
    find_position,
    paste_lesions,
    patch_arrays,
    soft_edge_weight,
    transform_lesion,
)
from segmentation.sampling import PatchSampler

PARENCHYMA, SOLID, GGO, VESSEL = 0.107, 0.743, 0.393, 0.7
EDGE = 2
BALL = ndi.generate_binary_structure(3, 1)


def _sphere(shape, centre, radius) -> np.ndarray:
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def _bank_lesion(case_id: str, *, value: float, radius: float = 2.0, subsolid: bool = False) -> BankLesion:
    size = int(2 * (radius + EDGE) + 3)
    mask = _sphere((size,) * 3, (size // 2,) * 3, radius)
    weight = soft_edge_weight(mask, edge_vox=EDGE)
    image = np.where(mask, value, PARENCHYMA).astype(np.float32)
    return BankLesion(case_id=case_id, image=image, mask=mask, weight=weight, subsolid=subsolid)


def _patch(shape=(36, 36, 36)):
    image = np.full(shape, PARENCHYMA, np.float32)
    lung = np.zeros(shape, bool)
    lung[3:33, 3:33, 3:33] = True
    lung[:, 17:19, :] = False  # a fissure: two lungs side by side
    image[~lung] = SOLID  # chest wall around and between them
    mask = np.zeros(shape, np.uint8)
    existing = _sphere(shape, (7, 7, 7), 2)
    mask[existing] = 1
    image[existing] = SOLID
    return image, mask, lung


SPEC = LesionPasteSpec(enabled=True, probability=1.0, max_count=3, scale=(1.0, 1.0), intensity_jitter_hu=0.0,
                       edge_vox=EDGE)


# --------------------------------------------------------------------------- the bank


def test_soft_edge_weight_known_values():
    mask = np.zeros((7, 1, 1), bool)
    mask[3] = True
    weight = soft_edge_weight(mask, edge_vox=2)[:, 0, 0]
    np.testing.assert_allclose(weight, [0, 1 / 3, 2 / 3, 1, 2 / 3, 1 / 3, 0], atol=1e-6)


def test_soft_edge_weight_of_empty_mask_is_zero():
    assert not soft_edge_weight(np.zeros((3, 3, 3), bool), edge_vox=2).any()


def test_bank_skips_border_lesions_and_marks_subsolid():
    shape = (30, 30, 30)
    image = np.full(shape, PARENCHYMA, np.float32)
    mask = np.zeros(shape, np.uint8)
    solid, ggo, border = _sphere(shape, (8, 8, 8), 2), _sphere(shape, (20, 20, 20), 3), _sphere(shape, (1, 15, 15), 2)
    image[solid], image[ggo], image[border] = SOLID, GGO, SOLID
    mask[solid | ggo | border] = 1
    case = SimpleNamespace(case_id="a", image=image, mask=mask)
    sampler = PatchSampler([case], patch_size=(8, 8, 8))
    bank = build_lesion_bank([case], sampler.lesions, edge_vox=EDGE, subsolid_level=0.5)  # -300 HU
    assert len(bank) == 2  # the border lesion is skipped
    by_size = sorted(bank, key=lambda lesion: lesion.mask.sum())
    assert [lesion.subsolid for lesion in by_size] == [False, True]
    for lesion in bank:
        assert lesion.case_id == "a"
        assert lesion.image.shape == lesion.mask.shape == lesion.weight.shape
        assert np.all(lesion.weight[lesion.mask] == 1.0)
        far = ~ndi.binary_dilation(lesion.mask, np.ones((3, 3, 3)), iterations=EDGE)
        assert np.all(lesion.weight[far] == 0.0)
    assert int(by_size[0].mask.sum()) == int(solid.sum())


def test_bank_skips_lesion_beside_another():
    shape = (30, 30, 30)
    image = np.full(shape, PARENCHYMA, np.float32)
    mask = np.zeros(shape, np.uint8)
    mask[_sphere(shape, (12, 15, 15), 2)] = 1
    mask[_sphere(shape, (17, 15, 15), 1)] = 1  # two voxels of gap: inside the other's edge
    case = SimpleNamespace(case_id="a", image=image, mask=mask)
    sampler = PatchSampler([case], patch_size=(8, 8, 8))
    assert sampler.n_lesions == 2
    assert build_lesion_bank([case], sampler.lesions, edge_vox=EDGE, subsolid_level=0.5) == []


# --------------------------------------------------------------------------- the paste


def _changed(before, after):
    return np.abs(after - before) > 1e-6


@pytest.mark.parametrize("seed", range(12))
def test_paste_lands_only_inside_the_lung_and_never_on_another_lesion(seed):
    image, mask, lung = _patch()
    bank = [_bank_lesion("other", value=SOLID), _bank_lesion("other2", value=GGO, radius=3, subsolid=True)]
    out, out_mask, n = paste_lesions(image, mask, lung, bank=bank, case_id="self", spec=SPEC,
                                     rng=np.random.default_rng(seed), units_per_hu=1 / 1400)
    assert n >= 1
    changed = _changed(image, out)
    new = (out_mask > 0) & ~(mask > 0)
    assert new.any() and changed.any()
    assert not np.any(changed & ~lung) and not np.any(new & ~lung)
    near_old = ndi.binary_dilation(mask > 0, BALL, iterations=EDGE)
    assert not np.any(changed & near_old) and not np.any(new & near_old)
    assert np.all(out_mask[mask > 0] == 1)  # the existing lesion stays


def test_paste_stays_edge_vox_away_from_the_patch_border():
    image, mask, lung = _patch()
    lung[:] = True
    for seed in range(8):
        out, _, _ = paste_lesions(image, mask, lung, bank=[_bank_lesion("o", value=SOLID)], case_id="s",
                                  spec=SPEC, rng=np.random.default_rng(seed), units_per_hu=1 / 1400)
        changed = _changed(image, out)
        inner = np.zeros_like(changed)
        inner[EDGE:-EDGE, EDGE:-EDGE, EDGE:-EDGE] = True
        assert not np.any(changed & ~inner)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("scale", [(1.0, 1.0), (0.7, 1.4)])
def test_image_and_mask_stay_aligned_voxel_for_voxel(seed, scale):
    image, mask, lung = _patch()
    spec = LesionPasteSpec(enabled=True, max_count=2, scale=scale, intensity_jitter_hu=0.0, edge_vox=EDGE)
    out, out_mask, n = paste_lesions(image, mask, lung, bank=[_bank_lesion("o", value=SOLID, radius=3)],
                                     case_id="s", spec=spec, rng=np.random.default_rng(seed), units_per_hu=1 / 1400)
    assert n >= 1
    new = (out_mask > 0) & ~(mask > 0)
    changed = _changed(image, out)
    # every pasted mask voxel carries the lesion's image (solid: replaced, weight 1); rescaled
    # (linear image, nearest mask) its rim voxels are partial volumes, still nearer the lesion
    if scale == (1.0, 1.0):
        np.testing.assert_allclose(out[new], SOLID, atol=1e-5)
    assert np.all(out[new] > (SOLID + PARENCHYMA) / 2)
    assert np.all(changed[new])
    # ... and the image changed nowhere but on the pasted mask and its soft edge
    assert not np.any(changed & ~ndi.binary_dilation(new, np.ones((3, 3, 3)), iterations=EDGE))


def test_subsolid_blending_keeps_the_underlying_maximum():
    image, mask, lung = _patch()
    image[3:33, 10, 3:33] = VESSEL  # a vessel sheet through the left lung
    lesion = _bank_lesion("o", value=GGO, radius=4, subsolid=True)
    pasted_any = False
    for seed in range(10):
        out, out_mask, n = paste_lesions(image, mask, lung, bank=[lesion], case_id="s", spec=SPEC,
                                         rng=np.random.default_rng(seed), units_per_hu=1 / 1400)
        assert np.all(out >= image - 1e-6)  # never darker than what was there
        new = (out_mask > 0) & ~(mask > 0)
        on_vessel = new & (image == np.float32(VESSEL))
        np.testing.assert_allclose(out[on_vessel], VESSEL)  # the vessel stays visible
        np.testing.assert_allclose(out[new & (image == np.float32(PARENCHYMA))], GGO, atol=1e-5)
        pasted_any |= bool(on_vessel.any())
    assert pasted_any


def test_solid_blending_replaces_what_it_covers():
    under = np.full((3, 3, 3), VESSEL, np.float32)
    lesion = np.full((3, 3, 3), 0.5, np.float32)
    weight = np.zeros((3, 3, 3), np.float32)
    weight[1, 1, 1], weight[0, 1, 1] = 1.0, 0.5
    out = blend(under, lesion, weight, subsolid=False)
    assert out[1, 1, 1] == pytest.approx(0.5) and out[0, 1, 1] == pytest.approx(0.6) and out[2, 2, 2] == np.float32(VESSEL)
    out = blend(under, lesion, weight, subsolid=True)
    assert np.all(out == np.float32(VESSEL))


def test_own_case_lesions_are_never_pasted():
    image, mask, lung = _patch()
    out, out_mask, n = paste_lesions(image, mask, lung, bank=[_bank_lesion("self", value=SOLID)], case_id="self",
                                     spec=SPEC, rng=np.random.default_rng(0), units_per_hu=1 / 1400)
    assert n == 0 and np.array_equal(out, image) and np.array_equal(out_mask, mask)


def test_patch_without_lung_gets_no_paste():
    image, mask, lung = _patch()
    out, out_mask, n = paste_lesions(image, mask, np.zeros_like(lung), bank=[_bank_lesion("o", value=SOLID)],
                                     case_id="s", spec=SPEC, rng=np.random.default_rng(0), units_per_hu=1 / 1400)
    assert n == 0 and np.array_equal(out, image) and np.array_equal(out_mask, mask)


def test_paste_does_not_change_its_inputs():
    image, mask, lung = _patch()
    before = image.copy(), mask.copy()
    paste_lesions(image, mask, lung, bank=[_bank_lesion("o", value=SOLID)], case_id="s", spec=SPEC,
                  rng=np.random.default_rng(0), units_per_hu=1 / 1400)
    assert np.array_equal(image, before[0]) and np.array_equal(mask, before[1])


def test_paste_is_a_function_of_the_generator_seed():
    image, mask, lung = _patch()
    bank = [_bank_lesion("o", value=SOLID), _bank_lesion("p", value=GGO, subsolid=True)]
    runs = [paste_lesions(image, mask, lung, bank=bank, case_id="s", spec=SPEC, rng=np.random.default_rng(5),
                          units_per_hu=1 / 1400) for _ in range(2)]
    assert np.array_equal(runs[0][0], runs[1][0]) and np.array_equal(runs[0][1], runs[1][1])


def test_transform_rescales_and_keeps_weight_one_on_the_mask():
    lesion = _bank_lesion("o", value=SOLID, radius=3)
    spec_scale = (2.0, 2.0)
    image, mask, weight = transform_lesion(lesion, np.random.default_rng(0), scale=spec_scale, shift=0.0)
    assert mask.shape == tuple(2 * n for n in lesion.mask.shape)
    assert 6 < mask.sum() / lesion.mask.sum() < 10  # about 2**3
    assert np.all(weight[mask] == 1.0) and image.shape == weight.shape


def test_transform_shift_moves_the_lesion_intensity():
    lesion = _bank_lesion("o", value=SOLID)
    deltas = []
    for seed in range(6):
        image, mask, _ = transform_lesion(lesion, np.random.default_rng(seed), scale=(1.0, 1.0), shift=0.05)
        deltas.append(float(image[mask].mean() - SOLID))
    assert all(abs(d) <= 0.05 for d in deltas) and min(deltas) < 0 < max(deltas)
    image, _, _ = transform_lesion(lesion, np.random.default_rng(0), scale=(1.0, 1.0), shift=0.5,
                                   value_range=(0.0, 0.75))
    assert image.min() >= 0.0 and image.max() <= 0.75


def test_find_position_returns_none_when_the_insert_does_not_fit():
    lung = np.ones((10, 10, 10), bool)
    outer = np.ones((8, 8, 8), bool)
    assert find_position(lung, np.zeros_like(lung), inner=outer, outer=outer, border_vox=2,
                         rng=np.random.default_rng(0), attempts=4) is None


# --------------------------------------------------------------------------- the spec


@pytest.mark.parametrize("kwargs, match", [
    ({"probability": 1.5}, "augment.lesion_paste.probability"),
    ({"max_count": 0}, "augment.lesion_paste.max_count"),
    ({"scale": (1.2, 0.8)}, "augment.lesion_paste.scale"),
    ({"scale": (0.0, 1.0)}, "augment.lesion_paste.scale"),
    ({"intensity_jitter_hu": -1.0}, "augment.lesion_paste.intensity_jitter_hu"),
    ({"edge_vox": 0}, "augment.lesion_paste.edge_vox"),
])
def test_spec_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LesionPasteSpec(**kwargs)


def test_config_section_is_off_by_default_and_strict():
    from segmentation.config import ConfigError, load_config

    config = load_config(None)
    assert not config.augment.lesion_paste.enabled and not config.augment.synthetic_nodules.enabled
    with pytest.raises(ConfigError, match="augment.lesion_paste.typo.*edge_vox, enabled"):
        load_config(None, overrides=["augment.lesion_paste.typo=1"])
    paste = load_config("configs/cpu.yaml").augment
    assert paste.lesion_paste.enabled and paste.synthetic_nodules.enabled


def test_patch_arrays_copies_the_image_and_binarises_mask_and_lung():
    image = np.zeros((2, 3, 4), np.int16)
    mask = np.full((2, 3, 4), 2, np.uint8)
    out, mask_out, lung_out = patch_arrays(image, mask, np.ones((2, 3, 4)))
    assert out.dtype == np.float32 and not np.shares_memory(out, image)
    assert mask_out.dtype == bool and mask_out.all() and lung_out.dtype == bool and lung_out.all()


@pytest.mark.parametrize("shapes", [((2, 3, 4), (2, 3, 4), (2, 3, 5)), ((2, 3), (2, 3), (2, 3))])
def test_patch_arrays_of_another_shape_or_not_3d_are_an_error(shapes):
    with pytest.raises(ValueError, match=r"image, mask and lung of one 3D shape.*lung.shape"):
        patch_arrays(*(np.zeros(s) for s in shapes))
