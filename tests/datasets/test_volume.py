from __future__ import annotations

import numpy as np
import pytest

from medxfer.datasets.volume import VOLUME_STRATEGIES, volume_to_2d


def numbered_volume(depth: int = 5, height: int = 3, width: int = 4) -> np.ndarray:
    """Slice d is filled with d / 10, so a result shows which slices it came from."""
    return np.broadcast_to(np.arange(depth, dtype=np.float32).reshape(-1, 1, 1) / 10, (depth, height, width)).copy()


def test_strategies_are_the_documented_four():
    assert VOLUME_STRATEGIES == ("middle", "mip", "2.5d", "all")


def test_middle_takes_slice_depth_over_two():
    out = volume_to_2d(numbered_volume(depth=5), "middle")
    assert out.shape == (3, 4)
    np.testing.assert_array_equal(out, np.float32(0.2))


def test_middle_of_even_depth_takes_the_upper_middle():
    np.testing.assert_array_equal(volume_to_2d(numbered_volume(depth=4), "middle"), np.float32(0.2))


def test_middle_honours_center():
    np.testing.assert_array_equal(volume_to_2d(numbered_volume(), "middle", center=1), np.float32(0.1))


def test_middle_returns_a_copy_not_a_view():
    volume = numbered_volume()
    volume_to_2d(volume, "middle")[0, 0] = 9.0
    assert volume.max() < 1.0


def test_mip_is_the_per_pixel_maximum_over_depth():
    volume = np.zeros((4, 2, 2), np.float32)
    volume[0, 0, 0], volume[3, 1, 1], volume[2, 1, 1] = 0.7, 0.4, 0.9
    np.testing.assert_array_equal(volume_to_2d(volume, "mip"), np.array([[0.7, 0], [0, 0.9]], np.float32))


def test_25d_stacks_the_neighbours_of_the_center():
    out = volume_to_2d(numbered_volume(), "2.5d", center=2)
    assert out.shape == (3, 3, 4)
    np.testing.assert_array_equal(out[:, 0, 0], np.float32([0.1, 0.2, 0.3]))


@pytest.mark.parametrize("center,expected", [(0, [0.0, 0.0, 0.1]), (4, [0.3, 0.4, 0.4])])
def test_25d_repeats_the_edge_slice_at_the_volume_ends(center, expected):
    out = volume_to_2d(numbered_volume(depth=5), "2.5d", center=center)
    np.testing.assert_array_equal(out[:, 0, 0], np.float32(expected))


def test_25d_of_a_single_slice_volume_repeats_it():
    out = volume_to_2d(numbered_volume(depth=1), "2.5d")
    assert out.shape == (3, 3, 4)
    np.testing.assert_array_equal(out, np.float32(0.0))


def test_all_returns_every_slice_as_a_copy():
    volume = numbered_volume()
    out = volume_to_2d(volume, "all")
    np.testing.assert_array_equal(out, volume)
    assert not np.shares_memory(out, volume)


@pytest.mark.parametrize("strategy", VOLUME_STRATEGIES)
def test_float32_in_float32_out(strategy):
    assert volume_to_2d(numbered_volume(), strategy).dtype == np.float32


@pytest.mark.parametrize("strategy", ["middle", "mip", "all"])
def test_2d_input_is_returned_unchanged(strategy):
    image = np.random.default_rng(0).random((3, 4)).astype(np.float32)
    np.testing.assert_array_equal(volume_to_2d(image, strategy), image)


def test_2d_input_is_replicated_to_three_channels_for_25d():
    image = np.random.default_rng(1).random((3, 4)).astype(np.float32)
    out = volume_to_2d(image, "2.5d")
    assert out.shape == (3, 3, 4)
    for channel in out:
        np.testing.assert_array_equal(channel, image)


def test_unknown_strategy_lists_the_valid_ones():
    with pytest.raises(ValueError, match="middle, mip, 2.5d, all"):
        volume_to_2d(numbered_volume(), "average")


@pytest.mark.parametrize("center", [-1, 5])
def test_center_outside_the_volume_is_refused(center):
    with pytest.raises(ValueError, match="out of range"):
        volume_to_2d(numbered_volume(depth=5), "middle", center=center)


def test_wrong_dimensionality_is_refused():
    with pytest.raises(ValueError, match="expected"):
        volume_to_2d(np.zeros((2, 3, 4, 5), np.float32), "middle")
