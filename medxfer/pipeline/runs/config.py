"""The training configuration of ``medxfer train``: a YAML file, command-line overrides on top.

Every setting is a field of ``TrainConfig``, whose defaults are the one place where they are
set. ``load_config`` reads a YAML file (keys as in ``CONFIG_KEYS``), applies the command-line
flags on top and checks everything before any training starts: an unknown key, a value of the
wrong type or out of range, or a combination that cannot work is a ``ConfigError`` naming
where the setting came from (the file or ``command line``), the key, the rule and the value.
``write_config`` saves the resolved configuration into the run directory, so that the run can
be repeated from that file alone and ``--resume`` can refuse a changed one (``diff_configs``).

This module imports neither torch nor MONAI at import time (the command-line parser imports it
to list the keys): the backbone and strategy registries and the augmentation presets are
imported when a configuration is checked.
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
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from medxfer.datasets.intensity import parse_window
from medxfer.datasets.sources import LAYOUTS
from medxfer.datasets.volume import VOLUME_STRATEGIES
from medxfer.files import atomic_write_text

COMMAND_LINE = "command line"
HEADER = "# medxfer training configuration (fully resolved); rerun with: medxfer train --config {name}\n"
WEIGHTS_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
MAX_SPLIT_FRACTION = 0.8  # val_fraction + test_fraction must stay below this


class ConfigError(ValueError):
    """A configuration that cannot be used; the message says where, which key and why."""


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Every setting of a training run, with its default. The rules each value must follow
    are checked by ``validate`` (and by ``config_from_mapping``/``load_config``); a
    ``TrainConfig`` built directly is not checked until then. Frozen: derive a changed copy
    with ``dataclasses.replace``."""

    # data
    data: str | None = (
        None  # dataset: folder of class folders or manifest; required to train
    )
    target_data: str | None = None  # unlabelled scans (folder or manifest) from the site to adapt to
    out: str | None = None  # run directory (the command line fills a default)
    layout: str = "auto"  # one of medxfer.datasets.sources.LAYOUTS
    skip_unreadable: bool = False
    max_pixels: int | str = "auto"  # pixel budget per file; auto: $MEDXFER_MAX_PIXELS or 2^27 (datasets.budget)
    window: str = "default"  # default | minmax | percentile | CENTER,WIDTH
    volume_strategy: str = "middle"  # middle | mip | 2.5d
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    # network
    backbone: str = (
        "efficientnet_lite0"  # == medxfer.pipeline.models.backbones.DEFAULT_BACKBONE (tested)
    )
    weights: str = (
        "imagenet"  # imagenet | random | path of a .safetensors/.pth/.pt/.bin file
    )
    strategy: str = "partial"  # one of medxfer.pipeline.models.finetune.STRATEGIES
    trainable_stages: int = 3  # partial: the last N stages train (3 measured best for EfficientNet-Lite0)
    adapt: str = "none"  # none | adabn | dann
    dann_weight: float = 1.0  # maximum weight of the domain loss
    # input
    augment: str | dict[str, Any] = (
        "standard"  # preset name, or {"preset": NAME, PARAM: VALUE, ...}
    )
    image_size: int = 224
    fit: str = "letterbox"  # letterbox | crop | squash
    in_channels: int = 3
    # optimisation
    epochs: int | str = "auto"
    batch_size: int = 32
    lr: float = 1e-3
    layer_decay: float = 0.75
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    imbalance: str = "weighted"  # weighted | sampler | none
    patience: int = 5  # epochs without improvement before stopping; 0: never stop early
    grad_clip: float = 1.0  # 0: no clipping
    label_smoothing: float = 0.0
    dropout: float = 0.2
    # speed and reproducibility
    cache: str = "auto"  # auto | on | off: cache the frozen prefix's features
    cache_views: int | str = "auto"  # augmented views per training image when caching; auto: by data size
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    workers: int | str = "auto"
    amp: bool = True  # mixed precision, CUDA only
    channels_last: bool = True  # channels-last memory layout (faster on CPU and CUDA)
    # evaluation (medxfer.pipeline.evaluation.evaluator)
    calibration: str = "temperature"  # temperature | vector | none, fitted on the validation logits
    threshold: str = "youden"  # youden | sensitivity: how the operating threshold is chosen on validation
    target_sensitivity: float = 0.9  # threshold: sensitivity
    positive_class: str = "auto"  # two classes: the class whose probability is thresholded
    bootstrap: int = 1000  # resamples for the 95 % intervals (patients when ids exist); 0: none
    subgroups: tuple[str, ...] = ()  # manifest columns reported besides sex, age band, site, manufacturer, view
    intersections: tuple[str, ...] = ()  # e.g. ["sex x age_band"]
    age_bands: tuple[float, ...] = (18.0, 40.0, 65.0)  # band edges in years
    overfit_gap: float = 0.05  # train minus validation AUROC above which overfitting is flagged

    def __post_init__(self) -> None:
        # lists (from YAML or to_dict) stored as tuples, so that equal settings compare equal
        for key in ("subgroups", "intersections", "age_bands"):
            if isinstance(getattr(self, key), list):
                object.__setattr__(self, key, tuple(getattr(self, key)))

    def validate(
        self, *, need_data: bool = False, check_paths: bool = False
    ) -> TrainConfig:
        """This configuration checked key by key and as a whole, values normalised (an int
        where a float is expected becomes a float, ``"1e-3"`` becomes 0.001). ``need_data``:
        ``data`` must be set; ``check_paths``: ``data``, ``target_data`` and a weights file
        must exist. Raises ``ConfigError``."""
        values = _check_values(self.to_dict(), "configuration")
        _check_combination(
            values, {}, "configuration", need_data=need_data, check_paths=check_paths
        )
        return TrainConfig(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (YAML/JSON serialisable), keys in ``CONFIG_KEYS`` order."""
        return {key: _plain(copy.deepcopy(getattr(self, key))) for key in CONFIG_KEYS}


def _plain(value: Any) -> Any:
    """Tuples as lists (YAML's safe dumper writes lists only)."""
    return list(value) if isinstance(value, tuple) else value


CONFIG_KEYS: tuple[str, ...] = tuple(f.name for f in fields(TrainConfig))

_NO_DATA = "no dataset given: set data (a folder of class folders or a manifest) in the configuration file or pass --data PATH"


# --- one rule per key --------------------------------------------------------------------


class _Invalid(Exception):
    """A value breaks its key's rule; ``reason`` replaces the generic 'must be RULE' text."""

    def __init__(self, reason: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class _Rule:
    text: str  # "a number > 0 and <= 1": completes "KEY must be ..."
    check: Callable[[Any], Any]  # the normalised value, or raises _Invalid


def _number(value: Any) -> float:
    """A finite float from an int, a float or a numeric string (PyYAML reads ``1e-3``, without a
    dot, as the string '1e-3')."""
    if isinstance(value, bool):
        raise _Invalid
    if isinstance(value, numbers.Real):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise _Invalid from None
    else:
        raise _Invalid
    if not math.isfinite(number):
        raise _Invalid
    return number


def _bounds(
    low: float | None, high: float | None, low_open: bool, high_open: bool
) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    return " and ".join(parts)


def _float(
    low: float | None = None,
    high: float | None = None,
    *,
    low_open=False,
    high_open=False,
) -> _Rule:
    def check(value: Any) -> float:
        number = _number(value)
        if low is not None and (number <= low if low_open else number < low):
            raise _Invalid
        if high is not None and (number >= high if high_open else number > high):
            raise _Invalid
        return number

    return _Rule(f"a number {_bounds(low, high, low_open, high_open)}", check)


def _int(
    low: int, high: int | None = None, *, only: tuple[int, ...] | None = None
) -> _Rule:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise _Invalid
        value = int(value)
        if (
            value < low
            or (high is not None and value > high)
            or (only is not None and value not in only)
        ):
            raise _Invalid
        return value

    if only is not None:
        text = " or ".join(map(str, only))
    elif high is not None:
        text = f"a whole number from {low} to {high}"
    else:
        text = f"a whole number >= {low}"
    return _Rule(text, check)


def _auto_or(rule: _Rule) -> _Rule:
    return _Rule(
        f'"auto" or {rule.text}',
        lambda value: value if value == "auto" else rule.check(value),
    )


def _bootstrap_resamples(value: Any) -> int:
    """0, or at least 200 resamples: fewer put the ends of a 95 % interval on a handful of draws."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not (value == 0 or value >= 200):
        raise _Invalid
    return int(value)


def _bool() -> _Rule:
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise _Invalid
        return value

    return _Rule("true or false", check)


def _choice(
    options: tuple[str, ...] | Callable[[], tuple[str, ...]], *, note: str = ""
) -> _Rule:
    """One of ``options`` (or of what the callable returns: registries imported on use)."""

    def check(value: Any) -> str:
        names = options() if callable(options) else options
        if isinstance(value, str) and value in names:
            return value
        close = (
            difflib.get_close_matches(value, names, n=1)
            if isinstance(value, str)
            else []
        )
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise _Invalid(f"must be one of {', '.join(names)}{note}, got {value!r}{hint}")

    return _Rule("one of the listed names", check)


def _path(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise _Invalid
    return value


def _weights(value: Any) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise _Invalid
    if value in ("imagenet", "random") or Path(value).suffix in WEIGHTS_SUFFIXES:
        return value
    raise _Invalid


def _window(value: Any) -> str:
    if isinstance(value, (list, tuple)) and len(value) == 2:  # [CENTER, WIDTH] in YAML
        value = ",".join(str(_number(v)) for v in value)
    if not isinstance(value, str):
        raise _Invalid
    try:
        parse_window(value)
    except ValueError:
        raise _Invalid from None
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
    raise _Invalid


def _augment(value: Any) -> str | dict[str, Any]:
    if not isinstance(value, (str, Mapping)):
        raise _Invalid
    from medxfer.transforms.presets import augmentation_from_config  # imports MONAI

    try:
        augmentation_from_config(value)
    except ValueError as exc:
        raise _Invalid(f"{value!r} is not valid: {exc}") from None
    if isinstance(value, str):
        return value
    return {
        str(k): list(v) if isinstance(v, tuple) else copy.deepcopy(v)
        for k, v in value.items()
    }


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
        raise _Invalid
    return tuple(v.strip() for v in value)


def _intersections(value: Any) -> tuple[str, ...]:
    from medxfer.pipeline.evaluation.evaluator import parse_intersection  # scikit-learn and SciPy, not torch

    names = _names(value)
    try:
        return tuple(" x ".join(parse_intersection(name)) for name in names)
    except ValueError as exc:
        raise _Invalid(str(exc)) from None


def _age_bands(value: Any) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise _Invalid
    edges = tuple(_number(v) for v in value)
    if any(b <= a for a, b in itertools.pairwise(edges)) or edges[0] <= 0:
        raise _Invalid
    return edges


_FRACTION = _float(0.0, 0.5, low_open=True, high_open=True)
_RULES: dict[str, _Rule] = {
    "data": _Rule("a path", _path),
    "target_data": _Rule("a path", _path),
    "out": _Rule("a path", _path),
    "layout": _choice(LAYOUTS),
    "skip_unreadable": _bool(),
    "max_pixels": _auto_or(_int(1)),
    "window": _Rule(
        '"default", "minmax", "percentile" or CENTER,WIDTH with WIDTH > 0', _window
    ),
    "volume_strategy": _choice(
        tuple(s for s in VOLUME_STRATEGIES if s != "all"),
        note=" ('all' is not available for training)",
    ),
    "val_fraction": _FRACTION,
    "test_fraction": _FRACTION,
    "backbone": _choice(_backbone_names),
    "weights": _Rule(
        '"imagenet", "random" or the path of a '
        + ", ".join(WEIGHTS_SUFFIXES)
        + " file",
        _weights,
    ),
    "strategy": _choice(_strategy_names),
    "trainable_stages": _int(1),
    "adapt": _choice(("none", "adabn", "dann")),
    "dann_weight": _float(0.0),
    "augment": _Rule(
        "a preset name (none, light, standard, strong) or a mapping with a preset key and parameter overrides",
        _augment,
    ),
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
    "grad_clip": _float(0.0),
    "label_smoothing": _float(0.0, 1.0, high_open=True),
    "dropout": _float(0.0, 1.0, high_open=True),
    "cache": _Rule("auto, on or off", _cache),
    "cache_views": _auto_or(_int(1)),
    "seed": _int(0),
    "device": _Rule('"auto", "cpu", "cuda" or "cuda:N"', _device),
    "workers": _auto_or(_int(0)),
    "amp": _bool(),
    "channels_last": _bool(),
    "calibration": _choice(("temperature", "vector", "none")),
    "threshold": _choice(("youden", "sensitivity")),
    "target_sensitivity": _float(0.0, 1.0, low_open=True),
    "positive_class": _Rule("a class name or auto", lambda v: _names(str(v) if isinstance(v, numbers.Number) else v)[0]),
    "bootstrap": _Rule("0 (no bootstrap intervals) or a whole number >= 200", _bootstrap_resamples),
    "subgroups": _Rule("a list of manifest column names", _names),
    "intersections": _Rule('a list of pairs such as "sex x age_band"', _intersections),
    "age_bands": _Rule("a list of increasing ages in years, the first > 0", _age_bands),
    "overfit_gap": _float(0.0, 1.0),
}
if tuple(_RULES) != CONFIG_KEYS:
    raise RuntimeError("every TrainConfig field needs a rule in _RULES, in field order")


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


def _closest_key(name: str) -> str | None:
    """The key ``name`` probably meant: the longest key it starts with (``lrate``: ``lr``,
    ``data_dir``: ``data``), else the closest by spelling."""
    name = name.lower().replace("-", "_")
    if name in CONFIG_KEYS or name in _ALIASES:  # LR, batch-size, learning_rate
        return _ALIASES.get(name, name)
    prefixes = [key for key in CONFIG_KEYS if name.startswith(key)]
    if prefixes:
        return max(prefixes, key=len)
    close = difflib.get_close_matches(name, CONFIG_KEYS, n=1)
    return close[0] if close else None


def _check_values(mapping: Mapping[Any, Any], source: str) -> dict[str, Any]:
    """The values of ``mapping`` normalised, each checked against its key's rule."""
    values: dict[str, Any] = {}
    for key, value in mapping.items():
        if key not in _RULES:
            close = _closest_key(str(key))
            hint = f" (did you mean {close!r}?)" if close else ""
            raise ConfigError(
                f"{source}: unknown key {key!r}{hint}; valid keys: {', '.join(CONFIG_KEYS)}"
            )
        rule = _RULES[key]
        try:
            values[key] = rule.check(value)
        except _Invalid as exc:
            detail = exc.reason or f"must be {rule.text}, got {value!r}"
            raise ConfigError(f"{source}: {key} {detail}") from None
    return values


def _check_combination(
    values: dict[str, Any],
    sources: Mapping[str, str],
    fallback: str,
    *,
    need_data: bool,
    check_paths: bool,
) -> None:
    """Rules between keys; ``sources`` says where each key was set (absent: the default)."""

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
        for key in ("data", "target_data"):
            if values[key] is not None and not Path(values[key]).exists():
                raise ConfigError(
                    f"{where(key)}: {key} path {values[key]!r} does not exist"
                )
        weights = values["weights"]
        if weights not in ("imagenet", "random") and not Path(weights).is_file():
            raise ConfigError(
                f"{where('weights')}: weights file {weights!r} does not exist"
            )


# --- reading and writing -----------------------------------------------------------------


def config_from_mapping(
    mapping: Mapping[str, Any],
    *,
    source: str,
    need_data: bool = False,
    check_paths: bool = False,
) -> TrainConfig:
    """The configuration set by ``mapping`` (defaults for the keys it lacks), checked; messages
    start with ``source`` (a file name, ``"command line"``). Raises ``ConfigError``."""
    if not isinstance(mapping, Mapping):
        raise ConfigError(
            f"{source}: the configuration must be a mapping of key: value, got {type(mapping).__name__}"
        )
    values = _check_values(mapping, source)
    merged = TrainConfig().to_dict() | values
    _check_combination(
        merged,
        dict.fromkeys(values, source),
        source,
        need_data=need_data,
        check_paths=check_paths,
    )
    return TrainConfig(**merged)


def _read_yaml(path: Path, source: str) -> Mapping[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such configuration file") from None
    except IsADirectoryError:
        raise ConfigError(f"{source}: is a folder, not a configuration file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not a text file (expected UTF-8 YAML)") from None
    except OSError as exc:
        raise ConfigError(
            f"{source}: cannot read the configuration file: {exc.strerror or exc}"
        ) from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if loaded is None:  # an empty file (or only comments): no settings
        return {}
    if not isinstance(loaded, Mapping):
        raise ConfigError(
            f"{source}: the top level must be a mapping of settings (key: value lines), "
            f"got a {type(loaded).__name__}"
        )
    return loaded


def load_config(
    path: str | Path | None,
    overrides: Mapping[str, Any] | None = None,
    *,
    need_data: bool = False,
    check_paths: bool = False,
) -> TrainConfig:
    """The configuration from the YAML file at ``path`` (``None``: no file) with ``overrides``
    (the command-line flags; a ``None`` value means "not given") on top, checked as a whole.
    Messages name the file for its keys and ``command line`` for overridden ones. Raises
    ``ConfigError``."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    fallback = COMMAND_LINE
    if path is not None:
        fallback = str(path)
        file_values = _check_values(_read_yaml(Path(path), fallback), fallback)
        values |= file_values
        sources |= dict.fromkeys(file_values, fallback)
    given = {
        key: value for key, value in (overrides or {}).items() if value is not None
    }
    flag_values = _check_values(given, COMMAND_LINE)
    values |= flag_values
    sources |= dict.fromkeys(flag_values, COMMAND_LINE)
    merged = TrainConfig().to_dict() | values
    _check_combination(
        merged, sources, fallback, need_data=need_data, check_paths=check_paths
    )
    return TrainConfig(**merged)


def write_config(config: TrainConfig, path: str | Path) -> Path:
    """Save ``config`` as YAML at ``path``, atomically, every key written (defaults included)
    in ``CONFIG_KEYS`` order; ``load_config(path) == config``."""
    path = Path(path)
    body = yaml.safe_dump(
        config.to_dict(), sort_keys=False, allow_unicode=True, default_flow_style=False
    )
    return atomic_write_text(path, HEADER.format(name=path.name) + body)


def diff_configs(a: TrainConfig, b: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """``{key: (value in a, value in b)}`` for every key whose value differs, in key order."""
    return {
        key: (getattr(a, key), getattr(b, key))
        for key in CONFIG_KEYS
        if getattr(a, key) != getattr(b, key)
    }
