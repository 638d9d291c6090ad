"""Tests of pipelines/infer.py (``lungseg predict``).

Analytic predictors make the expected outputs known:

* ``x -> x + 1`` (and ``x -> 0.5 x + 0.25``): the stitched output equals the (preprocessed)
  input transformed the same way, everywhere, whatever the window and overlap;
* a "truth model": a 1x1x1 convolution with logits ``20 (x - 0.5)``, saved as a real
  ``model.keras``. Nodules are 400 HU (1.0 after the HU window) and everything else is at
  most -700 HU, so its thresholded output is exactly the nodule mask.

Tiny everything: 8^3-16^3 windows, U-Net filters (4, 8), scans of at most 48x48x32 voxels.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import nibabel as nib
import numpy as np
import pytest

from pipelines.infer import (
    NODULE_COLUMNS,
    InferenceError,
    find_inputs,
    load_run,
    nodule_table,
    predict,
    predict_volume,
    size_category,
    slice_axis,
)
from pipelines.predictor import predict_probabilities
from segmentation.config import load_config, save_config
from segmentation.io import VolumeError, read_volume
from segmentation.metrics import dice
from segmentation.preprocessing import hu_window
from segmentation.plausibility import ScanLimits

BASE = [
    "model.filters=[4,8]",
    "model.norm=instance",
    "train.patch_size=[8,8,8]",
    "inference.batch_size=2",
]

# Source grid "SLP": axis 0 runs superior (2.5 mm), axis 1 runs left (-x, 0.7 mm), axis 2
# runs posterior (-y, 0.9 mm): anisotropic, permuted and flipped relative to RAS.
SLP_AFFINE = np.array([
    [0.0, -0.7, 0.0, 30.0],
    [0.0, 0.0, -0.9, 40.0],
    [2.5, 0.0, 0.0, -50.0],
    [0.0, 0.0, 0.0, 1.0],
])


def _config(*extra: str):
    return load_config(None, overrides=[*BASE, *extra])


def _truth_model() -> keras.Model:
    """Logits ``20 * (x - 0.5)``: probability > 0.99 at x = 1, < 0.01 at x <= 0.3."""
    inputs = keras.Input((None, None, None, 1))
    conv = keras.layers.Conv3D(1, 1)
    outputs = conv(inputs)
    conv.set_weights([np.full((1, 1, 1, 1, 1), 20.0, np.float32), np.array([-10.0], np.float32)])
    return keras.Model(inputs, outputs)


def _save_run(run: Path, config, model: keras.Model) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    save_config(config, run / "config.yaml")
    model.save(run / "model.keras")
    return run


def _world_grid(shape, affine) -> np.ndarray:
    """(3, *shape) world coordinates of every voxel centre."""
    index = np.indices(shape).reshape(3, -1).astype(np.float64)
    world = affine[:3, :3] @ index + affine[:3, 3:4]
    return world.reshape(3, *shape)


def _phantom(shape, affine, balls_mm) -> tuple[np.ndarray, np.ndarray]:
    """HU image (-1000 air, -700 body, 400 nodules) and the uint8 nodule mask, source order."""
    world = _world_grid(shape, affine)
    centre = world.reshape(3, -1).mean(axis=1)
    extent = np.abs(world.reshape(3, -1) - centre[:, None]).max(axis=1)
    body = (((world - centre[:, None, None, None]) / (0.8 * extent[:, None, None, None] + 1e-6)) ** 2).sum(0) <= 1
    image = np.where(body, -700.0, -1000.0).astype(np.float32)
    mask = np.zeros(shape, np.uint8)
    for centre_mm, radius_mm in balls_mm:
        distance = np.sqrt(((world - np.asarray(centre_mm)[:, None, None, None]) ** 2).sum(0))
        mask[distance <= radius_mm] = 1
    image[mask > 0] = 400.0
    return image, mask


def _write_nifti(path: Path, array: np.ndarray, affine: np.ndarray, dtype=np.int16) -> Path:
    image = nib.Nifti1Image(array.astype(dtype), affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    nib.save(image, path)
    return path


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name)


# --------------------------------------------------------------------------- analytic sliding window


@pytest.mark.parametrize(
    "shape, window, overlap, tta",
    [
        ((20, 17, 9), (8, 8, 8), 0.5, False),
        ((13, 13, 13), (4, 6, 8), 0.25, False),
        ((16, 16, 16), (16, 16, 16), 0.0, False),
        ((31, 7, 12), (8, 8, 4), 0.75, True),
        ((9, 10, 11), (10, 12, 16), 0.5, False),  # image smaller than the window
        ((5, 3, 2), (8, 8, 8), 0.5, True),        # smaller along every axis
    ],
)
def test_sliding_window_with_x_plus_one_predictor_gives_input_plus_one(shape, window, overlap, tta):
    config = _config(f"train.patch_size=[{','.join(map(str, window))}]", f"inference.overlap={overlap}",
                     "inference.skip_empty_windows=false", "inference.batch_size=3")
    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    out = predict_probabilities(None, image, config=config, tta=tta,
                                predict_fn=lambda batch: batch[..., :1] + 1.0)
    assert out.shape == shape and out.dtype == np.float32
    np.testing.assert_allclose(out, image + 1.0, rtol=0, atol=1e-5)


def test_predict_volume_with_linear_predictor_is_exact_in_source_order(tmp_path):
    shape = (10, 24, 20)
    image, _ = _phantom(shape, SLP_AFFINE, [])
    image += np.random.default_rng(1).uniform(0, 900, size=shape).astype(np.float32)
    path = _write_nifti(tmp_path / "scan.nii.gz", image, SLP_AFFINE)
    stored_hu = np.asanyarray(nib.load(path).dataobj).astype(np.float32)
    volume = read_volume(path)
    config = _config("inference.overlap=0.5", "inference.skip_empty_windows=false")
    probs, mask = predict_volume(None, config, volume,
                                 predict_fn=lambda batch: 0.5 * batch[..., :1] + 0.25)
    expected = 0.5 * hu_window(stored_hu, window=(-1000.0, 400.0)) + 0.25
    assert probs.shape == shape and probs.dtype == np.float32
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(mask, (expected >= 0.5).astype(np.uint8))
    assert mask.dtype == np.uint8


# --------------------------------------------------------------------------- geometry


@pytest.fixture(scope="module")
def truth_run(tmp_path_factory) -> Path:
    return _save_run(tmp_path_factory.mktemp("truth_run"), _config("inference.overlap=0.5"), _truth_model())


def _slp_case(folder: Path, name: str = "slp") -> tuple[Path, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    shape = (10, 24, 20)
    world = _world_grid(shape, SLP_AFFINE).reshape(3, -1)
    centre = world.mean(axis=1)
    balls = [(centre + [2.0, -1.0, 0.0], 4.0), (centre + [-6.0, 5.0, 5.0], 2.6)]
    image, mask = _phantom(shape, SLP_AFFINE, balls)
    return _write_nifti(folder / f"{name}.nii.gz", image, SLP_AFFINE), mask


def test_mask_has_the_inputs_shape_and_affine_and_equals_the_truth(truth_run, tmp_path):
    scan, truth = _slp_case(tmp_path / "in")
    result = predict(model_dir=truth_run, input_path=scan, out_dir=tmp_path / "out", progress=False)

    assert result["failed"] == 0 and result["cases"][0]["status"] == "ok"
    written = nib.load(tmp_path / "out" / "slp_mask.nii.gz")
    source = nib.load(scan)
    assert written.shape == source.shape == truth.shape
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-6)
    assert int(written.header["sform_code"]) == int(source.header["sform_code"]) == 1
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), truth)
    assert truth.sum() > 100


def test_resampled_network_grid_gives_the_inputs_shape_and_affine(tmp_path):
    config = _config("preprocess.target_spacing_mm=[1.2,1.2,1.2]")
    run = _save_run(tmp_path / "run", config, _truth_model())
    scan, truth = _slp_case(tmp_path / "in")
    predict(model_dir=run, input_path=scan, out_dir=tmp_path / "out", write_probs=True, progress=False)
    for name in ("slp_mask.nii.gz", "slp_probs.nii.gz"):
        written = nib.load(tmp_path / "out" / name)
        assert written.shape == truth.shape, name
        np.testing.assert_allclose(written.affine, SLP_AFFINE, atol=1e-6)
    mask = np.asanyarray(nib.load(tmp_path / "out" / "slp_mask.nii.gz").dataobj)
    assert dice(truth > 0, mask > 0) > 0.8


def test_nodule_table_of_the_truth_lists_both_nodules_largest_first(truth_run, tmp_path):
    scan, truth = _slp_case(tmp_path / "in")
    predict(model_dir=truth_run, input_path=scan, out_dir=tmp_path / "out", progress=False)
    rows = _read_csv(tmp_path / "out" / "slp_nodules.csv")
    record = json.loads((tmp_path / "out" / "slp_nodules.json").read_text())

    assert list(rows[0].keys()) == list(NODULE_COLUMNS)
    assert [int(r["id"]) for r in rows] == [1, 2] and record["n_nodules"] == 2
    assert record["slice_axis"] == 0  # 2.5 mm is the largest spacing
    voxel_mm3 = 2.5 * 0.7 * 0.9
    volumes = [float(r["volume_mm3"]) for r in rows]
    assert volumes[0] > volumes[1]
    assert sum(volumes) == pytest.approx(truth.sum() * voxel_mm3, rel=1e-4)
    for row, nodule in zip(rows, record["nodules"]):
        vox = np.array([float(row[f"centroid_vox_{a}"]) for a in "ijk"])
        world = np.array([float(row[f"centroid_{a}_mm"]) for a in "xyz"])
        np.testing.assert_allclose(SLP_AFFINE[:3, :3] @ vox + SLP_AFFINE[:3, 3], world, atol=1e-2)
        assert float(row["diameter_mm"]) == pytest.approx(
            (6 * float(row["volume_mm3"]) / math.pi) ** (1 / 3), rel=1e-3)
        assert 0.99 < float(row["mean_prob"]) <= float(row["max_prob"]) <= 1.0
        assert int(row["slice_start"]) <= round(vox[0]) <= int(row["slice_end"])
        assert row["size_category"] == size_category(float(row["diameter_mm"]))
        assert nodule["id"] == int(row["id"])


# --------------------------------------------------------------------------- nodule table (known values)


def test_nodule_table_known_values():
    mask = np.zeros((6, 6, 6), np.uint8)
    probs = np.zeros((6, 6, 6), np.float32)
    mask[1:3, 1:3, 1:3] = 1
    probs[1:3, 1:3, 1:3] = 0.9
    probs[1, 1, 1] = 0.6
    mask[5, 5, 5] = 1
    probs[5, 5, 5] = 0.7
    affine = np.array([[2.0, 0, 0, 10.0], [0, 1.0, 0, 20.0], [0, 0, 3.0, 30.0], [0, 0, 0, 1]])
    rows = nodule_table(mask, probs, affine=affine)
    assert len(rows) == 2
    cube, dot = rows
    assert cube["id"] == 1 and dot["id"] == 2
    assert cube["volume_mm3"] == pytest.approx(48.0)
    assert cube["diameter_mm"] == pytest.approx((6 * 48.0 / math.pi) ** (1 / 3), abs=1e-4)
    assert (cube["centroid_vox_i"], cube["centroid_vox_j"], cube["centroid_vox_k"]) == (1.5, 1.5, 1.5)
    assert (cube["centroid_x_mm"], cube["centroid_y_mm"], cube["centroid_z_mm"]) == (13.0, 21.5, 34.5)
    assert cube["mean_prob"] == pytest.approx((7 * 0.9 + 0.6) / 8, abs=1e-4)
    assert cube["max_prob"] == pytest.approx(0.9, abs=1e-4)
    assert (cube["slice_start"], cube["slice_end"]) == (1, 2)  # axis 2 has the 3 mm spacing
    assert cube["size_category"] == "<6mm"
    assert dot["volume_mm3"] == pytest.approx(6.0)
    assert (dot["centroid_x_mm"], dot["centroid_y_mm"], dot["centroid_z_mm"]) == (20.0, 25.0, 45.0)
    assert (dot["slice_start"], dot["slice_end"]) == (5, 5)
    assert dot["mean_prob"] == dot["max_prob"] == pytest.approx(0.7, abs=1e-4)


def test_nodule_table_empty_mask_has_no_rows():
    assert nodule_table(np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 4), np.float32),
                        affine=np.eye(4)) == []


def test_nodule_table_connectivity_6_splits_diagonal_voxels():
    mask = np.zeros((3, 3, 3), np.uint8)
    mask[0, 0, 0] = mask[1, 1, 1] = 1
    probs = mask.astype(np.float32)
    assert len(nodule_table(mask, probs, affine=np.eye(4), connectivity=26)) == 1
    assert len(nodule_table(mask, probs, affine=np.eye(4), connectivity=6)) == 2


def test_nodule_table_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="probs.shape"):
        nodule_table(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)), affine=np.eye(4))


@pytest.mark.parametrize(
    "diameter_mm, expected",
    [(0.0, "<6mm"), (5.99, "<6mm"), (6.0, "6-8mm"), (7.99, "6-8mm"), (8.0, "8-15mm"),
     (14.99, "8-15mm"), (15.0, ">=15mm"), (40.0, ">=15mm")],
)
def test_size_category_bands(diameter_mm, expected):
    assert size_category(diameter_mm) == expected


def test_size_category_rejects_negative_diameter():
    with pytest.raises(ValueError, match="diameter_mm"):
        size_category(-1.0)


@pytest.mark.parametrize(
    "affine, expected",
    [
        (np.diag([1.0, 1.0, 3.0, 1.0]), 2),
        (np.diag([3.0, 1.0, 1.0, 1.0]), 0),
        (SLP_AFFINE, 0),
        (np.array([[1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]]), 1),  # isotropic: z axis
    ],
)
def test_slice_axis_is_the_largest_spacing_ties_to_the_z_direction(affine, expected):
    assert slice_axis(affine) == expected


# --------------------------------------------------------------------------- a tiny real U-Net


@pytest.fixture(scope="module")
def unet_run(tmp_path_factory) -> Path:
    from models import build_unet

    config = _config("train.patch_size=[16,16,16]", "model.norm=batch", "inference.overlap=0.5")
    keras.utils.set_random_seed(0)
    model = build_unet(3, filters=(4, 8), norm="batch", input_shape=(None, None, None, 1))
    return _save_run(tmp_path_factory.mktemp("unet_run"), config, model)


def _random_scan(path: Path, shape=(32, 32, 32), *, seed=0, affine=None) -> Path:
    rng = np.random.default_rng(seed)
    image = rng.integers(-1000, 400, size=shape)
    return _write_nifti(path, image, np.diag([0.8, 0.8, 1.5, 1.0]) if affine is None else affine)


def test_unet_run_predicts_a_nifti_file_with_every_output(unet_run, tmp_path):
    scan = _random_scan(tmp_path / "case_0000.nii.gz")
    result = predict(model_dir=unet_run, input_path=scan, out_dir=tmp_path / "out", write_probs=True,
                     progress=False)
    out = tmp_path / "out"
    assert result["failed"] == 0
    case = result["cases"][0]
    assert case["case_id"] == "case" and case["status"] == "ok" and case["error"] is None
    assert set(case["outputs"]) == {"mask", "probs", "csv", "json"}
    mask = nib.load(out / "case_mask.nii.gz")
    probs = nib.load(out / "case_probs.nii.gz")
    assert mask.shape == probs.shape == (32, 32, 32)
    assert mask.get_data_dtype() == np.uint8 and probs.get_data_dtype() == np.float32
    values = np.asanyarray(probs.dataobj)
    assert values.min() >= 0.0 and values.max() <= 1.0
    np.testing.assert_array_equal(np.asanyarray(mask.dataobj), (values >= 0.5).astype(np.uint8))
    record = json.loads((out / "case_nodules.json").read_text())
    assert record["n_nodules"] == len(_read_csv(out / "case_nodules.csv")) == case["n_nodules"]
    assert record["threshold"] == 0.5 and record["tta"] is False
    assert _leftovers(out) == []
    assert any(line.startswith("ok case:") for line in result["lines"])


def test_predict_window_is_used_and_recorded(unet_run, tmp_path):
    scan = _random_scan(tmp_path / "case_0000.nii.gz")
    default = predict(model_dir=unet_run, input_path=scan, out_dir=tmp_path / "a", write_probs=True,
                      progress=False)
    wide = predict(model_dir=unet_run, input_path=scan, out_dir=tmp_path / "b", write_probs=True,
                   window=[32, 32, 32], progress=False)
    assert default["failed"] == wide["failed"] == 0
    record_a = json.loads((tmp_path / "a" / "case_nodules.json").read_text())
    record_b = json.loads((tmp_path / "b" / "case_nodules.json").read_text())
    assert record_a["window"] == [16, 16, 16] and record_b["window"] == [32, 32, 32]
    probs_a = np.asanyarray(nib.load(tmp_path / "a" / "case_probs.nii.gz").dataobj)
    probs_b = np.asanyarray(nib.load(tmp_path / "b" / "case_probs.nii.gz").dataobj)
    # same model, other windows: borders and blending differ, so the maps do too
    assert probs_a.shape == probs_b.shape and not np.array_equal(probs_a, probs_b)


@pytest.mark.parametrize("window, match", [
    ([17, 16, 16], r"multiple of 2\*\*depth = 2.*\[17, 16, 16\]"),
    ([16, 16], r"inference.window to have 3 values"),
    ("16", r"Expected window to be a list of integers"),
    ([16.0, 16, 16], r"Expected window to be a list of integers"),
])
def test_predict_rejects_a_bad_window_naming_it(unet_run, tmp_path, window, match):
    scan = _random_scan(tmp_path / "case_0000.nii.gz")
    with pytest.raises(InferenceError, match=match):
        predict(model_dir=unet_run, input_path=scan, out_dir=tmp_path / "out", window=window,
                progress=False)
    assert not (tmp_path / "out").exists()


def test_folder_with_a_corrupt_file_reports_it_and_goes_on_then_skips(unet_run, tmp_path):
    from pipelines.cli import main

    folder = tmp_path / "in"
    folder.mkdir()
    _random_scan(folder / "good.nii.gz", shape=(20, 20, 16))
    good_bytes = (folder / "good.nii.gz").read_bytes()
    (folder / "bad.nii.gz").write_bytes(good_bytes[: len(good_bytes) // 2])  # truncated gzip
    (folder / "notes.txt").write_text("ignored")
    out = tmp_path / "out"

    result = predict(model_dir=unet_run, input_path=folder, out_dir=out, progress=False)
    assert result["failed"] == 1
    status = {c["case_id"]: c["status"] for c in result["cases"]}
    assert status == {"bad": "failed", "good": "ok"}
    bad = next(c for c in result["cases"] if c["case_id"] == "bad")
    assert "bad.nii.gz" in bad["error"]
    assert any(line.startswith("FAILED bad") and "bad.nii.gz" in line for line in result["lines"])
    assert sorted(p.name for p in out.iterdir()) == [
        "good_mask.nii.gz", "good_nodules.csv", "good_nodules.json"]

    mtime = (out / "good_mask.nii.gz").stat().st_mtime_ns
    again = predict(model_dir=unet_run, input_path=folder, out_dir=out, progress=False)
    assert {c["case_id"]: c["status"] for c in again["cases"]} == {"bad": "failed", "good": "skipped"}
    first_good = next(c for c in result["cases"] if c["case_id"] == "good")
    skipped = next(c for c in again["cases"] if c["case_id"] == "good")
    assert skipped["n_nodules"] == first_good["n_nodules"] is not None
    assert (out / "good_mask.nii.gz").stat().st_mtime_ns == mtime

    # The CLI's exit status says that a scan failed.
    assert main(["predict", "--model", str(unet_run), "--input", str(folder), "--out", str(out)]) == 1
    (folder / "bad.nii.gz").unlink()
    assert main(["predict", "--model", str(unet_run), "--input", str(folder), "--out", str(out),
                 "--overwrite"]) == 0
    assert (out / "good_mask.nii.gz").stat().st_mtime_ns != mtime


def test_cli_predict_window(unet_run, tmp_path, capsys):
    from pipelines.cli import main

    scan = _random_scan(tmp_path / "case_0000.nii.gz")
    out = tmp_path / "out"
    assert main(["predict", "--model", str(unet_run), "--input", str(scan), "--out", str(out),
                 "--window", "17", "16", "16"]) == 2
    assert "inference.window" in capsys.readouterr().err and not out.exists()
    assert main(["predict", "--model", str(unet_run), "--input", str(scan), "--out", str(out),
                 "--window", "24", "24", "32"]) == 0
    assert json.loads((out / "case_nodules.json").read_text())["window"] == [24, 24, 32]


def test_scan_with_nan_voxels_is_an_error_naming_the_file_and_writes_nothing(unet_run, tmp_path):
    image = np.full((16, 16, 16), -500.0, np.float32)
    image[3, 4, 5] = np.nan
    scan = _write_nifti(tmp_path / "nan_scan.nii.gz", image, np.eye(4), dtype=np.float32)
    out = tmp_path / "out"
    with pytest.raises(VolumeError, match=r"nan_scan\.nii\.gz.*non-finite"):
        predict(model_dir=unet_run, input_path=scan, out_dir=out, progress=False)
    assert not out.exists() or list(out.iterdir()) == []


def test_scan_smaller_than_the_window_is_padded_and_works(unet_run, tmp_path):
    scan = _random_scan(tmp_path / "tiny.nii.gz", shape=(10, 12, 7))
    result = predict(model_dir=unet_run, input_path=scan, out_dir=tmp_path / "out", progress=False)
    assert result["failed"] == 0
    assert nib.load(tmp_path / "out" / "tiny_mask.nii.gz").shape == (10, 12, 7)


def test_failure_while_writing_leaves_nothing_partial(truth_run, tmp_path, monkeypatch):
    import pipelines.infer as infer

    scan, _ = _slp_case(tmp_path / "in")
    calls = []

    def failing_write_volume(path, array, **kwargs):
        calls.append(Path(path).name)
        raise OSError(f"disk full while writing {path}")

    monkeypatch.setattr(infer, "write_volume", failing_write_volume)
    with pytest.raises(OSError, match="disk full"):
        predict(model_dir=truth_run, input_path=scan, out_dir=tmp_path / "out", progress=False)
    assert calls == ["slp_mask.nii.gz"]  # csv and json were written first ...
    assert list((tmp_path / "out").iterdir()) == []  # ... and removed again


def test_scan_without_nodules_writes_an_empty_mask_and_an_empty_table(truth_run, tmp_path):
    shape = (12, 12, 12)
    image, _ = _phantom(shape, np.eye(4), [])
    scan = _write_nifti(tmp_path / "clear.nii.gz", image, np.eye(4))
    result = predict(model_dir=truth_run, input_path=scan, out_dir=tmp_path / "out", progress=False)
    assert result["cases"][0]["n_nodules"] == 0
    assert np.asanyarray(nib.load(tmp_path / "out" / "clear_mask.nii.gz").dataobj).sum() == 0
    text = (tmp_path / "out" / "clear_nodules.csv").read_text()
    assert text == ",".join(NODULE_COLUMNS) + "\n"
    assert json.loads((tmp_path / "out" / "clear_nodules.json").read_text())["nodules"] == []


def test_min_size_removes_small_nodules_and_threshold_overrides_the_config(truth_run, tmp_path):
    scan, truth = _slp_case(tmp_path / "in")
    voxel_mm3 = 2.5 * 0.7 * 0.9
    out = tmp_path / "out"
    predict(model_dir=truth_run, input_path=scan, out_dir=out, progress=False)
    volumes = sorted(float(r["volume_mm3"]) for r in _read_csv(out / "slp_nodules.csv"))
    cut = (volumes[0] + volumes[1]) / 2
    predict(model_dir=truth_run, input_path=scan, out_dir=out, min_size_mm3=cut, threshold=0.4,
            overwrite=True, progress=False)
    rows = _read_csv(out / "slp_nodules.csv")
    assert [float(r["volume_mm3"]) for r in rows] == [volumes[1]]
    record = json.loads((out / "slp_nodules.json").read_text())
    assert record["min_size_mm3"] == cut and record["threshold"] == 0.4
    assert np.asanyarray(nib.load(out / "slp_mask.nii.gz").dataobj).sum() * voxel_mm3 == \
        pytest.approx(volumes[1])


# --------------------------------------------------------------------------- DICOM input


def _write_dicom_series(folder: Path, hu: np.ndarray, *, pixel_spacing=(0.8, 0.7), slice_mm=2.0) -> None:
    """Axial slices: hu[i, j, k] is column i, row j of slice k (stored = HU + 1024)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    series, study = generate_uid(), generate_uid()
    for k in np.random.default_rng(0).permutation(hu.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID = "CT", study, series
        ds.ImagePositionPatient = [-5.0, 7.0, float(k) * slice_mm]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = list(pixel_spacing)
        ds.SliceThickness = slice_mm
        ds.RescaleSlope, ds.RescaleIntercept = 1.0, -1024.0
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.ascontiguousarray((hu[:, :, k].T + 1024).astype(np.int16)).tobytes()
        ds.save_as(folder / f"slice_{k:03d}.dcm", enforce_file_format=True)


def test_dicom_folder_gives_a_mask_on_the_dicom_grid(truth_run, tmp_path):
    from segmentation.dicom import read_dicom_series

    shape = (14, 12, 9)  # columns, rows, slices
    affine_guess = np.diag([0.7, 0.8, 2.0, 1.0])
    hu, truth = _phantom(shape, affine_guess, [(np.array([5.0, 4.0, 8.0]), 2.5)])
    _write_dicom_series(tmp_path / "patient_7", hu)
    cases = find_inputs(tmp_path / "patient_7")
    assert [(c.case_id, c.kind) for c in cases] == [("patient_7", "dicom")]

    predict(model_dir=truth_run, input_path=tmp_path / "patient_7", out_dir=tmp_path / "out",
            progress=False)
    written = nib.load(tmp_path / "out" / "patient_7_mask.nii.gz")
    reference = read_dicom_series(tmp_path / "patient_7")
    assert written.shape == shape
    np.testing.assert_allclose(written.affine, reference.source_affine, atol=1e-5)
    # LPS (-5, 7, 0) of the first voxel is RAS (5, -7, 0).
    np.testing.assert_allclose(written.affine[:3, 3], [5.0, -7.0, 0.0], atol=1e-5)
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), truth)


