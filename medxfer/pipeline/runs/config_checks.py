"""Checking a configuration: each key against its rule, then the rules between keys.

Every failure is a ``ConfigError`` whose message starts with where the setting came from (a file
name, ``command line``, or ``configuration`` for a ``TrainConfig`` built in Python), then names
the key, the rule and the value; an unknown key lists the valid keys and suggests the one meant.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from medxfer.pipeline.runs.config_rules import RULES, Invalid

COMMAND_LINE = "command line"
MAX_SPLIT_FRACTION = 0.8  # val_fraction + test_fraction must stay below this
_KEYS = tuple(RULES)  # == CONFIG_KEYS (checked in config_settings)
_NO_DATA = "no dataset given: set data (a folder of class folders or a manifest) in the configuration file or pass --data PATH"

# Names other tools use for a setting, for the "did you mean" of an unknown key
_ALIASES = {
    "learning_rate": "lr",
    "num_epochs": "epochs",
    "n_epochs": "epochs",
    "max_epochs": "epochs",
    "bs": "batch_size",
    "num_workers": "workers",
    "input_size": "image_size",
    "img_size": "image_size",
    "resolution": "image_size",
    "model": "backbone",
    "arch": "backbone",
    "architecture": "backbone",
    "pretrained": "weights",
    "early_stopping": "patience",
    "output": "out",
    "output_dir": "out",
    "run_dir": "out",
    "mixed_precision": "amp",
}


class ConfigError(ValueError):
    """A configuration that cannot be used; the message says where, which key and why."""


def _closest_key(name: str) -> str | None:
    """The key ``name`` probably meant: the longest key it starts with (``lrate``: ``lr``,
    ``data_dir``: ``data``), else the closest by spelling."""
    name = name.lower().replace("-", "_")
    if name in _KEYS or name in _ALIASES:  # LR, batch-size, learning_rate
        return _ALIASES.get(name, name)
    prefixes = [key for key in _KEYS if name.startswith(key)]
    if prefixes:
        return max(prefixes, key=len)
    close = difflib.get_close_matches(name, _KEYS, n=1)
    return close[0] if close else None


def check_values(mapping: Mapping[Any, Any], source: str) -> dict[str, Any]:
    """The values of ``mapping`` normalised, each checked against its key's rule; messages start
    with ``source``. Raises ``ConfigError``."""
    values: dict[str, Any] = {}
    for key, value in mapping.items():
        if key not in RULES:
            close = _closest_key(str(key))
            hint = f" (did you mean {close!r}?)" if close else ""
            raise ConfigError(f"{source}: unknown key {key!r}{hint}; valid keys: {', '.join(_KEYS)}")
        rule = RULES[key]
        try:
            values[key] = rule.check(value)
        except Invalid as exc:
            detail = exc.reason or f"must be {rule.text}, got {value!r}"
            raise ConfigError(f"{source}: {key} {detail}") from None
    return values


def check_combination(values: dict[str, Any], sources: Mapping[str, str], fallback: str, *, need_data: bool,
                      check_paths: bool) -> None:
    """Rules between keys of ``values`` (every key, checked one by one already); ``sources`` says
    where each key was set (absent: the default, reported as ``fallback``). ``need_data``: ``data``
    must be set; ``check_paths``: ``data``, ``target_data`` and a weights file must exist. Raises
    ``ConfigError``."""

    def where(*keys: str) -> str:
        named = dict.fromkeys(sources[k] for k in keys if k in sources)
        file_first = sorted(named, key=lambda source: source == COMMAND_LINE)
        return " and ".join(file_first) or fallback

    total = values["val_fraction"] + values["test_fraction"]
    if total >= MAX_SPLIT_FRACTION:
        raise ConfigError(
            f"{where('val_fraction', 'test_fraction')}: val_fraction + test_fraction must be < "
            f"{MAX_SPLIT_FRACTION:g} (enough left to train on), got {values['val_fraction']:g} + "
            f"{values['test_fraction']:g} = {total:g}"
        )
    adapt = values["adapt"]
    if adapt != "none" and values["target_data"] is None:
        raise ConfigError(
            f"{where('adapt')}: adapt {adapt!r} needs target_data, unlabelled scans (a folder or a manifest) from "
            "the site to adapt to; set target_data or use adapt 'none'"
        )
    if adapt == "dann" and values["strategy"] == "linear":
        raise ConfigError(
            f"{where('adapt', 'strategy')}: adapt 'dann' cannot work with strategy 'linear': nothing in "
            "the backbone trains, so there is nothing for the domain loss to change; use strategy "
            "partial, full or adapters, or adapt 'adabn'"
        )
    if values["validation"] == "crossfit" and adapt != "none":
        raise ConfigError(
            f"{where('validation', 'adapt')}: validation 'crossfit' cannot be combined with adapt {adapt!r} yet: "
            "adaptation changes the shared frozen part of the network that the folds are trained from; use "
            "validation 'holdout' (or 'auto', which holds out with adapt)"
        )
    if values["cache"] == "on" and values["strategy"] in ("full", "adapters"):
        raise ConfigError(
            f"{where('cache', 'strategy')}: cache 'on' needs a frozen first part of the backbone, and "
            f"strategy {values['strategy']!r} trains it from the first layer; use cache 'auto' or 'off'"
        )
    if values["strategy"] == "partial":
        from medxfer.pipeline.models.backbones import BACKBONES  # imports torch

        stages = BACKBONES[values["backbone"]].stages
        if values["trainable_stages"] > len(stages):
            raise ConfigError(
                f"{where('trainable_stages', 'backbone')}: trainable_stages must be 1 to {len(stages)} for "
                f"{values['backbone']} (it has {len(stages)} stages), got {values['trainable_stages']}; "
                "use strategy 'full' to train everything"
            )
    if need_data and values["data"] is None:
        raise ConfigError(f"{fallback}: {_NO_DATA}")
    if check_paths:
        _check_paths(values, where)


def _check_paths(values: dict[str, Any], where: Callable[..., str]) -> None:
    """``data`` and ``target_data`` (when set) and a weights file (when named) exist; ``where(key)``
    says where a key was set."""
    for key in ("data", "target_data"):
        if values[key] is not None and not Path(values[key]).exists():
            raise ConfigError(f"{where(key)}: {key} path {values[key]!r} does not exist")
    weights = values["weights"]
    if weights not in ("imagenet", "random") and not Path(weights).is_file():
        raise ConfigError(f"{where('weights')}: weights file {weights!r} does not exist")
