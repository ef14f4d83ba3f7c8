"""Folder-scan throughput: header-only indexing versus decoding every image, in one run.

Usage: .venv/bin/python benchmarks/scan_throughput.py [FOLDER ...]

Without arguments it builds a phantom cohort (DICOM) in a temporary folder and also uses
../shared/data/nih-pneumonia-256 (PNG) when that folder exists. Prints files per second for
`load_scans` (headers only, what `medxfer inspect` does) and with `decode=True`
(what `inspect --decode` does), and their ratio, plus peak memory of each pass.
"""

from __future__ import annotations

import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from medxfer.datasets import phantom
from medxfer.datasets.sources import load_scans

NIH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nih-pneumonia-256" / "images"


def measure(folder: Path, decode: bool) -> tuple[int, float, float]:
    """(files, seconds, peak traced memory in MiB) for indexing ``folder``; timed and traced in two
    separate passes because tracing allocations slows Python down several-fold."""
    start = time.perf_counter()
    scans = load_scans(folder, layout="unlabelled", decode=decode)
    seconds = time.perf_counter() - start
    tracemalloc.start()
    load_scans(folder, layout="unlabelled", decode=decode)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return len(scans.records) + len(scans.unreadable), seconds, peak


def report(name: str, folder: Path) -> None:
    files, header_s, header_mib = measure(folder, decode=False)
    _, decode_s, decode_mib = measure(folder, decode=True)
    print(
        f"{name:<28} {files:>6} files | headers {files / header_s:8.0f} files/s, peak {header_mib:6.1f} MiB"
        f" | decode {files / decode_s:7.0f} files/s, peak {decode_mib:6.1f} MiB | ratio {decode_s / header_s:5.1f}x"
    )


def main(argv: list[str]) -> None:
    folders = [(Path(a).name, Path(a)) for a in argv]
    with tempfile.TemporaryDirectory() as tmp:
        if not folders:
            cohort = phantom.generate_cohort(Path(tmp) / "cohort", n_patients=200, seed=0, n_volumes=0)
            folders.append(("phantom DICOM (CR/DX)", cohort.root / "images"))
            if NIH.is_dir():
                folders.append(("NIH PNG 256px", NIH))
        for name, folder in folders:
            report(name, folder)


if __name__ == "__main__":
    main(sys.argv[1:])
