from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from medxfer.transforms.display import RandCLAHE, RandGamma, RandWindowJitter, clahe, gamma_curve, window


def random_image(channels: int = 1, height: int = 32, width: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).random((channels, height, width)).astype(np.float32))


def ramp(n: int = 101) -> torch.Tensor:
    """Values 0, 1/(n-1), ..., 1 in a (1, 1, n) image."""
    return torch.linspace(0.0, 1.0, n).reshape(1, 1, n)


def faint_pattern_on_gradient(size: int = 128) -> np.ndarray:
    """A left-to-right gradient over most of [0, 1] with a faint checker-like pattern on it."""
    yy, xx = np.mgrid[:size, :size] / (size - 1)
    pattern = 0.02 * np.sin(2 * np.pi * 8 * xx) * np.sin(2 * np.pi * 8 * yy)
    return np.clip(0.05 + 0.9 * xx + pattern, 0.0, 1.0)


def local_contrast(image: np.ndarray | torch.Tensor) -> float:
    """Standard deviation of a high-pass residual (image minus its Gaussian blur)."""
    values = np.asarray(image, dtype=np.float64)
    return float((values - gaussian_filter(values, 3)).std())


# --- window ---------------------------------------------------------------------------------


def test_full_window_is_the_identity_on_unit_range_input():
    image = random_image(3)
    out = window(image, 0.5, 1.0)
    assert type(out) is torch.Tensor
    torch.testing.assert_close(out, image, atol=1e-6, rtol=0)


def test_narrow_window_maps_its_edges_to_black_and_white():
    out = window(torch.tensor([[[0.25, 0.5, 0.75]]]), 0.5, 0.5)
    torch.testing.assert_close(out, torch.tensor([[[0.0, 0.5, 1.0]]]), atol=1e-6, rtol=0)


def test_narrow_window_clips_outside_and_is_linear_inside():
    x = ramp()
    out = window(x, 0.5, 0.5)[0, 0].numpy()
    values = x[0, 0].numpy()
    below, above = values < 0.25, values > 0.75
    inside = ~below & ~above
    np.testing.assert_allclose(out[below], 0.0, atol=1e-6)
    np.testing.assert_allclose(out[above], 1.0, atol=1e-6)
    np.testing.assert_allclose(out[inside], (values[inside] - 0.25) / 0.5, atol=1e-6)


