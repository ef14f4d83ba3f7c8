"""The pixel budget: the most pixels (or voxels) one file may decode to, checked before decoding.

A small file can decode to gigabytes: a 1.5 MB ``.nii.gz`` of zeros that declares 1,200^3
voxels, or a 3 MB JPEG DICOM declaring 50 frames of 8,000 x 8,000 pixels. Each reader counts
what a file will decode to from its header (DICOM Rows x Columns x frames x samples, and the
compressed frames' own sizes; NIfTI's dimensions; a PNG, JPEG or TIFF page's size) and refuses
a file over the budget with an ``UnreadableScanError`` that says so, before allocating anything.

The default, 2^27 = 134,217,728 values, holds a 512 x 512 x 512 CT volume or eight 4,096 x
4,096 films; decoding peaks at about 20 bytes per value (the stored samples, float64 while the
window is applied, float32 out): about 2.7 GB at the budget. Change it per call
(``read_scan(..., max_pixels=N)``, ``--max-pixels N``, ``max_pixels: N`` in a training
configuration) or for every command with ``$MEDXFER_MAX_PIXELS``.
"""

from __future__ import annotations

import os
from pathlib import Path

from medxfer.datasets.scan import UnreadableScanError

DEFAULT_MAX_PIXELS = 2**27
BUDGET_ENV = "MEDXFER_MAX_PIXELS"


def max_pixels(value: int | None = None) -> int:
    """The budget to apply: ``value`` when given, else ``$MEDXFER_MAX_PIXELS``, else the default.
    Raises ValueError for a budget that is not a whole number of 1 or more."""
    if value is None:
        text = os.environ.get(BUDGET_ENV, "").strip()
        if not text:
            return DEFAULT_MAX_PIXELS
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            raise ValueError(f"${BUDGET_ENV} must be a whole number of pixels, got {text!r}") from None
        source = f"${BUDGET_ENV}"
    else:
        source = "max_pixels"
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{source} must be a whole number of pixels, 1 or more, got {value!r}")
    return int(value)


def check_budget(path: Path, count: int, limit: int | None, what: str) -> None:
    """Refuse ``path`` when it would decode to ``count`` values (``what`` says how they were
    counted, e.g. "3 frames of 4000 x 4000 pixels") beyond the budget ``limit``."""
    budget = max_pixels(limit)
    if count > budget:
        raise UnreadableScanError(
            path, f"too large to decode: {what} = {count:,} values, over the pixel budget of {budget:,} "
                  f"(raise it with --max-pixels or ${BUDGET_ENV} if the file is genuine)")
