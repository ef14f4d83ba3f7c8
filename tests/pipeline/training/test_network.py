"""The trained network, its cached prefix and the settings resolved from ``auto``."""

from __future__ import annotations

from dataclasses import replace

import pytest

from medxfer.pipeline.runs.config import load_config
from medxfer.pipeline.training.network import (
    CACHE_BUDGET,
    auto_epochs,
    auto_views,
    build_network,
    cached_part,
    cached_stages,
)


def config(**changes):
    return load_config(None, {"weights": "random", "backbone": "resnet18", **changes}).validate()


def test_auto_epochs_make_about_6000_image_passes_within_5_to_30_epochs():
    assert [auto_epochs(n) for n in (0, 100, 200, 700, 1200, 50_000)] == [30, 30, 30, 9, 5, 5]


def test_auto_views_shrink_with_the_training_set_and_the_cache_budget():
    assert [auto_views(n, 1000) for n in (100, 2000, 3500, 8000)] == [4, 4, 2, 1]
    assert auto_views(1000, CACHE_BUDGET // 2000) == 2  # only two views fit in the budget


@pytest.mark.parametrize(("strategy", "cache", "expected"), [
    ("linear", "auto", 5), ("partial", "auto", 2), ("full", "auto", 0), ("partial", "off", 0),
])
def test_the_cached_stages_follow_the_strategy_and_the_cache_setting(strategy, cache, expected):
    settings = config(strategy=strategy, cache=cache, trainable_stages=2)
    model = build_network(settings, 2)
    assert cached_stages(model, settings) == expected
    if expected:
        assert cached_part(model, expected) == ("the whole backbone" if expected == 5 else "the first 2 of 4 stages")


def test_cache_on_without_a_frozen_prefix_is_refused_even_unvalidated():
    settings = replace(config(strategy="full"), cache="on")  # what a TrainConfig built in Python may hold
    with pytest.raises(ValueError, match="cache: on needs a frozen part"):
        cached_stages(build_network(settings, 2), settings)


def test_adabn_on_a_backbone_without_batchnorm_is_refused():
    with pytest.raises(ValueError, match="has no BatchNorm"):
        build_network(config(backbone="convnext_tiny", adapt="adabn", target_data="x"), 2)
