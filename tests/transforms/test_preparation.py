"""Input preparation: aspect-preserving resize, letterbox or crop, channels, normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medxfer.datasets import volume_to_2d
from medxfer.transforms.preparation import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    InputSpec,
    fit_image,
    fitted_size,
    prepare_input,
    to_channel_first,
)


def film(height: int, width: int) -> np.ndarray:
    """A bright rectangle filling the whole image, so its extent after fitting is measurable."""
    return np.full((height, width), 0.8, np.float32)


def bright_extent(image: torch.Tensor) -> tuple[int, int]:
    """(rows, columns) holding any bright pixel, of a (C, S, S) image."""
    mask = image[0] > 0.4
    return int(mask.any(dim=1).sum()), int(mask.any(dim=0).sum())


@pytest.mark.parametrize("height,width", [(400, 300), (300, 400), (2048, 1536), (100, 100), (37, 500)])
def test_letterboxing_keeps_aspect_ratio(height, width):
    image = fit_image(film(height, width), InputSpec(image_size=224, fit="letterbox"))
    assert image.shape == (1, 224, 224)
    rows, cols = bright_extent(image)
    assert max(rows, cols) == 224
    assert rows / cols == pytest.approx(height / width, rel=0.03)


def test_letterbox_border_is_black_and_image_centered():
    image = fit_image(film(400, 200), InputSpec(image_size=100, fit="letterbox"))[0]
    assert torch.all(image[:, :25] == 0) and torch.all(image[:, 75:] == 0)
    assert torch.allclose(image[:, 26:74], torch.tensor(0.8))


def test_center_crop_fills_the_square_and_keeps_the_center():
    pixels = np.zeros((400, 200), np.float32)
    pixels[:, 90:110] = 1.0  # a vertical line through the center
    pixels[:50] = 0.5  # the top, cropped away
    image = fit_image(pixels, InputSpec(image_size=100, fit="crop"))[0]
    assert image.shape == (100, 100)
    assert not torch.any((image - 0.5).abs() < 0.01)  # the top band is gone
    column_means = image.mean(dim=0)
    assert column_means.argmax().item() in range(45, 55)


def test_squash_only_when_asked_and_fills_the_square():
    image = fit_image(film(400, 200), InputSpec(image_size=64, fit="squash"))
    assert bright_extent(image) == (64, 64)
    assert InputSpec().fit == "letterbox"


def test_downscaling_is_antialiased():
    """A one-pixel checkerboard averages to gray instead of aliasing into stripes."""
    checker = (np.indices((512, 512)).sum(axis=0) % 2).astype(np.float32)
    image = fit_image(checker, InputSpec(image_size=64, fit="squash"))
    assert float(image.std()) < 0.02 and float(image.mean()) == pytest.approx(0.5, abs=0.02)


def test_fitted_size_follows_the_longer_or_shorter_side():
    assert fitted_size(400, 300, 224, "letterbox") == (224, 168)
    assert fitted_size(400, 300, 224, "crop") == (299, 224)
    assert fitted_size(400, 300, 224, "squash") == (224, 224)


def test_grayscale_is_replicated_and_normalised_with_the_network_statistics():
    pixels = np.random.default_rng(0).random((50, 50)).astype(np.float32)
    x = prepare_input(pixels, InputSpec(image_size=50))
    assert x.shape == (3, 50, 50) and x.dtype == torch.float32
    for c in range(3):
        expected = (torch.from_numpy(pixels) - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert torch.allclose(x[c], expected, atol=1e-5)


def test_single_channel_network_gets_one_channel_with_its_own_statistics():
    spec = InputSpec(image_size=32, channels=1, mean=(0.5,), std=(0.25,))
    x = prepare_input(np.full((32, 32), 0.75, np.float32), spec)
    assert x.shape == (1, 32, 32)
    assert torch.allclose(x, torch.tensor(1.0))


def test_three_slice_input_keeps_its_slices_as_channels():
    volume = np.stack([np.full((40, 30), v, np.float32) for v in (0.1, 0.2, 0.3, 0.4, 0.5)])
    x = fit_image(volume_to_2d(volume, "2.5d"), InputSpec(image_size=40))
    assert x.shape == (3, 40, 40)
    centre = x[:, 20, 20]
    assert torch.allclose(centre, torch.tensor([0.2, 0.3, 0.4]), atol=1e-5)


def test_three_slice_input_to_a_single_channel_network_is_refused():
    spec = InputSpec(image_size=32, channels=1, mean=(0.5,), std=(0.25,))
    with pytest.raises(ValueError, match="3-channel first convolution"):
        prepare_input(np.zeros((3, 32, 32), np.float32), spec)


@pytest.mark.parametrize(
    "pixels,match",
    [
        (np.zeros((5, 32, 32), np.float32), "turn a volume into 2D"),
        (np.zeros((32,), np.float32), "expected"),
        (np.full((8, 8), np.nan, np.float32), "NaN"),
        (np.zeros((0, 8), np.float32), "empty"),
        (np.zeros((8, 8), np.uint8), "expected float pixels in \\[0, 1\\].*got uint8"),
        (np.full((8, 8), 4095.0, np.float32), "must lie in \\[0, 1\\].*4095"),
        (np.full((8, 8), -0.2, np.float64), "must lie in"),
    ],
)
def test_bad_pixels_are_refused_with_the_reason(pixels, match):
    with pytest.raises(ValueError, match=match):
        prepare_input(pixels, InputSpec(image_size=32))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"image_size": 8}, "image_size"),
        ({"image_size": 224.5}, "whole number of pixels"),
        ({"fit": "stretch"}, "unknown fit"),
        ({"channels": 2, "mean": (0, 0), "std": (1, 1)}, "channels"),
        ({"channels": 1}, "one value per channel"),
        ({"std": (0.2, 0.0, 0.2)}, "positive"),
    ],
)
def test_bad_input_spec_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        InputSpec(**kwargs)


def test_preparation_never_writes_into_the_callers_array():
    pixels = np.random.default_rng(1).random((64, 64)).astype(np.float32)
    before = pixels.copy()
    x = to_channel_first(pixels)
    x += 1
    prepare_input(pixels, InputSpec(image_size=64))
    assert np.array_equal(pixels, before)


def test_flipped_and_strided_views_are_accepted():
    pixels = np.random.default_rng(2).random((40, 30)).astype(np.float32)
    spec = InputSpec(image_size=40)
    assert torch.equal(prepare_input(np.flipud(pixels), spec), prepare_input(np.flipud(pixels).copy(), spec))
    assert prepare_input(pixels[::2, ::-1], spec).shape == (3, 40, 40)
    assert prepare_input(torch.from_numpy(pixels), spec).shape == (3, 40, 40)
