"""What each ``medxfer`` subcommand does with its parsed arguments (``cmd_*``), and the text
summaries ``inspect`` and ``split`` print. The heavy stages (torch, MONAI) are imported inside the
command that needs them, so ``medxfer inspect`` starts in a fraction of a second."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from medxfer.datasets import phantom
from medxfer.datasets.inventory import inspect_path
from medxfer.datasets.sources import ScanSet, load_labelled, looks_like_class_folders
from medxfer.datasets.splits import SPLITS, assign_splits, split_counts, write_splits_csv
from medxfer.filenames import shown
from medxfer.pipeline.runs.files import CONFIG_FILE

MAX_ROWS = 8


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
                                    epochs=args.epochs, crossfit=args.crossfit))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import replace
    from datetime import UTC, datetime

    from medxfer.pipeline.runs.config import load_config
    from medxfer.pipeline.training.trainer import train

    flags = {
        "data": args.data, "out": args.out, "backbone": args.backbone, "weights": args.weights,
        "strategy": args.strategy, "adapt": args.adapt, "target_data": args.target_data,
        "augment": args.augment, "validation": args.validation, "epochs": args.epochs, "image_size": args.image_size,
        "batch_size": args.batch_size, "seed": args.seed, "device": args.device,
    }
    flags = {k: (str(v) if isinstance(v, Path) else v) for k, v in flags.items()}
    if args.resume:
        if args.out is None:
            raise ValueError("--resume needs --out RUN_DIR, the run to continue")
        saved = Path(args.out) / CONFIG_FILE
        config = load_config(args.config or (saved if saved.is_file() else None), flags)
    else:
        config = load_config(args.config, flags)
    if config.out is None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("give --out RUN_DIR when running under torchrun, so every process writes to one run")
        config = replace(config, out=f"runs/train-{datetime.now(UTC):%Y%m%d-%H%M%S}")
    config = config.validate(need_data=True, check_paths=True)
    result = train(config, resume=args.resume)
    if result.folds:
        print(f"{len(result.folds)} fold networks, kept epochs {', '.join(str(f.best_epoch) for f in result.folds)}; "
              f"out-of-fold AUROC {result.val_auroc:.3f}")
    else:
        print(f"best epoch {result.best_epoch} of {result.epochs_run}, validation AUROC {result.val_auroc:.3f}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from medxfer.pipeline.inference.external import evaluate_run

    evaluate_run(args.run_dir, args.data, args.out, layout=args.layout, bootstrap=args.bootstrap,
                 subgroups=tuple(args.subgroup) or None, intersections=tuple(args.intersection) or None,
                 device=args.device, workers=args.workers, max_pixels=args.max_pixels)
    return 0


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


def cmd_augment_preview(args: argparse.Namespace) -> int:
    from medxfer.pipeline.decoding.preview import write_augment_preview
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
