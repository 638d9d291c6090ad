"""Tests of segmentation/nodule_insertion.py: determinism per sample index, bad input, levels."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest

from segmentation.augmentation import AugmentSpec
from segmentation.lesion_paste import LesionPasteSpec
from segmentation.nodule_insertion import (
    NoduleInsertionSampler,
    case_lung_regions,
    intensity_levels,
    with_nodule_insertion,
)
from segmentation.preprocessing import CTStats, PreprocessSpec
from segmentation.sampling import PatchSampler
from segmentation.synthetic_nodules import SyntheticNoduleSpec

PREPROCESS = PreprocessSpec(normalisation="hu_window", hu_window=(-1000.0, 400.0))
BOTH_ON = AugmentSpec(lesion_paste=LesionPasteSpec(enabled=True, probability=0.8, max_count=2),
                      synthetic_nodules=SyntheticNoduleSpec(enabled=True, probability=0.8, diameter_mm=(3.0, 10.0)))


def _chest(case_id: str, *, seed: int, lungs: bool = True, lesion: tuple | None = (14, 20, 10)):
    """A (40, 40, 20) chest in HU-window units: air 0, body 0.74, lungs 0.107, solid lesion 0.74."""
    shape = (40, 40, 20)
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(float)
    body = ((grid[0] - 19.5) / 18) ** 2 + ((grid[1] - 19.5) / 17) ** 2 <= 1
    image = np.where(body, 0.743, 0.0)
    if lungs:
        for ci in (11.0, 28.0):
            lung = ((grid[0] - ci) / 7) ** 2 + ((grid[1] - 19.5) / 11) ** 2 + ((grid[2] - 9.5) / 12) ** 2 <= 1
            image[lung] = 0.107
    image = (image + 0.01 * rng.standard_normal(shape)).astype(np.float32)
    mask = np.zeros(shape, np.uint8)
    if lesion is not None:
        ball = sum((g - c) ** 2 for g, c in zip(grid, lesion)) <= 4
        mask[ball], image[ball] = 1, 0.743
    return SimpleNamespace(case_id=case_id, image=image, mask=mask, spacing_mm=(2.0, 2.0, 2.0))


def _cases():
    return [_chest("a", seed=0), _chest("b", seed=1, lesion=(27, 18, 9)), _chest("c", seed=2, lesion=(12, 22, 12))]


def _sampler(cases, **kwargs):
    return PatchSampler(cases, patch_size=(16, 16, 16), foreground_fraction=0.5, seed=7, **kwargs)


@pytest.fixture(scope="module")
def wrapped():
    cases = _cases()
    return cases, with_nodule_insertion(_sampler(cases), augment=BOTH_ON, preprocess=PREPROCESS)


def test_sampler_is_wrapped_with_a_bank_and_lungs(wrapped):
    _, sampler = wrapped
    assert isinstance(sampler, NoduleInsertionSampler)
    assert len(sampler.bank) == 3 and all(lung is not None for lung in sampler.lungs)
    assert sampler.image_shape == (16, 16, 16, 1) and sampler.n_lesions == 3  # delegated


def test_insertion_changes_patches_and_adds_mask(wrapped):
    _, sampler = wrapped
    grown = 0
    for i in range(30):
        image, mask = sampler.sample(i)
        base_image, base_mask = sampler.sampler.sample(i)
        assert image.shape == base_image.shape and image.dtype == np.float32 and mask.dtype == np.uint8
        assert np.all(mask >= base_mask)  # insertion only adds lesions
        grown += int(mask.sum() > base_mask.sum())
    assert grown >= 10


def test_sample_i_is_identical_across_runs_and_after_resume(wrapped):
    cases, first = wrapped
    second = with_nodule_insertion(_sampler(cases), augment=BOTH_ON, preprocess=PREPROCESS)
    indices = list(range(24))
    run = [first.sample(i) for i in indices]
    resumed = [second.sample(i) for i in indices[12:]]  # a run resumed at sample 12
    backwards = [second.sample(i) for i in reversed(indices)]
    for (img, msk), (img2, msk2) in zip(run[12:], resumed):
        assert np.array_equal(img, img2) and np.array_equal(msk, msk2)
    for (img, msk), (img2, msk2) in zip(run, reversed(backwards)):
        assert np.array_equal(img, img2) and np.array_equal(msk, msk2)


def test_another_seed_gives_other_samples():
    cases = _cases()
    a = with_nodule_insertion(_sampler(cases), augment=BOTH_ON, preprocess=PREPROCESS)
    b = with_nodule_insertion(PatchSampler(cases, patch_size=(16, 16, 16), foreground_fraction=0.5, seed=8),
                              augment=BOTH_ON, preprocess=PREPROCESS)
    assert any(not np.array_equal(a.sample(i)[0], b.sample(i)[0]) for i in range(8))


def test_disabled_returns_the_sampler_itself():
    sampler = _sampler(_cases())
    assert with_nodule_insertion(sampler, augment=AugmentSpec(), preprocess=PREPROCESS) is sampler
    master_off = AugmentSpec(enabled=False, lesion_paste=LesionPasteSpec(enabled=True))
    assert with_nodule_insertion(sampler, augment=master_off, preprocess=PREPROCESS) is sampler


def test_dataset_without_lesions_warns_naming_the_cases_and_goes_on(caplog):
    cases = [_chest("empty_1", seed=0, lesion=None), _chest("empty_2", seed=1, lesion=None)]
    sampler = PatchSampler(cases, patch_size=(16, 16, 16), foreground_fraction=0.0)
    paste_only = AugmentSpec(lesion_paste=LesionPasteSpec(enabled=True))
    with caplog.at_level(logging.WARNING, logger="segmentation.nodule_insertion"):
        out = with_nodule_insertion(sampler, augment=paste_only, preprocess=PREPROCESS)
    assert out is sampler
    assert "no lesion to paste" in caplog.text and "empty_1" in caplog.text and "empty_2" in caplog.text
    image, mask = out.sample(0)
    assert image.shape == (16, 16, 16, 1)


def test_scans_without_lungs_warn_naming_them_and_get_no_insertion(caplog):
    cases = [_chest("lungless", seed=0, lungs=False), _chest("b", seed=1, lesion=(27, 18, 9)),
             _chest("c", seed=2, lesion=(12, 22, 12))]
    with caplog.at_level(logging.WARNING, logger="segmentation.nodule_insertion"):
        sampler = with_nodule_insertion(_sampler(cases), augment=BOTH_ON, preprocess=PREPROCESS)
    assert "no lung region" in caplog.text and "lungless" in caplog.text
    assert isinstance(sampler, NoduleInsertionSampler) and sampler.lungs[0] is None
    for i in range(40):
        if sampler.locate(i).case_index == 0:
            image, mask = sampler.sample(i)
            base = sampler.sampler.sample(i)
            assert np.array_equal(image, base[0]) and np.array_equal(mask, base[1])


def test_no_scan_with_lungs_turns_insertion_off(caplog):
    cases = [_chest("x", seed=0, lungs=False), _chest("y", seed=1, lungs=False)]
    sampler = _sampler(cases)
    with caplog.at_level(logging.WARNING, logger="segmentation.nodule_insertion"):
        assert with_nodule_insertion(sampler, augment=BOTH_ON, preprocess=PREPROCESS) is sampler
    assert "'x'" in caplog.text and "'y'" in caplog.text and "training goes on without" in caplog.text


def test_2d_patches_warn_and_go_on(caplog):
    sampler = PatchSampler(_cases(), patch_size=(16, 16), seed=0)
    with caplog.at_level(logging.WARNING, logger="segmentation.nodule_insertion"):
        assert with_nodule_insertion(sampler, augment=BOTH_ON, preprocess=PREPROCESS) is sampler
    assert "3D patches" in caplog.text


def test_lung_regions_are_cached_and_read_back(tmp_path):
    cases = _cases()[:1]
    first = case_lung_regions(cases, threshold=0.428, cache_dir=tmp_path)
    assert (tmp_path / "a_lung_v1.npy").is_file() and isinstance(first[0], np.memmap)
    again = case_lung_regions(cases, threshold=0.428, cache_dir=tmp_path)
    assert np.array_equal(first[0], again[0]) and 0 < first[0].sum() < first[0].size
    image, region = cases[0].image, first[0] > 0
    parenchyma = (image > 0.05) & (image < 0.3)  # lung voxels, not the air around the body
    assert region[parenchyma].mean() > 0.95
    assert not region[image < 0.05].any()


def test_levels_go_through_the_normalisation_owner():
    window = intensity_levels(PREPROCESS, subsolid_below_hu=-300.0)
    assert window.subsolid == pytest.approx(0.5) and window.lung_air == pytest.approx(600 / 1400)
    assert window.units_per_hu == pytest.approx(1 / 1400) and window.value_range == (0.0, 1.0)
    stats = CTStats(mean_hu=-500.0, std_hu=250.0, lower_hu=-1000.0, upper_hu=400.0)
    zscore = intensity_levels(PreprocessSpec(normalisation="ct_zscore", ct_stats=stats), subsolid_below_hu=-300.0)
    assert zscore.subsolid == pytest.approx(0.8) and zscore.units_per_hu == pytest.approx(1 / 250)


@pytest.mark.slow
def test_training_smoke_with_paste_and_synthetic_nodules(tmp_path, caplog):
    from pipelines.train import prepare_data, train
    from segmentation.config import load_config
    from segmentation.phantom import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "ph", n_cases=4, seed=3, size=(64, 64, 40), spacing_mm=(2.0, 2.0, 2.5))
    config = load_config(None, overrides=[
        "model.filters=[4,8]", "model.norm=batch", "train.patch_size=[16,16,16]", "train.batch_size=2",
        "train.steps_per_epoch=3", "train.epochs=1", "train.num_parallel_calls=2", "inference.batch_size=2",
        "inference.overlap=0.0", "data.val_fraction=0.25", "preprocess.target_spacing_mm=[3.0,3.0,3.0]",
        "augment.lesion_paste.enabled=true", "augment.lesion_paste.probability=1.0",
        "augment.synthetic_nodules.enabled=true", "augment.synthetic_nodules.probability=1.0",
        "augment.synthetic_nodules.diameter_mm=[3.0,12.0]"])
    prepared = prepare_data(config, data_dir=data, run_dir=tmp_path / "prep", progress=False)
    assert isinstance(prepared.sampler, NoduleInsertionSampler)
    assert any(lung is not None for lung in prepared.sampler.lungs)
    assert list(prepared.cache_dir.glob("*_lung_v1.npy"))
    sampler = prepared.sampler
    assert any(sampler.sample(i)[1].sum() > sampler.sampler.sample(i)[1].sum() for i in range(20))
    summary = train(config, data_dir=data, out_dir=tmp_path / "run", progress=False)
    assert summary["status"] == "completed" and summary["epochs_completed"] == 1
