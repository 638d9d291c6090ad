"""Tests of segmentation/detectability.py and ``lungseg study detectability``.

Hand-built chests: air (-1000 HU), a soft-tissue body (40 HU), two box-shaped lungs of
-850 HU parenchyma with noise of 15 HU and a 40 HU vessel. The end-to-end test uses the
"truth model" of tests/test_infer.py (logits ``20 (x - 0.5)`` after the HU window
[-1000, 400]: foreground above -300 HU), so which painted nodules are found is known: solid
nodules of +800 HU over -850 HU parenchyma (-50 HU) are, those of +200 HU (-650 HU) are not.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from segmentation.detectability import (
    PROBE_COLUMNS,
    ProbeCell,
    assign_cells,
    paint_probe_nodules,
    probe_cells,
    score_probe,
    summarise_probe,
    wilson_interval,
)

REPO = Path(__file__).resolve().parents[1]
SPACING = (1.0, 1.0, 1.0)


def _chest(shape=(64, 48, 36), *, seed=0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image HU, lungs bool, vessel bool) of a hand-built chest, canonical order."""
    rng = np.random.default_rng(seed)
    image = np.full(shape, -1000.0, np.float32)
    image[4:-4, 4:-4, :] = 40.0
    lungs = np.zeros(shape, bool)
    lungs[8:30, 8:-8, 3:-3] = True
    lungs[34:-8, 8:-8, 3:-3] = True
    image[lungs] = -850.0 + rng.normal(0.0, 15.0, int(lungs.sum()))
    vessel = np.zeros(shape, bool)
    vessel[17:20, 8:-8, 16:19] = True
    image[vessel] = 40.0
    return image, lungs, vessel


def _paint(cells, *, seed=1, avoid=None, lungs=None, gap_mm=6.0, box_mm=24.0):
    image, chest_lungs, vessel = _chest()
    lungs = chest_lungs if lungs is None else lungs
    painted, labels, rows = paint_probe_nodules(image, lung=lungs, avoid=avoid, spacing_mm=SPACING,
                                                affine=np.eye(4), cells=cells, rng=np.random.default_rng(seed),
                                                case_id="c", box_mm=box_mm, gap_mm=gap_mm)
    return image, vessel, painted, labels, rows


# ------------------------------------------------------------------ cells and plan


def test_probe_cells_is_the_full_grid_in_order():
    cells = probe_cells(kinds=["solid", "ground_glass"], diameters_mm=[4, 6], contrasts_hu=[100, 300, 500])
    assert len(cells) == 12
    assert cells[0] == ProbeCell("solid", 4.0, 100.0)
    assert cells[-1] == ProbeCell("ground_glass", 6.0, 500.0)


@pytest.mark.parametrize("kwargs, match", [
    ({"kinds": ["solid", "cavitary"]}, r"Expected kinds to be distinct values of .*'cavitary'"),
    ({"kinds": []}, r"Received: kinds=\[\]"),
    ({"kinds": ["solid", "solid"]}, r"Expected kinds to be distinct"),
    ({"diameters_mm": [4, 0]}, r"diameters_mm"),
    ({"diameters_mm": [4, 4]}, r"Expected diameters_mm to be a non-empty list of distinct"),
    ({"contrasts_hu": [-100]}, r"contrasts_hu"),
    ({"contrasts_hu": []}, r"Expected contrasts_hu to be a non-empty list"),
])
def test_probe_cells_rejects_bad_values_naming_them(kwargs, match):
    args = {"kinds": ["solid"], "diameters_mm": [4], "contrasts_hu": [300], **kwargs}
    with pytest.raises(ValueError, match=match):
        probe_cells(**args)


def test_assign_cells_deals_every_nodule_once_and_evenly():
    cells = probe_cells(kinds=["solid", "ground_glass"], diameters_mm=[4, 6, 10], contrasts_hu=[200, 400])
    plan = assign_cells(cells, per_cell=3, n_scans=5, rng=np.random.default_rng(0))
    dealt = [cell for scan in plan for cell in scan]
    assert sorted(dealt, key=repr) == sorted([c for c in cells for _ in range(3)], key=repr)
    sizes = [len(scan) for scan in plan]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 36
    with pytest.raises(ValueError, match="per_cell"):
        assign_cells(cells, per_cell=0, n_scans=5, rng=np.random.default_rng(0))


# ------------------------------------------------------------------ painting