def test_dicom_folder_with_two_series_is_an_error_listing_them(truth_run, tmp_path):
    hu = np.full((8, 8, 3), -800.0)
    _write_dicom_series(tmp_path / "a", hu)
    _write_dicom_series(tmp_path / "b", hu)
    for path in (tmp_path / "b").iterdir():
        path.rename(tmp_path / "a" / f"b_{path.name}")
    with pytest.raises(VolumeError, match="2 series"):
        predict(model_dir=truth_run, input_path=tmp_path / "a", out_dir=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- bad run folders and inputs


def test_load_run_without_config_names_the_folder_and_the_file(truth_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes((truth_run / "model.keras").read_bytes())
    with pytest.raises(InferenceError, match=f"config.yaml.*'{run}'"):
        load_run(run)


def test_load_run_without_model_names_the_folder_and_the_file(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    save_config(_config(), run / "config.yaml")
    with pytest.raises(InferenceError, match=f"model.keras.*'{run}'"):
        load_run(run)


def test_load_run_of_a_missing_folder_is_an_error(tmp_path):
    with pytest.raises(InferenceError, match="not found"):
        load_run(tmp_path / "nowhere")


def test_load_run_with_a_corrupt_model_names_the_file(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    save_config(_config(), run / "config.yaml")
    (run / "model.keras").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(InferenceError, match=r"safe mode.*model\.keras"):
        load_run(run)


def test_load_run_with_a_model_that_does_not_match_the_config_is_an_error(tmp_path):
    config = _config("model.spatial_dims=2", "train.patch_size=[8,8]")
    run = _save_run(tmp_path / "run", config, _truth_model())
    with pytest.raises(InferenceError, match="2D inputs"):
        load_run(run)


def test_load_run_returns_the_model_and_its_config(truth_run):
    model, config = load_run(truth_run)
    assert config.train.patch_size == (8, 8, 8)
    out = model(np.ones((1, 2, 2, 2, 1), np.float32))
    np.testing.assert_allclose(np.asarray(out), 10.0, atol=1e-5)


def test_folder_without_scans_is_an_error(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(InferenceError, match="neither"):
        find_inputs(tmp_path)


def test_input_that_is_not_nifti_is_an_error(tmp_path):
    path = tmp_path / "scan.nrrd"
    path.write_text("x")
    with pytest.raises(InferenceError, match=r"scan\.nrrd"):
        find_inputs(path)


def test_two_files_with_the_same_case_id_are_an_error(tmp_path):
    for name in ("lung_1.nii", "lung_1_0000.nii.gz"):
        _random_scan(tmp_path / name, shape=(4, 4, 4))
    with pytest.raises(InferenceError, match="case id 'lung_1'"):
        find_inputs(tmp_path)


def test_missing_input_is_an_error(truth_run, tmp_path):
    with pytest.raises(InferenceError, match="not found"):
        predict(model_dir=truth_run, input_path=tmp_path / "nope.nii.gz", out_dir=tmp_path / "o",
                progress=False)


def test_output_folder_equal_to_the_input_folder_is_an_error(truth_run, tmp_path):
    _random_scan(tmp_path / "a.nii.gz", shape=(4, 4, 4))
    with pytest.raises(InferenceError, match="other than the input folder"):
        predict(model_dir=truth_run, input_path=tmp_path, out_dir=tmp_path, progress=False)


@pytest.mark.parametrize("kwargs, match", [({"threshold": 1.0}, "threshold"),
                                           ({"threshold": 0.0}, "threshold"),
                                           ({"min_size_mm3": -1.0}, "min_size_mm3")])
def test_bad_options_are_errors(truth_run, tmp_path, kwargs, match):
    scan = _random_scan(tmp_path / "s.nii.gz", shape=(4, 4, 4))
    with pytest.raises(InferenceError, match=match):
        predict(model_dir=truth_run, input_path=scan, out_dir=tmp_path / "o", progress=False, **kwargs)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"threshold": 1.5}, InferenceError, r"Expected threshold in \(0, 1\)\. Received: threshold=1.5"),
    ({"min_size_mm3": -2.0}, InferenceError, r"Expected min_size_mm3 >= 0\. Received: min_size_mm3=-2.0"),
    ({"threshold": True}, TypeError, "threshold to be a number"),
])
def test_predict_volume_checks_the_options_it_is_given_before_the_scan(kwargs, error, match):
    config = load_config(None, overrides=BASE)
    with pytest.raises(error, match=match):
        predict_volume(None, config, None, **kwargs)


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_end_to_end_phantom_train_predict_evaluate(tmp_path):
    from pipelines.evaluate import evaluate
    from pipelines.train import train
    from segmentation.phantom import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "ph", n_cases=3, seed=3, size=(48, 48, 32),
                                 spacing_mm=(2.5, 2.5, 3.0), n_test=1)
    config = load_config(None, overrides=[
        "model.filters=[4,8]", "model.norm=instance", "train.patch_size=[16,16,16]",
        "train.batch_size=2", "train.steps_per_epoch=2", "train.epochs=1",
        "train.num_parallel_calls=2", "train.tensorboard_images=false",
        "preprocess.target_spacing_mm=[3.5,3.5,3.5]", "data.val_fraction=0.34",
        "inference.batch_size=2", "inference.overlap=0.25",
    ])
    run = tmp_path / "run"
    train(config, data_dir=data, out_dir=run, progress=False)

    result = predict(model_dir=run, input_path=data / "imagesTs", out_dir=tmp_path / "pred",
                     write_probs=True, progress=False)
    assert result["failed"] == 0 and [c["status"] for c in result["cases"]] == ["ok"]
    case_id = result["cases"][0]["case_id"]
    truth = nib.load(data / "labelsTs" / f"{case_id}.nii.gz")
    mask = nib.load(tmp_path / "pred" / f"{case_id}_mask.nii.gz")
    assert mask.shape == truth.shape
    np.testing.assert_allclose(mask.affine, truth.affine, atol=1e-4)

    # evaluate's probs_dir must hold probability maps only (it refuses the masks beside them).
    probs_dir = tmp_path / "probs"
    probs_dir.mkdir()
    (tmp_path / "pred" / f"{case_id}_probs.nii.gz").rename(probs_dir / f"{case_id}_probs.nii.gz")
    summary = evaluate(pred_dir=tmp_path / "pred", truth_dir=data / "labelsTs",
                       probs_dir=probs_dir, out_dir=tmp_path / "report")
    assert summary["missing_predictions"] == [] and summary["resampled_cases"] == []
    assert (tmp_path / "report" / "summary.json").is_file()


