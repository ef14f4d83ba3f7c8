from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from medxfer.transforms.noise import ATTENUATION, RandQuantumNoise, quantum_noise


def uniform(value: float, channels: int = 1, size: int = 256) -> torch.Tensor:
    return torch.full((channels, size, size), value, dtype=torch.float32)


def documented_variance(value: float, photons: float) -> float:
    return 1.0 / (ATTENUATION**2 * photons * math.exp(-ATTENUATION * value))


def noisy(image: torch.Tensor, photons: float, seed: int = 0) -> np.ndarray:
    return quantum_noise(image, photons, np.random.default_rng(seed)).numpy()


# --- ATTENUATION and quantum_noise ------------------------------------------------------------


def test_densest_value_receives_one_fiftieth_of_the_photons():
    assert math.exp(-ATTENUATION * 1.0) == pytest.approx(1 / 50)
    assert math.exp(-ATTENUATION * 0.0) == 1.0


@pytest.mark.parametrize("photons", [2000.0, 20000.0])
@pytest.mark.parametrize("value", [0.2, 0.5, 0.8])
def test_variance_matches_the_documented_model(value, photons):
    out = noisy(uniform(value), photons)
    assert (out > 0).all() and (out < 1).all()  # clipping plays no part
    assert out.var() == pytest.approx(documented_variance(value, photons), rel=0.15)


@pytest.mark.parametrize("value", [0.2, 0.5, 0.8])
def test_mean_stays_close_to_the_value(value):
    out = noisy(uniform(value), 2000.0)
    assert out.mean() == pytest.approx(value, abs=0.005)


def test_more_photons_give_less_variance():
    variances = [noisy(uniform(0.5), photons).var() for photons in (300, 1000, 3000, 10000, 30000)]
    assert all(a > b for a, b in itertools.pairwise(variances)), variances


def test_dense_regions_get_more_noise_than_dark_ones():
    image = torch.full((1, 256, 256), 0.2)
    image[:, :, 128:] = 0.8
    out = noisy(image, 2000.0)
    dark_std, dense_std = out[:, :, :128].std(), out[:, :, 128:].std()
    # Model: the ratio of standard deviations is exp(ATTENUATION * 0.6 / 2) = 50 ** 0.3, about 3.2.
    assert dense_std > 2.5 * dark_std


@pytest.mark.parametrize("channels", [1, 3])
def test_output_is_float32_of_the_same_shape_in_unit_range(channels):
    image = torch.from_numpy(np.random.default_rng(0).random((channels, 40, 30)).astype(np.float32))
    out = quantum_noise(image, 5.0, np.random.default_rng(1))  # very few photons: heavy clipping
    assert type(out) is torch.Tensor
    assert out.dtype == torch.float32
    assert out.shape == image.shape
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_float64_input_gives_float32_output():
    out = quantum_noise(uniform(0.5, size=16).double(), 1000.0, np.random.default_rng(0))
    assert out.dtype == torch.float32


def test_input_outside_unit_range_is_clipped_first():
    image = torch.from_numpy(np.random.default_rng(2).random((1, 32, 32)).astype(np.float32)) * 1.6 - 0.3
    torch.testing.assert_close(
        quantum_noise(image, 1000.0, np.random.default_rng(3)),
        quantum_noise(image.clamp(0.0, 1.0), 1000.0, np.random.default_rng(3)),
        atol=0, rtol=0,
    )


def test_same_rng_seed_gives_identical_output_and_different_seeds_differ():
    image = uniform(0.5, size=64)
    first = noisy(image, 2000.0, seed=5)
    np.testing.assert_array_equal(noisy(image, 2000.0, seed=5), first)
    assert np.abs(noisy(image, 2000.0, seed=6) - first).max() > 1e-3


def test_quantum_noise_does_not_change_its_input():
    image = uniform(0.5, size=32)
    quantum_noise(image, 100.0, np.random.default_rng(0))
    assert (image == 0.5).all()


# --- RandQuantumNoise -------------------------------------------------------------------------


def test_photon_draws_stay_within_the_range_and_are_log_uniform():
    low, high = 500.0, 5000.0
    transform = RandQuantumNoise(photon_range=(low, high), prob=1.0)
    draws = []
    for seed in range(400):
        transform.set_random_state(seed)
        transform.randomize()
        draws.append(transform._photons)
    draws = np.array(draws)
    assert draws.min() >= low and draws.max() <= high
    assert draws.min() < low * 1.05 and draws.max() > high / 1.05
    # Log-uniform: the median is the geometric mean (about 1581), not the arithmetic one (2750).
    assert np.median(draws) == pytest.approx(math.sqrt(low * high), rel=0.15)
    # ... and log(draws) is spread evenly: each third of the log range gets about a third.
    thirds = np.histogram(np.log(draws), bins=3, range=(math.log(low), math.log(high)))[0]
    assert thirds.min() > 0.25 * len(draws)


def test_rand_quantum_noise_probability_zero_is_the_identity():
    image = uniform(0.5, size=32)
    transform = RandQuantumNoise(photon_range=(500.0, 5000.0), prob=0.0)
    for seed in range(20):
        torch.testing.assert_close(transform.set_random_state(seed)(image), image, atol=0, rtol=0)


def test_rand_quantum_noise_probability_one_adds_noise_of_the_drawn_strength():
    image = uniform(0.5)
    transform = RandQuantumNoise(photon_range=(500.0, 5000.0), prob=1.0).set_random_state(8)
    out = transform(image).numpy()
    assert out.var() == pytest.approx(documented_variance(0.5, transform._photons), rel=0.15)


def test_rand_quantum_noise_same_seed_same_output_different_seeds_differ():
    image = uniform(0.5, size=64)
    transform = RandQuantumNoise(photon_range=(500.0, 5000.0), prob=1.0)
    first = transform.set_random_state(31)(image)
    torch.testing.assert_close(transform.set_random_state(31)(image), first, atol=0, rtol=0)
    assert (transform.set_random_state(32)(image) - first).abs().max() > 1e-3