def test_painted_nodules_lie_in_parenchyma_apart_from_each_other_and_the_truth():
    avoid = np.zeros((64, 48, 36), np.uint8)
    avoid[40:44, 20:24, 16:20] = 1  # a lesion already in the scan
    cells = [ProbeCell(kind, 5.0, 300.0) for kind in ("solid", "ground_glass", "part_solid")] * 3
    image, vessel, painted, labels, rows = _paint(cells, avoid=avoid)
    assert all(r["painted"] for r in rows), rows
    assert labels.max() == 9
    _, lungs, _ = _chest()
    assert np.all(lungs[labels > 0])
    changed = painted != image
    assert not (changed & (vessel | ~lungs)).any(), "a painted voxel on a vessel, the wall or outside the lungs"
    assert not ndi.binary_dilation(changed).__and__(vessel).any(), "a painted voxel touching the vessel"
    # gap_mm=6 from the truth and between nodules (1 mm voxels)
    assert ndi.distance_transform_edt(avoid == 0)[labels > 0].min() > 6.0
    for nodule_id in range(1, 10):
        others = (labels > 0) & (labels != nodule_id)
        assert ndi.distance_transform_edt(~others)[labels == nodule_id].min() > 6.0
    for row in rows:
        assert row["n_voxels"] == int((labels == row["nodule_id"]).sum())
        assert row["mean_hu"] == pytest.approx(float(painted[labels == row["nodule_id"]].mean()), abs=1e-3)
        centre = np.argwhere(labels == row["nodule_id"]).mean(axis=0)  # identity affine: voxel = mm
        assert [row["x_mm"], row["y_mm"], row["z_mm"]] == pytest.approx(list(centre))


@pytest.mark.parametrize("kind, contrast_hu", [("solid", 400.0), ("ground_glass", 300.0)])
def test_painted_contrast_is_above_the_local_parenchyma(kind, contrast_hu):
    image, _, painted, labels, rows = _paint([ProbeCell(kind, 10.0, contrast_hu)])
    (row,) = rows
    assert row["parenchyma_hu"] == pytest.approx(-850.0, abs=5.0)
    core = ndi.binary_erosion(labels == 1, iterations=2)  # away from partial-volume edges
    assert core.sum() > 20
    assert float(np.median(painted[core])) == pytest.approx(-850.0 + contrast_hu, abs=20.0)
    assert row["diameter_mm"] == 10.0 and row["contrast_hu"] == contrast_hu and row["kind"] == kind


def test_painting_is_deterministic_per_seed():
    cells = [ProbeCell("solid", 6.0, 400.0), ProbeCell("ground_glass", 4.0, 200.0)]
    first, second, other = _paint(cells, seed=3), _paint(cells, seed=3), _paint(cells, seed=4)
    np.testing.assert_array_equal(first[2], second[2])
    np.testing.assert_array_equal(first[3], second[3])
    assert not np.array_equal(first[3], other[3])


def test_a_nodule_without_room_is_reported_not_painted():
    image, _, painted, labels, rows = _paint([ProbeCell("solid", 6.0, 400.0)], lungs=np.zeros((64, 48, 36), bool))
    assert rows == [{"case_id": "c", "nodule_id": 0, "kind": "solid", "diameter_mm": 6.0, "contrast_hu": 400.0,
                     "painted": False}]
    assert not labels.any()
    np.testing.assert_array_equal(painted, image)


def test_paint_rejects_mismatched_shapes_and_a_small_box():
    image, lungs, _ = _chest()
    with pytest.raises(ValueError, match=r"Expected image_hu, lung and avoid of one 3D shape.*lung.shape=\(64, 48\)"):
        paint_probe_nodules(image, lung=lungs[..., 0], avoid=None, spacing_mm=SPACING, affine=np.eye(4),
                            cells=[], rng=np.random.default_rng(0), case_id="c")
    with pytest.raises(ValueError, match=r"Expected box_mm above the largest diameter \(20.0 mm\).*box_mm=20"):
        paint_probe_nodules(image, lung=lungs, avoid=None, spacing_mm=SPACING, affine=np.eye(4),
                            cells=[ProbeCell("solid", 20.0, 400.0)], rng=np.random.default_rng(0),
                            case_id="c", box_mm=20.0)


# ------------------------------------------------------------------ scoring and summary