def test_metaimage_scan_gives_a_mask_on_its_grid_and_luna16_candidates_in_lps(truth_run, tmp_path):
    import SimpleITK as sitk
    shape = (16, 14, 9)
    origin_lps = np.array([-20.0, 15.0, -100.0])
    spacing = np.array([0.8, 0.7, 2.0])
    affine_ras = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine_ras[:3, 3] = origin_lps * [-1, -1, 1]
    centre_vox = np.array([7.0, 6.0, 4.0])
    centre_ras = affine_ras[:3, :3] @ centre_vox + affine_ras[:3, 3]
    hu, truth = _phantom(shape, affine_ras, [(centre_ras, 2.45)])  # no voxel on the sphere
    image = sitk.GetImageFromArray(hu.astype(np.int16).transpose(2, 1, 0))
    image.SetOrigin(origin_lps.tolist())
    image.SetSpacing(spacing.tolist())
    scan_dir = tmp_path / "subset0"
    scan_dir.mkdir()
    sitk.WriteImage(image, str(scan_dir / "1.3.6.99.mhd"))

    result = predict(model_dir=truth_run, input_path=scan_dir, out_dir=tmp_path / "out",
                     progress=False, luna16_csv=tmp_path / "candidates.csv")
    assert result["failed"] == 0
    written = nib.load(tmp_path / "out" / "1.3.6.99_mask.nii.gz")
    np.testing.assert_allclose(written.affine, affine_ras, atol=1e-5)
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), truth)
    rows = _read_csv(tmp_path / "candidates.csv")
    assert len(rows) == 1 and rows[0]["seriesuid"] == "1.3.6.99"
    centre_lps = origin_lps + spacing * centre_vox
    found = np.array([float(rows[0][k]) for k in ("coordX", "coordY", "coordZ")])
    np.testing.assert_allclose(found, centre_lps, atol=1e-3)
    assert 0.99 < float(rows[0]["probability"]) <= 1.0
    assert "LUNA16 candidates: 1 row(s) of 1 scan(s)" in result["lines"][-2]
