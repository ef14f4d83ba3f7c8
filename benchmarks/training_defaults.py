"""How the defaults of ``medxfer train`` were chosen: strategies and settings on the NIH set.

Usage: .venv/bin/python benchmarks/training_defaults.py [--seeds 0 1] [--only NAME ...]

Trains EfficientNet-Lite0 on ``../shared/data/nih-pneumonia-256`` (1,000 chest radiographs,
patient-grouped split; the seed also changes the split) with the default settings except the
ones each row names and ``validation: holdout`` (the protocol the table was measured with, before
``validation: auto`` cross-fitted sets of this size), and prints validation and test AUROC of the kept network and the wall
time of each run, then the mean over seeds. 1 to 3.5 minutes per run on 2 CPU cores; the whole
table (7 settings x 2 seeds) about 30 minutes. Test sets hold about 143 images, so differences
under about 0.03 are noise; look for what holds across seeds.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from medxfer.pipeline.runs.config import load_config
from medxfer.pipeline.training.trainer import train

NIH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nih-pneumonia-256"
SETTINGS = {
    "linear": {"strategy": "linear"},
    "partial 1": {"trainable_stages": 1},
    "partial 2": {"trainable_stages": 2},
    "partial 3 (default)": {},
    "partial 4": {"trainable_stages": 4},
    "partial 3, 192 px": {"image_size": 192},
    "partial 2, lr 3e-4": {"trainable_stages": 2, "lr": 3e-4},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--only", nargs="+", choices=list(SETTINGS), help="run only these rows")
    args = parser.parse_args()
    if not (NIH / "manifest.csv").is_file():
        raise SystemExit(f"{NIH} is not here: this benchmark needs the shared NIH set")
    rows = args.only or list(SETTINGS)
    print(f"NIH pneumonia, 1,000 images, EfficientNet-Lite0, defaults except as named; seeds {args.seeds}")
    print(f"{'setting':<22} {'seed':>4} {'val AUROC':>10} {'test AUROC':>11} {'best epoch':>11} {'minutes':>8}")
    summary = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in rows:
            results = []
            for seed in args.seeds:
                out = Path(tmp) / f"{name.replace(' ', '_')}-{seed}"
                config = load_config(None, {"data": str(NIH / "manifest.csv"), "out": str(out), "seed": seed,
                                            "validation": "holdout", **SETTINGS[name]}).validate(need_data=True)
                start = time.perf_counter()
                train(config, log=lambda _: None)
                minutes = (time.perf_counter() - start) / 60
                metrics = json.loads((out / "metrics.json").read_text())
                results.append((metrics["val"]["auroc"], metrics["test"]["auroc"], minutes))
                print(f"{name:<22} {seed:>4} {results[-1][0]:>10.3f} {results[-1][1]:>11.3f} "
                      f"{metrics['best_epoch']:>11} {minutes:>8.1f}", flush=True)
            summary[name] = np.array(results)
    print(f"\n{'setting':<22} {'val AUROC':>16} {'test AUROC':>16} {'minutes':>8}   (mean +- sd over seeds)")
    for name, values in summary.items():
        mean, sd = values.mean(axis=0), values.std(axis=0)
        print(f"{name:<22} {mean[0]:>8.3f} +- {sd[0]:.3f} {mean[1]:>8.3f} +- {sd[1]:.3f} {mean[2]:>8.1f}")


if __name__ == "__main__":
    main()
