"""Tests for segmentation/phantom.py (small volumes only)."""

from __future__ import annotations

import gzip
import io
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from segmentation import phantom

SMALL = (64, 64, 64)
DEMO = dict(size=(96, 96, 48), spacing_mm=(2.0, 2.0, 3.0))
STRUCT26 = np.ones((3, 3, 3), bool)


@pytest.fixture(scope="module")
def twenty_cases():
    return [phantom.generate_case(seed=seed, size=SMALL) for seed in range(20)]


@pytest.fixture(scope="module")
def demo_cases():
    return [phantom.generate_case(seed=seed, **DEMO) for seed in range(6)]


def _canonical(array, affine):
    return np.asarray(nib.as_closest_canonical(nib.Nifti1Image(array, affine)).dataobj)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


# --------------------------------------------------------------------------- determinism


def test_generate_case_same_seed_same_arrays():
    first = phantom.generate_case(seed=3, size=SMALL)
    second = phantom.generate_case(seed=3, size=SMALL)
    np.testing.assert_array_equal(first.image_hu, second.image_hu)
    np.testing.assert_array_equal(first.mask, second.mask)
    np.testing.assert_array_equal(first.affine, second.affine)
    assert first.nodules == second.nodules


def test_generate_case_different_seed_differs():
    first = phantom.generate_case(seed=3, size=SMALL)
    other = phantom.generate_case(seed=4, size=SMALL)
    assert first.image_hu.shape == other.image_hu.shape
    assert not np.array_equal(first.image_hu, other.image_hu)


def test_write_dataset_same_seed_same_bytes(tmp_path):
    kwargs = dict(n_cases=2, size=(48, 48, 32), n_test=1)
    first = _tree_bytes(phantom.write_phantom_dataset(tmp_path / "a", seed=5, **kwargs))
    second = _tree_bytes(phantom.write_phantom_dataset(tmp_path / "b", seed=5, **kwargs))
    other = _tree_bytes(phantom.write_phantom_dataset(tmp_path / "c", seed=6, **kwargs))
    assert first == second
    assert first.keys() == other.keys()
    assert first["imagesTr/phantom_000.nii.gz"] != other["imagesTr/phantom_000.nii.gz"]


def test_same_seed_other_size_same_anatomy_draws():
    coarse = phantom.generate_case(seed=7, size=(64, 64, 64))
    finer = phantom.generate_case(seed=7, size=(80, 80, 64))
    assert coarse.axcodes == finer.axcodes
    # same in-plane field of view (spacing drawn per size) and the same nodules
    fov_coarse = np.array(coarse.spacing_mm[:2]) * 64
    fov_finer = np.array(finer.spacing_mm[:2]) * 80
    np.testing.assert_allclose(fov_coarse, fov_finer, rtol=1e-3)
    assert ([n["nominal_diameter_mm"] for n in coarse.nodules]
            == [n["nominal_diameter_mm"] for n in finer.nodules])
    assert [n["kind"] for n in coarse.nodules] == [n["kind"] for n in finer.nodules]


# --------------------------------------------------------------------------- files


def test_dataset_layout_readable_with_json_and_nibabel(tmp_path):
    root = phantom.write_phantom_dataset(tmp_path / "ds", n_cases=2, seed=1,
                                         size=(48, 48, 32), n_test=1)
    dataset = json.loads((root / "dataset.json").read_text())
    assert dataset["labels"] == {"0": "background", "1": "nodule"}
    assert dataset["modality"] == {"0": "CT"}
    assert dataset["numTraining"] == 2 and dataset["numTest"] == 1
    assert [e["image"] for e in dataset["training"]] == [
        "./imagesTr/phantom_000.nii.gz", "./imagesTr/phantom_001.nii.gz"]
    assert dataset["test"] == ["./imagesTs/phantom_test_000.nii.gz"]
    assert dataset["test_labels"] == [{"image": "./imagesTs/phantom_test_000.nii.gz",
                                       "label": "./labelsTs/phantom_test_000.nii.gz"}]
    for entry in dataset["training"] + dataset["test_labels"]:
        image = nib.load(root / entry["image"])
        label = nib.load(root / entry["label"])
        assert image.get_data_dtype() == np.int16
        assert label.get_data_dtype() == np.uint8
        raw = gzip.decompress((root / entry["image"]).read_bytes())
        header = nib.Nifti1Header.from_fileobj(io.BytesIO(raw))
        assert (float(header["scl_slope"]), float(header["scl_inter"])) == (1.0, 0.0)
        assert header["qform_code"] == 1 and header["sform_code"] == 1
        assert image.shape == label.shape
        np.testing.assert_allclose(image.affine, label.affine)
        assert set(np.unique(np.asarray(label.dataobj))) <= {0, 1}
    assert not [p for p in root.rglob(".*")], "temporary files left behind"


