"""Augmentation presets: documented, overridable one parameter at a time, validated."""

from __future__ import annotations

import dataclasses

import pytest

from medxfer.transforms.presets import (
    PRESET_NAMES,
    PRESETS,
    AugmentParams,
    augmentation,
    augmentation_from_config,
    parse_override,
)


def test_every_preset_is_named_and_none_switches_everything_off():
    assert set(PRESETS) == set(PRESET_NAMES)
    assert PRESETS["none"].is_identity
    assert not any(PRESETS[name].is_identity for name in ("light", "standard", "strong"))


def test_presets_grow_stronger_in_order():
    light, standard, strong = (PRESETS[n] for n in ("light", "standard", "strong"))
    for name in ("rotation", "scale", "translation", "window_center", "contrast", "brightness", "noise_std"):
        assert getattr(light, name) <= getattr(standard, name) <= getattr(strong, name), name
    assert strong.quantum_photons[0] < standard.quantum_photons[0]  # fewer photons: more noise


def test_standard_preset_is_the_small_affine_the_literature_uses():
    standard = PRESETS["standard"]
    assert (standard.rotation, standard.scale, standard.translation) == (10.0, 0.1, 0.05)


def test_no_preset_flips():
    assert all(PRESETS[name].hflip_prob == 0 for name in PRESET_NAMES)


def test_one_parameter_is_overridden_and_the_rest_kept():
    params = augmentation("standard", {"rotation": "5"})
    assert params.rotation == 5.0
    assert dataclasses.replace(params, rotation=10.0) == PRESETS["standard"]


@pytest.mark.parametrize(
    "name,text,value",
    [("gamma", "0.9,1.1", (0.9, 1.1)), ("dropout_holes", "6", 6), ("hflip_prob", "0.5", 0.5), ("gamma", [0.8, 1.2], (0.8, 1.2))],
)
def test_override_values_take_the_parameters_type(name, text, value):
    params = augmentation("light", {name: text})
    assert getattr(params, name) == value
    assert type(getattr(params, name)) is type(value)


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"rotations": 5}, "unknown augmentation parameter 'rotations'; valid parameters: rotation, scale"),
        ({"rotation": 90}, r"rotation must lie in \[0, 45\]"),
        ({"affine_prob": 1.5}, r"affine_prob must lie in \[0, 1\]"),
        ({"gamma": "1.2,0.8"}, "LOW <= HIGH"),
        ({"gamma": "1.2"}, r"range \(LOW, HIGH\)"),
        ({"dropout_holes": "2.5"}, "whole number"),
        ({"rotation": "ten"}, "must be a number"),
        ({"rotation": "nan"}, "must lie in"),
        ({"hflip_prob": True}, "must be a number"),
    ],
)
def test_bad_overrides_say_what_is_allowed(overrides, match):
    with pytest.raises(ValueError, match=match):
        augmentation("standard", overrides)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError, match="none, light, standard, strong"):
        augmentation("medium")


def test_config_entry_is_a_name_or_a_mapping_of_overrides():
    assert augmentation_from_config("light") == PRESETS["light"]
    assert augmentation_from_config(None) == PRESETS["none"]
    assert augmentation_from_config({"preset": "standard", "rotation": 3}) == dataclasses.replace(PRESETS["standard"], rotation=3.0)
    assert augmentation_from_config({"preset": "none", "gamma_prob": 1}).gamma_prob == 1.0
    with pytest.raises(ValueError, match="preset name or a mapping"):
        augmentation_from_config(5)


def test_set_argument_is_parsed_into_name_and_value():
    assert parse_override(" rotation = 5 ") == ("rotation", "5")
    assert parse_override("gamma=0.9,1.1") == ("gamma", "0.9,1.1")
    for bad in ("rotation", "=5", "rotation="):
        with pytest.raises(ValueError, match="NAME=VALUE"):
            parse_override(bad)


def test_params_are_validated_when_built_directly():
    with pytest.raises(ValueError, match="crop_area"):
        AugmentParams(crop_area=0.1)


def test_as_dict_round_trips_through_a_config_mapping():
    params = augmentation("strong", {"rotation": 7})
    assert augmentation_from_config({"preset": "none", **params.as_dict()}) == params


def test_a_config_mapping_must_name_its_preset():
    """An override alone must not silently switch on a whole preset."""
    with pytest.raises(ValueError, match="needs a preset key"):
        augmentation_from_config({"hflip_prob": 0.5})


@pytest.mark.parametrize(
    "kwargs,match",
    [({"dropout_holes": 2.5}, "whole number"), ({"gamma": [0.8, 1.2]}, r"range \(LOW, HIGH\)"), ({"rotation": "5"}, "a number")],
)
def test_wrong_types_are_refused_when_built_directly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AugmentParams(**kwargs)
