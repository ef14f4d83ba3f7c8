"""Batch inference: file handling against the model, and memory against the number of files.

Usage:
  .venv/bin/python benchmarks/predict_throughput.py [--run RUN_DIR] [--files 1000] [--big 10000] [--batch-size 32]

1. Throughput ratio (target >= 0.9): ``medxfer predict`` over a folder of ``--files`` DICOM
   radiographs (phantom CR/DX films of 1,000 to 2,900 pixels a side, MONOCHROME1 and 2, written
   once into a temporary folder), images per second from the call's start to the written CSV,
   divided by the same network's images per second on the same scans already prepared in memory
   (same batch size, same threads); each measured twice, interleaved, best of each. The difference is what reading, decoding, resizing and
   writing cost beyond the network.
2. Peak memory for ``--files`` and ``--big`` files (the same films linked several times), each
   ``medxfer predict`` run in its own process: the largest resident set of the main process and of
   its decoding workers. Target: flat.

Without ``--run`` the network is EfficientNet-Lite0 at 224 pixels with its ImageNet weights and
a new two-class head, saved as a run directory (weights do not change speed); with ``--run`` a
real run is used. With a GPU the same command measures it (``--device cuda``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medxfer.datasets import phantom
from medxfer.pipeline.calibration.calibrators import IdentityCalibration
from medxfer.pipeline.decoding.scans import DecodeSettings, decode_scan
from medxfer.pipeline.inference.predict import list_scans, predict_scans
from medxfer.pipeline.models.classifier import build_classifier
from medxfer.pipeline.runs.config import TrainConfig, write_config
from medxfer.pipeline.runs.saving import load_model, save_model
from medxfer.pipeline.runtime.device import resolve_device
from medxfer.transforms.pipeline import XrayPipeline

TARGET = 0.9
MEMORY_PROBE = """
import resource, sys
from medxfer.pipeline.inference.predict import predict_scans
predict_scans(sys.argv[1], sys.argv[2], sys.argv[3], batch_size=int(sys.argv[4]), device=sys.argv[5], log=lambda m: None)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def untrained_run(folder: Path) -> Path:
    """A run directory holding EfficientNet-Lite0 (ImageNet weights, new 2-class head) at 224 px."""
    model = build_classifier("efficientnet_lite0", 2, weights="imagenet")
    spec = model.input_spec(224, "letterbox")
    save_model(model, folder, classes=["normal", "opacity"], spec=spec, strategy="partial",
               extra={"window": "default", "volume_strategy": "middle"})
    write_config(TrainConfig(), folder / "config.yaml")
    state = {"classes": ["normal", "opacity"], "positive_class": "opacity",
             "calibration": IdentityCalibration().fit(np.zeros((2, 2)), np.array([0, 1])).to_dict(),
             "threshold": {"method": "youden", "target_sensitivity": None, "value": 0.5, "chosen_on": "val"}}
    (folder / "calibration.json").write_text(json.dumps(state))
    (folder / "metrics.json").write_text("{}")
    return folder


def dicom_folder(folder: Path, files: int) -> Path:
    """``files`` phantom DICOM films under ``folder/images``."""
    patients = files * 3 // 5 + 8  # 1 to 3 films each, about 2 on average
    summary = phantom.generate_cohort(folder, n_patients=patients, seed=0, n_volumes=0)
    images = sorted((folder / "images").rglob("*.dcm"))
    for extra in images[files:]:
        extra.unlink()
    (summary.manifest).unlink()
    if len(images) < files:
        raise SystemExit(f"the phantom cohort gave {len(images)} films, fewer than {files}")
    return folder / "images"


def linked_copies(source: Path, folder: Path, times: int) -> Path:
    """``source``'s files hard-linked ``times`` times under ``folder`` (copy/0/..., copy/1/...)."""
    for copy in range(times):
        for path in source.rglob("*.dcm"):
            target = folder / str(copy) / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)
    return folder


