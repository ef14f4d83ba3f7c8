from __future__ import annotations

import numpy as np
import pytest

from medxfer.datasets.intensity import linear_window, parse_window, rescale_to_unit


def test_window_given_as_center_comma_width_is_parsed():
    assert parse_window("40,400") == (40.0, 400.0)
    assert parse_window("percentile") == "percentile"


@pytest.mark.parametrize("bad", ["lung", "40", "40,0", (10, -1), "a,b"])
def test_bad_windows_are_refused(bad):
    with pytest.raises(ValueError):
        parse_window(bad)


def test_linear_window_follows_the_dicom_formula():
    values = np.array([-1000.0, 39.5, 40.0, 239.0, 1000.0])
    out = linear_window(values, 40.0, 400.0)
    np.testing.assert_allclose(out, [0.0, 0.5, (40 - 39.5) / 399 + 0.5, (239 - 39.5) / 399 + 0.5, 1.0], atol=1e-6)


def test_minmax_and_percentile_map_onto_zero_one():
    values = np.arange(1000, dtype=np.float64)
    minmax, _ = rescale_to_unit(values, "minmax")
    assert minmax[0] == 0 and minmax[-1] == 1
    percentile, label = rescale_to_unit(values, "percentile")
    assert np.sum(percentile == 0) == 5 and np.sum(percentile == 1) == 5  # 0.5% of 1000 each side
    assert label.startswith("percentile")


def test_constant_image_maps_to_zero_without_dividing_by_zero():
    out, label = rescale_to_unit(np.full((3, 3), 7.0), "minmax")
    assert np.all(out == 0) and "constant" in label
