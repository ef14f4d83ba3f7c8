"""The augmentation preview of one scan (``medxfer augment-preview``, the demo): the scan decoded
as training decodes it, then drawn through the augmentation several times, as one PNG grid."""

from __future__ import annotations

from pathlib import Path

from medxfer.pipeline.decoding.scans import DecodeSettings, decode_scan
from medxfer.transforms import InputSpec, XrayPipeline, augmentation, preview_grid, write_preview


def write_augment_preview(
    path: Path,
    out: Path,
    *,
    preset: str = "standard",
    overrides: dict[str, str] | None = None,
    draws: int = 11,
    seed: int = 0,
    image_size: int = 224,
    fit: str = "letterbox",
    window: str = "default",
    volume_strategy: str = "middle",
) -> Path:
    """Render the augmentation preview grid of one scan to ``out`` (PNG); returns the path."""
    params = augmentation(preset, overrides)
    spec = InputSpec(image_size=image_size, fit=fit)
    # Decoded as training decodes it: resized to fit, which the pipeline then leaves as it is.
    pixels = decode_scan(path, DecodeSettings(spec, window, volume_strategy))
    return write_preview(preview_grid(pixels, XrayPipeline(spec, params), draws=draws, seed=seed), out)
