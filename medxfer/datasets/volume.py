"""Turning a (D, H, W) volume into the 2D input a 2D network takes."""

from __future__ import annotations

import numpy as np

VOLUME_STRATEGIES = ("middle", "mip", "2.5d", "all")


def volume_to_2d(pixels: np.ndarray, strategy: str, *, center: int | None = None) -> np.ndarray:
    """2D view(s) of a (D, H, W) float32 volume, values unchanged (float32, [0, 1] in, same out).

    - ``"middle"``: (H, W), slice ``center`` (default D // 2);
    - ``"mip"``: (H, W), maximum-intensity projection over D;
    - ``"2.5d"``: (3, H, W), slices center-1, center, center+1 as channels, repeating the edge
      slice where a neighbour falls outside the volume;
    - ``"all"``: (D, H, W) copy, each slice a separate image whose predictions are aggregated
      per volume later.

    A 2D (H, W) input is returned as is for ``middle``, ``mip`` and ``all`` and repeated to
    (3, H, W) for ``2.5d``. ``center`` must lie in 0..D-1.
    """
    if strategy not in VOLUME_STRATEGIES:
        raise ValueError(f"unknown volume strategy {strategy!r}: use one of {', '.join(VOLUME_STRATEGIES)}")
    if pixels.ndim == 2:
        return np.stack([pixels] * 3) if strategy == "2.5d" else pixels
    if pixels.ndim != 3:
        raise ValueError(f"expected (H, W) or (D, H, W) pixels, got shape {pixels.shape}")
    depth = pixels.shape[0]
    middle = depth // 2 if center is None else center
    if not 0 <= middle < depth:
        raise ValueError(f"center {middle} out of range for a volume of {depth} slices")
    if strategy == "middle":
        return pixels[middle].copy()
    if strategy == "mip":
        return pixels.max(axis=0)
    if strategy == "2.5d":
        return pixels[np.clip([middle - 1, middle, middle + 1], 0, depth - 1)]
    return pixels.copy()