def test_score_probe_known_values():
    labels = np.zeros((10, 10, 10), np.int32)
    labels[1:3, 1:3, 1:3] = 1
    labels[6:8, 6:8, 6:8] = 2
    probs = np.zeros(labels.shape, np.float32)
    probs[2, 2, 2], probs[7, 7, 7] = 0.9, 0.3
    mask = probs >= 0.5
    rows = [{"nodule_id": 1, "painted": True}, {"nodule_id": 0, "painted": False}, {"nodule_id": 2, "painted": True}]
    scored = score_probe(rows, labels=labels, mask=mask, probs=probs)
    assert [r.get("detected") for r in scored] == [True, None, False]
    assert scored[0]["max_probability"] == pytest.approx(0.9)
    assert scored[2]["max_probability"] == pytest.approx(0.3)
    assert "detected" not in rows[0], "the input rows are not changed"
    with pytest.raises(ValueError, match=r"mask.shape=\(10, 10\)"):
        score_probe(rows, labels=labels, mask=mask[..., 0], probs=probs)


def test_score_probe_with_no_painted_nodule():
    empty = np.zeros((4, 4, 4))
    assert score_probe([{"nodule_id": 0, "painted": False}], labels=empty.astype(int), mask=empty, probs=empty) == [
        {"nodule_id": 0, "painted": False}]


def test_wilson_interval_known_values():
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    low, high = wilson_interval(5, 10)
    assert (low, high) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert wilson_interval(0, 4) == (0.0, pytest.approx(0.4899, abs=1e-4))


def test_summarise_probe_rates_and_lowest_contrast_seen():
    cells = probe_cells(kinds=["ground_glass"], diameters_mm=[4, 8], contrasts_hu=[100, 200, 300, 400])
    hits = {(4.0, 100.0): [0, 0], (4.0, 200.0): [1, 0], (4.0, 300.0): [0, 0], (4.0, 400.0): [1, 1],
            (8.0, 100.0): [0, 0], (8.0, 200.0): [1, 1], (8.0, 300.0): [1, 0], (8.0, 400.0): [1, 1]}
    rows = [{"kind": "ground_glass", "diameter_mm": d, "contrast_hu": c, "painted": True, "detected": bool(h)}
            for (d, c), found in hits.items() for h in found]
    rows.append({"kind": "ground_glass", "diameter_mm": 8.0, "contrast_hu": 100.0, "painted": False})
    summary = summarise_probe(rows, cells=cells)
    by_cell = {(c["diameter_mm"], c["contrast_hu"]): c for c in summary["cells"]}
    assert by_cell[(4.0, 200.0)]["detection_rate"] == 0.5
    assert by_cell[(8.0, 100.0)]["planned"] == 3 and by_cell[(8.0, 100.0)]["painted"] == 2
    assert by_cell[(4.0, 400.0)]["interval_95"][1] == 1.0
    # 4 mm: 0.5 at 200 HU but 0 at 300 HU, so only from 400 HU on; 8 mm: from 200 HU on
    assert summary["contrast_50_hu"] == {"ground_glass": {"4.0": 400.0, "8.0": 200.0}}
    assert summary["by_kind"]["ground_glass"] == {"painted": 16, "detected": 8, "detection_rate": 0.5}
    assert (summary["planned"], summary["painted"], summary["detected"]) == (17, 16, 8)


def test_summarise_probe_with_nothing_painted():
    cells = [ProbeCell("solid", 4.0, 300.0)]
    summary = summarise_probe([{"kind": "solid", "diameter_mm": 4.0, "contrast_hu": 300.0, "painted": False}],
                              cells=cells)
    assert summary["cells"][0]["detection_rate"] is None and summary["cells"][0]["interval_95"] is None
    assert summary["contrast_50_hu"] == {"solid": {"4.0": None}}
    assert summary["by_kind"]["solid"]["detection_rate"] is None


# ------------------------------------------------------------------ the command, in a fresh process


