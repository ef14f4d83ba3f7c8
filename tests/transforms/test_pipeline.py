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
    distinct = {pipeline(pixels, seed=s).numpy().tobytes() for s in range(8)}
    assert len(distinct) >= 5  # draws where no step fires all equal the plain input


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


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_flat_and_nearly_flat_films_never_give_nan(preset):
    """A blank film (or one with float jitter from resizing) must not divide 0 by 0 anywhere."""
    pipeline = XrayPipeline(InputSpec(image_size=32), preset)
    films = [np.full((64, 48), v, np.float32) for v in (0.0, 0.5, 1.0)]
    films.append((0.5 + 1e-7 * np.random.default_rng(0).random((50, 70))).astype(np.float32))
    for film in films:
        for seed in range(40):
            image = pipeline.display(film, seed=seed)
            assert torch.isfinite(image).all() and image.min() >= 0 and image.max() <= 1


def only(**overrides) -> XrayPipeline:
    """A pipeline running just the named steps, every time."""
    return XrayPipeline(SPEC, augmentation("none", overrides))


def laplacian_energy(image: torch.Tensor) -> float:
    """Mean squared discrete Laplacian: the fine detail of a (C, H, W) image."""
    x = image[0]
    lap = 4 * x[1:-1, 1:-1] - x[:-2, 1:-1] - x[2:, 1:-1] - x[1:-1, :-2] - x[1:-1, 2:]
    return float((lap**2).mean())


def test_sharpening_adds_fine_detail_and_blur_removes_it():
    pixels = chest(64, 64)
    plain = laplacian_energy(XrayPipeline(SPEC, "none").display(pixels))
    sharpened = [laplacian_energy(only(sharpen_prob=1).display(pixels, seed=s)) for s in range(5)]
    blurred = [laplacian_energy(only(blur_prob=1).display(pixels, seed=s)) for s in range(5)]
    assert min(sharpened) > 1.1 * plain
    assert max(blurred) < 0.9 * plain


def test_contrast_keeps_the_mean_and_scales_deviations():
    pixels = np.linspace(0.3, 0.7, 64 * 64, dtype=np.float32).reshape(64, 64)
    plain = XrayPipeline(SPEC, "none").display(pixels)
    for seed in range(5):
        out = only(contrast_prob=1, contrast=0.3).display(pixels, seed=seed)
        assert float(out.mean()) == pytest.approx(float(plain.mean()), abs=1e-5)
        factor = float(out.std() / plain.std())
        assert 0.7 <= factor <= 1.3 and factor != pytest.approx(1.0, abs=1e-4)


def test_brightness_shifts_every_pixel_by_one_amount():
    pixels = np.linspace(0.3, 0.7, 64 * 64, dtype=np.float32).reshape(64, 64)
    plain = XrayPipeline(SPEC, "none").display(pixels)
    for seed in range(5):
        shift = only(brightness_prob=1, brightness=0.1).display(pixels, seed=seed) - plain
        assert float(shift.std()) < 1e-5 and 0 < abs(float(shift.mean())) <= 0.1


def test_histogram_shift_is_a_gentle_monotone_curve():
    pixels = chest(64, 64)
    flat = XrayPipeline(SPEC, "none").display(pixels).flatten()
    order = torch.argsort(flat)
    for seed in range(5):
        out = only(histogram_prob=1, histogram_shift=0.05).display(pixels, seed=seed).flatten()
        assert torch.all(torch.diff(out[order]) >= -1e-6)
        assert 0 < float((out - flat).abs().max()) <= 0.05 + 1e-6


def test_dropout_blacks_out_squares_of_the_given_size():
    pixels = np.full((64, 64), 0.6, np.float32)
    out = only(dropout_prob=1, dropout_holes=1, dropout_size=0.25).display(pixels, seed=0)[0]
    assert int((out == 0).sum()) == 16 * 16
    assert torch.allclose(out[out != 0], torch.tensor(0.6))


def test_noise_stays_off_the_letterbox_border():
    """Inference borders are exactly black; noise on them in training would be a shortcut."""
    pixels = np.full((64, 32), 0.5, np.float32)
    pipeline = only(noise_prob=1, noise_std=0.05, quantum_prob=1, blur_prob=1, sharpen_prob=1)
    for seed in range(5):
        image = pipeline.display(pixels, seed=seed)[0]
        assert torch.all(image[:, :16] == 0) and torch.all(image[:, -16:] == 0)
        assert float(image[:, 20:44].std()) > 0.01


def test_same_seed_gives_the_same_image_whatever_the_thread_count():
    """DataLoader workers run single-threaded, the main process does not."""
    pixels = chest(300, 260)
    pipeline = XrayPipeline(InputSpec(image_size=224), "strong")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = [pipeline(pixels, seed=s) for s in range(6)]
        torch.set_num_threads(2)
        multi = [pipeline(pixels, seed=s) for s in range(6)]
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(single, multi))
