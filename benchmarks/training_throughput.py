"""Training throughput: the whole input path against the model step alone, and wall time.

Usage:
  .venv/bin/python benchmarks/training_throughput.py [--images 480] [--workers auto] [--image-size 224] [--batch-size 32]
  .venv/bin/python benchmarks/training_throughput.py --wall-time [--scale 5]   # medxfer train on the NIH set
  .venv/bin/python benchmarks/training_throughput.py --gpu                      # CUDA: AMP on and off

Ratios (default): the engine itself (``Trainer.prepare``, ``build_loop``, ``EpochRunner.train``) on the
``--images`` NIH images spread through the set (a phantom cohort without it), default settings otherwise.
End-to-end images/s are divided by model-only images/s measured the same way on inputs
already in memory (same shapes, same threads). Target >= 0.85. Rows:

- ``full fine-tuning, augmented on the fly``: one epoch fed by the DataLoader (augmentation
  with the standard preset every step), against the same epoch's steps on its first batch;
- ``default (partial), filling the prefix cache``: augmenting the decoded images and running
  the frozen prefix on them, against the prefix alone on the same inputs augmented beforehand;
- ``default (partial), epoch from the cache``: one epoch of batches gathered from the cache,
  against the same steps on its first batch.

``--wall-time`` runs ``medxfer train --data ../shared/data/nih-pneumonia-256/manifest.csv``
with the default settings in a subprocess and prints its wall time and AUROCs (``--validation
holdout`` or ``crossfit`` adds that setting; the default, ``auto``, cross-fits up to 1,000
non-test images); ``--scale K``
first copies every NIH image K times (patients renamed per copy) to time a
K x 1000-image set (the copies make that set's AUROC meaningless; only its time counts);
``--subset N`` trains on N images taken evenly through the manifest (e.g. 200, a small study).

``--gpu`` times full fine-tuning steps on CUDA in float32 and with bfloat16 autocast, both
channels-last, and prints the speed-up (skipped without a GPU).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from medxfer.pipeline.models.classifier import build_classifier
from medxfer.pipeline.models.finetune import apply_strategy, parameter_groups
from medxfer.pipeline.models.prefix import split_backbone
from medxfer.pipeline.runs.config import load_config
from medxfer.pipeline.training.prefix_cache import prefix_outputs
from medxfer.pipeline.training.trainer import Trainer

NIH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nih-pneumonia-256"
TARGET = 0.85


def nih_subset(count: int, folder: Path) -> Path:
    """A manifest of ``count`` NIH images taken evenly through the manifest (absolute paths),
    or of a phantom cohort."""
    if not (NIH / "manifest.csv").is_file():
        from medxfer.datasets import phantom

        return phantom.generate_cohort(folder / "cohort", n_patients=max(20, count // 2), seed=0, n_volumes=0).manifest
    rows = nih_rows()
    rows = rows[:: max(1, len(rows) // count)][:count]  # spread over the file, which is sorted by label
    return write_manifest(folder / "subset.csv", [{**row, "path": str(NIH / row["path"])} for row in rows])


def nih_rows() -> list[dict[str, str]]:
    with open(NIH / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def write_manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def first_batches(parts, steps: int):
    """The epoch's first batch, ``steps`` times: the same shapes with no loading at all."""
    batch = next(iter(parts.batches(0)))
    return itertools.repeat(batch, steps)


def ratios(args: argparse.Namespace) -> None:
    print(f"{args.images} images of {'NIH' if (NIH / 'manifest.csv').is_file() else 'a phantom cohort'}, "
          f"{args.image_size} px, batch {args.batch_size}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"workers {args.workers}; "
          f"the engine's own epoch (EpochRunner.train) and prefix cache")
    print(f"{'what':<44} {'end-to-end img/s':>17} {'model-only img/s':>17} {'ratio':>6}  target {TARGET}")

    def report(name: str, end_to_end: float, alone: float) -> None:
        verdict = "PASS" if end_to_end / alone >= TARGET else "FAIL"
        print(f"{name:<44} {end_to_end:>17.1f} {alone:>17.1f} {end_to_end / alone:>6.2f}  {verdict}")

    with tempfile.TemporaryDirectory() as tmp:
        manifest = nih_subset(args.images, Path(tmp))
        for name, settings in (("full fine-tuning, augmented on the fly", {"strategy": "full"}),
                               ("default (partial), epoch from the cache", {})):
            config = load_config(None, {"data": str(manifest), "out": str(Path(tmp) / name.split()[0]), "epochs": 1,
                                        "validation": "holdout", "image_size": args.image_size,
                                        "batch_size": args.batch_size, "workers": args.workers, **settings})
            trainer = Trainer(config.validate(need_data=True), log=lambda _: None)
            data = trainer.prepare()
            execution = trainer.execution
            if data.frozen:
                # Filling the cache: decoded images augmented and run through the frozen prefix,
                # against the prefix alone on the same inputs already augmented in memory.
                prefix = split_backbone(data.model, data.frozen)[0]
                images = data.data.split_images("train")
                # Warm-up (oneDNN kernels, caches) on every batch shape the timed pass will see, a full
                # batch and the last partial one: on CUDA the first call of each new shape costs seconds.
                size = execution.forward_batch
                prefix_outputs(prefix, images[: max(16, size + len(images) % size)], data.augment, 0,
                               seed=trainer.config.seed, execution=execution)
                start = time.perf_counter()
                prefix_outputs(prefix, images, data.augment, 0, seed=trainer.config.seed, execution=execution)
                filled = len(images) / (time.perf_counter() - start)
                inputs = [data.augment(image, seed=i) for i, image in enumerate(images)]
                start = time.perf_counter()
                with torch.no_grad():
                    for first in range(0, len(inputs), size):
                        prefix(execution.to_device(torch.stack(inputs[first : first + size])))
                if trainer.device.type == "cuda":
                    torch.cuda.synchronize()  # kernels run asynchronously: count them all
                report("default (partial), filling the prefix cache", filled,
                       len(inputs) / (time.perf_counter() - start))
            parts = trainer.build_loop(data)
            runner = parts.runner
            steps = runner.schedule.steps
            runner.optimisation.start(warmup=0, total=3 * steps, first_step=0)
            runner.train(0, first_batches(parts, 2))  # warm-up, as above
            end_to_end = runner.train(0, parts.batches(0)).images_per_second
            alone = runner.train(0, first_batches(parts, steps)).images_per_second
            report(name, end_to_end, alone)


