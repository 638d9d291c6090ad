"""Tests of the lungseg command line (argument parsing and error reporting)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipelines.cli import _cli_words, build_parser, main
from segmentation.config import load_config, save_config


@pytest.mark.parametrize("command", ["demo", "phantom", "train", "evaluate", "predict", "bench", "study"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    assert command in capsys.readouterr().out


def test_missing_required_argument_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", "x.yaml"])
    assert exit_info.value.code == 2
    assert "--data" in capsys.readouterr().err


def test_bad_config_is_reported_with_exit_2(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  epochz: 1\n")
    status = main(["train", "--config", str(config), "--data", str(tmp_path), "--out", str(tmp_path / "run")])
    assert status == 2
    err = capsys.readouterr().err
    assert "train.epochz" in err and "c.yaml" in err


@pytest.mark.parametrize("prefix", [["train"], ["bench", "train"], ["study", "losses"]])
def test_set_takes_several_pairs_and_repeats(prefix):
    required = {"train": ["--config", "c.yaml", "--data", "d", "--out", "o"],
                "bench": ["--config", "c.yaml"],
                "study": ["--config", "c.yaml", "--data", "d", "--out", "o"]}[prefix[0]]
    args = build_parser().parse_args(
        [*prefix, *required, "--set", "train.epochs=2", "data.max_val_cases=1", "--set", "train.seed=3"])
    assert args.overrides == ["train.epochs=2", "data.max_val_cases=1", "train.seed=3"]


# ------------------------------------------------------------------ bad inputs (issue 19)
# Each case runs `main([...])` in this process (it returns the exit status) and asserts the
# status, the message (in part, in the command line's own words) and that nothing was
# written. `pipelines.infer._load_model` is replaced by a sentinel: a case that reaches the
# model (and TensorFlow) says so, so every refusal below is proven to come before them.

REPO = Path(__file__).resolve().parents[1]
MODEL_REACHED = "sentinel: the model would be loaded now"


@pytest.fixture
def no_model(monkeypatch):
    from pipelines import infer

    def reached(run, config):
        raise infer.InferenceError(MODEL_REACHED)

    monkeypatch.setattr(infer, "_load_model", reached)


def _run(tmp_path: Path, *overrides: str) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    save_config(load_config(REPO / "configs" / "quick.yaml", overrides=overrides), run / "config.yaml")
    (run / "model.keras").write_bytes(b"a model (never loaded by these tests)")
    return run


def _ct(shape=(20, 20, 20)) -> np.ndarray:
    image = np.full(shape, -1000, np.int16)
    image[4:-4, 4:-4, 4:-4] = 40
    return image


def _scan(path: Path, array: np.ndarray, *, spacing=(1.0, 1.0, 1.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), path)
    return path


def _main(argv, capsys) -> tuple[int, str, str, float]:
    start = time.perf_counter()
    status = main([str(a) for a in argv])
    seconds = time.perf_counter() - start
    out, err = capsys.readouterr()
    return status, out, err, seconds


def _predict(run, scan, out, *extra):
    return ["predict", "--model", run, "--input", scan, "--out", out, *extra]


def test_truncated_run_config_is_refused(tmp_path, capsys, no_model):
    run = _run(tmp_path)
    lines = (run / "config.yaml").read_text().splitlines()
    (run / "config.yaml").write_text("\n".join(lines[:8]) + "\n")  # head -n 8
    status, _, err, _ = _main(_predict(run, _scan(tmp_path / "a.nii.gz", _ct()), tmp_path / "out"), capsys)
    assert status == 2
    assert "complete config" in err and "no preprocess, model" in err and "config.yaml" in err
    assert not (tmp_path / "out").exists()


def test_empty_run_config_is_refused(tmp_path, capsys, no_model):
    run = _run(tmp_path)
    (run / "config.yaml").write_text("")
    status, _, err, _ = _main(_predict(run, _scan(tmp_path / "a.nii.gz", _ct()), tmp_path / "out"), capsys)
    assert status == 2 and "an empty file" in err and "--model" in err or "config.yaml" in err
    assert MODEL_REACHED not in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("spacing", [(1000.0, 1000.0, 1000.0), (0.001, 0.001, 0.001)])
def test_implausible_spacing_fails_fast(tmp_path, capsys, no_model, spacing):
    scan = _scan(tmp_path / "a.nii.gz", _ct((64, 64, 64)), spacing=spacing)
    status, _, err, seconds = _main(_predict(_run(tmp_path), scan, tmp_path / "out"), capsys)
    assert status == 2 and "spacing" in err and str(spacing[0]) in err and "a.nii.gz" in err
    assert "--spacing-range-mm" in err and "Traceback" not in err
    assert seconds < 5.0  # refused from the header, before any allocation
    assert not (tmp_path / "out").exists()


def test_implausible_spacing_in_a_folder_is_a_failed_line_naming_it(tmp_path, capsys, no_model):
    _scan(tmp_path / "scans" / "a.nii.gz", _ct((64, 64, 64)), spacing=(1000.0, 1000.0, 1000.0))
    status, out, _, seconds = _main(_predict(_run(tmp_path), tmp_path / "scans", tmp_path / "out"), capsys)
    assert status == 1 and seconds < 5.0
    assert "FAILED a" in out and "spacing_mm=[1000.0, 1000.0, 1000.0]" in out
    assert not list((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True


def test_spacing_range_option_relaxes_the_check(tmp_path, capsys, no_model):
    scan = _scan(tmp_path / "a.nii.gz", _ct(), spacing=(25.0, 25.0, 25.0))
    status, _, err, _ = _main(_predict(_run(tmp_path), scan, tmp_path / "out", "--spacing-range-mm", "0.1", "30"),
                              capsys)
    assert status == 2 and MODEL_REACHED in err  # the scan passed; the model comes next


def test_huge_window_fails_fast_before_allocating(tmp_path, capsys, no_model):
    scan = _scan(tmp_path / "a.nii.gz", _ct())
    status, _, err, seconds = _main(
        _predict(_run(tmp_path), scan, tmp_path / "out", "--window", "8192", "8192", "8192"), capsys)
    assert status == 2 and "memory budget" in err and "8192" in err and "--max-memory-gb" in err
    assert seconds < 5.0 and not (tmp_path / "out").exists()


def test_max_memory_gb_refuses_a_scan_with_the_numbers(tmp_path, capsys, no_model):
    # 6 mm voxels resampled to quick.yaml's 1.5 mm: a 256^3 network grid (~0.5 GB in all)
    scan = _scan(tmp_path / "a.nii.gz", _ct((64, 64, 64)), spacing=(6.0, 6.0, 6.0))
    status, _, err, _ = _main(_predict(_run(tmp_path), scan, tmp_path / "out", "--max-memory-gb", "0.1"),
                              capsys)
    assert status == 2 and "memory budget of 100 MB" in err and "a.nii.gz" in err
    assert "shape [64, 64, 64]" in err and "1.68e+07 voxels after resampling" in err


@pytest.mark.parametrize("what, shape", [("infer", 8192), ("evaluate", 4096)])
def test_huge_bench_shape_fails_fast_before_allocating(tmp_path, capsys, what, shape):
    status, _, err, seconds = _main(["bench", what, "--shape", shape, shape, shape,
                                     "--out", tmp_path / "b.json"], capsys)
    assert status == 2 and "memory budget" in err and f"--shape {shape} {shape} {shape}" in err
    assert seconds < 5.0 and not (tmp_path / "b.json").exists()


@pytest.mark.parametrize("name, array, match", [
    ("uint8", np.random.default_rng(0).integers(0, 256, (20, 20, 20)).astype(np.uint8), "8-bit image"),
    ("int8", np.random.default_rng(0).integers(-128, 128, (20, 20, 20)).astype(np.int8), "8-bit image"),
    ("label", (_ct() > -1000).astype(np.uint8), "label mask"),
])
def test_scans_that_are_not_ct_in_hu_are_refused(tmp_path, capsys, no_model, name, array, match):
    scan = _scan(tmp_path / f"{name}.nii.gz", array)
    run = _run(tmp_path)
    status, _, err, _ = _main(_predict(run, scan, tmp_path / "out"), capsys)
    assert status == 2 and "Hounsfield" in err and match in err and f"{name}.nii.gz" in err
    assert "--allow-non-hu" in err and not (tmp_path / "out").exists()
    status, _, err, _ = _main(_predict(run, scan, tmp_path / "out", "--allow-non-hu"), capsys)
    assert status == 2 and MODEL_REACHED in err  # the override lets the scan through


def _write_mr_series(folder: Path, values: np.ndarray) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True)
    series, study = generate_uid(), generate_uid()
    for k in range(values.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID = "MR", study, series
        ds.ImagePositionPatient = [0.0, 0.0, float(k) * 2.0]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 2.0
        ds.Rows, ds.Columns = values.shape[1], values.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.ascontiguousarray(values[:, :, k].T.astype(np.uint16)).tobytes()
        ds.save_as(folder / f"mr_{k:03d}.dcm", enforce_file_format=True)


def test_mr_dicom_series_is_refused(tmp_path, capsys, no_model):
    values = np.random.default_rng(0).integers(0, 1500, (16, 16, 16))
    _write_mr_series(tmp_path / "mr", values)
    status, _, err, _ = _main(_predict(_run(tmp_path), tmp_path / "mr", tmp_path / "out"), capsys)
    assert status == 2 and "Hounsfield" in err and "no air below 0" in err and "mr" in err
    assert not (tmp_path / "out").exists()


def test_predict_checks_threshold_before_the_model(tmp_path, capsys, no_model):
    scan = _scan(tmp_path / "a.nii.gz", _ct())
    status, _, err, seconds = _main(_predict(_run(tmp_path), scan, tmp_path / "out", "--threshold", "2"), capsys)
    assert status == 2 and "--threshold" in err and MODEL_REACHED not in err and seconds < 5.0


def test_predict_checks_window_against_the_run_before_the_model(tmp_path, capsys, no_model):
    scan = _scan(tmp_path / "a.nii.gz", _ct())
    status, _, err, _ = _main(_predict(_run(tmp_path), scan, tmp_path / "out", "--window", "20", "20", "20"),
                              capsys)
    assert status == 2 and "multiple of 2**depth" in err and MODEL_REACHED not in err


def test_predict_out_below_a_file_is_refused_before_the_work(tmp_path, capsys, no_model):
    scan = _scan(tmp_path / "a.nii.gz", _ct())
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    status, _, err, _ = _main(_predict(_run(tmp_path), scan, blocker / "out"), capsys)
    assert status == 2 and "--out" in err and "blocker" in err and "which is a file" in err
    assert MODEL_REACHED not in err and ".tmp" not in err


def test_predict_read_only_out_is_refused_before_the_work(tmp_path, capsys, no_model, monkeypatch):
    from segmentation import preflight

    scan = _scan(tmp_path / "a.nii.gz", _ct())
    locked = tmp_path / "locked"
    locked.mkdir()
    # what a read-only folder or mount answers (root included, on a read-only mount)
    monkeypatch.setattr(preflight.os, "access", lambda path, mode: Path(path) != locked)
    status, _, err, _ = _main(_predict(_run(tmp_path), scan, locked), capsys)
    assert status == 2 and "writable" in err and "locked" in err and MODEL_REACHED not in err


def test_predict_out_equal_to_the_input_folder_is_refused(tmp_path, capsys, no_model):
    _scan(tmp_path / "scans" / "a.nii.gz", _ct())
    status, _, err, _ = _main(_predict(_run(tmp_path), tmp_path / "scans", tmp_path / "scans"), capsys)
    assert status == 2 and "other than the input folder" in err
    assert sorted(p.name for p in (tmp_path / "scans").iterdir()) == ["a.nii.gz"]


def test_degenerate_scan_is_warned_not_refused(tmp_path, capsys, no_model, caplog):
    scan = _scan(tmp_path / "thin.nii.gz", _ct((20, 20, 20))[:, :, :1].copy())
    status, _, err, _ = _main(_predict(_run(tmp_path), scan, tmp_path / "out"), capsys)
    assert status == 2 and MODEL_REACHED in err
    assert "single slice" in caplog.text and "thin.nii.gz" in caplog.text


def test_predict_tta_can_be_turned_off():
    parser = build_parser()
    base = ["predict", "--model", "m", "--input", "i", "--out", "o"]
    assert parser.parse_args(base).tta is None
    assert parser.parse_args([*base, "--tta"]).tta is True
    assert parser.parse_args([*base, "--no-tta"]).tta is False


# ------------------------------------------------------------------ train


def _dataset(root: Path, *, spacing=(1.5, 1.5, 2.0), label_value=1, n_cases=2) -> Path:
    training = []
    for index in range(n_cases):
        name = f"case_{index}"
        label = np.zeros((20, 20, 20), np.uint8)
        label[8:12, 8:12, 8:12] = label_value
        _scan(root / "imagesTr" / f"{name}.nii.gz", _ct(), spacing=spacing)
        _scan(root / "labelsTr" / f"{name}.nii.gz", label, spacing=spacing)
        training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"name": "t", "training": training, "test": []}))
    return root


def _train(data, out, *extra):
    return ["train", "--config", REPO / "configs" / "quick.yaml", "--data", data, "--out", out, *extra]


@pytest.mark.parametrize("prepare, state", [(lambda p: None, "does not exist"), (lambda p: p.mkdir(), "is empty")])
def test_train_resume_without_a_run_is_an_error(tmp_path, capsys, prepare, state):
    run = tmp_path / "run"
    prepare(run)
    status, _, err, seconds = _main(_train(_dataset(tmp_path / "data"), run, "--resume"), capsys)
    assert status == 2 and "--resume" in err and state in err and seconds < 10.0
    assert not run.exists() or not any(run.iterdir())


def test_train_missing_data_leaves_no_run_folder(tmp_path, capsys):
    status, _, err, _ = _main(_train(tmp_path / "nowhere", tmp_path / "run"), capsys)
    assert status == 2 and "--data" in err and "nowhere" in err
    assert not (tmp_path / "run").exists()


def test_train_data_with_implausible_spacing_is_refused_before_any_run_folder(tmp_path, capsys):
    data = _dataset(tmp_path / "data", spacing=(1000.0, 1000.0, 1000.0))
    status, _, err, seconds = _main(_train(data, tmp_path / "run"), capsys)
    assert status == 2 and "spacing" in err and "case_0.nii.gz" in err and seconds < 10.0
    assert not (tmp_path / "run").exists()


def test_train_bad_set_is_blamed_on_set(tmp_path, capsys):
    status, _, err, _ = _main(_train(_dataset(tmp_path / "data"), tmp_path / "run", "--set", "train.epochs=-1"),
                              capsys)
    assert status == 2 and "--set train.epochs=-1" in err and "quick.yaml" not in err
    assert not (tmp_path / "run").exists()


def test_train_binarize_labels_sets_the_config_value():
    args = build_parser().parse_args(["train", "--config", "c", "--data", "d", "--out", "o", "--binarize-labels"])
    assert args.binarize_labels is True


# ------------------------------------------------------------------ evaluate


def _masks(folder: Path, value: int = 1) -> Path:
    mask = np.zeros((12, 12, 12), np.uint8)
    mask[4:8, 4:8, 4:8] = value
    _scan(folder / "c1.nii.gz", mask)
    return folder


def test_evaluate_messages_use_option_names(tmp_path, capsys):
    truth = _masks(tmp_path / "truth")
    status, _, err, _ = _main(["evaluate", "--pred", tmp_path / "nowhere", "--truth", truth,
                               "--out", tmp_path / "report"], capsys)
    assert status == 2 and "--pred" in err and "pred_dir" not in err
    assert not (tmp_path / "report").exists()


def test_evaluate_multilabel_truth_offers_binarize_labels(tmp_path, capsys):
    truth, pred = _masks(tmp_path / "truth", 2), _masks(tmp_path / "pred")
    argv = ["evaluate", "--pred", pred, "--truth", truth, "--out", tmp_path / "report"]
    status, _, err, _ = _main(argv, capsys)
    assert status == 2 and "use --binarize-labels" in err and "binarize=True" not in err
    assert not (tmp_path / "report").exists()
    status, out, _, _ = _main([*argv, "--binarize-labels"], capsys)
    assert status == 0 and json.loads(out)["dice_mean"] == pytest.approx(1.0)
    status, _, err, _ = _main([*argv, "--binarize-labels"], capsys)
    assert status == 2 and "use --overwrite" in err and "overwrite=True" not in err


def test_evaluate_out_equal_to_an_input_is_refused(tmp_path, capsys):
    truth, pred = _masks(tmp_path / "truth"), _masks(tmp_path / "pred")
    status, _, err, _ = _main(["evaluate", "--pred", pred, "--truth", truth, "--out", pred], capsys)
    assert status == 2 and "--out to be another folder than --pred" in err
    assert sorted(p.name for p in pred.iterdir()) == ["c1.nii.gz"]


# ------------------------------------------------------------------ phantom


def test_phantom_messages_use_option_names(tmp_path, capsys):
    status, _, err, _ = _main(["phantom", "--out", tmp_path / "p", "--cases", "0"], capsys)
    assert status == 2 and "--cases" in err and "n_cases" not in err
    assert not (tmp_path / "p").exists()


def test_phantom_prints_the_disk_estimate_and_refuses_what_does_not_fit(tmp_path, capsys):
    status, out, err, _ = _main(["phantom", "--out", tmp_path / "p", "--cases", "100000",
                                 "--size", "512", "512", "512"], capsys)
    assert "on disk" in out and "18.8 TB" in out
    assert status == 2 and "GB needed" in err
    assert not (tmp_path / "p").exists()


def test_phantom_small_dataset_is_complete(tmp_path, capsys):
    status, out, _, _ = _main(["phantom", "--out", tmp_path / "p", "--cases", "1", "--size", "16", "16", "16"],
                              capsys)
    assert status == 0 and "on disk" in out
    assert (tmp_path / "p" / "dataset.json").exists()
    assert not (tmp_path / "p" / "dataset.incomplete.json").exists()


# ------------------------------------------------------------------ help and words


def test_top_level_help_states_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    assert "exit status" in text and "130" in text and "--allow-non-hu" in text


@pytest.mark.parametrize("argv, expected", [
    (["evaluate"], "voxel connectivity"),
    (["bench"], "override config values"),
    (["study", "losses"], "study folder"),
    (["study", "losses"], "YAML config shared"),
    (["phantom"], "(default: 0)"),
    (["phantom"], "(default: 256 256 160)"),
    (["phantom"], "default: drawn per case"),
    (["predict"], "--no-tta"),
    (["predict"], "--max-memory-gb"),
    (["train"], "--binarize-labels"),
    (["evaluate"], "--binarize-labels"),
])
def test_help_texts_are_complete(argv, expected, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    assert expected in capsys.readouterr().out


@pytest.mark.parametrize("command, message, expected", [
    ("evaluate", "Received: pred_dir='x' and truth_dir='y'", "Received: --pred='x' and --truth='y'"),
    ("phantom", "Expected n_cases >= 1 (pass overwrite=True to replace)", "Expected --cases >= 1 (use --overwrite to replace)"),
    ("train", "labels (pass binarize=True to map)", "labels (use --binarize-labels to map)"),
    ("predict", "Expected threshold in (0, 1). Received: threshold=2", "Expected --threshold in (0, 1). Received: --threshold=2"),
    ("predict", "Expected inference.threshold in (0, 1)", "Expected inference.threshold in (0, 1)"),
    ("predict", "out_dir='o', model_dir='m'", "--out='o', --model='m'"),
])
def test_cli_words(command, message, expected):
    assert _cli_words(command, message) == expected


# ------------------------------------------------------------------ fresh processes


def _fresh(code: str, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300, cwd=REPO)


_MAIN_THEN_MODULES = """
import sys
from pipelines.cli import main
status = main(sys.argv[1:])
print("tensorflow loaded:", "tensorflow" in sys.modules)
sys.exit(status)
"""


@pytest.mark.slow
def test_fresh_process_refuses_bad_inputs_without_tensorflow(tmp_path):
    run = _run(tmp_path)
    big = _scan(tmp_path / "big.nii.gz", _ct((64, 64, 64)), spacing=(1000.0, 1000.0, 1000.0))
    cases = [
        (_predict(run, big, tmp_path / "o1"), "spacing_mm=[1000.0, 1000.0, 1000.0]"),
        (_predict(run, _scan(tmp_path / "a.nii.gz", _ct()), tmp_path / "o2", "--threshold", "2"), "--threshold"),
        (_train(_dataset(tmp_path / "data"), tmp_path / "run2", "--resume"), "drop --resume"),
    ]
    for argv, message in cases:
        result = _fresh(_MAIN_THEN_MODULES, *argv)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr
        assert "tensorflow loaded: False" in result.stdout
    assert not any((tmp_path / name).exists() for name in ("o1", "o2", "run2"))


@pytest.mark.slow
def test_fresh_process_train_on_multilabel_data_leaves_no_run_folder(tmp_path):
    data = _dataset(tmp_path / "data", label_value=3)  # labels 0/3: refused without --binarize-labels
    result = _fresh("import sys; from pipelines.cli import main; sys.exit(main(sys.argv[1:]))",
                    *_train(data, tmp_path / "run", "--set", "train.epochs=1", "train.steps_per_epoch=1"))
    assert result.returncode == 2, result.stderr
    assert "use --binarize-labels" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ other commands' outputs


def test_demo_out_below_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    status, _, err, seconds = _main(["demo", "--out", tmp_path / "f" / "demo"], capsys)
    assert status == 2 and "--out" in err and "which is a file" in err and seconds < 5.0


def test_bench_out_that_is_a_folder_is_refused(tmp_path, capsys):
    status, _, err, _ = _main(["bench", "evaluate", "--shape", "16", "16", "16", "--out", tmp_path], capsys)
    assert status == 2 and "--out to be a file path" in err


def test_study_out_equal_to_data_is_refused(tmp_path, capsys):
    status, _, err, _ = _main(["study", "losses", "--config", REPO / "configs" / "quick.yaml",
                               "--data", tmp_path, "--out", tmp_path], capsys)
    assert status == 2 and "--out to be another folder than --data" in err
    assert list(tmp_path.iterdir()) == []


def test_predict_unwritable_out_is_refused_before_the_work_even_as_root(tmp_path, capsys, no_model, monkeypatch):
    import segmentation.preflight as preflight

    scan = _scan(tmp_path / "a.nii.gz", _ct())
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(preflight.os, "access", lambda path, mode: Path(path) != locked)
    status, _, err, _ = _main(_predict(_run(tmp_path), scan, locked), capsys)
    assert status == 2 and "--out to be writable" in err and "locked" in err
    assert MODEL_REACHED not in err and ".tmp" not in err and list(locked.iterdir()) == []
