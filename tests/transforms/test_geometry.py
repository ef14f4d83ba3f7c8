from __future__ import annotations

import numpy as np
import pytest
import torch

from medxfer.transforms.geometry import RandIsotropicAffine, RandResizedCrop, affine, resized_crop

SIZE = 64


def bright_square(size: int = SIZE, top: int = 28, left: int = 28, side: int = 8, channels: int = 1) -> torch.Tensor:
    image = torch.zeros(channels, size, size)
    image[:, top : top + side, left : left + side] = 1.0
    return image


def asymmetric_pattern(channels: int = 1, size: int = SIZE) -> torch.Tensor:
    """A bright block in the top-right corner and a dimmer bar along the left side: no rotation
    or flip of it equals another."""
    image = torch.zeros(channels, size, size)
    image[:, 8:20, 40:56] = 1.0
    image[:, 24:56, 6:12] = 0.5
    return image


def centered_disc(radius: float = 12.0, size: int = SIZE) -> torch.Tensor:
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    return torch.from_numpy((yy**2 + xx**2 <= radius**2).astype(np.float32))[None]


def centroid(image: torch.Tensor) -> tuple[float, float]:
    """Intensity centroid (row, column) of channel 0."""
    weights = image[0].double().numpy()
    rows, cols = np.mgrid[: weights.shape[0], : weights.shape[1]]
    total = weights.sum()
    return float((rows * weights).sum() / total), float((cols * weights).sum() / total)


def second_moments(image: torch.Tensor) -> tuple[float, float, float]:
    """Central second moments (var along rows, var along columns, covariance) of channel 0."""
    weights = image[0].double().numpy()
    rows, cols = np.mgrid[: weights.shape[0], : weights.shape[1]]
    total = weights.sum()
    r0, c0 = (rows * weights).sum() / total, (cols * weights).sum() / total
    var_r = ((rows - r0) ** 2 * weights).sum() / total
    var_c = ((cols - c0) ** 2 * weights).sum() / total
    cov = ((rows - r0) * (cols - c0) * weights).sum() / total
    return float(var_r), float(var_c), float(cov)


# --- affine ---------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_affine_keeps_the_shape(channels):
    image = asymmetric_pattern(channels)
    out = affine(image, 12.0, 1.1, (0.05, -0.03))
    assert out.shape == image.shape
    assert type(out) is torch.Tensor


@pytest.mark.parametrize("channels", [1, 3])
def test_zero_parameters_keep_the_image(channels):
    image = torch.from_numpy(np.random.default_rng(0).random((channels, 32, 40)).astype(np.float32))
    torch.testing.assert_close(affine(image, 0.0, 1.0, (0.0, 0.0)), image, atol=1e-5, rtol=0)


def test_positive_right_shift_moves_the_content_right_by_that_fraction_of_the_width():
    image = bright_square()
    row0, col0 = centroid(image)
    row1, col1 = centroid(affine(image, 0.0, 1.0, (0.0, 0.1)))
    assert col1 - col0 == pytest.approx(0.1 * SIZE, abs=0.5)
    assert row1 == pytest.approx(row0, abs=0.1)


def test_positive_down_shift_moves_the_content_down_by_that_fraction_of_the_height():
    image = bright_square()
    row0, col0 = centroid(image)
    row1, col1 = centroid(affine(image, 0.0, 1.0, (0.1, 0.0)))
    assert row1 - row0 == pytest.approx(0.1 * SIZE, abs=0.5)
    assert col1 == pytest.approx(col0, abs=0.1)


def test_shift_moves_the_content_by_the_same_distance_either_way():
    image = bright_square()
    _, col0 = centroid(image)
    _, col_plus = centroid(affine(image, 0.0, 1.0, (0.0, 0.1)))
    _, col_minus = centroid(affine(image, 0.0, 1.0, (0.0, -0.1)))
    assert abs(col_plus - col0) == pytest.approx(0.1 * SIZE, abs=0.5)
    assert col_plus - col0 == pytest.approx(-(col_minus - col0), abs=0.1)


def test_positive_90_degrees_turns_the_image_clockwise_as_displayed():
    # Row 0 at the top: clockwise is torch.rot90 with k=-1 over (H, W).
    image = asymmetric_pattern()
    out = affine(image, 90.0, 1.0, (0.0, 0.0))
    clockwise = torch.rot90(image, k=-1, dims=(-2, -1))
    counter_clockwise = torch.rot90(image, k=1, dims=(-2, -1))
    torch.testing.assert_close(out, clockwise, atol=1e-4, rtol=0)
    assert (out - counter_clockwise).abs().max() > 0.5


def test_zoom_above_one_enlarges_the_content():
    image = bright_square(top=24, left=24, side=16)
    area_in = float(image.sum())
    assert float(affine(image, 0.0, 1.25, (0.0, 0.0)).sum()) == pytest.approx(area_in * 1.25**2, rel=0.05)
    assert float(affine(image, 0.0, 0.8, (0.0, 0.0)).sum()) == pytest.approx(area_in * 0.8**2, rel=0.05)


