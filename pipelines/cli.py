"""The ``lungseg`` command line.

This module only parses arguments and hands them to the pipelines. It holds no logic:
every command is one call into ``segmentation`` or ``pipelines`` plus printing. `main` is
the one place that sets the process up for TensorFlow (`configure_process`), before any
command runs; the pipelines that reach TensorFlow (train, predict, demo, bench, study) are
imported only once a command's cheap checks have passed, so ``lungseg --help`` and every
refused input stay without TensorFlow.

Exit status: 0 on success, 1 when a command ran but some of its work failed (e.g. one
scan of a folder in ``lungseg predict``), 2 for bad arguments or input (checked before
TensorFlow or a model is loaded, nothing written), 130 when interrupted. Error messages use
the command line's option names (`_cli_words`).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from pipelines import importers
from pipelines.detectability import DEFAULT_CONTRASTS_HU, DEFAULT_DIAMETERS_MM, DEFAULT_KINDS
from pipelines.evaluate import evaluate
from pipelines.luna16_eval import evaluate_luna16
from segmentation.config import load_config
from segmentation.phantom import estimate_dataset_bytes, write_phantom_dataset
from segmentation.plausibility import DEFAULT_SPACING_RANGE_MM, ScanLimits, format_bytes
from segmentation.preflight import check_output_dir, check_output_file, check_training_inputs
from segmentation.tf_env import configure_process

__all__ = ["main", "build_parser"]

_EXIT_OK, _EXIT_PARTIAL, _EXIT_BAD_INPUT = 0, 1, 2

_EPILOG = """exit status:
  0    success
  1    the command ran but part of its work failed (e.g. one scan of a folder in
       predict: a FAILED line names it), or a run-time failure (diverged loss, full disk)
  2    bad arguments or input, refused before the work (and before TensorFlow or a
       model is loaded): nothing is written; the message names the option or file
  130  interrupted (Ctrl-C)