# --------------------------------------------------------------------------- issue 19


def test_4d_singleton_input_gets_a_4d_singleton_mask(truth_run, tmp_path):
    shape = (10, 24, 20)
    image, truth = _phantom(shape, SLP_AFFINE, [(_world_grid(shape, SLP_AFFINE).reshape(3, -1).mean(1), 4.0)])
    scan = _write_nifti(tmp_path / "four_d.nii.gz", image[..., None], SLP_AFFINE)
    assert nib.load(scan).shape == (*shape, 1)
    predict(model_dir=truth_run, input_path=scan, out_dir=tmp_path / "out", write_probs=True, progress=False)
    for name in ("four_d_mask.nii.gz", "four_d_probs.nii.gz"):
        written = nib.load(tmp_path / "out" / name)
        assert written.shape == (*shape, 1), name
        np.testing.assert_allclose(written.affine, SLP_AFFINE, atol=1e-5)
    np.testing.assert_array_equal(np.asanyarray(nib.load(tmp_path / "out" / "four_d_mask.nii.gz").dataobj)[..., 0],
                                  truth)


def test_tta_false_turns_off_the_runs_tta(tmp_path):
    run = _save_run(tmp_path / "run", _config("inference.tta=true"), _truth_model())
    scan = _random_scan(tmp_path / "a.nii.gz", (16, 16, 16))
    predict(model_dir=run, input_path=scan, out_dir=tmp_path / "default", progress=False)
    predict(model_dir=run, input_path=scan, out_dir=tmp_path / "off", tta=False, progress=False)
    assert json.loads((tmp_path / "default" / "a_nodules.json").read_text())["tta"] is True
    assert json.loads((tmp_path / "off" / "a_nodules.json").read_text())["tta"] is False