def test_zoom_is_about_the_image_center():
    image = bright_square(top=24, left=24, side=16)  # centered
    row, col = centroid(affine(image, 0.0, 1.3, (0.0, 0.0)))
    assert (row, col) == pytest.approx(((SIZE - 1) / 2, (SIZE - 1) / 2), abs=0.05)


def test_affine_moves_areas_in_from_outside_as_black():
    image = torch.ones(1, SIZE, SIZE)
    out = affine(image, 0.0, 1.0, (0.0, 0.25))
    # A quarter of the columns came from outside the image, on one side.
    dark_columns = (out[0].max(dim=0).values < 1e-6).sum().item()
    assert dark_columns == pytest.approx(0.25 * SIZE, abs=1)
    assert out.min() >= 0.0


def test_affine_treats_each_channel_as_if_alone():
    rng = np.random.default_rng(3)
    image = torch.from_numpy(rng.random((3, 32, 32)).astype(np.float32))
    out = affine(image, 17.0, 0.9, (0.05, -0.07))
    for c in range(3):
        torch.testing.assert_close(out[c : c + 1], affine(image[c : c + 1], 17.0, 0.9, (0.05, -0.07)), atol=1e-6, rtol=0)


# --- RandIsotropicAffine ------------------------------------------------------------------


def test_sampled_parameters_stay_within_the_ranges():
    transform = RandIsotropicAffine(rotation=10.0, scale=0.2, translation=0.05, prob=1.0)
    angles, zooms, shifts = [], [], []
    for seed in range(200):
        transform.set_random_state(seed)
        transform.randomize()
        angles.append(transform._angle)
        zooms.append(transform._zoom)
        assert len(transform._shift) == 2
        shifts.extend(transform._shift)
    assert min(angles) >= -10.0 and max(angles) <= 10.0
    assert min(zooms) >= 0.8 and max(zooms) <= 1.2
    assert min(shifts) >= -0.05 and max(shifts) <= 0.05
    # ... and actually use them, in both directions.
    assert min(angles) < -8.0 and max(angles) > 8.0
    assert min(zooms) < 0.84 and max(zooms) > 1.16
    assert min(shifts) < -0.04 and max(shifts) > 0.04


def test_random_zoom_keeps_a_centered_disc_round():
    image = centered_disc()
    transform = RandIsotropicAffine(rotation=15.0, scale=0.3, translation=0.05, prob=1.0)
    spreads = []
    for seed in range(30):
        out = transform.set_random_state(seed)(image)
        var_r, var_c, cov = second_moments(out)
        assert var_r == pytest.approx(var_c, rel=0.03), f"seed {seed}"
        assert abs(cov) < 0.03 * var_r, f"seed {seed}"
        spreads.append(var_r)
    # The disc's size did change between draws, so the zoom was not a no-op.
    assert max(spreads) / min(spreads) > 1.5


def test_probability_zero_never_changes_the_image():
    image = asymmetric_pattern()
    transform = RandIsotropicAffine(rotation=10.0, scale=0.2, translation=0.05, prob=0.0)
    for seed in range(20):
        torch.testing.assert_close(transform.set_random_state(seed)(image), image, atol=0, rtol=0)


def test_probability_one_always_changes_the_image():
    image = asymmetric_pattern()
    transform = RandIsotropicAffine(rotation=10.0, scale=0.2, translation=0.05, prob=1.0)
    for seed in range(20):
        assert (transform.set_random_state(seed)(image) - image).abs().max() > 1e-2, f"seed {seed}"


def test_same_seed_gives_the_same_output_and_different_seeds_differ():
    image = asymmetric_pattern()
    transform = RandIsotropicAffine(rotation=10.0, scale=0.2, translation=0.05, prob=1.0)
    first = transform.set_random_state(7)(image)
    again = transform.set_random_state(7)(image)
    other = transform.set_random_state(8)(image)
    torch.testing.assert_close(first, again, atol=0, rtol=0)
    assert (first - other).abs().max() > 1e-2


def test_randomize_false_reuses_the_last_draw():
    image = asymmetric_pattern()
    transform = RandIsotropicAffine(rotation=10.0, scale=0.2, translation=0.05, prob=1.0).set_random_state(5)
    first = transform(image)
    torch.testing.assert_close(transform(image, randomize=False), first, atol=0, rtol=0)


def test_all_three_channels_of_a_25d_input_get_the_same_geometry():
    pattern = asymmetric_pattern(1)
    image = pattern.repeat(3, 1, 1)
    transform = RandIsotropicAffine(rotation=15.0, scale=0.2, translation=0.08, prob=1.0)
    for seed in range(10):
        out = transform.set_random_state(seed)(image)
        assert (out[0] - pattern[0]).abs().max() > 1e-2
        torch.testing.assert_close(out[1], out[0], atol=0, rtol=0)
        torch.testing.assert_close(out[2], out[0], atol=0, rtol=0)


# --- resized_crop and RandResizedCrop -------------------------------------------------------


