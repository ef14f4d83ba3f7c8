"""Mapping raw intensities to the [0, 1] display range shared by every reader.

A *window* says how raw values become [0, 1]:

- ``"default"``: the reader's own choice (a DICOM file's first VOI LUT or window; see each reader).
- ``"minmax"``: the smallest value maps to 0 and the largest to 1.
- ``"percentile"``: the 0.5th percentile maps to 0 and the 99.5th to 1, values beyond are clipped.
  Robust to burnt-in markers and collimator edges.
- ``(center, width)``: an explicit linear window in the image's own units (after the DICOM
  modality LUT, i.e. Hounsfield units for CT), with the DICOM LINEAR formula (PS3.3 C.11.2.1.2.1).
"""

from __future__ import annotations

import numpy as np

Window = str | tuple[float, float]

PERCENTILE_RANGE = (0.5, 99.5)
NAMED_WINDOWS = ("default", "minmax", "percentile")


def parse_window(window: Window | str) -> Window:
    """Validate a window spec; also accepts the CLI form ``"CENTER,WIDTH"``."""
    if isinstance(window, str):
        if window in NAMED_WINDOWS:
            return window
        parts = window.split(",")
        if len(parts) == 2:
            try:
                window = (float(parts[0]), float(parts[1]))
            except ValueError:
                pass
        if isinstance(window, str):
            raise ValueError(
                f"unknown window {window!r}: use one of {', '.join(NAMED_WINDOWS)} or CENTER,WIDTH"
            )
    center, width = (float(v) for v in window)
    if not np.isfinite(center) or not np.isfinite(width) or width <= 0:
        raise ValueError(f"window width must be a positive finite number, got center={center}, width={width}")
    return (center, width)


def linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM LINEAR window (PS3.3 C.11.2.1.2.1) mapped to [0, 1] instead of the output bit range."""
    c, w = center - 0.5, max(width - 1.0, np.finfo(np.float32).eps)
    out = (values.astype(np.float64) - c) / w + 0.5
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def rescale_to_unit(values: np.ndarray, window: Window) -> tuple[np.ndarray, str]:
    """Map finite raw ``values`` to float32 [0, 1] with a ``minmax``, ``percentile`` or explicit window.

    Returns the scaled array and a short description of what was done, for ``Scan.meta["window"]``.
    A constant image maps to all zeros rather than dividing by zero.
    """
    window = parse_window(window)
    if isinstance(window, tuple):
        return linear_window(values, *window), f"center={window[0]:g} width={window[1]:g}"
    values = values.astype(np.float64, copy=False)
    if window == "percentile":
        lo, hi = np.percentile(values, PERCENTILE_RANGE)
        label = f"percentile {PERCENTILE_RANGE[0]}-{PERCENTILE_RANGE[1]}"
    elif window in ("minmax", "default"):
        lo, hi = float(values.min()), float(values.max())
        label = "minmax"
    else:  # pragma: no cover - parse_window rejects anything else
        raise ValueError(window)
    if hi <= lo:
        return np.zeros(values.shape, np.float32), f"{label} (constant image)"
    out = np.clip((values - lo) / (hi - lo), 0.0, 1.0)
    return out.astype(np.float32), label