def test_nodules_json_matches_label_files(tmp_path):
    root = phantom.write_phantom_dataset(tmp_path / "ds", n_cases=3, seed=4, **DEMO)
    doc = json.loads((root / "nodules.json").read_text())
    assert set(doc["cases"]) == {"phantom_000", "phantom_001", "phantom_002"}
    for case_id, info in doc["cases"].items():
        label = nib.load(root / info["label"])
        mask = np.asarray(label.dataobj)
        records = [n for n in doc["nodules"] if n["case_id"] == case_id]
        labels, n_components = ndimage.label(mask, STRUCT26)
        assert n_components == len(records) == info["n_nodules"]
        spacing = np.sqrt((label.affine[:3, :3] ** 2).sum(axis=0))
        for index in range(1, n_components + 1):
            voxels = np.argwhere(labels == index)
            centre = (label.affine @ np.array([*voxels.mean(axis=0), 1.0]))[:3]
            match = min(records, key=lambda r: np.linalg.norm(np.array(r["centre_mm"]) - centre))
            np.testing.assert_allclose(match["centre_mm"], centre, atol=0.01)
            volume = len(voxels) * float(np.prod(spacing))
            assert match["n_voxels"] == len(voxels)
            assert match["diameter_mm"] == pytest.approx((6 * volume / math.pi) ** (1 / 3),
                                                         abs=1e-2)
        # a regenerated case from the recorded seed gives the same mask
        case = phantom.generate_case(seed=info["seed"], **DEMO)
        np.testing.assert_array_equal(case.mask, mask)


