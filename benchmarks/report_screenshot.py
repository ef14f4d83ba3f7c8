"""Screenshot of a report.html as a browser shows it, with headless Chromium, to check how it reads.

Usage: .venv/bin/python benchmarks/report_screenshot.py REPORT_HTML --out PNG [--height N] [--width N]

The report is meant to be read in a browser, so layout problems (overlapping labels, tables wider
than the page, tiny fonts) only show there. This runs Debian's ``chromium`` headless with a fresh
profile in a temporary folder and no network services, and writes a PNG of the top N pixels of
the page (a tall ``--height`` captures the whole report). Install Chromium with
``apt-get install chromium`` when it is missing.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
TIMEOUT_S = 120
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def find_chromium() -> str:
    """The path of a Chromium executable; exits with an install hint when there is none."""
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    sys.exit("chromium not found: install it with `apt-get install chromium` (Debian/Ubuntu), then run this again")


def screenshot(report: Path, out: Path, *, width: int, height: int) -> Path:
    """Render ``report`` in a ``width`` x ``height`` window and save the PNG at ``out``."""
    chromium = find_chromium()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="medxfer-chromium-") as profile:
        command = [
            chromium,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={out.resolve()}",
            report.resolve().as_uri(),
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    if result.returncode != 0 or not out.is_file():
        sys.exit(f"chromium failed (exit {result.returncode}):\n{result.stderr[-2000:]}")
    return out


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="the report.html to render")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--height", type=int, default=2000, help="window height in pixels (default 2000)")
    parser.add_argument("--width", type=int, default=1280, help="window width in pixels (default 1280)")
    args = parser.parse_args(argv)
    if not args.report.is_file():
        parser.error(f"no such file: {args.report}")
    print(screenshot(args.report, args.out, width=args.width, height=args.height))


if __name__ == "__main__":
    main(sys.argv[1:])
