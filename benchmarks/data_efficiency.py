"""Data efficiency of ImageNet initialisation, and calibration before and after temperature scaling.

Usage: .venv/bin/python benchmarks/data_efficiency.py [--seeds 5] [--sizes 25 50 100 all]
                                                     [--image-size 128] [--quick] [--out DIR] [--data CSV]

About an hour on 2 CPU cores: give ``--out DIR`` to keep the runs, and the same command picks up
where an interrupted one stopped.

Trains EfficientNet-Lite0 through the library, exactly as ``medxfer train`` does (``load_config``,
``validate``, ``train``; every run writes a run directory and the figures are read from its
``metrics.json``), on ``../shared/data/nih-pneumonia-256`` (1,000 chest radiographs, 682
patients). For each seed the patients are split once into train, val and test
(``assign_splits``: patient-grouped, label-stratified, about 1/7 each for val and test, as
``medxfer train`` splits); then, for each size n, n images of each class are drawn from the
training images only (one shuffle per class and seed, so the 25 are part of the 50 and the 50
of the 100), and "all" takes every training image. Each run gets its own manifest with a
``split`` column, so val and test are the same for every size and both initialisations of a
seed: the comparisons are paired.

Two initialisations at the same ``image_size``:

- ``pretrained``: medxfer's defaults (ImageNet weights, ``partial`` fine-tuning of the last 3
  of 7 stages with layer-wise learning-rate decay 0.75, the frozen prefix cached);
- ``random``: ``weights: random``, ``strategy: full`` (frozen random stages would be useless)
  and ``layer_decay: 1.0``: the decay exists to keep pretrained low-level features, and random
  weights have none to keep, so every layer trains at the head's rate (as the random-init row of
  ``domain_adaptation.py`` does).

Everything else is the default except ``validation: holdout`` (the protocol these figures were
measured with, before ``auto`` cross-fitted such sets; both arms share it): ``epochs: auto`` (30 epochs up to 200 training images, 9 for
about 715), patience 5 on the validation AUROC, the ``standard`` augmentation; ``bootstrap: 0``,
since only point figures are read. Both arms get the same epoch budget, the one medxfer chooses;
random weights may want more (the per-run rows show when a run used its whole budget). The default
128 px (instead of 224) keeps the 40 runs near an hour on 2 CPU cores: full fine-tuning from
random weights has no prefix cache, and on all 715 training images of seed 0 it took 5.3 minutes
at 128 px (the pretrained run 0.7), where 224 px trains at about 7.5 img/s. Each run's
temperature is fitted on its own validation logits.

Printed: per-run rows, then (b) test AUROC against training images per class, pretrained and
random, with their paired difference, and (c) test ECE before and after temperature scaling, and
the temperature, per setting; mean +- sample sd over seeds. Test sets hold about 143 images, so
AUROC differences under about 0.03-0.05 are noise.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import yaml

from medxfer.datasets import assign_splits, load_labelled
from medxfer.pipeline.runs.config import load_config
from medxfer.pipeline.training.trainer import train

NIH_MANIFEST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nih-pneumonia-256" / "manifest.csv"
ARMS = {
    "pretrained": {},
    "random": {"weights": "random", "strategy": "full", "layer_decay": 1.0},
}
Row = dict[str, str]


def read_rows(manifest: Path) -> list[Row]:
    """The manifest's rows, each ``path`` made absolute (the run manifests live elsewhere)."""
    with open(manifest, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    return [{**row, "path": os.path.abspath(manifest.parent / row["path"])} for row in rows]


def split_rows(manifest: Path, rows: list[Row], seed: int) -> list[Row]:
    """Every row with its ``split``, grouped by patient and stratified by label, as ``medxfer train``
    splits a manifest without a split column for this seed."""
    scans = assign_splits(load_labelled(manifest), seed=seed)
    split_of = {str(record.path): record.split for record in scans.records}
    return [{**row, "split": split_of[row["path"]]} for row in rows]


def training_subset(rows: list[Row], size: str, seed: int) -> list[Row]:
    """``size`` training images of each class ("all": every one), drawn with ``seed``. The draw is
    one shuffle per class, so smaller subsets are part of larger ones."""
    train_rows = [row for row in rows if row["split"] == "train"]
    if size == "all":
        return train_rows
    rng = np.random.default_rng(seed)
    picked = []
    for label in sorted({row["label"] for row in train_rows}):
        of_class = [row for row in train_rows if row["label"] == label]
        if len(of_class) < int(size):
            raise SystemExit(f"seed {seed} has {len(of_class)} training images of {label}, fewer than {size}")
        picked += [of_class[i] for i in rng.permutation(len(of_class))[: int(size)]]
    return picked


def write_manifest(rows: list[Row], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def run(manifest: Path, out: Path, seed: int, image_size: int, arm: str) -> dict[str, float]:
    """One ``medxfer train`` run through the API; its figures from ``metrics.json``. A run that
    finished in an earlier call with the same ``--out`` is read back instead (``result.json``)."""
    done = out / "result.json"
    if done.is_file():
        return json.loads(done.read_text(encoding="utf-8"))
    config = load_config(None, {"data": str(manifest), "out": str(out), "seed": seed, "image_size": image_size,
                                "bootstrap": 0, "validation": "holdout", **ARMS[arm]}).validate(need_data=True, check_paths=True)
    start = time.perf_counter()
    train(config, log=lambda _: None)
    minutes = (time.perf_counter() - start) / 60
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    epochs_cap = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))["epochs"]  # "auto" resolved
    result = {
        "val_auroc": metrics["val"]["auroc"], "test_auroc": metrics["test"]["auroc"],
        "ece_before": metrics["test"]["ece_uncalibrated"], "ece_after": metrics["test"]["ece"],
        "temperature": metrics["calibration"]["temperature"], "best_epoch": metrics["best_epoch"],
        "epochs_run": metrics["epochs_run"], "epochs_cap": epochs_cap, "minutes": minutes,
        "n_val": metrics["val"]["n"], "n_test": metrics["test"]["n"],
    }
    done.write_text(json.dumps(result), encoding="utf-8")
    return result


