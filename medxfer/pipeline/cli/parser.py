"""The ``medxfer`` argument parser: every subcommand, its arguments, their defaults and help.

``docs/hooks.py`` renders the CLI reference from ``build_parser``, so this is where the reference
is written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medxfer import __version__
from medxfer.datasets.sources import LAYOUTS
from medxfer.datasets.volume import VOLUME_STRATEGIES
from medxfer.pipeline.cli.commands import (
    cmd_augment_preview,
    cmd_demo,
    cmd_evaluate,
    cmd_export,
    cmd_inspect,
    cmd_phantom,
    cmd_predict,
    cmd_split,
    cmd_train,
)
from medxfer.pipeline.runs.config_settings import AUTO_CROSSFIT_IMAGES

DESCRIPTION = """\
medxfer turns a small set of labelled scans (DICOM, NIfTI, PNG/JPEG/TIFF) into a classifier you
can defend. Start with `medxfer inspect PATH` to see what is in a folder or manifest, then
`medxfer split PATH` to split it by patient. `medxfer demo` runs everything on a synthetic cohort.
"""

EPILOG = """\
A dataset PATH is one of:
  a folder with one subfolder per class      data/normal/*.dcm, data/opacity/*.dcm
  a CSV manifest (or a folder holding manifest.csv) with columns path,label and optionally
      patient_id, split (train/val/test) and metadata such as sex, age, site, view
  a folder of unlabelled scans, searched recursively (inspect only)
Patient names, IDs, birth dates and accession numbers never appear in any output.
"""

PRESET_CHOICES = ("none", "light", "standard", "strong")  # medxfer.transforms.PRESET_NAMES, without importing MONAI


def build_parser() -> argparse.ArgumentParser:
    """The ``medxfer`` argument parser: one subcommand per step, each calling its ``cmd_*``."""
    parser = argparse.ArgumentParser(
        prog="medxfer", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"medxfer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_inspect, _add_split, _add_phantom, _add_augment_preview, _add_train, _add_evaluate,
                _add_export, _add_predict, _add_demo):
        add(sub)
    return parser


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="count and check the scans in a folder or dataset",
                       description="Read every file's header and report formats, modalities, sizes, labels, "
                                   "metadata coverage and every unreadable file with its reason. Exits 0 when "
                                   "the scan itself worked, even if some files are unreadable.")
    p.add_argument("path", type=Path, help="folder of scans, class folders, or CSV manifest")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--layout", choices=LAYOUTS, default="auto", help="how to read PATH (default: auto)")
    p.add_argument("--decode", action="store_true",
                   help="also decode every image (slower; finds corrupt compressed pixel data)")
    _max_pixels_flag(p)
    p.set_defaults(func=cmd_inspect)


def _add_split(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("split", help="split a labelled dataset by patient into train/val/test",
                       description="Patient-grouped, label-stratified split (a split column in the manifest is "
                                   "honoured); fails if a patient is in two splits. Writes splits.csv.")
    p.add_argument("path", type=Path, help="class folders or CSV manifest")
    p.add_argument("--out", type=Path, default=Path("splits.csv"), help="output CSV (default: splits.csv)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--val-fraction", type=float, default=0.15, help="share for validation (default: 0.15)")
    p.add_argument("--test-fraction", type=float, default=0.15, help="share for test (default: 0.15)")
    p.add_argument("--layout", choices=LAYOUTS, default="auto", help="how to read PATH (default: auto)")
    p.add_argument("--skip-unreadable", action="store_true", help="leave unreadable files out instead of stopping")
    _max_pixels_flag(p)
    p.set_defaults(func=cmd_split)


def _add_phantom(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("phantom", help="write a synthetic chest X-ray cohort (DICOM + NIfTI) for trying things out",
                       description="Synthetic CR/DX chest radiographs from three simulated sites, two classes "
                                   "(normal, opacity), a manifest.csv and a few NIfTI volumes. Deterministic.")
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--patients", type=positive, default=80, help="number of patients (default: 80)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--volumes", type=count, default=3, help="number of NIfTI volumes (default: 3)")
    p.set_defaults(func=cmd_phantom)


def _add_augment_preview(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("augment-preview", help="show one scan under several random augmentations",
                       description="Render a grid: the scan as the network will see it, then several random "
                                   "draws of an augmentation preset, so you can check the preset looks like "
                                   "plausible radiographs before training. Presets: none, light, standard, "
                                   "strong; change one parameter with --set NAME=VALUE (see the preset table in docs/reference/preparation-and-augmentation.md).")
    p.add_argument("path", type=Path, help="one scan: DICOM, NIfTI, PNG, JPEG or TIFF")
    p.add_argument("--preset", choices=PRESET_CHOICES, default="standard", help="augmentation preset (default: standard)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="override one preset parameter, e.g. --set rotation=5 --set gamma=0.9,1.1 (repeatable)")
    p.add_argument("--out", type=Path, default=Path("augment-preview.png"),
                   help="output PNG (default: augment-preview.png)")
    p.add_argument("--draws", type=positive, default=11, help="number of random draws (default: 11)")
    p.add_argument("--seed", type=count, default=0, help="random seed, 0 or more (default: 0)")
    p.add_argument("--image-size", type=positive, default=224, help="network input side in pixels (default: 224)")
    p.add_argument("--fit", choices=("letterbox", "crop", "squash"), default="letterbox",
                   help="how a non-square scan becomes square (default: letterbox, which keeps the aspect ratio)")
    p.add_argument("--window", default="default",
                   help="default, minmax, percentile or CENTER,WIDTH in the scan's units (default: default)")
    p.add_argument("--volume-strategy", choices=[s for s in VOLUME_STRATEGIES if s != "all"], default="middle",
                   help="how a volume or multi-frame scan becomes 2D (default: middle slice)")
    p.set_defaults(func=cmd_augment_preview)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a classifier on a labelled dataset",
                       description="Fine-tune an ImageNet-pretrained backbone on class folders or a manifest, "
                                   f"split by patient: sets of up to {AUTO_CROSSFIT_IMAGES:,} non-test images are "
                                   "cross-fitted "
                                   "(validation: auto; 5 patient-grouped folds whose networks form the model), larger "
                                   "ones hold out a validation split. Settings come from "
                                   "--config FILE (YAML) and the flags below, which override it; every other "
                                   "setting is listed in docs/reference/configuration.md. Writes RUN_DIR/config.yaml, model.safetensors, "
                                   "model.json, history.csv, splits.csv, environment.json, calibration.json, "
                                   "metrics.json, report.html and model_card.md. Several processes "
                                   "or machines: torchrun --nproc_per_node=N -m medxfer train ...")
    p.add_argument("--data", type=Path, help="class folders or CSV manifest (required unless in --config)")
    p.add_argument("--config", type=Path, help="YAML file of settings (flags override it)")
    p.add_argument("--out", type=Path, help="run directory (default: runs/train-DATE-TIME)")
    p.add_argument("--backbone", help="registry backbone (default: efficientnet_lite0)")
    p.add_argument("--weights", help="imagenet, random, or a .safetensors/.pth file (default: imagenet)")
    p.add_argument("--strategy", choices=("linear", "partial", "full", "adapters"), help="which layers train")
    p.add_argument("--adapt", choices=("none", "adabn", "dann"), help="domain adaptation to --target-data")
    p.add_argument("--target-data", type=Path, help="unlabelled scans from the site to adapt to")
    p.add_argument("--augment", choices=PRESET_CHOICES, help="augmentation preset (default: standard)")
    p.add_argument("--validation", choices=("auto", "holdout", "crossfit"),
                   help="holdout (one validation split), crossfit (patient-grouped folds, their networks the model) "
                        f"or auto (default: crossfit up to {AUTO_CROSSFIT_IMAGES:,} non-test images)")
    p.add_argument("--epochs", type=_epochs, help="auto or a number (default: auto, chosen from the data size)")
    p.add_argument("--image-size", type=positive, help="network input side in pixels")
    p.add_argument("--batch-size", type=positive, help="images per batch (per process under torchrun)")
    p.add_argument("--seed", type=count, help="random seed (default: 0)")
    p.add_argument("--device", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out from its last completed epoch")
    p.set_defaults(func=cmd_train)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a trained run on another labelled set (external validation)",
                       description="Score every scan of a labelled folder or manifest with a finished run, using "
                                   "the calibration and threshold fitted on the run's validation data (its validation split, or "
                                   "the out-of-fold predictions of a cross-fitted run), unchanged. "
                                   "Writes metrics.json, report.html, model_card.md, predictions.csv and "
                                   "environment.json (and unreadable.csv for files that could not be read) into "
                                   "--out. Bootstrap intervals resample patients when patient ids exist.")
    p.add_argument("run_dir", type=Path, help="a finished medxfer train run directory")
    p.add_argument("--data", type=Path, required=True, help="labelled class folders or CSV manifest")
    p.add_argument("--out", type=Path, help="output folder (default: RUN_DIR/evaluations/<data set name>)")
    p.add_argument("--layout", choices=LAYOUTS, default="auto", help="how to read --data (default: auto)")
    p.add_argument("--bootstrap", type=count, help="bootstrap resamples for the intervals of average precision, ECE and F1: 0, or 200 or more (default: the run's, 1000)")
    p.add_argument("--subgroup", action="append", default=[], metavar="COLUMN",
                   help="also report this manifest column as a subgroup attribute (repeatable)")
    p.add_argument("--intersection", action="append", default=[], metavar="'A x B'",
                   help="also report the intersection of two attributes, e.g. 'sex x age_band' (repeatable)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--workers", type=count, default=0, help="decoding processes (default: 0, in this process)")
    _max_pixels_flag(p)
    p.set_defaults(func=cmd_evaluate)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a trained run as one TorchScript or ONNX file",
                       description="Write a finished run's network, its calibration and the softmax as one file. "
                                   "Input 'image': float32 (N, C, S, S), scans prepared as medxfer prepares them "
                                   "(resized to fit, C channels, normalised); output 'probabilities': float32 "
                                   "(N, K), calibrated; the batch size N is free. Before anything is written the "
                                   "file is loaded back and compared with PyTorch on random batches of two sizes; "
                                   "FILE.json records the classes, input, calibration, threshold and the weights' "
                                   "SHA-256. ONNX needs pip install 'medxfer[onnx]'.")
    p.add_argument("run_dir", type=Path, help="a finished medxfer train run directory")
    # medxfer.pipeline.inference.export.EXPORT_FORMATS, without importing torch
    p.add_argument("--format", required=True, choices=("torchscript", "onnx"), help="the file format")
    p.add_argument("--out", type=Path, required=True, metavar="FILE",
                   help="the file to write, e.g. model.pt or model.onnx (its sidecar: FILE.json)")
    p.set_defaults(func=cmd_export)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict every scan in a folder or manifest with a trained run",
                       description="Score every scan under SCANS (a folder, searched recursively, or a CSV manifest) "
                                   "prepared exactly as in training, with the run's calibration and validated "
                                   "threshold. Writes one row per readable scan to --out, one row per unreadable "
                                   "file to OUT.errors.csv, and OUT.json (model and configuration hashes). "
                                   "Interrupted? Run the same command again: scans already done are skipped. "
                                   "Several processes: torchrun --nproc_per_node=N -m medxfer predict ...")
    p.add_argument("run_dir", type=Path, help="a finished medxfer train run directory")
    p.add_argument("scans", type=Path, help="folder of scans (DICOM, NIfTI, PNG/JPEG/TIFF) or CSV manifest")
    p.add_argument("--out", type=Path, default=Path("predictions.csv"), help="output CSV (default: predictions.csv)")
    p.add_argument("--batch-size", type=positive, default=32, help="images per network batch (default: 32)")
    p.add_argument("--workers", type=lambda t: t if t == "auto" else count(t), default="auto",
                   help="decoding processes (default: auto, at least 1)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--threshold", type=_threshold, default="validated",
                   help="'validated' (the run's, chosen on its validation data: its validation split or, cross-fitted, "
                        "its out-of-fold predictions) or a probability for the "
                        "positive class (default: validated)")
    p.add_argument("--slices", action="store_true",
                   help="score every slice of a volume (NIfTI, multi-frame DICOM) instead of the one 2D image "
                        "training made of it; one row per volume in --out (the slices aggregated), one per slice "
                        "beside it (predictions.slices.csv for --out predictions.csv)")
    p.add_argument("--slice-aggregate", choices=("mean", "max"), default="mean",
                   help="with --slices: a volume's probabilities are the mean over its slices, or (two classes) "
                        "those of the slice with the highest probability of the positive class (default: mean)")
    p.add_argument("--chunk", type=positive, default=256,
                   help="scans per part file written to OUT.parts/ while the job runs (default: 256)")
    _max_pixels_flag(p)
    p.set_defaults(func=cmd_predict)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline offline on a phantom two-site cohort",
                       description="Generate a phantom cohort of two hospitals, train on site A with the "
                                   "defaults, adapt to site B with AdaBN from unlabelled site-B scans, write the "
                                   "report, validate on held-out site-B patients, and predict a folder of site-B "
                                   "scans with broken files mixed in. A few minutes on 2 CPU cores.")
    p.add_argument("--out", type=Path, default=Path("demo-output"),
                   help="output folder, new or empty (default: demo-output)")
    p.add_argument("--patients", type=positive, default=240, help="number of phantom patients (default: 240)")
    p.add_argument("--seed", type=count, default=0, help="random seed (default: 0)")
    p.add_argument("--image-size", type=positive, default=128,
                   help="network input side in pixels (default: 128, about half the time of 224; "
                        "train's default is 224)")
    p.add_argument("--epochs", type=_epochs, default="auto", help="auto or a number (default: auto)")
    p.add_argument("--crossfit", action="store_true",
                   help="train a cross-fitted ensemble (validation: crossfit, one network per fold) instead of one "
                        "network adapted with AdaBN, which cross-fitting does not combine with")
    p.set_defaults(func=cmd_demo)


def _max_pixels_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-pixels", type=positive, metavar="N",
                        help="refuse, before decoding, a file that would decode to more than N pixels or voxels "
                             "(default: $MEDXFER_MAX_PIXELS, else 134217728 = 2^27)")


def count(text: str) -> int:
    """argparse type: an integer, 0 or more (named so argparse's messages read well)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive(text: str) -> int:
    """argparse type: an integer, 1 or more."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _epochs(text: str) -> int | str:
    """argparse type for --epochs: ``auto`` or a whole number, 1 or more."""
    return text if text == "auto" else positive(text)


def _threshold(text: str) -> str | float:
    """argparse type for --threshold: ``validated`` or a probability."""
    if text == "validated":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'validated' or a probability, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a probability from 0 to 1, got {value}")
    return value