@pytest.mark.parametrize("center,width", [(0.3, 0.4), (0.6, 0.2), (0.5, 1.5), (0.45, 0.9)])
def test_window_is_the_clipped_linear_map_of_its_range(center, width):
    x = ramp()
    expected = np.clip((x.numpy() - (center - width / 2)) / width, 0.0, 1.0)
    np.testing.assert_allclose(window(x, center, width).numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("center,width", [(0.3, 0.4), (0.7, 0.1), (0.5, 2.0)])
def test_window_keeps_the_order_of_intensities(center, width):
    values = np.sort(np.random.default_rng(2).random(500)).astype(np.float32)
    out = window(torch.from_numpy(values).reshape(1, 1, -1), center, width)[0, 0].numpy()
    assert np.all(np.diff(out) >= 0)


def test_window_keeps_the_shape_of_a_three_channel_image():
    image = random_image(3, 16, 24)
    assert window(image, 0.4, 0.6).shape == (3, 16, 24)


# --- RandWindowJitter -----------------------------------------------------------------------


def test_jitter_parameters_stay_within_the_ranges():
    transform = RandWindowJitter(center_shift=0.1, width_change=0.3, prob=1.0)
    centers, widths = [], []
    for seed in range(300):
        transform.set_random_state(seed)
        transform.randomize()
        centers.append(transform._center)
        widths.append(transform._width)
    assert min(centers) >= 0.4 and max(centers) <= 0.6
    assert min(widths) >= 1 / 1.3 and max(widths) <= 1.3
    # Both directions are drawn, close to the ends.
    assert min(centers) < 0.41 and max(centers) > 0.59
    assert min(widths) < 1 / 1.3 * 1.03 and max(widths) > 1.3 / 1.03


def test_jitter_width_factor_is_log_uniform():
    # Factor in [1/2, 2]: log-uniform has median 1 and as many narrower as wider windows; a
    # uniform draw would have median 1.25.
    transform = RandWindowJitter(center_shift=0.0, width_change=1.0, prob=1.0)
    widths = []
    for seed in range(300):
        transform.set_random_state(seed)
        transform.randomize()
        widths.append(transform._width)
    assert np.median(widths) == pytest.approx(1.0, abs=0.08)
    assert np.mean(np.array(widths) < 1.0) == pytest.approx(0.5, abs=0.08)


def test_jittered_output_stays_in_unit_range():
    image = random_image(1, 32, 32)
    transform = RandWindowJitter(center_shift=0.2, width_change=1.0, prob=1.0)
    for seed in range(50):
        out = transform.set_random_state(seed)(image)
        assert out.min() >= 0.0 and out.max() <= 1.0


def test_jitter_applies_the_window_it_drew():
    image = random_image(1, 16, 16, seed=4)
    transform = RandWindowJitter(center_shift=0.1, width_change=0.3, prob=1.0).set_random_state(3)
    out = transform(image)
    torch.testing.assert_close(out, window(image, transform._center, transform._width), atol=0, rtol=0)
    assert (out - image).abs().max() > 1e-3


def test_jitter_probability_zero_leaves_the_image_untouched():
    image = random_image(1, 16, 16)
    transform = RandWindowJitter(center_shift=0.2, width_change=0.5, prob=0.0)
    for seed in range(20):
        torch.testing.assert_close(transform.set_random_state(seed)(image), image, atol=0, rtol=0)


def test_jitter_same_seed_same_output_different_seeds_differ():
    image = random_image(1, 16, 16)
    transform = RandWindowJitter(center_shift=0.2, width_change=0.5, prob=1.0)
    first = transform.set_random_state(21)(image)
    torch.testing.assert_close(transform.set_random_state(21)(image), first, atol=0, rtol=0)
    assert (transform.set_random_state(22)(image) - first).abs().max() > 1e-3


# --- clahe ----------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_clahe_keeps_the_shape_and_unit_range(channels):
    image = random_image(channels, 64, 48)
    out = clahe(image, 0.02)
    assert out.shape == (channels, 64, 48)
    assert out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("clip_limit", [0.01, 0.02])
def test_clahe_raises_the_local_contrast_of_a_faint_pattern(clip_limit):
    image = faint_pattern_on_gradient()
    out = clahe(torch.from_numpy(image[None].astype(np.float32)), clip_limit)[0].numpy()
    assert local_contrast(out) > 1.5 * local_contrast(image)


def test_higher_clip_limit_gives_more_local_contrast():
    image = torch.from_numpy(faint_pattern_on_gradient()[None].astype(np.float32))
    contrasts = [local_contrast(clahe(image, clip)[0].numpy()) for clip in (0.005, 0.01, 0.02, 0.05)]
    assert all(a < b for a, b in itertools.pairwise(contrasts)), contrasts


def test_clahe_of_each_channel_equals_clahe_of_that_channel_alone():
    image = torch.stack([
        torch.from_numpy(faint_pattern_on_gradient().astype(np.float32)),
        random_image(1, 128, 128, seed=5)[0],
        torch.from_numpy(faint_pattern_on_gradient().T.copy().astype(np.float32)) * 0.5,
    ])
    out = clahe(image, 0.02)
    for c in range(3):
        torch.testing.assert_close(out[c : c + 1], clahe(image[c : c + 1], 0.02), atol=0, rtol=0)
    # The channels really were different, so the comparison is not between copies.
    assert (out[0] - out[1]).abs().max() > 0.1


def test_clahe_clips_input_outside_unit_range_first():
    image = random_image(1, 32, 32) * 1.6 - 0.3  # about [-0.3, 1.3]
    torch.testing.assert_close(clahe(image, 0.02), clahe(image.clamp(0.0, 1.0), 0.02), atol=0, rtol=0)


def test_clahe_does_not_change_its_input():
    image = random_image(1, 32, 32)
    before = image.clone()
    clahe(image, 0.02)
    torch.testing.assert_close(image, before, atol=0, rtol=0)


# --- RandCLAHE ------------------------------------------------------------------------------


def test_rand_clahe_clip_limit_stays_within_the_range():
    transform = RandCLAHE(clip_range=(0.005, 0.02), prob=1.0)
    clips = []
    for seed in range(200):
        transform.set_random_state(seed)
        transform.randomize()
        clips.append(transform._clip)
    assert min(clips) >= 0.005 and max(clips) <= 0.02
    assert min(clips) < 0.006 and max(clips) > 0.019


def test_rand_clahe_applies_the_clip_limit_it_drew():
    image = torch.from_numpy(faint_pattern_on_gradient(64)[None].astype(np.float32))
    transform = RandCLAHE(clip_range=(0.005, 0.05), prob=1.0).set_random_state(9)
    out = transform(image)
    torch.testing.assert_close(out, clahe(image, transform._clip), atol=0, rtol=0)


def test_rand_clahe_probability_zero_leaves_the_image_untouched():
    image = random_image(1, 32, 32)
    transform = RandCLAHE(clip_range=(0.005, 0.02), prob=0.0)
    for seed in range(20):
        torch.testing.assert_close(transform.set_random_state(seed)(image), image, atol=0, rtol=0)


def test_rand_clahe_same_seed_same_output():
    image = torch.from_numpy(faint_pattern_on_gradient(64)[None].astype(np.float32))
    transform = RandCLAHE(clip_range=(0.005, 0.05), prob=1.0)
    first = transform.set_random_state(13)(image)
    torch.testing.assert_close(transform.set_random_state(13)(image), first, atol=0, rtol=0)


def test_clahe_leaves_a_flat_image_unchanged():
    """scikit-image would stretch a flat image to white; a blank tile must stay as it is."""
    for value in (0.0, 0.2, 1.0):
        flat = torch.full((1, 32, 32), value)
        assert torch.equal(clahe(flat, 0.01), flat)


@pytest.mark.parametrize("gamma", [0.7, 1.0, 1.3])
def test_gamma_curve_is_monai_s_formula_and_keeps_the_range(gamma):
    image = random_image(1, 40, 37, seed=3) * 0.8 + 0.1
    low, high = float(image.min()), float(image.max())
    expected = ((image - low) / (high - low + 1e-7)) ** gamma * (high - low) + low
    out = gamma_curve(image, gamma)
    assert out.dtype == torch.float32 and out.shape == image.shape
    assert torch.allclose(out, expected, atol=1e-6)
    assert float(out.min()) == pytest.approx(low, abs=1e-6) and float(out.max()) == pytest.approx(high, abs=1e-6)


def test_gamma_curve_does_not_depend_on_the_number_of_threads():
    # torch's own pow rounds differently in its vectorised and scalar loops, split by thread
    image = random_image(1, 224, 173, seed=2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = gamma_curve(image, 1.27)
        torch.set_num_threads(2)
        two = gamma_curve(image, 1.27)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


def test_rand_gamma_draws_within_the_range_and_applies_it():
    step = RandGamma((0.8, 1.2), prob=1.0)
    step.set_random_state(seed=4)
    image = random_image(seed=5)
    out = step(image)
    assert 0.8 <= step._gamma <= 1.2 and torch.equal(out, gamma_curve(image, step._gamma))
    never = RandGamma((0.8, 1.2), prob=0.0)
    assert never(image) is image