def _fresh_lungseg(*args) -> subprocess.CompletedProcess:
    code = ("import sys\nfrom pipelines.cli import main\nstatus = main(sys.argv[1:])\n"
            "print('tensorflow loaded:', 'tensorflow' in sys.modules)\nsys.exit(status)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300, cwd=REPO)


@pytest.fixture(scope="module")
def truth_run_and_scans(tmp_path_factory) -> tuple[Path, Path, Path]:
    import keras

    from segmentation.config import load_config, save_config

    root = tmp_path_factory.mktemp("probe")
    run = root / "run"
    run.mkdir()
    config = load_config(None, overrides=["model.filters=[4,8]", "train.patch_size=[16,16,16]",
                                          "inference.batch_size=2", "preprocess.target_spacing_mm=[1.0,1.0,1.0]"])
    save_config(config, run / "config.yaml")
    inputs = keras.Input((None, None, None, 1))
    conv = keras.layers.Conv3D(1, 1)
    model = keras.Model(inputs, conv(inputs))
    conv.set_weights([np.full((1, 1, 1, 1, 1), 20.0, np.float32), np.array([-10.0], np.float32)])
    model.save(run / "model.keras")
    scans, labels = root / "scans", root / "labels"
    scans.mkdir()
    labels.mkdir()
    # stored LPS (x and y flipped): the probe's labels go back to the stored order
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    for i in range(2):
        image, _, _ = _chest(seed=i)
        truth = np.zeros(image.shape, np.uint8)
        truth[40:44, 20:24, 16:20] = 1
        image[truth > 0] = 40.0
        nib.save(nib.Nifti1Image(image[::-1, ::-1].astype(np.int16), affine), scans / f"case{i}.nii.gz")
        nib.save(nib.Nifti1Image(truth[::-1, ::-1], affine), labels / f"case{i}.nii.gz")
    return run, scans, labels


def test_cli_probe_finds_the_bright_nodules_and_misses_the_faint(truth_run_and_scans, tmp_path):
    run, scans, labels = truth_run_and_scans
    out = tmp_path / "probe"
    result = _fresh_lungseg("study", "detectability", "--model", run, "--input", scans, "--labels", labels,
                            "--out", out, "--kinds", "solid", "--diameters-mm", "6", "--contrasts-hu", "200", "800",
                            "--per-cell", "3", "--save-scans", "--tta")
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    # the run's config has inference.tta off; --tta mirrors (a 1x1x1 model: the same answers)
    assert summary["options"]["tta"] is True
    cells = {c["contrast_hu"]: c for c in summary["cells"]}
    assert cells[800.0]["painted"] == 3 and cells[800.0]["detected"] == 3
    assert cells[200.0]["painted"] == 3 and cells[200.0]["detected"] == 0
    assert summary["contrast_50_hu"] == {"solid": {"6.0": 800.0}}
    assert summary["inputs"]["n_scans"] == 2
    lines = (out / "detectability.csv").read_text().splitlines()
    assert lines[0] == ",".join(PROBE_COLUMNS) and len(lines) == 7
    assert "| 6 | 0/3 | 3/3 | +800 HU |" in (out / "report.md").read_text()
    assert (out / "detectability.png").stat().st_size > 0
    # the saved labels are in the stored (LPS) grid of their scan and hold every painted nodule
    saved = nib.load(out / "scans" / "case0_probe_labels.nii.gz")
    np.testing.assert_array_equal(saved.affine, nib.load(scans / "case0.nii.gz").affine)
    n_case0 = sum(1 for line in lines[1:] if line.startswith("case0,") and ",true," in line)
    assert len(np.unique(np.asarray(saved.dataobj))) == n_case0 + 1


def test_cli_probe_refuses_bad_arguments_before_tensorflow(truth_run_and_scans, tmp_path):
    run, scans, _ = truth_run_and_scans
    result = _fresh_lungseg("study", "detectability", "--model", run, "--input", scans, "--out", tmp_path / "p",
                            "--kinds", "solid,cavitary")
    assert result.returncode == 2
    assert "Expected --kinds to be distinct values of ['solid', 'part_solid', 'ground_glass']" in result.stderr
    assert "tensorflow loaded: False" in result.stdout
    result = _fresh_lungseg("study", "detectability", "--model", run, "--input", scans, "--out", tmp_path / "p",
                            "--per-cell", "0")
    assert result.returncode == 2 and "--per-cell" in result.stderr
    assert not (tmp_path / "p").exists()


def test_probe_tta_must_be_a_boolean(truth_run_and_scans, tmp_path):
    from pipelines.detectability import probe_detectability

    run, scans, _ = truth_run_and_scans
    with pytest.raises(TypeError, match="Expected tta to be true or false. Received: tta='yes'"):
        probe_detectability(model_dir=run, input_path=scans, out_dir=tmp_path / "p", tta="yes")
    assert not (tmp_path / "p").exists()
