"""The augmentation preview grid."""

from __future__ import annotations

import numpy as np
from PIL import Image

from medxfer.transforms.loading import derived_seed
from medxfer.transforms.pipeline import XrayPipeline
from medxfer.transforms.preparation import InputSpec
from medxfer.transforms.preview import LABEL_HEIGHT, preview_grid, write_preview


def tiles(grid: Image.Image, side: int, columns: int, count: int) -> list[np.ndarray]:
    """The image part of each tile, as uint8 arrays, in reading order."""
    pixels = np.asarray(grid)
    step_x, step_y = side + 4, side + LABEL_HEIGHT + 4
    return [
        pixels[(n // columns) * step_y + LABEL_HEIGHT :][:side, (n % columns) * step_x :][:, :side]
        for n in range(count)
    ]


def test_grid_shows_the_prepared_scan_then_each_draw():
    pixels = np.random.default_rng(0).random((60, 40)).astype(np.float32)
    pipeline = XrayPipeline(InputSpec(image_size=32), "strong")
    grid = preview_grid(pixels, pipeline, draws=5, seed=2, columns=3)
    assert grid.size == (3 * 32 + 2 * 4, 2 * (32 + LABEL_HEIGHT) + 4)
    shown = tiles(grid, 32, 3, 6)
    plain = XrayPipeline(InputSpec(image_size=32), "none").display(pixels)[0].numpy()
    assert np.array_equal(shown[0], np.round(plain * 255).astype(np.uint8))
    for i in range(5):
        draw = pipeline.display(pixels, seed=derived_seed(2, 0, i))[0].numpy()
        assert np.array_equal(shown[i + 1], np.round(draw * 255).astype(np.uint8))
    assert len({tile.tobytes() for tile in shown}) == 6


def test_three_slice_input_shows_its_middle_slice():
    slices = np.stack([np.full((32, 32), v, np.float32) for v in (0.0, 0.6, 1.0)])
    grid = preview_grid(slices, XrayPipeline(InputSpec(image_size=32), "none"), draws=1)
    assert np.all(tiles(grid, 32, 4, 1)[0] == 153)  # 0.6 * 255


def test_preview_is_written_as_png(tmp_path):
    grid = preview_grid(np.zeros((20, 20), np.float32), XrayPipeline(InputSpec(image_size=16)), draws=2)
    out = write_preview(grid, tmp_path / "sub" / "grid.png")
    assert Image.open(out).format == "PNG" and Image.open(out).size == grid.size
    assert [p.name for p in out.parent.iterdir()] == ["grid.png"]  # no temporary file left