def half_dark_half_bright(size: int = SIZE) -> torch.Tensor:
    image = torch.zeros(1, size, size)
    image[:, :, size // 2 :] = 1.0
    return image


def test_resized_crop_of_the_full_box_returns_the_image():
    image = torch.from_numpy(np.random.default_rng(1).random((3, 32, 48)).astype(np.float32))
    torch.testing.assert_close(resized_crop(image, (0, 0, 32, 48)), image, atol=1e-6, rtol=0)


def test_cropping_the_dark_left_half_gives_a_dark_image():
    out = resized_crop(half_dark_half_bright(), (0, 0, SIZE, SIZE // 2))
    assert out.shape == (1, SIZE, SIZE)
    assert out.abs().max() < 1e-6


def test_cropping_the_bright_right_half_gives_a_bright_image():
    out = resized_crop(half_dark_half_bright(), (0, SIZE // 2, SIZE, SIZE // 2))
    torch.testing.assert_close(out, torch.ones(1, SIZE, SIZE), atol=1e-6, rtol=0)


def test_resized_crop_takes_top_then_left():
    image = torch.zeros(1, SIZE, SIZE)
    image[:, : SIZE // 2, :] = 1.0  # top half bright
    top = resized_crop(image, (0, SIZE // 2, SIZE // 2, SIZE // 2))  # top-right quarter
    bottom = resized_crop(image, (SIZE // 2, 0, SIZE // 2, SIZE // 2))  # bottom-left quarter
    assert top.min() > 1 - 1e-6
    assert bottom.max() < 1e-6


@pytest.mark.parametrize("channels", [1, 3])
def test_random_resized_crop_keeps_the_shape(channels):
    image = asymmetric_pattern(channels)
    transform = RandResizedCrop(min_area=0.5, max_aspect=1.5, prob=1.0)
    for seed in range(5):
        assert transform.set_random_state(seed)(image).shape == image.shape


def _check_boxes(min_area: float, max_aspect: float, height: int, width: int, draws: int = 300):
    transform = RandResizedCrop(min_area=min_area, max_aspect=max_aspect, prob=1.0)
    areas, aspects = [], []
    for seed in range(draws):
        transform.set_random_state(seed)
        transform.randomize()
        top, left, crop_h, crop_w = transform.box(height, width)
        assert 0 <= top and top + crop_h <= height, (seed, top, crop_h)
        assert 0 <= left and left + crop_w <= width, (seed, left, crop_w)
        areas.append(crop_h * crop_w / (height * width))
        aspects.append(crop_w / crop_h)
    # Rounding each side to whole pixels: about 1 px of 224.
    tolerance = 2.0 / min(height, width)
    assert min(areas) >= min_area - tolerance, f"area fraction {min(areas):.3f} < {min_area}"
    assert max(areas) <= 1.0
    assert min(aspects) >= (1 / max_aspect) * (1 - tolerance), f"aspect {min(aspects):.3f}"
    assert max(aspects) <= max_aspect * (1 + tolerance), f"aspect {max(aspects):.3f}"
    return areas, aspects


@pytest.mark.parametrize("min_area,max_aspect", [(0.85, 1.1), (0.75, 1.2), (0.5, 1.5), (0.25, 2.0)])
def test_crop_box_is_inside_with_area_and_aspect_in_range(min_area, max_aspect):
    areas, aspects = _check_boxes(min_area, max_aspect, 224, 224)
    # The draws cover the ranges rather than sitting at one value.
    assert max(areas) - min(areas) > 0.5 * (1 - min_area)
    assert max(aspects) / min(aspects) > max_aspect


def test_crop_area_stays_above_min_area_when_a_wide_draw_hits_the_image_side():
    # min_area > 1 / max_aspect: a draw with area near 1 and aspect near max_aspect is wider
    # than the image; the documented area fraction must still be at least min_area.
    _check_boxes(0.9, 1.5, 224, 224)


def test_random_resized_crop_probability_zero_never_changes_the_image():
    image = asymmetric_pattern()
    transform = RandResizedCrop(min_area=0.5, max_aspect=1.5, prob=0.0)
    for seed in range(20):
        torch.testing.assert_close(transform.set_random_state(seed)(image), image, atol=0, rtol=0)


def test_random_resized_crop_output_is_the_crop_of_its_drawn_box():
    image = asymmetric_pattern()
    transform = RandResizedCrop(min_area=0.5, max_aspect=1.5, prob=1.0).set_random_state(4)
    out = transform(image)
    torch.testing.assert_close(out, resized_crop(image, transform.box(SIZE, SIZE)), atol=0, rtol=0)
    assert (out - image).abs().max() > 1e-2


def test_random_resized_crop_same_seed_same_output_different_seeds_differ():
    image = asymmetric_pattern()
    transform = RandResizedCrop(min_area=0.5, max_aspect=1.5, prob=1.0)
    first = transform.set_random_state(11)(image)
    torch.testing.assert_close(transform.set_random_state(11)(image), first, atol=0, rtol=0)
    assert (transform.set_random_state(12)(image) - first).abs().max() > 1e-2