def test_scan_that_is_not_hu_is_refused_and_allowed_with_the_override(truth_run, tmp_path):
    scan = _write_nifti(tmp_path / "u8.nii.gz", np.random.default_rng(0).integers(0, 256, (16, 16, 16)),
                        np.eye(4), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"Hounsfield.*u8\.nii\.gz.*8-bit"):
        predict(model_dir=truth_run, input_path=scan, out_dir=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    result = predict(model_dir=truth_run, input_path=scan, out_dir=tmp_path / "out", progress=False,
                     limits=ScanLimits(allow_non_hu=True))
    assert result["failed"] == 0 and (tmp_path / "out" / "u8_mask.nii.gz").exists()


def test_edited_run_config_is_refused_before_the_model(truth_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes((truth_run / "model.keras").read_bytes())
    original = (truth_run / "config.yaml").read_text()
    text = original.replace("overlap: 0.5", "overlap: 0.25")
    assert text != original
    (run / "config.yaml").write_text(text)
    with pytest.raises(InferenceError, match="edited or cut"):
        predict(model_dir=run, input_path=_random_scan(tmp_path / "a.nii.gz"), out_dir=tmp_path / "out",
                progress=False)
    assert not (tmp_path / "out").exists()


def test_window_rule_matches_the_predictor():
    from pipelines.infer import _window_of
    from pipelines.predictor import inference_window

    for config in (_config(), _config("inference.window=[32,32,32]")):
        assert _window_of(config) == inference_window(config)


def test_the_record_names_the_grow_threshold_in_effect(tmp_path):
    run = _save_run(tmp_path / "run", _config("inference.grow_threshold=0.25"), _truth_model())
    scan = _random_scan(tmp_path / "a.nii.gz", (16, 16, 16))
    result = predict(model_dir=run, input_path=scan, out_dir=tmp_path / "default", progress=False)
    assert json.loads((tmp_path / "default" / "a_nodules.json").read_text())["grow_threshold"] == 0.25
    assert "threshold 0.5 (grown to 0.25)" in result["lines"][-1]
    # a --threshold below the grow threshold thresholds plainly: nothing is grown
    result = predict(model_dir=run, input_path=scan, out_dir=tmp_path / "low", threshold=0.2, progress=False)
    assert json.loads((tmp_path / "low" / "a_nodules.json").read_text())["grow_threshold"] is None
    assert "grown" not in result["lines"][-1]


# --------------------------------------------------------------------------- precision at predict time


def test_float32_config_replaces_mixed_policies_only():
    from pipelines.infer_inputs import _float32_config

    def policy(name):
        return {"module": "keras", "class_name": "DTypePolicy", "config": {"name": name}}

    config = {"layers": [{"class_name": "Conv3D", "config": {"dtype": policy("mixed_bfloat16")}},
                         {"class_name": "Conv3D", "config": {"dtype": policy("float32")}},
                         {"class_name": "Add", "config": {"dtype": policy("mixed_float16"),
                                                          "name": "mixed_add"}}],
              "name": "mixed_net"}
    converted = _float32_config(config)
    assert [layer["config"]["dtype"]["config"]["name"] for layer in converted["layers"]] == [
        "float32", "float32", "float32"]
    assert converted["name"] == "mixed_net" and converted["layers"][2]["config"]["name"] == "mixed_add"
    assert config["layers"][0]["config"]["dtype"]["config"]["name"] == "mixed_bfloat16"  # a copy


def _mixed_unet(policy: str) -> keras.Model:
    from models.unet import build_unet

    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        return build_unet(3, filters=(4, 8), head_bias=-1.0)
    finally:
        keras.mixed_precision.set_global_policy(previous)


@pytest.mark.parametrize("policy, flags, expected", [
    ("mixed_bfloat16", {"avx2", "fma"}, "float32"),                  # bf16 fails in oneDNN at AVX2
    ("mixed_bfloat16", {"avx2", "avx512f", "avx512_bf16"}, "mixed_bfloat16"),  # native: kept
    ("mixed_float16", {"avx2", "avx512f", "avx512_bf16"}, "float32"),  # float16 on a CPU: slow
])
def test_a_model_runs_in_its_policy_only_where_the_machine_has_it(monkeypatch, policy, flags,
                                                                  expected):
    from pipelines import infer_inputs

    monkeypatch.setattr(infer_inputs, "cpu_flags", lambda: frozenset(flags))
    model = _mixed_unet(policy)
    loaded = infer_inputs.native_precision(model)
    assert infer_inputs.model_policy(loaded) == expected
    assert (loaded is model) == (expected == policy)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(0).random((1, 16, 16, 16, 1)).astype(np.float32)
    if expected == "float32":
        assert loaded(x).dtype == "float32"
        np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=0.1)


def test_a_float32_model_is_returned_as_it_is():
    from pipelines import infer_inputs

    model = _mixed_unet("float32")
    assert infer_inputs.model_policy(model) == "float32"
    assert infer_inputs.native_precision(model) is model