def test_progress_is_called_per_case(tmp_path):
    calls = []
    phantom.write_phantom_dataset(tmp_path / "ds", n_cases=2, seed=0, size=(48, 48, 32),
                                  n_test=1, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_overwrite_refused_for_non_empty_out_dir(tmp_path):
    out = tmp_path / "ds"
    phantom.write_phantom_dataset(out, n_cases=2, seed=0, size=(48, 48, 32))
    with pytest.raises(ValueError, match="out_dir"):
        phantom.write_phantom_dataset(out, n_cases=1, seed=0, size=(48, 48, 32))


def test_overwrite_replaces_phantom_files_only(tmp_path):
    out = tmp_path / "ds"
    phantom.write_phantom_dataset(out, n_cases=2, seed=0, size=(48, 48, 32))
    (out / "notes.txt").write_text("keep me")
    phantom.write_phantom_dataset(out, n_cases=1, seed=1, size=(48, 48, 32), overwrite=True)
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["phantom_000.nii.gz"]
    assert (out / "notes.txt").read_text() == "keep me"
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 1


def test_interrupted_dataset_is_clearly_incomplete(tmp_path):
    from segmentation.dataset import DatasetError, discover_cases

    out = tmp_path / "ds"

    def interrupt(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        phantom.write_phantom_dataset(out, n_cases=2, seed=0, size=(16, 16, 16), progress=interrupt)
    assert not (out / "dataset.json").exists()
    marker = json.loads((out / phantom.INCOMPLETE_FILE).read_text())
    assert marker["n_cases"] == 2 and "--overwrite" in marker["status"]
    with pytest.raises(DatasetError, match="interrupted"):
        discover_cases(out)
    with pytest.raises(ValueError, match="interrupted phantom dataset"):
        phantom.write_phantom_dataset(out, n_cases=2, seed=0, size=(16, 16, 16))
    phantom.write_phantom_dataset(out, n_cases=2, seed=0, size=(16, 16, 16), overwrite=True)
    assert not (out / phantom.INCOMPLETE_FILE).exists()
    assert len(discover_cases(out)) == 2


def test_disk_estimate_scales_with_cases_and_voxels(tmp_path):
    one = phantom.estimate_dataset_bytes(tmp_path / "new", n_cases=1, size=(100, 100, 100))
    assert one["bytes"] == int(1.4 * 10**6)
    assert phantom.estimate_dataset_bytes(tmp_path, n_cases=3, n_test=1, size=(100, 100, 100))["bytes"] \
        == int(4 * 1.4 * 10**6)
    assert one["checked"] == str(tmp_path) and one["free_bytes"] > 0


def test_dataset_larger_than_the_free_disk_is_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match="GB needed"):
        phantom.write_phantom_dataset(tmp_path / "ds", n_cases=10**6, seed=0, size=(1024, 1024, 1024))
    assert not (tmp_path / "ds").exists()


def test_out_dir_that_is_a_file_raises(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(ValueError, match="out_dir"):
        phantom.write_phantom_dataset(path, n_cases=1, seed=0, size=(48, 48, 32))


# --------------------------------------------------------------------------- anatomy


def test_tissue_hu_ranges(demo_cases):
    values = {code: [] for code in phantom.TISSUE_LABELS}
    for case in demo_cases:
        # compare inside each class, one voxel away from its border (partial volume)
        for code in values:
            core = ndimage.binary_erosion(case.tissue == code)
            values[code].append(case.image_hu[core])
    median = {phantom.TISSUE_LABELS[c]: float(np.median(np.concatenate(v)))
              for c, v in values.items() if sum(len(x) for x in v) > 0}
    assert -1010 <= median["air"] <= -990
    assert -130 <= median["fat"] <= -70
    assert 20 <= median["soft_tissue"] <= 70
    assert -900 <= median["lung"] <= -800
    assert 400 <= median["bone"] <= 1000
    assert -30 <= median["vessel"] <= 90
    assert median["airway_lumen"] <= -900
    assert -50 <= median["nodule_solid"] <= 110
    subsolid = np.concatenate([c.image_hu[c.tissue == phantom.NODULE_SUBSOLID]
                               for c in demo_cases])
    assert -750 <= np.median(subsolid) <= -250


def test_lung_texture_and_noise_present(demo_cases):
    case = demo_cases[0]
    lung = ndimage.binary_erosion(case.tissue == phantom.LUNG, iterations=2)
    assert 10 < case.image_hu[lung].std() < 80
    air = ndimage.binary_erosion(case.tissue == phantom.AIR, iterations=2)
    assert 2 < case.image_hu[air].std() < 40


def test_anatomy_is_upright_after_canonicalisation(twenty_cases):
    for case in twenty_cases[:6]:
        tissue = _canonical(case.tissue, case.affine)
        canonical = nib.as_closest_canonical(nib.Nifti1Image(case.tissue, case.affine))
        assert nib.aff2axcodes(canonical.affine) == ("R", "A", "S")
        # trachea (air lumen) reaches the top slice; abdomen fills the bottom interior
        assert (tissue[:, :, -1] == phantom.AIRWAY_LUMEN).any()
        assert not (tissue[:, :, 0] == phantom.AIRWAY_LUMEN).any()
        # spine is posterior: bone in the central columns sits in the low-j (posterior) half
        centre_i = tissue.shape[0] // 2
        bone_j = np.argwhere(tissue[centre_i - 2:centre_i + 3] == phantom.BONE)[:, 1]
        body_j = np.argwhere(tissue[centre_i] != phantom.AIR)[:, 0]
        assert np.median(bone_j) < np.median(body_j)
        # heart and aorta lie left of the body midline (low i in RAS), at lung levels
        lung_levels = (tissue == phantom.LUNG).any(axis=(0, 1))
        thorax = tissue[:, :, lung_levels]
        midline = np.argwhere(thorax != phantom.AIR)[:, 0].mean()
        soft_i = np.argwhere(thorax == phantom.SOFT_TISSUE)[:, 0]
        assert (soft_i < midline).sum() > (soft_i > midline).sum()


def test_lungs_vessels_airways_present_at_demo_size(demo_cases):
    for case in demo_cases:
        counts = np.bincount(case.tissue.ravel(), minlength=10)
        assert counts[phantom.LUNG] > 0.05 * case.tissue.size
        assert counts[phantom.VESSEL] > 200
        assert counts[phantom.AIRWAY_LUMEN] > 50
        assert counts[phantom.BONE] > 500
        lungs, n_lungs = ndimage.label(case.tissue == phantom.LUNG)
        sizes = np.sort(np.bincount(lungs.ravel())[1:])[::-1]
        assert n_lungs >= 2 and sizes[1] > 0.3 * sizes[0]          # two lungs
    assert sum(len(c.nodules) for c in demo_cases) > 0


# --------------------------------------------------------------------------- nodules


def test_nodule_counts_and_diameters_over_seeds(twenty_cases):
    counts = [len(case.nodules) for case in twenty_cases]
    assert all(0 <= n <= 5 for n in counts)
    assert 0 in counts
    assert len(set(counts)) >= 4
    nominal = np.array([n["nominal_diameter_mm"] for c in twenty_cases for n in c.nodules])
    diameter = np.array([n["diameter_mm"] for c in twenty_cases for n in c.nodules])
    assert len(nominal) >= 20
    assert nominal.min() >= 3.0 and nominal.max() <= 30.0
    assert np.mean(nominal <= 10.0) > 0.6                     # most nodules small
    assert np.mean(diameter <= 10.0) > 0.5
    assert diameter.max() > 15.0                               # and some large ones
    kinds = {n["kind"] for c in twenty_cases for n in c.nodules}
    assert "solid" in kinds and kinds & {"ground_glass", "part_solid"}


def test_mask_components_equal_nodule_records(twenty_cases):
    for case in twenty_cases:
        labels, n_components = ndimage.label(case.mask, STRUCT26)
        assert n_components == len(case.nodules)
        sizes = sorted(np.bincount(labels.ravel())[1:].tolist())
        assert sizes == sorted(n["n_voxels"] for n in case.nodules)
        assert set(np.unique(case.mask)) <= {0, 1} and case.mask.dtype == np.uint8


def test_nodules_have_minimum_voxels_at_coarse_spacing(twenty_cases):
    records = [n for c in twenty_cases for n in c.nodules]
    assert all(n["n_voxels"] >= phantom.MIN_NODULE_VOXELS for n in records)
    assert any(n["nominal_diameter_mm"] < 5.0 for n in records)   # tiny ones were kept


def test_nodules_inside_lung_and_contacts_reported(twenty_cases):
    lung_like = [phantom.LUNG, phantom.VESSEL, phantom.AIRWAY_LUMEN, phantom.AIRWAY_WALL]
    locations = set()
    for case in twenty_cases:
        labels, _ = ndimage.label(case.mask, STRUCT26)
        for index in range(1, labels.max() + 1):
            component = labels == index
            ring = ndimage.binary_dilation(component, STRUCT26) & ~component
            ring_tissue = case.tissue[ring]
            voxel = np.argwhere(component).mean(axis=0)
            record = min(case.nodules, key=lambda r: np.linalg.norm(
                np.array(r["centre_voxel"]) - voxel))
            locations.add(record["location"])
            touches_pleura = not np.isin(ring_tissue, lung_like).all()
            assert touches_pleura == record["touches_pleura"]
            if record["location"] == "juxtapleural":
                assert touches_pleura
            if record["location"] == "intraparenchymal":
                assert not touches_pleura
            if record["location"] == "juxtavascular":
                assert (ring_tissue == phantom.VESSEL).any()
    assert locations == set(phantom.NODULE_LOCATIONS)


def test_case_without_nodules_has_empty_mask():
    case = phantom.generate_case(seed=2, size=SMALL, n_nodules=0)
    assert case.nodules == []
    assert case.mask.sum() == 0 and case.mask.shape == case.image_hu.shape


def test_n_nodules_override_places_that_many():
    case = phantom.generate_case(seed=11, n_nodules=4, **DEMO)
    assert len(case.nodules) == 4
    assert [n["id"] for n in case.nodules] == [1, 2, 3, 4]


def test_grow_minimum_known_values():
    field = np.full((3, 3, 3), 5.0)
    field[1, 1, 1], field[1, 1, 2], field[1, 2, 2], field[0, 0, 0] = 0.0, 1.0, 2.0, 0.5
    allowed = np.ones(field.shape, bool)
    allowed[0, 0, 0] = False
    mask = phantom._grow_minimum(field, allowed, 3)
    assert sorted(map(tuple, np.argwhere(mask))) == [(1, 1, 1), (1, 1, 2), (1, 2, 2)]


# --------------------------------------------------------------------------- geometry


def test_affine_variety_and_consistency(twenty_cases):
    codes = {case.axcodes for case in twenty_cases}
    assert len(codes) >= 4
    assert ("R", "A", "S") in codes and any(c != ("R", "A", "S") for c in codes)
    for case in twenty_cases:
        assert nib.aff2axcodes(case.affine) == case.axcodes
        canonical = nib.as_closest_canonical(nib.Nifti1Image(case.image_hu, case.affine))
        spacing = np.sqrt((canonical.affine[:3, :3] ** 2).sum(axis=0))
        np.testing.assert_allclose(spacing, case.spacing_mm, rtol=1e-6)
        assert canonical.shape == SMALL
        assert case.spacing_mm[2] >= max(case.spacing_mm[:2])   # slice axis is the coarse one


def test_default_spacing_ranges():
    for seed in range(5):
        case = phantom.generate_case(seed=seed, size=(48, 48, 32), n_nodules=0)
        assert case.image_hu.dtype == np.int16
    draws = [phantom._draw_spacing(np.random.default_rng(s), phantom.DEFAULT_SIZE)
             for s in range(50)]
    inplane = np.array([d[0] for d in draws])
    slices = np.array([d[2] for d in draws])
    assert inplane.min() >= 0.6 and inplane.max() <= 0.9
    assert slices.min() >= 1.0 and slices.max() <= 2.5


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_cases=0), "n_cases"),
    (dict(n_cases=-3), "n_cases"),
    (dict(n_test=-1), "n_test"),
    (dict(seed=-1), "seed"),
    (dict(size=(8, 64, 64)), "size"),
    (dict(size=(64, 64)), "size"),
    (dict(size=(64, 64, 64.5)), "size"),
    (dict(size="64"), "size"),
    (dict(spacing_mm=(0.0, 1.0, 1.0)), "spacing_mm"),
    (dict(spacing_mm=(1.0, float("nan"), 1.0)), "spacing_mm"),
    (dict(spacing_mm=(1.0, 1.0)), "spacing_mm"),
    (dict(size=(64, 64, 64), spacing_mm=(0.5, 0.5, 0.5)), "field of view"),
])
def test_bad_arguments_raise_value_error(tmp_path, kwargs, match):
    args = dict(n_cases=1, seed=0, size=(48, 48, 32))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        phantom.write_phantom_dataset(tmp_path / "ds", **args)
    assert not (tmp_path / "ds").exists()


