"""One rule per training setting: what its value must be, how it is normalised, and the words for both.

A ``Rule`` holds the text that completes "KEY must be ..." (used in error messages and in the
configuration reference) and a check that returns the normalised value or raises ``Invalid``.
``RULES`` maps every key of ``TrainConfig`` to its rule, in field order
(``medxfer.pipeline.runs.config_settings`` checks that they stay in step).

Registries that import torch or MONAI (backbones, strategies, augmentation presets) are imported
only when a value is checked, so that importing this module stays light.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import math
import numbers
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medxfer.datasets.intensity import parse_window
from medxfer.datasets.sources import LAYOUTS
from medxfer.datasets.volume import VOLUME_STRATEGIES

WEIGHTS_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


class Invalid(Exception):
    """A value breaks its key's rule; ``reason`` replaces the generic 'must be RULE' text."""

    def __init__(self, reason: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Rule:
    """``text`` completes "KEY must be ..." ("a number > 0 and <= 1"); ``check`` returns the
    normalised value or raises ``Invalid``; ``options`` are a choice's names (or a callable giving
    them, for registries imported on use), listed by ``allowed``."""

    text: str
    check: Callable[[Any], Any]
    options: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None

    def allowed(self) -> str:
        """The values this rule accepts, in words (a choice lists its names; may import torch)."""
        if self.options is None:
            return self.text
        names = self.options() if callable(self.options) else self.options
        return "one of " + ", ".join(names)


def number(value: Any) -> float:
    """A finite float from an int, a float or a numeric string (PyYAML reads ``1e-3``, without a
    dot, as the string '1e-3')."""
    if isinstance(value, bool):
        raise Invalid
    if isinstance(value, numbers.Real):
        result = float(value)
    elif isinstance(value, str):
        try:
            result = float(value.strip())
        except ValueError:
            raise Invalid from None
    else:
        raise Invalid
    if not math.isfinite(result):
        raise Invalid
    return result


def _bounds(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    return " and ".join(parts)


def _float(low: float | None = None, high: float | None = None, *, low_open=False, high_open=False) -> Rule:
    def check(value: Any) -> float:
        result = number(value)
        if low is not None and (result <= low if low_open else result < low):
            raise Invalid
        if high is not None and (result >= high if high_open else result > high):
            raise Invalid
        return result

    return Rule(f"a number {_bounds(low, high, low_open, high_open)}", check)


def _int(low: int, high: int | None = None, *, only: tuple[int, ...] | None = None) -> Rule:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise Invalid
        value = int(value)
        if value < low or (high is not None and value > high) or (only is not None and value not in only):
            raise Invalid
        return value

    if only is not None:
        text = " or ".join(map(str, only))
    elif high is not None:
        text = f"a whole number from {low} to {high}"
    else:
        text = f"a whole number >= {low}"
    return Rule(text, check)


def _auto_or(rule: Rule) -> Rule:
    return Rule(f'"auto" or {rule.text}', lambda value: value if value == "auto" else rule.check(value))


def _bootstrap_resamples(value: Any) -> int:
    """0, or at least 200 resamples: fewer put the ends of a 95 % interval on a handful of draws."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not (value == 0 or value >= 200):
        raise Invalid
    return int(value)


def _bool() -> Rule:
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise Invalid
        return value

    return Rule("true or false", check)


def _choice(options: tuple[str, ...] | Callable[[], tuple[str, ...]], *, note: str = "") -> Rule:
    """One of ``options`` (or of what the callable returns: registries imported on use)."""

    def check(value: Any) -> str:
        names = options() if callable(options) else options
        if isinstance(value, str) and value in names:
            return value
        close = difflib.get_close_matches(value, names, n=1) if isinstance(value, str) else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise Invalid(f"must be one of {', '.join(names)}{note}, got {value!r}{hint}")

    return Rule("one of the listed names", check, options)


def _path(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise Invalid
    return value


def _weights(value: Any) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise Invalid
    if value in ("imagenet", "random") or Path(value).suffix in WEIGHTS_SUFFIXES:
        return value
    raise Invalid


def _window(value: Any) -> str:
    if isinstance(value, (list, tuple)) and len(value) == 2:  # [CENTER, WIDTH] in YAML
        value = ",".join(str(number(v)) for v in value)
    if not isinstance(value, str):
        raise Invalid
    try:
        parse_window(value)
    except ValueError:
        raise Invalid from None
    return value


def _cache(value: Any) -> str:
    # YAML 1.1 (PyYAML) reads unquoted on/off as booleans
    if value is True:
        return "on"
    if value is False:
        return "off"
    return _choice(("auto", "on", "off")).check(value)


def _device(value: Any) -> str:
    if isinstance(value, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        return value
    raise Invalid


def _augment(value: Any) -> str | dict[str, Any]:
    if not isinstance(value, (str, Mapping)):
        raise Invalid
    from medxfer.transforms.presets import augmentation_from_config  # imports MONAI

    try:
        augmentation_from_config(value)
    except ValueError as exc:
        raise Invalid(f"{value!r} is not valid: {exc}") from None
    if isinstance(value, str):
        return value
    return {str(k): list(v) if isinstance(v, tuple) else copy.deepcopy(v) for k, v in value.items()}


def _backbone_names() -> tuple[str, ...]:
    from medxfer.pipeline.models.backbones import BACKBONES  # imports torch

    return tuple(BACKBONES)


def _strategy_names() -> tuple[str, ...]:
    from medxfer.pipeline.models.finetune import STRATEGIES  # imports torch

    return STRATEGIES


def _names(value: Any) -> tuple[str, ...]:
    """A list of names (a single name is a list of one)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in value):
        raise Invalid
    return tuple(v.strip() for v in value)


def _intersections(value: Any) -> tuple[str, ...]:
    from medxfer.pipeline.evaluation.subgroups import parse_intersection  # scikit-learn and SciPy, not torch

    names = _names(value)
    try:
        return tuple(" x ".join(parse_intersection(name)) for name in names)
    except ValueError as exc:
        raise Invalid(str(exc)) from None


def _age_bands(value: Any) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise Invalid
    edges = tuple(number(v) for v in value)
    if any(b <= a for a, b in itertools.pairwise(edges)) or edges[0] <= 0:
        raise Invalid
    return edges


_FRACTION = _float(0.0, 0.5, low_open=True, high_open=True)
RULES: dict[str, Rule] = {
    "data": Rule("a path", _path),
    "target_data": Rule("a path", _path),
    "out": Rule("a path", _path),
    "layout": _choice(LAYOUTS),
    "skip_unreadable": _bool(),
    "max_pixels": _auto_or(_int(1)),
    "window": Rule('"default", "minmax", "percentile" or CENTER,WIDTH with WIDTH > 0', _window),
    "volume_strategy": _choice(tuple(s for s in VOLUME_STRATEGIES if s != "all"),
                               note=" ('all' is not available for training)"),
    "val_fraction": _FRACTION,
    "test_fraction": _FRACTION,
    "validation": _choice(("holdout", "crossfit", "auto")),
    "folds": _int(2, 20),
    "backbone": _choice(_backbone_names),
    "weights": Rule('"imagenet", "random" or the path of a ' + ", ".join(WEIGHTS_SUFFIXES) + " file", _weights),
    "strategy": _choice(_strategy_names),
    "trainable_stages": _int(1),
    "adapt": _choice(("none", "adabn", "dann")),
    "dann_weight": _float(0.0),
    "augment": Rule("a preset name (none, light, standard, strong) or a mapping with a preset key and parameter "
                    "overrides", _augment),
    "image_size": _int(16, 2048),
    "fit": _choice(("letterbox", "crop", "squash")),
    "in_channels": _int(1, only=(1, 3)),
    "epochs": _auto_or(_int(1)),
    "batch_size": _int(1),
    "lr": _float(0.0, 1.0, low_open=True),
    "layer_decay": _float(0.0, 1.0, low_open=True),
    "weight_decay": _float(0.0),
    "warmup_epochs": _float(0.0),
    "imbalance": _choice(("weighted", "sampler", "none")),
    "patience": _int(0),
    "selection": _choice(("auto", "auroc", "loss", "auroc_loss")),
    "grad_clip": _float(0.0),
    "label_smoothing": _float(0.0, 1.0, high_open=True),
    "dropout": _float(0.0, 1.0, high_open=True),
    "cache": Rule("auto, on or off", _cache),
    "cache_views": _auto_or(_int(1)),
    "seed": _int(0),
    "device": Rule('"auto", "cpu", "cuda" or "cuda:N"', _device),
    "workers": _auto_or(_int(0)),
    "amp": _bool(),
    "channels_last": _bool(),
    "calibration": _choice(("temperature", "vector", "none")),
    "threshold": _choice(("youden", "sensitivity")),
    "target_sensitivity": _float(0.0, 1.0, low_open=True),
    "positive_class": Rule("a class name or auto", lambda v: _names(str(v) if isinstance(v, numbers.Number) else v)[0]),
    "bootstrap": Rule("0 (no bootstrap intervals) or a whole number >= 200", _bootstrap_resamples),
    "subgroups": Rule("a list of manifest column names", _names),
    "intersections": Rule('a list of pairs such as "sex x age_band"', _intersections),
    "age_bands": Rule("a list of increasing ages in years, the first > 0", _age_bands),
    "overfit_gap": _float(0.0, 1.0),
}
