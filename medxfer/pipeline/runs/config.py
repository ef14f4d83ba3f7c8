"""The training configuration of ``medxfer train``: a YAML file, command-line overrides on top.

Every setting is a field of ``TrainConfig``, whose defaults are the one place where they are
set. ``load_config`` reads a YAML file (keys as in ``CONFIG_KEYS``), applies the command-line
flags on top and checks everything before any training starts: an unknown key, a value of the
wrong type or out of range, or a combination that cannot work is a ``ConfigError`` naming
where the setting came from (the file or ``command line``), the key, the rule and the value.
``write_config`` saves the resolved configuration into the run directory, so that the run can
be repeated from that file alone and ``--resume`` can refuse a changed one (``diff_configs``).
``reference_markdown`` writes the reference of every setting from the code itself.

This module is the public entry; the work is split by job:

- ``config_settings``: ``TrainConfig`` (each setting, its default and its description) and
  ``CONFIG_KEYS``;
- ``config_rules``: one rule per key (what the value must be, how it is normalised, in words);
- ``config_checks``: checking a mapping key by key and the rules between keys (``ConfigError``);
- here: reading YAML files with command-line overrides, writing and comparing configurations,
  and the reference page.

The rules are hand-written rather than a pydantic model on purpose. Each message must start with
where the value came from (a file name, ``command line`` or ``configuration``, and both for a
rule between keys set in different places), then say the key, the rule in words and the value,
suggest the key or the name that was probably meant (aliases other tools use, the longest key a
misspelling starts with) and never import torch or MONAI to do it; the same rule texts also
write the reference page. A pydantic model would still need a custom validator for most keys
(windows, presets, devices, age bands, intersections, registries imported on use), a strict mode
with numeric strings let through (PyYAML reads ``1e-3`` as text) and a translation of its errors
into these messages: more code, and a dependency, for the same checks.

This module imports neither torch nor MONAI at import time (the command-line parser imports it
to list the keys): the backbone and strategy registries and the augmentation presets are
imported when a configuration is checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from medxfer.files import atomic_write_text
from medxfer.pipeline.runs.config_checks import COMMAND_LINE, ConfigError, check_combination, check_values
from medxfer.pipeline.runs.config_rules import RULES
from medxfer.pipeline.runs.config_settings import CONFIG_KEYS, TrainConfig, plain

__all__ = [
    "COMMAND_LINE",
    "CONFIG_KEYS",
    "HEADER",
    "ConfigError",
    "TrainConfig",
    "config_from_mapping",
    "diff_configs",
    "load_config",
    "reference_markdown",
    "write_config",
]

HEADER = "# medxfer training configuration (fully resolved); rerun with: medxfer train --config {name}\n"


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
    return _checked_config([(source, mapping)], source, need_data=need_data, check_paths=check_paths)


def _checked_config(
    layers: list[tuple[str, Mapping[str, Any]]],
    fallback: str,
    *,
    need_data: bool,
    check_paths: bool,
) -> TrainConfig:
    """The configuration set by ``layers`` of ``(source, mapping)``, each on top of the ones
    before it and every key checked against its own source's name; then the defaults for the
    keys none sets, and the rules between keys (``fallback`` names the source of a key that no
    layer set). Raises ``ConfigError``."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for source, mapping in layers:
        checked = check_values(mapping, source)
        values |= checked
        sources |= dict.fromkeys(checked, source)
    merged = TrainConfig().to_dict() | values
    check_combination(merged, sources, fallback, need_data=need_data, check_paths=check_paths)
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
    layers: list[tuple[str, Mapping[str, Any]]] = []
    fallback = COMMAND_LINE
    if path is not None:
        fallback = str(path)
        layers.append((fallback, _read_yaml(Path(path), fallback)))
    given = {
        key: value for key, value in (overrides or {}).items() if value is not None
    }
    layers.append((COMMAND_LINE, given))
    return _checked_config(layers, fallback, need_data=need_data, check_paths=check_paths)


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


def _yaml_value(value: Any) -> str:
    """``value`` as a configuration file writes it: one line of YAML (``null``, ``0.001``, ``[]``)."""
    return yaml.safe_dump(plain(value), default_flow_style=True, width=float("inf")).removesuffix("...\n").strip()


def reference_markdown() -> str:
    """The reference of every training setting as Markdown, a table without a heading (the
    documentation page around it gives the title and the introduction): one row per key of
    ``CONFIG_KEYS``, in order, with the values its rule allows, its default (as YAML) and its
    description, all taken from ``TrainConfig`` and the rules, so that it cannot drift from the
    code. Imports torch (the backbone and strategy registries list their names)."""
    defaults = TrainConfig()
    lines = ["| key | allowed values | default | meaning |", "| --- | --- | --- | --- |"]
    for setting in fields(TrainConfig):
        cells = (f"`{setting.name}`", RULES[setting.name].allowed(), f"`{_yaml_value(getattr(defaults, setting.name))}`",
                 setting.metadata["help"])
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"