def mean_sd(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def print_tables(results: dict[tuple[str, str], list[dict[str, float]]], sizes: list[str]) -> None:
    print("\n(b) test AUROC by training images per class (mean +- sd over seeds; difference paired per seed)")
    print(f"{'per class':<10} {'pretrained':>16} {'random':>16} {'pretrained - random':>20}")
    for size in sizes:
        pre, rnd = results[(size, "pretrained")], results[(size, "random")]
        diff = [p["test_auroc"] - r["test_auroc"] for p, r in zip(pre, rnd, strict=True)]
        print(f"{size:<10} {mean_sd([p['test_auroc'] for p in pre]):>16} "
              f"{mean_sd([r['test_auroc'] for r in rnd]):>16} {mean_sd(diff):>20}")
    print("\n(c) test ECE (15 bins) before and after temperature scaling fitted on validation logits")
    print(f"{'setting':<18} {'ECE before':>16} {'ECE after':>16} {'temperature':>12}")
    for size in sizes:
        for arm in ARMS:
            rows = results[(size, arm)]
            print(f"{size + ' ' + arm:<18} {mean_sd([r['ece_before'] for r in rows]):>16} "
                  f"{mean_sd([r['ece_after'] for r in rows]):>16} "
                  f"{statistics.mean(r['temperature'] for r in rows):>12.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="splits and initialisations to average (default 5)")
    parser.add_argument("--sizes", nargs="+", default=["25", "50", "100", "all"],
                        help="training images per class, or 'all' (default 25 50 100 all)")
    parser.add_argument("--image-size", type=int, default=128, help="network input side, pixels (default 128)")
    parser.add_argument("--quick", action="store_true", help="1 seed, sizes 25 and 100, 64 px: checks the script")
    parser.add_argument("--out", type=Path, help="keep the run directories here (default: a temporary folder); "
                        "rerun with the same --out to skip the runs already finished")
    parser.add_argument("--data", type=Path, default=NIH_MANIFEST, help="manifest (default: the shared NIH set)")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.sizes, args.image_size = 1, ["25", "100"], 64
    for size in args.sizes:
        if size != "all" and not (size.isdigit() and int(size) > 0):
            raise SystemExit(f"--sizes takes positive whole numbers or 'all', got {size!r}")
    if not args.data.is_file():
        raise SystemExit(f"{args.data} is not here: this benchmark needs the NIH set "
                         "(../shared/data/nih-pneumonia-256 beside the repository, or --data)")
    started = time.perf_counter()
    print(f"{datetime.now():%Y-%m-%d %H:%M}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{args.data.parent.name}; EfficientNet-Lite0 at {args.image_size} px, epochs auto, patience 5, "
          f"bootstrap 0, {args.seeds} seed(s), sizes {' '.join(args.sizes)} per class")
    print("pretrained = ImageNet, partial (last 3 stages, layer decay 0.75); "
          "random = random weights, full fine-tuning, layer decay 1.0")
    print(f"{'seed':>4} {'per class':>9} {'arm':<10} {'train':>5} {'val AUROC':>9} {'test AUROC':>10} "
          f"{'ECE before':>10} {'ECE after':>9} {'T':>5} {'epochs best/run/cap':>19} {'min':>5}")
    out_root = args.out or Path(tempfile.mkdtemp(prefix="data-efficiency-"))
    results: dict[tuple[str, str], list[dict[str, float]]] = {(s, a): [] for s in args.sizes for a in ARMS}
    rows = read_rows(args.data)
    try:
        for seed in range(args.seeds):
            split = split_rows(args.data, rows, seed)
            held_out = [row for row in split if row["split"] != "train"]
            for size in args.sizes:
                subset = training_subset(split, size, seed)
                manifest = write_manifest(subset + held_out, out_root / f"seed{seed}-{size}.csv")
                for arm in ARMS:
                    r = run(manifest, out_root / f"seed{seed}-{size}-{arm}", seed, args.image_size, arm)
                    results[(size, arm)].append(r)
                    print(f"{seed:>4} {size:>9} {arm:<10} {len(subset):>5} {r['val_auroc']:>9.3f} "
                          f"{r['test_auroc']:>10.3f} {r['ece_before']:>10.3f} {r['ece_after']:>9.3f} "
                          f"{r['temperature']:>5.2f} {r['best_epoch']:>8}/{r['epochs_run']}/{r['epochs_cap']:<4} "
                          f"{r['minutes']:>5.1f}", flush=True)
            print(f"seed {seed}: val {r['n_val']} images, test {r['n_test']} images", flush=True)
    finally:
        if args.out is None:
            shutil.rmtree(out_root, ignore_errors=True)
    print_tables(results, args.sizes)
    print(f"\nwall time {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
