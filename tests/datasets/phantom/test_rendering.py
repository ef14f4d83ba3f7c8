"""Rendering: a chest radiograph of the requested shape with plausible anatomy and a label that is
learnable from the lungs but not from global brightness."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medxfer.datasets.phantom import LABELS, SITES, render_chest

SHAPE = (256, 256)  # rendered size for the image-statistics tests; 128 px per anatomical unit
# Regions in pixels of a SHAPE image (anatomical x, y in [-1, 1], y down, heart to the image right).
LUNG_ROWS = slice(57, 147)  # y in [-0.55, 0.15]
LUNG_COLS = np.r_[57:96, 160:198]  # |x| in [0.25, 0.55]
ABDOMEN = (slice(204, 230), slice(100, 156))  # below the diaphragm, y in [0.6, 0.8]
HEART_ROWS = slice(141, 166)  # y in [0.1, 0.3]
HEART_SIDE, OTHER_SIDE = slice(147, 173), slice(83, 109)  # x in [0.15, 0.35] and its mirror


def _auroc_of(statistic: Callable[[np.ndarray], float], n_images: int = 100, seed: int = 7) -> float:
    """AUROC of ``statistic`` for the opacity label over rendered images from every site."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n_images) // 2 % 2  # labels in pairs, sites cycling across them
    images = [render_chest(rng, label=LABELS[y], shape=SHAPE, site=SITES[i % len(SITES)])
              for i, y in enumerate(labels)]
    scores = np.array([statistic(image) for image in images])
    return float(roc_auc_score(labels, scores))


def test_render_chest_gives_unit_float_image_of_requested_shape() -> None:
    image = render_chest(np.random.default_rng(0), label="opacity", shape=(200, 288), site=SITES[1])
    assert image.dtype == np.float32 and image.shape == (200, 288)
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0.1
    with pytest.raises(ValueError, match="label"):
        render_chest(np.random.default_rng(0), label="effusion", shape=(64, 64), site=SITES[0])


def test_rendered_anatomy_has_dark_lungs_and_heart_to_the_image_right() -> None:
    rng = np.random.default_rng(11)
    for index in range(6):
        image = render_chest(rng, label="normal", shape=SHAPE, site=SITES[index % len(SITES)])
        assert image[LUNG_ROWS][:, LUNG_COLS].mean() < image[ABDOMEN].mean() - 0.1
        assert image[HEART_ROWS, HEART_SIDE].mean() > image[HEART_ROWS, OTHER_SIDE].mean() + 0.05
        assert image[:8, :8].mean() < 0.3  # air in the corner is dark


def test_opacity_label_is_learnable_from_lung_brightness() -> None:
    def lung_over_abdomen(image: np.ndarray) -> float:
        return float(image[LUNG_ROWS][:, LUNG_COLS].mean() - image[ABDOMEN].mean())

    assert _auroc_of(lung_over_abdomen) > 0.85


def test_global_brightness_alone_does_not_give_the_label_away() -> None:
    assert 0.3 < _auroc_of(lambda image: float(image.mean())) < 0.75

