"""End-to-end test of `lungseg demo` on a tiny phantom (phantom -> train -> predict -> evaluate)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from pipelines.demo import DEMO_SETTINGS, DemoSettings, run_demo

pytestmark = pytest.mark.slow  # the tests here train tiny models

TINY = DemoSettings(
    config="quick.yaml",
    n_cases=4,
    n_test=2,
    size=(48, 48, 32),
    spacing_mm=(3.0, 3.0, 4.0),
    seed=7,
    overrides=("train.epochs=1", "train.steps_per_epoch=2", "train.batch_size=2", "train.val_every=1",
               "model.filters=[4,8,16]", "train.patch_size=[16,16,16]", "data.val_fraction=0.25",
               "preprocess.target_spacing_mm=null"),
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out_dir=out, settings=TINY, progress=False)


def test_demo_writes_every_output(demo):
    out, result = demo
    assert (out / "run" / "model.keras").is_file()
    assert (out / "run" / "config.yaml").is_file()
    assert any((out / "run" / "logs").rglob("events.out.tfevents*"))
    for name in ("summary.json", "report.md", "froc.png", "recall_by_size.png", "cases.csv", "lesions.csv"):
        assert (out / "evaluation" / name).is_file(), name
    masks = sorted((out / "heldout_pred").glob("*_mask.nii.gz"))
    assert len(masks) == TINY.n_test
    assert (out / "new_scan_pred" / "new_scan_mask.nii.gz").is_file()
    assert (out / "new_scan_pred" / "new_scan_nodules.csv").is_file()
    summary = json.loads((out / "evaluation" / "summary.json").read_text())
    assert summary["n_cases"] == TINY.n_test
    assert result["summary"]["n_cases"] == TINY.n_test


def test_demo_masks_lie_on_their_scans(demo):
    out, _ = demo
    for mask_path in sorted((out / "heldout_pred").glob("*_mask.nii.gz")):
        case = mask_path.name[: -len("_mask.nii.gz")]
        image = nib.load(out / "data" / "imagesTs" / f"{case}.nii.gz")
        mask = nib.load(mask_path)
        assert mask.shape == image.shape
        np.testing.assert_array_equal(mask.affine, image.affine)
        assert mask.get_data_dtype() == np.uint8


def test_demo_table_names_metrics_and_paths(demo):
    out, result = demo
    text = result["text"]
    for label in ("Dice", "IoU", "Lesion recall", "Small-lesion recall", "False positives per scan",
                  "TensorBoard", "report.md"):
        assert label in text, label
    assert str(out / "heldout_pred") in text
    by_kind = result["summary"]["recall_by_attribute"]["kind"]  # the phantom's nodules.json joined
    assert sum(entry["count"] for entry in by_kind.values()) == result["summary"]["n_lesions"]
    for kind in by_kind:
        assert f"Recall of {kind.replace('_', '-')} nodules" in text
    assert set(result["seconds"]) == {"phantom", "train", "predict_heldout", "evaluate", "predict_new_scan"}


def test_demo_refuses_an_earlier_demo_without_overwrite(demo):
    out, _ = demo
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_demo(out_dir=out, settings=TINY, progress=False)


def test_shipped_flavours_use_existing_configs():
    from pipelines.demo import CONFIG_DIR
    from segmentation.config import load_config

    for settings in DEMO_SETTINGS.values():
        config = load_config(CONFIG_DIR / settings.config, overrides=settings.overrides)
        assert config.model.spatial_dims == 3
