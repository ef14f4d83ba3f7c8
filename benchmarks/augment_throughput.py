"""Augmentation throughput per core next to the default backbone's training-step throughput.

Usage: .venv/bin/python benchmarks/augment_throughput.py [--quick] [--image-size 224] [--batch-size 32]

Training images are the first 64 radiographs of ../shared/data/nih-pneumonia-256 when that
folder exists, otherwise a small phantom cohort (DICOM) written to a temporary folder; they are
decoded once before timing, since reading files is covered by scan_throughput.py. For each
augmentation preset it times ``XrayPipeline(InputSpec(image_size), preset)(pixels, seed=i)``
(resize from the stored size, augment, normalise) on one thread in one process. It then times
full fine-tuning steps of efficientnet_lite0 (forward, cross-entropy, backward, AdamW) on all
cores, and forward passes for information. The target is augmentation at least 3x the
training step, so that data preparation never limits training. A last row times the standard
preset from a full-size 3000 x 2500 film, where resizing dominates.
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medxfer.datasets import phantom, read_scan
from medxfer.pipeline.models.classifier import build_classifier
from medxfer.transforms import PRESET_NAMES, InputSpec, XrayPipeline

NIH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nih-pneumonia-256"
BACKBONE = "efficientnet_lite0"
TARGET_RATIO = 3.0
FULL_SIZE_FILM = (3000, 2500)  # rows, columns of a typical full-resolution chest radiograph


def nih_images(count: int) -> list[np.ndarray]:
    """Pixels of the first ``count`` images listed in the NIH manifest."""
    with open(NIH / "manifest.csv", newline="") as handle:
        paths = [NIH / row["path"] for row in csv.DictReader(handle)][:count]
    return [read_scan(path).pixels for path in paths]


def phantom_images(count: int) -> list[np.ndarray]:
    """Pixels of up to ``count`` images of a 20-patient phantom cohort, written to a temporary folder."""
    with tempfile.TemporaryDirectory() as tmp:
        cohort = phantom.generate_cohort(Path(tmp) / "cohort", n_patients=20, seed=0, n_volumes=0)
        paths = sorted((cohort.root / "images").rglob("*.dcm"))[:count]
        return [read_scan(path).pixels for path in paths]


def training_images(count: int) -> tuple[str, list[np.ndarray]]:
    """A description of the source and the decoded pixels of up to ``count`` images."""
    if NIH.is_dir():
        source, images = "NIH chest PNG (nih-pneumonia-256)", nih_images(count)
    else:
        source, images = "phantom DICOM cohort (20 patients)", phantom_images(count)
    sides = [side for image in images for side in image.shape]
    return f"{source}: {len(images)} images, stored sides {min(sides)}-{max(sides)} px", images


def rate(
    call: Callable[[int], None], items_per_call: int, warmup: int, min_calls: int, min_seconds: float
) -> float:
    """Items per second of ``call(i)``, after ``warmup`` untimed calls, over at least
    ``min_calls`` calls and ``min_seconds`` seconds."""
    for i in range(warmup):
        call(i)
    calls, start = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < min_seconds:
        call(calls)
        calls += 1
    return calls * items_per_call / (time.perf_counter() - start)


def augmentation_rate(preset: str, images: list[np.ndarray], image_size: int, quick: bool) -> float:
    """Images per second on the current thread setting for the full per-image path of ``preset``."""
    pipeline = XrayPipeline(InputSpec(image_size=image_size), preset)

    def call(i: int) -> None:
        pipeline(images[i % len(images)], seed=i)

    return rate(call, 1, warmup=8, min_calls=20 if quick else 200, min_seconds=0.5 if quick else 3.0)


def model_rates(image_size: int, batch_size: int, quick: bool) -> tuple[float, float]:
    """(training-step, forward-only) images per second of the backbone on random inputs."""
    model = build_classifier(BACKBONE, 2, weights="random")  # the network medxfer trains
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs = torch.randn(batch_size, 3, image_size, image_size)
    labels = torch.randint(0, 2, (batch_size,))

    def train_step(_: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(inputs), labels).backward()
        optimizer.step()

    def forward(_: int) -> None:
        with torch.inference_mode():
            model(inputs)

    warmup, steps = (1, 2) if quick else (2, 6)
    model.train()
    train = rate(train_step, batch_size, warmup=warmup, min_calls=steps, min_seconds=0.0)
    model.eval()
    infer = rate(forward, batch_size, warmup=warmup, min_calls=steps, min_seconds=0.0)
    return train, infer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and steps, for a smoke run")
    parser.add_argument("--image-size", type=int, default=224, help="side of the network input, pixels")
    parser.add_argument("--batch-size", type=int, default=32, help="training and forward batch size")
    args = parser.parse_args()
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")

    source, images = training_images(16 if args.quick else 64)
    cores = os.cpu_count() or 1
    torch.set_num_threads(1)
    augment = {p: augmentation_rate(p, images, args.image_size, args.quick) for p in PRESET_NAMES}
    # A PACS film is far larger than these files: the resize from full size is the extra cost.
    film = [np.random.default_rng(0).random(FULL_SIZE_FILM, dtype=np.float32)]
    full_size = augmentation_rate("standard", film, args.image_size, args.quick)
    torch.set_num_threads(cores)
    train, infer = model_rates(args.image_size, args.batch_size, args.quick)

    print(f"images: {source}")
    print(f"torch {torch.__version__}, CPU count {cores}; augmentation on 1 thread in 1 process, "
          f"model on {torch.get_num_threads()} threads")
    print(f"{BACKBONE} training step (forward, cross-entropy, backward, AdamW), batch {args.batch_size}, "
          f"{args.image_size} px: {train:.1f} img/s on all cores")
    print(f"{BACKBONE} forward only (eval, inference_mode): {infer:.1f} img/s on all cores")
    print()
    print(f"{'preset':<26} {'augment img/s/core':>18} {'ratio':>7}  target {TARGET_RATIO:.0f}x")
    rows = [*augment.items(), ("standard, {}x{} film".format(*FULL_SIZE_FILM), full_size)]
    for name, per_core in rows:
        ratio = per_core / train
        print(f"{name:<26} {per_core:>18.0f} {ratio:>6.1f}x  {'PASS' if ratio >= TARGET_RATIO else 'FAIL'}")
    print()
    print(f"ratio = augmentation img/s on ONE core / training-step img/s on ALL {cores} cores. Conservative:")
    print(f"counted per core-second, augmentation outpaces the training step by {cores}x the ratio shown.")


if __name__ == "__main__":
    main()
