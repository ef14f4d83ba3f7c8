"""The whole pixels-to-network-input path, with and without augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medxfer.transforms.pipeline import XrayPipeline
from medxfer.transforms.preparation import InputSpec, normalise, prepare_input
from medxfer.transforms.presets import PRESET_NAMES, augmentation

SPEC = InputSpec(image_size=64)


def chest(height: int = 80, width: int = 64, seed: int = 0) -> np.ndarray:
    """A textured image spanning most of [0, 1], portrait like a chest film."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = 0.3 + 0.4 * np.sin(x / 7.0) * np.cos(y / 11.0) + 0.1 * rng.random((height, width))
    return image.clip(0, 1).astype(np.float32)


def left_block(size: int = 64) -> np.ndarray:
    """Black image with a bright block in the left third: its side tells whether it was flipped."""
    image = np.zeros((size, size), np.float32)
    image[size // 3 : 2 * size // 3, 4 : size // 3] = 1.0
    return image


def is_flipped(image: torch.Tensor) -> bool:
    """Whether the block of ``left_block`` ended up on the right: the right third of a (C, S, S)
    image is brighter than the left third (exposure changes shift both alike)."""
    third = image.shape[-1] // 3
    return bool(image[0][:, -third:].mean() > image[0][:, :third].mean())


def test_preset_none_changes_nothing_but_normalisation():
    pixels = chest()
    out = XrayPipeline(SPEC, "none")(pixels, seed=123)
    assert torch.equal(out, prepare_input(pixels, SPEC))
    letterboxed = XrayPipeline(SPEC, "none").display(pixels)
    assert torch.equal(out, normalise(letterboxed.expand(3, -1, -1), SPEC.mean, SPEC.std))


@pytest.mark.parametrize("preset", ["light", "standard", "strong"])
def test_same_seed_same_image_and_different_seeds_differ(preset):
    pipeline = XrayPipeline(SPEC, preset)
    pixels = chest()
    first = pipeline(pixels, seed=7)
    assert torch.equal(first, XrayPipeline(SPEC, preset)(pixels, seed=7))
    assert torch.equal(first, pipeline(pixels, seed=7))  # after other draws in between
    draws = [pipeline(pixels, seed=s) for s in range(8)]
    assert sum(not torch.equal(draws[0], d) for d in draws[1:]) >= 6


@pytest.mark.parametrize("preset", PRESET_NAMES)
@pytest.mark.parametrize("fit", ["letterbox", "crop"])
def test_augmented_images_stay_in_display_range_and_shape(preset, fit):
    pipeline = XrayPipeline(InputSpec(image_size=48, fit=fit), preset)
    for seed in range(10):
        image = pipeline.display(chest(seed=seed), seed=seed)
        assert image.shape == (1, 48, 48) and image.dtype == torch.float32
        assert torch.isfinite(image).all() and image.min() >= 0 and image.max() <= 1


def test_gamma_keeps_range_and_order_of_intensities():
    pixels = chest(64, 64)  # already the input size: no resampling between input and output
    flat = XrayPipeline(SPEC, "none").display(pixels).flatten()
    order = torch.argsort(flat)
    pipeline = XrayPipeline(SPEC, augmentation("none", {"gamma_prob": 1, "gamma": "0.5,2.0"}))
    changed = 0
    for seed in range(5):
        out = pipeline.display(pixels, seed=seed).flatten()
        assert out.min() == pytest.approx(float(flat.min()), abs=1e-5)
        assert out.max() == pytest.approx(float(flat.max()), abs=1e-5)
        assert torch.all(torch.diff(out[order]) >= -1e-6)  # sorted input stays sorted
        changed += not torch.allclose(out, flat, atol=1e-3)
    assert changed == 5


def test_gaussian_noise_raises_variance_by_the_expected_amount():
    """MONAI draws the noise std uniformly from [0, noise_std]: added variance noise_std**2 / 3."""
    pixels = np.full((64, 64), 0.5, np.float32)
    noise_std = 0.04
    pipeline = XrayPipeline(SPEC, augmentation("none", {"noise_prob": 1, "noise_std": noise_std}))
    added = [float(pipeline.display(pixels, seed=s).var()) for s in range(400)]
    assert np.mean(added) == pytest.approx(noise_std**2 / 3, rel=0.15)


def test_affine_at_zero_parameters_keeps_shape_and_image():
    pixels = chest()
    plain = XrayPipeline(SPEC, "none").display(pixels)
    pipeline = XrayPipeline(SPEC, augmentation("none", {"affine_prob": 1}))  # rotation/scale/shift 0
    out = pipeline.display(pixels, seed=3)
    assert out.shape == plain.shape
    assert torch.allclose(out, plain, atol=1e-5)


def test_affine_moves_the_image_when_asked():
    pixels = left_block()
    pipeline = XrayPipeline(SPEC, augmentation("none", {"affine_prob": 1, "rotation": 15, "translation": 0.1}))
    plain = XrayPipeline(SPEC, "none").display(pixels)
    assert all(not torch.allclose(pipeline.display(pixels, seed=s), plain, atol=1e-2) for s in range(5))


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_no_flip_by_default(preset):
    pipeline = XrayPipeline(SPEC, preset)
    assert not any(is_flipped(pipeline.display(left_block(), seed=s)) for s in range(30))


def test_flip_happens_when_the_user_asks_for_it():
    pipeline = XrayPipeline(SPEC, augmentation("none", {"hflip_prob": 0.5}))
    flipped = sum(is_flipped(pipeline.display(left_block(), seed=s)) for s in range(30))
    assert 5 <= flipped <= 25


def test_three_slice_input_shares_one_draw_across_its_slices():
    """Every slice of a 2.5D input moves and changes exposure together."""
    slices = np.stack([chest()] * 3)
    params = augmentation("strong", {"noise_prob": 0, "quantum_prob": 0})
    pipeline = XrayPipeline(SPEC, params)
    for seed in range(5):
        out = pipeline(slices, seed=seed)
        assert out.shape == (3, 64, 64)
        image = pipeline.display(slices, seed=seed)
        assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_letterbox_border_stays_black_under_exposure_changes():
    pixels = np.full((64, 32), 0.5, np.float32)  # letterboxed: black bands left and right
    params = augmentation("none", {"brightness_prob": 1, "brightness": 0.3, "window_prob": 1, "window_center": 0.3})
    pipeline = XrayPipeline(SPEC, params)
    for seed in range(10):
        image = pipeline.display(pixels, seed=seed)[0]
        assert torch.all(image[:, :15] == 0) and torch.all(image[:, -15:] == 0)


def test_augmentation_never_writes_into_the_callers_array():
    pixels = chest()
    before = pixels.copy()
    XrayPipeline(SPEC, augmentation("strong", {"dropout_prob": 1}))(pixels, seed=0)
    assert np.array_equal(pixels, before)