def model_only(run: Path, scans: Path, batch_size: int, device: torch.device) -> float:
    """Images per second of the network alone on the scans prepared beforehand."""
    model, spec, recipe = load_model(run)
    model.to(device).eval()
    settings = DecodeSettings(spec, recipe.get("window", "default"), recipe.get("volume_strategy", "middle"))
    plain = XrayPipeline(spec, "none")
    _, files, _ = list_scans(scans)
    inputs = [plain(decode_scan(path, settings)) for path in files]
    batches = [torch.stack(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)]
    with torch.no_grad():
        for shape in {tuple(batch.shape): batch for batch in batches}.values():  # warm-up, every batch shape
            model(shape.to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for batch in batches:
            model(batch.to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
    return len(inputs) / (time.perf_counter() - start)


def peak_memory(run: Path, scans: Path, out: Path, batch_size: int, device: str) -> tuple[float, float]:
    """Peak resident MiB of a ``predict`` process and of its largest decoding worker."""
    completed = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(run), str(scans), str(out), str(batch_size),
                                device], capture_output=True, text=True, check=True)
    main_kib, worker_kib = map(int, completed.stdout.split()[-2:])
    return main_kib / 1024, worker_kib / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a finished run directory (default: untrained EfficientNet-Lite0)")
    parser.add_argument("--files", type=int, default=1000, help="files for the throughput ratio (default 1000)")
    parser.add_argument("--big", type=int, default=10000, help="files for the memory comparison (default 10000)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = args.run or untrained_run(tmp / "run")
        print(f"writing {args.files} phantom DICOM films ...", flush=True)
        scans = dicom_folder(tmp / "cohort", args.files)
        start = time.perf_counter()
        predict_scans(run, scans, tmp / "warm.csv", batch_size=args.batch_size, device=args.device, log=lambda m: None)
        print(f"warm-up pass: {args.files / (time.perf_counter() - start):.1f} img/s", flush=True)
        # Interleaved, twice each, best of each: this machine's speed drifts between runs.
        end_to_end, alone = 0.0, 0.0
        for attempt in range(2):
            alone = max(alone, model_only(run, scans, args.batch_size, device))
            start = time.perf_counter()
            predict_scans(run, scans, tmp / f"predictions-{attempt}.csv", batch_size=args.batch_size,
                          device=args.device, log=lambda m: None)
            end_to_end = max(end_to_end, args.files / (time.perf_counter() - start))
        ratio = end_to_end / alone
        print(f"\nthreads {torch.get_num_threads()}, device {device}, batch {args.batch_size}, {args.files} DICOM files")
        print(f"{'what':<44}{'img/s':>10}")
        print(f"{'medxfer predict, folder to CSV':<44}{end_to_end:>10.1f}")
        print(f"{'model only, inputs prepared in memory':<44}{alone:>10.1f}")
        print(f"ratio {ratio:.2f}  target {TARGET}  {'PASS' if ratio >= TARGET else 'FAIL'}\n")
        big = linked_copies(scans, tmp / "big", -(-args.big // args.files))
        rows = []
        for label, folder in ((args.files, scans), (args.big, big)):
            _, files, _ = list_scans(folder)
            main_mib, worker_mib = peak_memory(run, folder, tmp / f"memory-{label}.csv", args.batch_size, args.device)
            rows.append((len(files), main_mib, worker_mib))
        print(f"{'files':>8}{'peak RSS main (MiB)':>22}{'peak RSS worker (MiB)':>24}")
        for files, main_mib, worker_mib in rows:
            print(f"{files:>8}{main_mib:>22.0f}{worker_mib:>24.0f}")
        growth = rows[1][1] / rows[0][1]
        print(f"main-process growth {growth:.2f}x for {rows[1][0] / rows[0][0]:.0f}x the files  target: flat (< 1.2x)  "
              f"{'PASS' if growth < 1.2 else 'FAIL'}")


if __name__ == "__main__":
    main()