def test_non_int_cases_raise_type_error(tmp_path):
    with pytest.raises(TypeError, match="n_cases"):
        phantom.write_phantom_dataset(tmp_path / "ds", n_cases=2.5, seed=0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(seed=-2), "seed"),
    (dict(seed=0, n_nodules=11), "n_nodules"),
    (dict(seed=0, size=(0, 64, 64)), "size"),
    (dict(seed=0, spacing_mm=(1.0, -1.0, 1.0)), "spacing_mm"),
])
def test_generate_case_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        phantom.generate_case(**kwargs)


# ------------------------------------------------------------------ scanner settings

def test_default_scanner_is_the_standard_kernel_at_noise_scale_one():
    a = phantom.generate_case(seed=11, size=SMALL)
    b = phantom.generate_case(seed=11, size=SMALL, noise_scale=1.0, kernel="standard")
    np.testing.assert_array_equal(a.image_hu, b.image_hu)


def test_noise_scale_multiplies_the_noise():
    base = phantom.generate_case(seed=12, size=SMALL, noise_scale=0.0).image_hu.astype(np.float64)
    one = phantom.generate_case(seed=12, size=SMALL, noise_scale=1.0).image_hu.astype(np.float64)
    two = phantom.generate_case(seed=12, size=SMALL, noise_scale=2.0).image_hu.astype(np.float64)
    inside = (base > -950) & (base < 300)  # no clipping at the HU limits
    ratio = np.std((two - base)[inside]) / np.std((one - base)[inside])
    assert ratio == pytest.approx(2.0, rel=0.05)  # rounding to integer HU aside


def test_sharp_kernel_has_crisper_edges_than_smooth():
    def edge_strength(kernel: str) -> float:
        image = phantom.generate_case(seed=13, size=SMALL, noise_scale=0.0, kernel=kernel).image_hu
        return float(np.mean(np.abs(np.diff(image.astype(np.float64), axis=0))))

    assert edge_strength("sharp") > edge_strength("standard") > edge_strength("smooth")


@pytest.mark.parametrize("kwargs, match", [
    ({"noise_scale": -1.0}, "noise_scale in \\[0, 4\\]"),
    ({"noise_scale": 5.0}, "noise_scale in \\[0, 4\\]"),
    ({"kernel": "bone"}, "kernel in"),
])
def test_bad_scanner_settings_are_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        phantom.generate_case(seed=1, size=SMALL, **kwargs)
