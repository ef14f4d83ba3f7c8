"""A grid of one scan under several random augmentation draws, to look at before training."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from medxfer.files import atomic_write_bytes
from medxfer.transforms.loading import derived_seed
from medxfer.transforms.pipeline import XrayPipeline

LABEL_HEIGHT = 14  # pixels of caption strip above each tile


def _tile(image: np.ndarray, caption: str) -> Image.Image:
    """One grayscale tile with a caption strip; ``image`` is (S, S) in [0, 1]."""
    side = image.shape[0]
    tile = Image.new("L", (side, side + LABEL_HEIGHT), color=40)
    tile.paste(Image.fromarray(np.round(image * 255).astype(np.uint8), mode="L"), (0, LABEL_HEIGHT))
    ImageDraw.Draw(tile).text((3, 1), caption, fill=235)
    return tile


def preview_grid(
    pixels: np.ndarray,
    pipeline: XrayPipeline,
    *,
    draws: int = 11,
    seed: int = 0,
    columns: int = 4,
) -> Image.Image:
    """The prepared scan without augmentation, then ``draws`` augmented versions, as a grid.

    ``pixels`` is (H, W) in [0, 1] or a (3, H, W) 2.5D input (its middle slice is shown).
    Draw ``i`` uses ``derived_seed(seed, 0, i)``: the grid is the same on every run.
    """
    plain = XrayPipeline(pipeline.spec, "none")
    images = [plain.display(pixels)]
    images += [pipeline.display(pixels, seed=derived_seed(seed, 0, i)) for i in range(draws)]
    captions = ["prepared only"] + [f"draw {i + 1}" for i in range(draws)]
    tiles = [_tile(image[image.shape[0] // 2].numpy(), caption) for image, caption in zip(images, captions)]
    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    width, height = tiles[0].size
    gap = 4
    grid = Image.new("L", (columns * width + (columns - 1) * gap, rows * height + (rows - 1) * gap), color=255)
    for n, tile in enumerate(tiles):
        grid.paste(tile, ((n % columns) * (width + gap), (n // columns) * (height + gap)))
    return grid


def write_preview(grid: Image.Image, out: str | Path) -> Path:
    """Write ``grid`` as PNG to ``out`` atomically; returns the path."""
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    return atomic_write_bytes(Path(out), buffer.getvalue())