input checks (see docs/outputs.md, "Exit status and input checks"): output folders
(writable, not below a file, not an input), voxel spacing (--spacing-range-mm, default
0.1 20), memory (--max-memory-gb, default 80 % of this machine's memory), CT in
Hounsfield units (--allow-non-hu), label values (--binarize-labels)."""

# API parameter names in library messages -> this command line's option names.
_COMMON_WORDS = {
    "pass overwrite=True / --overwrite": "use --overwrite",
    "pass overwrite=True": "use --overwrite",
    "pass binarize=True": "use --binarize-labels",
    "out_dir": "--out",
    "max_memory_gb": "--max-memory-gb",
    "allow_non_hu": "--allow-non-hu",
    "spacing_range_mm": "--spacing-range-mm",
}
_COMMAND_WORDS = {
    "phantom": {"n_cases": "--cases", "n_test": "--test-cases", "seed=": "--seed=",
                "size=": "--size=", "spacing_mm=": "--spacing="},
    "train": {"data_dir": "--data"},
    "evaluate": {"pred_dir": "--pred", "truth_dir": "--truth", "probs_dir": "--probs",
                 "connectivity=": "--connectivity=", "iou_threshold": "--iou-threshold",
                 "small_lesion_mm": "--small-lesion-mm", "size_bins_mm": "--size-bins-mm",
                 "tolerance_mm": "--tolerance-mm"},
    "predict": {"model_dir": "--model", "input_path": "--input", "input=": "--input=",
                "threshold in (0, 1)": "--threshold in (0, 1)", "threshold=": "--threshold=", "min_size_mm3=": "--min-size-mm3=",
                "window=": "--window="},
    "bench": {"steps=": "--steps=", "shape=": "--shape="},
    "study": {"data_dir": "--data", "n_seeds": "--seeds", "model_dir": "--model",
              "input_path": "--input", "labels_dir": "--labels", "per_cell": "--per-cell",
              "diameters_mm": "--diameters-mm", "contrasts_hu": "--contrasts-hu", "kinds": "--kinds",
              "seed=": "--seed="},
}


def _cli_words(command: str, message: str) -> str:
    """``message`` with the Python API's parameter names replaced by ``command``'s options."""
    words = {**_COMMON_WORDS, **_COMMAND_WORDS.get(command, {})}
    for api, option in sorted(words.items(), key=lambda item: -len(item[0])):
        message = re.sub(r"(?<![\w.\-])" + re.escape(api) + (r"\b" if api[-1].isalnum() else ""),
                         option, message)
    return message


def _add_scan_checks(parser: argparse.ArgumentParser, *, hu: bool = True) -> None:
    """The options that relax the plausibility checks of the scans a command reads."""
    parser.add_argument("--max-memory-gb", type=float, default=None, metavar="GB",
                        help="refuse a scan (or window, or shape) whose processing is estimated "
                             "to need more memory (default: 80%% of this machine's memory)")
    parser.add_argument("--spacing-range-mm", type=float, nargs=2, default=None,
                        metavar=("MIN", "MAX"),
                        help="accepted voxel spacing per axis in mm (default: 0.1 20)")
    if hu:
        parser.add_argument("--allow-non-hu", action="store_true",
                            help="accept scans that do not look like CT in Hounsfield units "
                                 "(no air near -1000, 8-bit values, a label mask, MR)")


def _limits(args: argparse.Namespace):
    """The `ScanLimits` of a command's options."""
    return ScanLimits(
        spacing_range_mm=tuple(args.spacing_range_mm or DEFAULT_SPACING_RANGE_MM),
        max_memory_gb=args.max_memory_gb,
        allow_non_hu=bool(getattr(args, "allow_non_hu", False)),
    )


def build_parser() -> argparse.ArgumentParser:
    """Returns the argument parser of ``lungseg`` and its sub-commands."""
    parser = argparse.ArgumentParser(
        prog="lungseg",
        description="Lung-nodule segmentation on chest CT (TensorFlow / Keras 3).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="phantom data -> train -> evaluate -> predict, no download")
    demo.add_argument("--out", type=Path, default=Path("lungseg_demo"), help="output folder")
    demo.add_argument("--quick", action="store_true", help="a tiny run (about 3 minutes on 2 CPU cores)")
    demo.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --out")

    phantom = commands.add_parser("phantom", help="write a synthetic chest-CT dataset (MSD layout)")
    phantom.add_argument("--out", type=Path, required=True, help="dataset folder to create")
    phantom.add_argument("--cases", type=int, required=True, help="number of training cases")
    phantom.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    phantom.add_argument("--test-cases", type=int, default=0,
                         help="extra held-out cases (imagesTs/labelsTs; default: %(default)s)")
    phantom.add_argument("--size", type=int, nargs=3, metavar=("I", "J", "K"),
                         help="voxels per axis (default: 256 256 160)")
    phantom.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"),
                         help="voxel spacing in mm (default: drawn per case, 0.6-0.9 in-plane and "
                              "1-2.5 between slices at the default size)")
    phantom.add_argument("--noise-scale", type=float, default=1.0,
                         help="factor on the drawn noise level, 0-4 (default 1: a second scanner "
                              "setting for tests of generalisation)")
    phantom.add_argument("--kernel", choices=("standard", "sharp", "smooth"), default="standard",
                         help="reconstruction kernel: point-spread width x1, x0.5 or x1.6 "
                              "(default standard)")
    phantom.add_argument("--overwrite", action="store_true",
                         help="replace an existing (or interrupted) phantom dataset")

    train = commands.add_parser("train", help="train a U-Net from a YAML config")
    train.add_argument("--config", type=Path, required=True, help="YAML config (see configs/)")
    train.add_argument("--data", type=Path, required=True, help="dataset folder (MSD, nnU-Net v2 or plain)")
    train.add_argument("--out", type=Path, required=True, help="run folder")
    train.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    train.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[],
                       metavar="KEY=VALUE",
                       help="override config values, e.g. --set train.epochs=5 data.max_val_cases=2 "
                            "(repeatable)")
    train.add_argument("--binarize-labels", action="store_true",
                       help="map every label > 0 to 1 (multi-label masks; sets data.binarize_labels)")
    _add_scan_checks(train)

    evaluate = commands.add_parser("evaluate", help="voxel and lesion-level metrics of predicted masks")
    evaluate.add_argument("--pred", type=Path, default=None, help="predicted masks ({case}_mask.nii.gz or same names)")
    evaluate.add_argument("--truth", type=Path, default=None, help="ground-truth masks")
    evaluate.add_argument("--probs", type=Path, default=None, help="probability maps for FROC/CPM")
    evaluate.add_argument("--out", type=Path, required=True, help="report folder")
    evaluate.add_argument("--connectivity", type=int, choices=(6, 18, 26), default=26,
                          help="voxel connectivity of lesions: 6 (faces), 18 (edges) or 26 "
                               "(corners; default)")
    evaluate.add_argument("--match", choices=("overlap", "iou"), default="overlap",
                          help="lesion matching rule (default: any overlap)")
    evaluate.add_argument("--iou-threshold", type=float, default=0.1, help="IoU threshold of --match iou")
    evaluate.add_argument("--small-lesion-mm", type=float, default=10.0,
                          help="lesions below this equivalent diameter count as small")
    evaluate.add_argument("--size-bins-mm", type=float, nargs="+", default=[3.0, 6.0, 10.0, 20.0],
                          help="edges of the recall-by-size bins (the last bin is open)")
    evaluate.add_argument("--tolerance-mm", type=float, default=1.0, help="surface-Dice tolerance")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an earlier report")
    evaluate.add_argument("--nodules", type=Path, default=None, metavar="FILE",
                          help="nodule attribute table (phantom nodules.json, or CSV with case_id,"
                               "x_mm,y_mm,z_mm and attribute columns): recall by attribute")
    evaluate.add_argument("--nodules-frame", choices=("ras", "lps"), default=None,
                          help="frame of the CSV centres without a frame column (default ras)")
    evaluate.add_argument("--luna16", type=Path, default=None, metavar="ANNOTATIONS_CSV",
                          help="LUNA16 FROC protocol instead of masks: annotations.csv (needs --candidates)")
    evaluate.add_argument("--candidates", type=Path, default=None,
                          help="LUNA16 candidates CSV (seriesuid,coordX,coordY,coordZ,probability)")
    evaluate.add_argument("--excluded", type=Path, default=None,
                          help="annotations_excluded.csv: hits on these are neither TP nor FP")
    evaluate.add_argument("--seriesuids", type=Path, default=None,
                          help="the evaluated scans (default: every scan named in the CSV files)")
    evaluate.add_argument("--bootstrap", type=int, default=1000, help="bootstrap samples (LUNA16)")
    evaluate.add_argument("--seed", type=int, default=0, help="bootstrap seed (LUNA16)")
    evaluate.add_argument("--binarize-labels", action="store_true",
                          help="map every label > 0 to 1 in the truth and predicted masks "
                               "(multi-label masks)")

    predict = commands.add_parser("predict", help="segment new scans (NIfTI file or folder, or a DICOM series)")
    predict.add_argument("--model", type=Path, required=True, help="run folder with model.keras and config.yaml")
    predict.add_argument("--input", type=Path, required=True,
                         help="NIfTI or MetaImage (.mhd/.mha) file, folder of them, or DICOM series folder")
    predict.add_argument("--out", type=Path, required=True, help="output folder")
    predict.add_argument("--probs", action="store_true", help="also write {case}_probs.nii.gz")
    predict.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                         help="mirror test-time augmentation on or off (default: the run's "
                              "inference.tta)")
    predict.add_argument("--threshold", type=float, default=None, help="probability threshold (default: the run's)")
    predict.add_argument("--min-size-mm3", type=float, default=None, help="drop smaller components")
    predict.add_argument("--window", type=int, nargs="+", default=None, metavar="N",
                         help="sliding window in voxels, one size per spatial axis of the model "
                              "(default: the run's inference.window, else its training patch)")
    predict.add_argument("--overwrite", action="store_true", help="redo cases already written")
    predict.add_argument("--luna16-csv", type=Path, default=None,
                         help="also write LUNA16 candidates (one row per nodule) to this CSV")

    importer = commands.add_parser("import", help="convert LIDC-IDRI or LUNA16 to an MSD dataset")
    sources = importer.add_subparsers(dest="source", required=True, metavar="SOURCE")
    luna16 = sources.add_parser("luna16", help="LUNA16 .mhd scans + annotations.csv")
    luna16.add_argument("--input", type=Path, required=True, help="LUNA16 root (subset0 ... subset9)")
    luna16.add_argument("--annotations", type=Path, required=True, help="annotations.csv")
    luna16.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    luna16.add_argument("--mask", choices=("sphere", "none"), default="sphere",
                        help="label each annotation as a ball of its diameter (default), or no labels")
    luna16.add_argument("--workers", type=int, default=None, help="parallel processes (default: up to 4)")
    luna16.add_argument("--overwrite", action="store_true", help="replace a dataset in --out")
    lidc = sources.add_parser("lidc", help="LIDC-IDRI DICOM series + reader XML (TCIA folder tree)")
    lidc.add_argument("--input", type=Path, required=True, help="LIDC-IDRI root (patient/study/series)")
    lidc.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    lidc.add_argument("--consensus", type=float, default=0.5,
                      help="share of a nodule's readers that must mark a voxel (default 0.5)")
    lidc.add_argument("--min-readers", type=int, default=1,
                      help="nodules marked by fewer readers stay out of the mask (default 1)")
    lidc.add_argument("--cases", nargs="+", default=None, metavar="ID",
                      help="only these PatientIDs, case ids or SeriesInstanceUIDs")
    lidc.add_argument("--workers", type=int, default=None, help="parallel processes (default: up to 4)")
    lidc.add_argument("--overwrite", action="store_true", help="replace a dataset in --out")
    _add_scan_checks(predict)

    bench = commands.add_parser("bench", help="measure speed and memory")
    bench.add_argument("what", choices=("train", "infer", "evaluate"))
    bench.add_argument("--config", type=Path, default=None, help="YAML config (default: configs/cpu.yaml)")
    bench.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[],
                       metavar="KEY=VALUE",
                       help="override config values, e.g. --set inference.batch_size=4 (repeatable)")
    bench.add_argument("--steps", type=int, default=None, help="timed steps (train)")
    bench.add_argument("--shape", type=int, nargs=3, default=None, metavar=("I", "J", "K"),
                       help="scan shape (infer/evaluate; default 512 512 300)")
    bench.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    bench.add_argument("--max-memory-gb", type=float, default=None, metavar="GB",
                       help="refuse a --shape whose bench is estimated to need more memory "
                            "(default: 80%% of this machine's memory)")

    study = commands.add_parser("study", help="controlled comparisons")
    study_kinds = study.add_subparsers(dest="study", required=True, metavar="STUDY")
    losses = study_kinds.add_parser("losses", help="one model per loss and seed, everything else identical")
    losses.add_argument("--config", type=Path, required=True, help="YAML config shared by every run")
    losses.add_argument("--data", type=Path, required=True,
                        help="dataset folder (training cases; held-out imagesTs/labelsTs if any)")
    losses.add_argument("--out", type=Path, required=True,
                        help="study folder (one run folder per loss and seed, study.csv, study.md)")
    losses.add_argument("--losses", default="bce,dice,hybrid", help="comma-separated loss names")
    losses.add_argument("--seeds", type=int, default=3, help="number of seeds per loss")
    losses.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the config's)")
    losses.add_argument("--target-iou", type=float, default=None, help="validation IoU that defines convergence")
    losses.add_argument("--parallel", type=int, default=1, help="runs at a time (default 1)")
    losses.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[],
                        metavar="KEY=VALUE", help="override config values (repeatable)")
    probe = study_kinds.add_parser(
        "detectability", help="paint nodules of known size and contrast into scans; which does the model find?")
    probe.add_argument("--model", type=Path, required=True, help="run folder (model.keras + config.yaml)")
    probe.add_argument("--input", type=Path, required=True,
                       help="scans to paint into (NIfTI file or folder, or a DICOM series), unseen in training")
    probe.add_argument("--labels", type=Path, default=None,
                       help="their truth masks ({case}.nii.gz): painted nodules keep away from these lesions")
    probe.add_argument("--out", type=Path, required=True,
                       help="output folder (detectability.csv, summary.json, report.md, detectability.png)")
    probe.add_argument("--kinds", default=",".join(DEFAULT_KINDS),
                       help="comma-separated nodule kinds: solid, part_solid, ground_glass (default %(default)s)")
    probe.add_argument("--diameters-mm", type=float, nargs="+", default=list(DEFAULT_DIAMETERS_MM),
                       metavar="MM", help="nodule diameters (default %(default)s)")
    probe.add_argument("--contrasts-hu", type=float, nargs="+", default=list(DEFAULT_CONTRASTS_HU),
                       metavar="HU", help="contrasts above the parenchyma (default %(default)s)")
    probe.add_argument("--per-cell", type=int, default=4,
                       help="nodules per kind x diameter x contrast (default %(default)s)")
    probe.add_argument("--seed", type=int, default=0, help="seed of positions and shapes (default 0)")
    probe.add_argument("--save-scans", action="store_true",
                       help="also write the painted scans and their nodule labels (scans/)")
    probe.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                       help="mirror test-time augmentation on or off (default: the run's inference.tta, "
                            "as lungseg predict)")
    probe.add_argument("--overwrite", action="store_true", help="replace an earlier probe in --out")
    _add_scan_checks(probe)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``lungseg``; returns the exit status."""
    configure_process()
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return _COMMANDS[args.command](args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as error:
        print(f"lungseg {args.command}: error: {_cli_words(args.command, str(error))}", file=sys.stderr)
        return _EXIT_BAD_INPUT
    except MemoryError as error:  # an estimate that missed: still no traceback
        print(f"lungseg {args.command}: failed: out of memory ({error}); lower --max-memory-gb "
              "or use a smaller --window", file=sys.stderr)
        return _EXIT_PARTIAL
    except (RuntimeError, OSError) as error:  # e.g. a diverged loss, a full disk
        print(f"lungseg {args.command}: failed: {_cli_words(args.command, str(error))}", file=sys.stderr)
        return _EXIT_PARTIAL
    except KeyboardInterrupt:
        print(f"lungseg {args.command}: interrupted", file=sys.stderr)
        return 130


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2, default=str))


def _run_demo(args: argparse.Namespace) -> int:
    check_output_dir(args.out, option="--out")
    from pipelines.demo import run_demo  # TensorFlow loads only after the cheap checks

    result = run_demo(out_dir=args.out, quick=args.quick, overwrite=args.overwrite)
    print(result["text"])
    return _EXIT_OK


def _run_phantom(args: argparse.Namespace) -> int:
    check_output_dir(args.out, option="--out")
    estimate = estimate_dataset_bytes(args.out, n_cases=args.cases, n_test=args.test_cases,
                                      size=tuple(args.size) if args.size else None)
    print(f"phantom: {args.cases + max(args.test_cases, 0)} case(s), about "
          f"{format_bytes(estimate['bytes'])} on disk ({format_bytes(estimate['free_bytes'])} free "
          f"in {estimate['checked']})", flush=True)
    out = write_phantom_dataset(
        args.out,
        n_cases=args.cases,
        seed=args.seed,
        size=tuple(args.size) if args.size else None,
        spacing_mm=tuple(args.spacing) if args.spacing else None,
        n_test=args.test_cases,
        overwrite=args.overwrite,
        noise_scale=args.noise_scale,
        kernel=args.kernel,
    )
    print(f"phantom dataset written to {out}")
    return _EXIT_OK


def _run_train(args: argparse.Namespace) -> int:
    overrides = [*args.overrides, *(["data.binarize_labels=true"] if args.binarize_labels else [])]
    config = load_config(args.config, overrides=overrides)
    limits = _limits(args)
    check_training_inputs(config, data_dir=args.data, out_dir=args.out, resume=args.resume,
                          limits=limits)
    from pipelines.train import train  # TensorFlow loads only after the cheap checks

    summary = train(config, data_dir=args.data, out_dir=args.out, resume=args.resume,
                    command_line=["lungseg", *sys.argv[1:]], limits=limits)
    _print_json(summary)
    return _EXIT_OK


def _run_evaluate(args: argparse.Namespace) -> int:
    if args.luna16 is not None or args.candidates is not None:
        return _run_evaluate_luna16(args)
    if args.pred is None or args.truth is None:
        raise ValueError("Expected --pred and --truth (or --luna16 with --candidates). "
                         f"Received: --pred={args.pred}, --truth={args.truth}")
    summary = evaluate(
        pred_dir=args.pred,
        truth_dir=args.truth,
        probs_dir=args.probs,
        out_dir=args.out,
        overwrite=args.overwrite,
        connectivity=args.connectivity,
        match=args.match,
        iou_threshold=args.iou_threshold,
        small_lesion_mm=args.small_lesion_mm,
        size_bins_mm=tuple(args.size_bins_mm),
        tolerance_mm=args.tolerance_mm,
        nodules=args.nodules,
        nodules_frame=args.nodules_frame,
        binarize=args.binarize_labels,
    )
    _print_json(summary)
    return _EXIT_OK


def _run_evaluate_luna16(args: argparse.Namespace) -> int:
    if args.luna16 is None or args.candidates is None:
        raise ValueError("Expected both --luna16 ANNOTATIONS_CSV and --candidates FILE. "
                         f"Received: --luna16={args.luna16}, --candidates={args.candidates}")
    summary = evaluate_luna16(annotations=args.luna16, candidates=args.candidates, out_dir=args.out,
                              excluded=args.excluded, seriesuids=args.seriesuids,
                              n_bootstrap=args.bootstrap, seed=args.seed, overwrite=args.overwrite)
    _print_json({k: v for k, v in summary.items() if k != "curve"})
    return _EXIT_OK


def _run_predict(args: argparse.Namespace) -> int:
    from pipelines.infer import predict  # TensorFlow loads only after the cheap checks

    result = predict(
        model_dir=args.model,
        input_path=args.input,
        out_dir=args.out,
        write_probs=args.probs,
        tta=args.tta,
        threshold=args.threshold,
        min_size_mm3=args.min_size_mm3,
        window=args.window,
        overwrite=args.overwrite,
        luna16_csv=args.luna16_csv,
        limits=_limits(args),
    )
    for line in result["lines"]:
        print(line)
    return _EXIT_PARTIAL if result["failed"] else _EXIT_OK


def _run_import(args: argparse.Namespace) -> int:
    if args.source == "luna16":
        result = importers.import_luna16(input_dir=args.input, annotations=args.annotations,
                                         out_dir=args.out, mask=args.mask, workers=args.workers,
                                         overwrite=args.overwrite)
    else:
        result = importers.import_lidc(input_dir=args.input, out_dir=args.out, consensus=args.consensus,
                                       min_readers=args.min_readers, cases=args.cases,
                                       workers=args.workers, overwrite=args.overwrite)
    for line in result["lines"]:
        print(line)
    return _EXIT_PARTIAL if result["failed"] else _EXIT_OK


def _run_bench(args: argparse.Namespace) -> int:
    if args.out is not None:
        check_output_file(args.out, option="--out", inputs=[("--config", args.config)])
    from pipelines import bench  # TensorFlow loads only after the cheap checks

    result = bench.run_bench(
        args.what,
        config_path=args.config,
        overrides=args.overrides,
        steps=args.steps,
        shape=tuple(args.shape) if args.shape else None,
        out=args.out,
        max_memory_gb=args.max_memory_gb,
    )
    _print_json(result)
    return _EXIT_OK


def _run_study(args: argparse.Namespace) -> int:
    if args.study == "detectability":
        return _run_study_detectability(args)
    check_output_dir(args.out, option="--out", inputs=[("--data", args.data)])
    from pipelines.study import study_losses  # TensorFlow loads only after the cheap checks

    result = study_losses(
        config_path=args.config,
        data_dir=args.data,
        out_dir=args.out,
        losses=[name.strip() for name in args.losses.split(",") if name.strip()],
        n_seeds=args.seeds,
        epochs=args.epochs,
        target_iou=args.target_iou,
        parallel=args.parallel,
        overrides=args.overrides,
    )
    print(result["text"])
    return _EXIT_OK


def _run_study_detectability(args: argparse.Namespace) -> int:
    check_output_dir(args.out, option="--out", inputs=[("--input", args.input), ("--model", args.model)])
    from pipelines.detectability import probe_detectability

    summary = probe_detectability(
        model_dir=args.model, input_path=args.input, out_dir=args.out, labels_dir=args.labels,
        kinds=[name.strip() for name in args.kinds.split(",") if name.strip()],
        diameters_mm=args.diameters_mm, contrasts_hu=args.contrasts_hu, per_cell=args.per_cell,
        seed=args.seed, save_scans=args.save_scans, overwrite=args.overwrite, limits=_limits(args),
        tta=args.tta)
    _print_json({key: summary[key] for key in ("by_kind", "contrast_50_hu", "planned", "painted",
                                               "detected", "out_dir")})
    return _EXIT_OK


_COMMANDS = {
    "demo": _run_demo,
    "phantom": _run_phantom,
    "train": _run_train,
    "evaluate": _run_evaluate,
    "predict": _run_predict,
    "import": _run_import,
    "bench": _run_bench,
    "study": _run_study,
}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