def wall_time(args: argparse.Namespace) -> None:
    if not (NIH / "manifest.csv").is_file():
        sys.exit(f"{NIH} is not here: --wall-time needs the shared NIH set")
    with tempfile.TemporaryDirectory() as tmp:
        manifest = NIH / "manifest.csv"
        images = 1000 * args.scale
        if args.subset:
            manifest, images = nih_subset(args.subset, Path(tmp)), args.subset
        elif args.scale > 1:
            copies = []
            for copy in range(args.scale):
                for row in nih_rows():
                    # A copy of the file: a manifest that lists one file twice is refused.
                    path = Path(tmp) / f"copy{copy}" / row["path"]
                    path.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(NIH / row["path"], path)
                    copies.append({**row, "path": str(path), "patient_id": f"{row['patient_id']}-{copy}"})
            manifest = write_manifest(Path(tmp) / "manifest.csv", copies)
        run = Path(tmp) / "run"
        command = [sys.executable, "-m", "medxfer", "train", "--data", str(manifest), "--out", str(run)]
        if args.validation != "auto":
            command += ["--set", f"validation={args.validation}"]
        described = f"{args.subset} images spread through the NIH manifest" if args.subset else "NIH manifest" + (
            f" x{args.scale}" if args.scale > 1 else "")
        print(f"$ medxfer train --data ({described}) --out RUN   (default settings)", flush=True)
        start = time.perf_counter()
        subprocess.run(command, check=True)
        seconds = time.perf_counter() - start
        metrics = json.loads((run / "metrics.json").read_text())
        print(f"{images} images: {seconds / 60:.1f} min wall time on {os.cpu_count()} CPUs; best epoch "
              f"{metrics['best_epoch']} of {metrics['epochs_run']}; val AUROC {metrics['val']['auroc']:.3f}, "
              f"test AUROC {metrics['test']['auroc']:.3f}")


def gpu(args: argparse.Namespace) -> None:
    if not torch.cuda.is_available():
        print("no CUDA GPU: GPU figures skipped")
        return
    device = torch.device("cuda")
    print(f"GPU: {torch.cuda.get_device_name(0)}, full fine-tuning of efficientnet_lite0, batch 64, "
          f"{args.image_size} px, channels-last")
    x = torch.randn(64, 3, args.image_size, args.image_size, device=device).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, 2, (64,), device=device)
    results = {}
    for amp in (False, True):
        model = apply_strategy(build_classifier("efficientnet_lite0", 2), "full").to(device).train()
        model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(parameter_groups(model, lr=1e-4))
        for index in range(args.steps + 5):
            if index == 5:
                torch.cuda.synchronize()
                start = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        torch.cuda.synchronize()
        results[amp] = 64 * args.steps / (time.perf_counter() - start)
        print(f"  {'bfloat16 autocast' if amp else 'float32':<18} {results[amp]:8.0f} img/s")
    print(f"  mixed precision speed-up: {results[True] / results[False]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12, help="GPU steps to time")
    parser.add_argument("--images", type=int, default=480, help="images for the ratios (an NIH subset)")
    parser.add_argument("--workers", default="auto", type=lambda v: v if v == "auto" else int(v),
                        help="DataLoader workers for the ratios (default: auto)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--wall-time", action="store_true")
    parser.add_argument("--scale", type=int, default=1, help="--wall-time: list every NIH image this many times")
    parser.add_argument("--subset", type=int, default=0, help="--wall-time: only N NIH images")
    parser.add_argument("--validation", choices=("auto", "holdout", "crossfit"), default="auto",
                        help="--wall-time: the protocol (default: the default, auto)")
    parser.add_argument("--gpu", action="store_true")
    args = parser.parse_args()
    if args.wall_time:
        wall_time(args)
    elif args.gpu:
        gpu(args)
    else:
        ratios(args)


if __name__ == "__main__":
    main()
