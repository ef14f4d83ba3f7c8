"""The ``medxfer`` command: one subcommand per step of the pipeline."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medxfer import __version__
from medxfer.datasets import phantom
from medxfer.datasets.inventory import inspect_path
from medxfer.datasets.scan import MedxferWarning
from medxfer.datasets.sources import (
    LAYOUTS,
    ManifestError,
    ScanSet,
    UnreadableFilesError,
    load_labelled,
    looks_like_class_folders,
)
from medxfer.datasets.splits import (
    SPLITS,
    PatientLeakageError,
    SplitError,
    assign_splits,
    split_counts,
    write_splits_csv,
)
from medxfer.datasets.volume import VOLUME_STRATEGIES
from medxfer.filenames import printable, shown

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

MAX_ROWS = 8
# What a user can do after Ctrl-C, per command (outputs are written atomically: none is half-written).
RESUME_HINTS = {
    "predict": "the scans done so far are kept in OUT.parts/: run the same command again to continue",
    "train": "run the same command with --resume to continue from the last finished epoch",
}
PRESET_CHOICES = ("none", "light", "standard", "strong")  # medxfer.transforms.PRESET_NAMES, without importing MONAI


def _format_counts(counts: dict[str, int]) -> str:
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{name} {n}" for name, n in items[:MAX_ROWS])
    if len(items) > MAX_ROWS:
        text += f", ... {len(items) - MAX_ROWS} more"
    return text or "-"


def _print_summary(summary: dict[str, Any]) -> None:
    layouts = {"classes": "class folders", "manifest": "manifest", "unlabelled": "unlabelled folder"}
    print(f"{shown(summary['path'])} (read as: {layouts[summary['layout']]})")
    print(f"  files        {summary['files']} ({summary['readable']} readable, {len(summary['unreadable'])} unreadable)")
    print(f"  format       {_format_counts(summary['by_format'])}")
    print(f"  modality     {_format_counts(summary['by_modality'])}")
    print(f"  photometric  {_format_counts(summary['by_photometric'])}")
    print(f"  size         {_format_counts(summary['by_size'])}")
    print(f"  patients     {summary['patients']} (pseudonymous keys)")
    if "labels" in summary:
        print(f"  labels       {_format_counts(summary['labels'])}")
    if "splits" in summary:
        print(f"  splits       {_format_counts(summary['splits'])}")
    if summary["readable"]:
        coverage = ", ".join(f"{k} {v}" for k, v in summary["coverage"].items())
        print(f"  metadata     (files with a value, of {summary['readable']}) {coverage}")
    if summary["unreadable"]:
        print(f"unreadable files ({len(summary['unreadable'])}):")
        for item in summary["unreadable"]:
            print(f"  {shown(item['path'])}: {item['reason']}")


def _print_splits(scans: ScanSet) -> None:
    counts = split_counts(scans)
    for split in [s for s in SPLITS if s in counts]:
        by_label = counts[split]
        patients = len({r.patient_key or r.path for r in scans.records if r.split == split})
        print(f"  {split:<5} {sum(by_label.values()):>5} images {patients:>5} patients   {_format_counts(by_label)}")


def cmd_inspect(args: argparse.Namespace) -> int:
    summary = inspect_path(args.path, layout=args.layout, decode=args.decode, max_pixels=args.max_pixels)
    if args.json:
        # names that are not printable UTF-8 in the same $'...' quoting as the text output, so that
        # the JSON stays strict (a lone surrogate escape is refused by strict parsers)
        summary = {**summary, "path": shown(summary["path"]),
                   "unreadable": [{**item, "path": shown(item["path"])} for item in summary["unreadable"]]}
        print(json.dumps(summary, indent=2))
        return 0
    _print_summary(summary)
    if args.layout == "auto" and looks_like_class_folders(args.path):
        print("note: the top level holds only folders; if they are classes (not patients or studies), "
              "rerun with --layout classes to see labels")
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    scans = load_labelled(args.path, layout=args.layout, skip_unreadable=args.skip_unreadable,
                          max_pixels=args.max_pixels)
    scans = assign_splits(scans, val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed)
    out = write_splits_csv(scans, args.out)
    _print_splits(scans)
    if scans.unreadable:
        print(f"skipped {len(scans.unreadable)} unreadable file(s):")
        for item in scans.unreadable:
            print(f"  {shown(item.path)}: {item.reason}")
    print(f"wrote {shown(out)}")
    return 0


def cmd_phantom(args: argparse.Namespace) -> int:
    cohort = phantom.generate_cohort(args.out, n_patients=args.patients, seed=args.seed, n_volumes=args.volumes)
    print(
        f"wrote {cohort.n_images} radiographs of {cohort.n_patients} patients and "
        f"{len(cohort.volumes)} NIfTI volumes to {cohort.root}; labels in {cohort.manifest}"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from medxfer.pipeline.cli.demo import DemoSettings, run_demo

    run_demo(args.out, DemoSettings(patients=args.patients, seed=args.seed, image_size=args.image_size,
                                    epochs=args.epochs))
    return 0


def _epochs(text: str) -> int | str:
    """argparse type for --epochs: ``auto`` or a whole number, 1 or more."""
    return text if text == "auto" else positive(text)


def cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import replace
    from datetime import UTC, datetime

    from medxfer.pipeline.runs.config import load_config
    from medxfer.pipeline.training.trainer import train

    flags = {
        "data": args.data, "out": args.out, "backbone": args.backbone, "weights": args.weights,
        "strategy": args.strategy, "adapt": args.adapt, "target_data": args.target_data,
        "augment": args.augment, "epochs": args.epochs, "image_size": args.image_size,
        "batch_size": args.batch_size, "seed": args.seed, "device": args.device,
    }
    flags = {k: (str(v) if isinstance(v, Path) else v) for k, v in flags.items()}
    if args.resume:
        if args.out is None:
            raise ValueError("--resume needs --out RUN_DIR, the run to continue")
        saved = Path(args.out) / "config.yaml"
        config = load_config(args.config or (saved if saved.is_file() else None), flags)
    else:
        config = load_config(args.config, flags)
    if config.out is None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("give --out RUN_DIR when running under torchrun, so every process writes to one run")
        config = replace(config, out=f"runs/train-{datetime.now(UTC):%Y%m%d-%H%M%S}")
    config = config.validate(need_data=True, check_paths=True)
    result = train(config, resume=args.resume)
    print(f"best epoch {result.best_epoch} of {result.epochs_run}, validation AUROC {result.val_auroc:.3f}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from medxfer.pipeline.inference.external import evaluate_run

    evaluate_run(args.run_dir, args.data, args.out, layout=args.layout, bootstrap=args.bootstrap,
                 subgroups=tuple(args.subgroup) or None, intersections=tuple(args.intersection) or None,
                 device=args.device, workers=args.workers, max_pixels=args.max_pixels)
    return 0


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


def cmd_predict(args: argparse.Namespace) -> int:
    from medxfer.pipeline.inference.predict import predict_scans

    predict_scans(args.run_dir, args.scans, args.out, batch_size=args.batch_size, workers=args.workers,
                  device=args.device, threshold=args.threshold, slices=args.slices,
                  slice_aggregate=args.slice_aggregate, chunk=args.chunk, max_pixels=args.max_pixels)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from medxfer.pipeline.inference.export import export_run, sidecar_path

    result = export_run(args.run_dir, args.format, args.out)
    print(f"{result.format}: the exported probabilities are within {result.max_abs_difference:.2g} of PyTorch's "
          f"(tolerance {result.tolerance:g})")
    print(f"wrote {result.path} and {sidecar_path(result.path)}")
    return 0


def write_augment_preview(
    path: Path,
    out: Path,
    *,
    preset: str = "standard",
    overrides: dict[str, str] | None = None,
    draws: int = 11,
    seed: int = 0,
    image_size: int = 224,
    fit: str = "letterbox",
    window: str = "default",
    volume_strategy: str = "middle",
) -> Path:
    """Render the augmentation preview grid of one scan to ``out`` (PNG); returns the path."""
    # Imported here: MONAI takes seconds to import and the other commands do not need it.
    from medxfer.pipeline.decoding.scans import DecodeSettings, decode_scan
    from medxfer.transforms import InputSpec, XrayPipeline, augmentation, preview_grid, write_preview

    params = augmentation(preset, overrides)
    spec = InputSpec(image_size=image_size, fit=fit)
    # Decoded as training decodes it: resized to fit, which the pipeline then leaves as it is.
    pixels = decode_scan(path, DecodeSettings(spec, window, volume_strategy))
    return write_preview(preview_grid(pixels, XrayPipeline(spec, params), draws=draws, seed=seed), out)


def cmd_augment_preview(args: argparse.Namespace) -> int:
    from medxfer.transforms import parse_override

    overrides = dict(parse_override(item) for item in args.set)
    out = write_augment_preview(
        args.path, args.out, preset=args.preset, overrides=overrides, draws=args.draws, seed=args.seed,
        image_size=args.image_size, fit=args.fit, window=args.window, volume_strategy=args.volume_strategy,
    )
    changed = ", ".join(f"{k}={v}" for k, v in overrides.items())
    print(f"preset {args.preset}" + (f" with {changed}" if changed else "")
          + f": {args.draws} random draws of {args.path} at {args.image_size} px")
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medxfer", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"medxfer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

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

    p = sub.add_parser("phantom", help="write a synthetic chest X-ray cohort (DICOM + NIfTI) for trying things out",
                       description="Synthetic CR/DX chest radiographs from three simulated sites, two classes "
                                   "(normal, opacity), a manifest.csv and a few NIfTI volumes. Deterministic.")
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--patients", type=positive, default=80, help="number of patients (default: 80)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--volumes", type=count, default=3, help="number of NIfTI volumes (default: 3)")
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("augment-preview", help="show one scan under several random augmentations",
                       description="Render a grid: the scan as the network will see it, then several random "
                                   "draws of an augmentation preset, so you can check the preset looks like "
                                   "plausible radiographs before training. Presets: none, light, standard, "
                                   "strong; change one parameter with --set NAME=VALUE (see the README table).")
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

    p = sub.add_parser("train", help="train a classifier on a labelled dataset",
                       description="Fine-tune an ImageNet-pretrained backbone on class folders or a manifest, "
                                   "split by patient, with early stopping on validation AUROC. Settings come from "
                                   "--config FILE (YAML) and the flags below, which override it; every other "
                                   "setting is listed in the README. Writes RUN_DIR/config.yaml, model.safetensors, "
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
    p.add_argument("--epochs", type=_epochs, help="auto or a number (default: auto, chosen from the data size)")
    p.add_argument("--image-size", type=positive, help="network input side in pixels")
    p.add_argument("--batch-size", type=positive, help="images per batch (per process under torchrun)")
    p.add_argument("--seed", type=count, help="random seed (default: 0)")
    p.add_argument("--device", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out from its last completed epoch")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="score a trained run on another labelled set (external validation)",
                       description="Score every scan of a labelled folder or manifest with a finished run, using "
                                   "the calibration and threshold fitted on the run's validation split, unchanged. "
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
                   help="'validated' (the run's, chosen on its validation split) or a probability for the "
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
    p.set_defaults(func=cmd_demo)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Print medxfer's own warnings; other libraries' warning text may quote file contents
    (patient identifiers included), so it is not echoed."""
    if issubclass(category, MedxferWarning):
        print(f"medxfer: warning: {message}", file=sys.stderr)


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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 success, 1 a clear error about the data, 2 usage)."""
    args = build_parser().parse_args(argv)
    # Decoder failures are reported per file by medxfer; pydicom's own log of them is noise here,
    # and its messages can quote header values.
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    # File names from a PACS export need not be valid UTF-8: escape rather than stop half-way.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = _show_warning
            return args.func(args)
    except BrokenPipeError:  # `medxfer inspect --json | head`: the reader has gone, not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keep Python's exit flush quiet
        return 0
    except KeyboardInterrupt:
        hint = RESUME_HINTS.get(args.command, "nothing was left half-written")
        if args.command == "predict":
            hint = hint.replace("OUT.parts/", shown(f"{args.out}.parts/"))
        print(f"\nmedxfer {args.command}: interrupted; {hint}", file=sys.stderr)
        return 130
    except (UnreadableFilesError, ManifestError, SplitError, PatientLeakageError, OSError, ValueError) as exc:
        print(printable(f"medxfer {args.command}: error: {exc}"), file=sys.stderr)
        return 1
