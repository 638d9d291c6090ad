"""Tests for segmentation.dataset: layouts, path escapes, splits."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segmentation.dataset import Case, DatasetError, discover_cases, kfold_split, split_cases


def _nifti(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4)), path)
    return path


def _json(path: Path, data) -> None:
    path.write_text(json.dumps(data))


def _msd(root: Path, ids=("lung_001", "lung_003", "lung_002"), test_ids=("lung_010",)) -> Path:
    for case in ids:
        _nifti(root / "imagesTr" / f"{case}.nii.gz")
        _nifti(root / "labelsTr" / f"{case}.nii.gz")
    for case in test_ids:
        _nifti(root / "imagesTs" / f"{case}.nii.gz")
    _json(root / "dataset.json", {
        "name": "Lung", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "cancer"},
        "numTraining": len(ids), "numTest": len(test_ids),
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
                     for c in ids],
        "test": [f"./imagesTs/{c}.nii.gz" for c in test_ids],
    })
    return root


def _nnunet(root: Path, ids=("a", "b"), *, channels=1, num_training=None, ending=".nii.gz") -> Path:
    for case in ids:
        for ch in range(channels):
            _nifti(root / "imagesTr" / f"{case}_{ch:04d}{ending}")
        _nifti(root / "labelsTr" / f"{case}{ending}")
    _json(root / "dataset.json", {
        "channel_names": {str(ch): "CT" for ch in range(channels)},
        "labels": {"background": 0, "nodule": 1},
        "numTraining": len(ids) if num_training is None else num_training,
        "file_ending": ending,
    })
    return root


def _cases(n: int) -> list[Case]:
    return [Case(f"case_{i:03d}", Path(f"/d/case_{i:03d}.nii.gz"), None) for i in range(n)]


# ---------------------------------------------------------------------------------------------
# MSD
# ---------------------------------------------------------------------------------------------


def test_msd_training_cases_sorted_and_resolved(tmp_path):
    root = _msd(tmp_path / "Task06_Lung")
    cases = discover_cases(root)
    assert [c.case_id for c in cases] == ["lung_001", "lung_002", "lung_003"]
    real = Path(os.path.realpath(root))
    assert cases[0].image == real / "imagesTr" / "lung_001.nii.gz"
    assert cases[0].label == real / "labelsTr" / "lung_001.nii.gz"


def test_msd_ignores_macos_fork_files(tmp_path):
    root = _msd(tmp_path)
    (root / "imagesTr" / "._lung_001.nii.gz").write_bytes(b"\x00")
    assert len(discover_cases(root)) == 3


def test_msd_test_split_pairs_labels_ts_when_present(tmp_path):
    root = _msd(tmp_path, test_ids=("lung_010", "lung_011"))
    _nifti(root / "imagesTs" / "lung_011.nii.gz")
    data = json.loads((root / "dataset.json").read_text())
    data["test"] = ["./imagesTs/lung_010.nii.gz", "./imagesTs/lung_011.nii.gz"]
    _json(root / "dataset.json", data)
    _nifti(root / "labelsTs" / "lung_011.nii.gz")
    cases = discover_cases(root, split="test")
    assert [(c.case_id, c.label is not None) for c in cases] == [("lung_010", False), ("lung_011", True)]


def test_msd_missing_file_listed(tmp_path):
    root = _msd(tmp_path)
    (root / "labelsTr" / "lung_002.nii.gz").unlink()
    with pytest.raises(DatasetError, match=r"dataset\.json.*exist.*1 missing.*training\[2\]\.label.*lung_002"):
        discover_cases(root)


def test_msd_num_training_mismatch(tmp_path):
    root = _msd(tmp_path)
    data = json.loads((root / "dataset.json").read_text())
    data["numTraining"] = 5
    _json(root / "dataset.json", data)
    with pytest.raises(DatasetError, match=r"numTraining.*\(3\).*numTraining=5"):
        discover_cases(root)


def test_msd_malformed_entry(tmp_path):
    root = _msd(tmp_path)
    data = json.loads((root / "dataset.json").read_text())
    data["training"][1] = {"image": "./imagesTr/lung_003.nii.gz"}
    _json(root / "dataset.json", data)
    with pytest.raises(DatasetError, match=r"training\[1\].*'image' and 'label'"):
        discover_cases(root)


def test_msd_duplicate_case_ids(tmp_path):
    root = _msd(tmp_path)
    data = json.loads((root / "dataset.json").read_text())
    data["training"].append(dict(data["training"][0]))
    data["numTraining"] = 4
    _json(root / "dataset.json", data)
    with pytest.raises(DatasetError, match=r"unique case ids.*lung_001"):
        discover_cases(root)


def test_corrupt_dataset_json(tmp_path):
    root = _msd(tmp_path)
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"readable JSON.*dataset\.json.*JSONDecodeError"):
        discover_cases(root)


def test_unknown_dataset_json(tmp_path):
    _json(tmp_path / "dataset.json", {"name": "x"})
    with pytest.raises(DatasetError, match=r"MSD.*nnU-Net.*keys=\['name'\]"):
        discover_cases(tmp_path)


# ---------------------------------------------------------------------------------------------
# Path escapes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry",
    ["../outside/lung_001.nii.gz", "./imagesTr/../../outside/lung_001.nii.gz"],
)
def test_msd_dotdot_entry_rejected(tmp_path, entry):
    root = _msd(tmp_path / "ds")
    _nifti(tmp_path / "outside" / "lung_001.nii.gz")
    data = json.loads((root / "dataset.json").read_text())
    data["training"][0]["image"] = entry
    _json(root / "dataset.json", data)
    with pytest.raises(DatasetError, match=r"inside the dataset root.*training\[0\]\.image="):
        discover_cases(root)


def test_msd_absolute_entry_rejected(tmp_path):
    root = _msd(tmp_path / "ds")
    data = json.loads((root / "dataset.json").read_text())
    data["training"][0]["label"] = str(root / "labelsTr" / "lung_001.nii.gz")
    _json(root / "dataset.json", data)
    with pytest.raises(DatasetError, match=r"relative to the dataset root.*training\[0\]\.label=.*absolute"):
        discover_cases(root)


def test_msd_symlink_out_rejected(tmp_path):
    root = _msd(tmp_path / "ds")
    outside = _nifti(tmp_path / "secret" / "x.nii.gz")
    (root / "imagesTr" / "lung_001.nii.gz").unlink()
    (root / "imagesTr" / "lung_001.nii.gz").symlink_to(outside)
    with pytest.raises(DatasetError, match=r"inside the dataset root.*lung_001.*resolves to.*secret"):
        discover_cases(root)


def test_plain_symlink_out_rejected(tmp_path):
    root = tmp_path / "plain"
    _nifti(root / "images" / "a.nii.gz")
    _nifti(root / "labels" / "a.nii.gz")
    outside = _nifti(tmp_path / "elsewhere" / "b.nii.gz")
    (root / "images" / "b.nii.gz").symlink_to(outside)
    with pytest.raises(DatasetError, match=r"images/b\.nii\.gz.*inside the dataset root"):
        discover_cases(root)


def test_symlink_inside_root_accepted(tmp_path):
    root = _msd(tmp_path / "ds")
    target = _nifti(root / "store" / "img1.nii.gz")
    (root / "imagesTr" / "lung_001.nii.gz").unlink()
    (root / "imagesTr" / "lung_001.nii.gz").symlink_to(target)
    cases = discover_cases(root)
    assert cases[0].image == Path(os.path.realpath(root)) / "imagesTr" / "lung_001.nii.gz"
    assert cases[0].image.resolve() == target.resolve()
    assert cases[0].case_id == "lung_001"


# ---------------------------------------------------------------------------------------------
# nnU-Net v2
# ---------------------------------------------------------------------------------------------


def test_nnunet_cases(tmp_path):
    cases = discover_cases(_nnunet(tmp_path, ids=("lung_2", "lung_1")))
    assert [c.case_id for c in cases] == ["lung_1", "lung_2"]
    assert cases[0].image.name == "lung_1_0000.nii.gz"
    assert cases[0].label.name == "lung_1.nii.gz"


def test_nnunet_nii_file_ending(tmp_path):
    cases = discover_cases(_nnunet(tmp_path, ids=("x",), ending=".nii"))
    assert cases[0].image.name == "x_0000.nii" and cases[0].label.name == "x.nii"


def test_nnunet_multichannel_rejected(tmp_path):
    with pytest.raises(DatasetError, match=r"one input channel.*channel_names="):
        discover_cases(_nnunet(tmp_path, channels=2))


def test_nnunet_stray_second_channel_file_rejected(tmp_path):
    root = _nnunet(tmp_path)
    _nifti(root / "imagesTr" / "a_0001.nii.gz")
    with pytest.raises(DatasetError, match=r"single-channel.*a_0001\.nii\.gz"):
        discover_cases(root)


def test_nnunet_num_training_mismatch(tmp_path):
    with pytest.raises(DatasetError, match=r"numTraining.*\(2\).*numTraining=3"):
        discover_cases(_nnunet(tmp_path, num_training=3))


def test_nnunet_missing_label(tmp_path):
    root = _nnunet(tmp_path)
    (root / "labelsTr" / "b.nii.gz").unlink()
    with pytest.raises(DatasetError, match=r"images without label \['b'\]"):
        discover_cases(root)


def test_nnunet_test_split(tmp_path):
    root = _nnunet(tmp_path)
    _nifti(root / "imagesTs" / "t1_0000.nii.gz")
    _nifti(root / "imagesTs" / "t2_0000.nii.gz")
    _nifti(root / "labelsTs" / "t2.nii.gz")
    cases = discover_cases(root, split="test")
    assert [(c.case_id, c.label is not None) for c in cases] == [("t1", False), ("t2", True)]


# ---------------------------------------------------------------------------------------------
# Plain folders
# ---------------------------------------------------------------------------------------------


def test_plain_images_labels(tmp_path):
    for name in ("b", "a"):
        _nifti(tmp_path / "images" / f"{name}.nii.gz")
        _nifti(tmp_path / "labels" / f"{name}.nii.gz")
    (tmp_path / "images" / "notes.txt").write_text("ignored")
    cases = discover_cases(tmp_path)
    assert [c.case_id for c in cases] == ["a", "b"]


def test_plain_pairs_channel_suffix_with_plain_label(tmp_path):
    _nifti(tmp_path / "imagesTr" / "c1_0000.nii.gz")
    _nifti(tmp_path / "labelsTr" / "c1.nii.gz")
    cases = discover_cases(tmp_path)
    assert cases == [Case("c1", cases[0].image, cases[0].label)]
    assert cases[0].label.name == "c1.nii.gz"


def test_plain_unpaired_listed(tmp_path):
    _nifti(tmp_path / "images" / "a.nii.gz")
    _nifti(tmp_path / "images" / "b.nii.gz")
    _nifti(tmp_path / "labels" / "a.nii.gz")
    _nifti(tmp_path / "labels" / "z.nii.gz")
    with pytest.raises(DatasetError, match=r"images without label \['b'\], labels without image \['z'\]"):
        discover_cases(tmp_path)


def test_plain_test_split_labels_optional(tmp_path):
    _nifti(tmp_path / "imagesTs" / "a.nii.gz")
    _nifti(tmp_path / "imagesTs" / "b.nii.gz")
    _nifti(tmp_path / "labelsTs" / "a.nii.gz")
    cases = discover_cases(tmp_path, split="test")
    assert [(c.case_id, c.label is not None) for c in cases] == [("a", True), ("b", False)]


def test_plain_duplicate_case_ids(tmp_path):
    _nifti(tmp_path / "images" / "a.nii.gz")
    _nifti(tmp_path / "images" / "a.nii")
    _nifti(tmp_path / "labels" / "a.nii.gz")
    with pytest.raises(DatasetError, match=r"one file per case id.*a: "):
        discover_cases(tmp_path)


def test_empty_plain_folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    with pytest.raises(DatasetError, match=r"at least one .*images.*none"):
        discover_cases(tmp_path)


def test_no_layout(tmp_path):
    (tmp_path / "random").mkdir()
    with pytest.raises(DatasetError, match=r"dataset\.json or the folders.*random"):
        discover_cases(tmp_path)


def test_missing_root_and_bad_split(tmp_path):
    with pytest.raises(DatasetError, match=r"existing dataset folder.*root=.*nope"):
        discover_cases(tmp_path / "nope")
    with pytest.raises(ValueError, match="split='val'"):
        discover_cases(tmp_path, split="val")
    with pytest.raises(TypeError, match="root=3"):
        discover_cases(3)


# ---------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------


def test_split_deterministic_disjoint_and_complete():
    cases = _cases(10)
    train, val = split_cases(cases, val_fraction=0.3, seed=7)
    assert len(val) == 3 and len(train) == 7
    assert {c.case_id for c in train}.isdisjoint({c.case_id for c in val})
    assert sorted(train + val, key=lambda c: c.case_id) == cases
    assert split_cases(cases, val_fraction=0.3, seed=7) == (train, val)
    assert split_cases(list(reversed(cases)), val_fraction=0.3, seed=7) == (train, val)
    assert train == sorted(train, key=lambda c: c.case_id)


def test_split_seed_changes_split():
    cases = _cases(20)
    vals = {tuple(c.case_id for c in split_cases(cases, seed=s)[1]) for s in range(5)}
    assert len(vals) > 1


def test_split_two_cases_one_each():
    train, val = split_cases(_cases(2), val_fraction=0.01)
    assert len(train) == 1 and len(val) == 1
    train, val = split_cases(_cases(2), val_fraction=0.99)
    assert len(train) == 1 and len(val) == 1


@pytest.mark.parametrize("n", [0, 1])
def test_split_too_few_cases(n):
    with pytest.raises(ValueError, match=rf"at least 2 cases.*len\(cases\)={n}"):
        split_cases(_cases(n))


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_bad_fraction(fraction):
    with pytest.raises(ValueError, match=rf"val_fraction={fraction}"):
        split_cases(_cases(5), val_fraction=fraction)


def test_split_bad_types():
    with pytest.raises(TypeError, match="seed=1.5"):
        split_cases(_cases(5), seed=1.5)
    with pytest.raises(TypeError, match=r"types=\['str'\]"):
        split_cases(_cases(3) + ["x"])
    with pytest.raises(ValueError, match="unique case ids"):
        split_cases(_cases(3) + _cases(1))


@pytest.mark.parametrize(("n", "n_folds"), [(10, 5), (7, 3), (5, 5)])
def test_kfold_every_case_in_exactly_one_validation_fold(n, n_folds):
    cases = _cases(n)
    seen = []
    for fold in range(n_folds):
        train, val = kfold_split(cases, n_folds=n_folds, fold=fold, seed=3)
        assert {c.case_id for c in train}.isdisjoint({c.case_id for c in val})
        assert len(train) + len(val) == n
        assert len(val) in (n // n_folds, n // n_folds + 1)
        seen += [c.case_id for c in val]
    assert sorted(seen) == [c.case_id for c in cases]


def test_kfold_deterministic():
    cases = _cases(9)
    assert kfold_split(cases, n_folds=3, fold=1, seed=2) == kfold_split(cases[::-1], n_folds=3, fold=1, seed=2)


@pytest.mark.parametrize("fold", [-1, 5])
def test_kfold_fold_out_of_range(fold):
    with pytest.raises(ValueError, match=rf"fold in \[0, 4\].*fold={fold}"):
        kfold_split(_cases(10), n_folds=5, fold=fold)


def test_kfold_bad_arguments():
    with pytest.raises(ValueError, match="n_folds=1"):
        kfold_split(_cases(10), n_folds=1, fold=0)
    with pytest.raises(ValueError, match=r"at least 5 cases.*len\(cases\)=3"):
        kfold_split(_cases(3), n_folds=5, fold=0)
    with pytest.raises(TypeError, match="fold=None"):
        kfold_split(_cases(10), fold=None)
