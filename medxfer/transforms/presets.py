"""Augmentation parameters, the named presets and their one-parameter-at-a-time overrides.

Every augmentation models something that differs between real acquisitions: positioning
(affine, crop), exposure and processing (display window, gamma, contrast, brightness,
histogram shape, CLAHE), detector response (blur, sharpening), dose (Gaussian and quantum
noise). Intensities are on the [0, 1] display scale of ``Scan.pixels``; rotation, shift, crop
and dropout sizes are fractions of the image side, while blur and sharpening sigmas, noise and
photon counts are per pixel of the network input (stronger on a small input).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

PRESET_NAMES = ("none", "light", "standard", "strong")


@dataclass(frozen=True)
class AugmentParams:
    """One value per augmentation knob, each explained in ``DESCRIPTIONS``; every ``*_prob`` is
    the chance (0..1) that its step runs for a given image. The defaults switch everything off
    (preset ``none``)."""

    rotation: float = 0.0
    scale: float = 0.0
    translation: float = 0.0
    affine_prob: float = 0.0
    crop_area: float = 1.0
    crop_aspect: float = 1.0
    crop_prob: float = 0.0
    window_center: float = 0.0
    window_width: float = 0.0
    window_prob: float = 0.0
    gamma: tuple[float, float] = (1.0, 1.0)
    gamma_prob: float = 0.0
    contrast: float = 0.0
    contrast_prob: float = 0.0
    brightness: float = 0.0
    brightness_prob: float = 0.0
    histogram_points: int = 8
    histogram_shift: float = 0.0
    histogram_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.3, 1.0)
    blur_prob: float = 0.0
    sharpen_sigma: tuple[float, float] = (1.0, 2.0)
    sharpen_amount: tuple[float, float] = (0.25, 0.75)
    sharpen_prob: float = 0.0
    noise_std: float = 0.0
    noise_prob: float = 0.0
    quantum_photons: tuple[float, float] = (4000.0, 40000.0)
    quantum_prob: float = 0.0
    clahe_clip: tuple[float, float] = (0.005, 0.02)
    clahe_prob: float = 0.0
    dropout_holes: int = 4
    dropout_size: float = 0.1
    dropout_prob: float = 0.0
    hflip_prob: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            _check(f.name, getattr(self, f.name), f.default)

    @property
    def is_identity(self) -> bool:
        """True when no augmentation can run (every probability is 0)."""
        return all(getattr(self, f.name) == 0 for f in fields(self) if f.name.endswith("_prob"))

    def as_dict(self) -> dict[str, Any]:
        """Plain values, tuples as lists (for YAML/JSON run records)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


DESCRIPTIONS: dict[str, str] = {
    "rotation": "rotation, uniform in +-this, degrees",
    "scale": "zoom, the same on both axes, uniform in 1 +- this",
    "translation": "shift, uniform in +-this, fraction of the image side",
    "affine_prob": "chance of rotation + zoom + shift (positioning)",
    "crop_area": "random resized crop: area kept, uniform in [this, 1]",
    "crop_aspect": "random resized crop: aspect ratio in [1/this, this]; above 1 stretches anatomy",
    "crop_prob": "chance of the random resized crop",
    "window_center": "display window center moved by up to +-this (display range is 0-1)",
    "window_width": "display window width multiplied by a factor in [1/(1+this), 1+this]",
    "window_prob": "chance of the window jitter",
    "gamma": "gamma, uniform in range, applied between the image's own minimum and maximum",
    "gamma_prob": "chance of the gamma change",
    "contrast": "contrast: deviation from the mean multiplied by 1 +- this",
    "contrast_prob": "chance of the contrast change",
    "brightness": "brightness: shift uniform in +-this (display range is 0-1)",
    "brightness_prob": "chance of the brightness shift",
    "histogram_points": "histogram shift: evenly spaced control points of a monotone intensity curve",
    "histogram_shift": "histogram shift: each control point moved by up to +-this (display range is 0-1)",
    "histogram_prob": "chance of the histogram shift",
    "blur_sigma": "detector blur: Gaussian sigma per axis, uniform in range, pixels of the network input",
    "blur_prob": "chance of the blur",
    "sharpen_sigma": "detector sharpening (unsharp mask): Gaussian sigma range, pixels of the network input",
    "sharpen_amount": "detector sharpening: weight of the added detail, uniform in range",
    "sharpen_prob": "chance of the sharpening",
    "noise_std": "electronic noise: Gaussian per pixel of the network input, std uniform in [0, this] (display range is 0-1)",
    "noise_prob": "chance of the Gaussian noise",
    "quantum_photons": "dose: photons per pixel of the network input in unattenuated areas, log-uniform in range; fewer = noisier",
    "quantum_prob": "chance of the quantum (Poisson) noise",
    "clahe_clip": "CLAHE clip limit range (higher: more local contrast)",
    "clahe_prob": "chance of CLAHE",
    "dropout_holes": "coarse dropout: number of black squares",
    "dropout_size": "coarse dropout: side of each square, fraction of the image side",
    "dropout_prob": "chance of the coarse dropout",
    "hflip_prob": "chance of a left-right flip (moves the heart and the laterality marker)",
}

# Allowed range of each parameter: (low, high) inclusive; ranges are checked on both ends.
_LIMITS: dict[str, tuple[float, float]] = {
    "rotation": (0.0, 45.0),
    "scale": (0.0, 0.5),
    "translation": (0.0, 0.25),
    "crop_area": (0.25, 1.0),
    "crop_aspect": (1.0, 2.0),
    "window_center": (0.0, 0.5),
    "window_width": (0.0, 2.0),
    "gamma": (0.2, 5.0),
    "contrast": (0.0, 0.9),
    "brightness": (0.0, 0.5),
    "histogram_points": (3, 50),
    "histogram_shift": (0.0, 0.2),
    "blur_sigma": (0.0, 5.0),
    "sharpen_sigma": (0.3, 5.0),
    "sharpen_amount": (0.0, 5.0),
    "noise_std": (0.0, 0.5),
    "quantum_photons": (1.0, 1e7),
    "clahe_clip": (1e-4, 1.0),
    "dropout_holes": (1, 64),
    "dropout_size": (0.01, 0.5),
}


def _check(name: str, value: Any, default: Any) -> None:
    low, high = (0.0, 1.0) if name.endswith("_prob") else _LIMITS[name]
    if isinstance(default, tuple):
        if not isinstance(value, tuple) or len(value) != 2 or not all(_is_number(v) for v in value):
            raise ValueError(f"augmentation parameter {name} must be a range (LOW, HIGH), got {value!r}")
        if value[0] > value[1]:
            raise ValueError(f"augmentation parameter {name} must be a range LOW,HIGH with LOW <= HIGH, got {value}")
    elif isinstance(default, int) and not (isinstance(value, int) and not isinstance(value, bool)):
        raise ValueError(f"augmentation parameter {name} must be a whole number, got {value!r}")
    elif not _is_number(value):
        raise ValueError(f"augmentation parameter {name} must be a number, got {value!r}")
    for v in value if isinstance(value, tuple) else (value,):
        if not low <= v <= high:
            raise ValueError(f"augmentation parameter {name} must lie in [{low:g}, {high:g}], got {value!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_NONE = AugmentParams()
PRESETS: dict[str, AugmentParams] = {
    "none": _NONE,
    "light": dataclasses.replace(
        _NONE,
        rotation=5.0, scale=0.05, translation=0.03, affine_prob=0.5,
        window_center=0.05, window_width=0.1, window_prob=0.3,
        gamma=(0.9, 1.1), gamma_prob=0.3,
        contrast=0.1, contrast_prob=0.3,
        brightness=0.05, brightness_prob=0.3,
        noise_std=0.01, noise_prob=0.2,
    ),
    "standard": dataclasses.replace(
        _NONE,
        rotation=10.0, scale=0.1, translation=0.05, affine_prob=0.7,
        crop_area=0.85, crop_prob=0.3,
        window_center=0.1, window_width=0.2, window_prob=0.5,
        gamma=(0.8, 1.2), gamma_prob=0.5,
        contrast=0.15, contrast_prob=0.5,
        brightness=0.1, brightness_prob=0.5,
        histogram_shift=0.03, histogram_prob=0.2,
        blur_sigma=(0.3, 1.0), blur_prob=0.2,
        sharpen_amount=(0.25, 0.75), sharpen_prob=0.2,
        noise_std=0.02, noise_prob=0.3,
        quantum_photons=(4000.0, 40000.0), quantum_prob=0.3,
    ),
    "strong": dataclasses.replace(
        _NONE,
        rotation=15.0, scale=0.15, translation=0.08, affine_prob=0.9,
        crop_area=0.75, crop_prob=0.5,
        window_center=0.15, window_width=0.3, window_prob=0.7,
        gamma=(0.7, 1.3), gamma_prob=0.7,
        contrast=0.25, contrast_prob=0.7,
        brightness=0.15, brightness_prob=0.7,
        histogram_shift=0.05, histogram_prob=0.3,
        blur_sigma=(0.3, 1.5), blur_prob=0.3,
        sharpen_amount=(0.25, 1.0), sharpen_prob=0.3,
        noise_std=0.03, noise_prob=0.5,
        quantum_photons=(2000.0, 20000.0), quantum_prob=0.5,
        dropout_prob=0.3,
    ),
}


def _parse(name: str, text: str, default: Any) -> Any:
    """A value written as text (``"5"``, ``"0.8,1.25"``) as the type of ``default``."""
    try:
        if isinstance(default, tuple):
            parts = [p for p in str(text).replace(" ", "").split(",") if p]
            return tuple(float(p) for p in parts)
        if isinstance(default, int):
            number = float(text)
            if number != int(number):
                raise ValueError
            return int(number)
        return float(text)
    except (TypeError, ValueError):
        kind = "LOW,HIGH" if isinstance(default, tuple) else ("a whole number" if isinstance(default, int) else "a number")
        raise ValueError(f"augmentation parameter {name} must be {kind}, got {text!r}") from None


def augmentation(preset: str = "standard", overrides: Mapping[str, Any] | None = None) -> AugmentParams:
    """The parameters of a named preset with some values replaced.

    ``overrides`` maps parameter names to values: numbers, ``(low, high)`` pairs, or their
    strings as typed on a command line (``"5"``, ``"0.8,1.25"``). An unknown preset or
    parameter, or a value out of range, raises ``ValueError`` saying what is allowed.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown augmentation preset {preset!r}: use one of {', '.join(PRESET_NAMES)}")
    params = PRESETS[preset]
    changes: dict[str, Any] = {}
    names = [f.name for f in fields(AugmentParams)]
    for name, value in (overrides or {}).items():
        if name not in names:
            raise ValueError(f"unknown augmentation parameter {name!r}; valid parameters: {', '.join(names)}")
        if isinstance(value, bool):
            raise ValueError(f"augmentation parameter {name} must be a number, got {value!r}")
        text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        changes[name] = _parse(name, text, getattr(params, name))
    return dataclasses.replace(params, **changes)


def augmentation_from_config(value: str | Mapping[str, Any] | None) -> AugmentParams:
    """Parameters from a configuration entry: a preset name (``"light"``), ``None`` (preset
    ``none``), or a mapping with a ``preset`` key and parameter overrides, e.g.
    ``{"preset": "light", "rotation": 3}``. The preset is never implied: a mapping without one
    is an error, so an override cannot silently switch on a whole preset."""
    if value is None:
        return PRESETS["none"]
    if isinstance(value, str):
        return augmentation(value)
    if not isinstance(value, Mapping):
        raise ValueError(f"augment must be a preset name or a mapping of parameters, got {value!r}")
    overrides = dict(value)
    if "preset" not in overrides:
        raise ValueError(f"an augment mapping needs a preset key ({', '.join(PRESET_NAMES)}) besides its overrides")
    return augmentation(str(overrides.pop("preset")), overrides)


def parse_override(text: str) -> tuple[str, str]:
    """``"NAME=VALUE"`` (a ``--set`` argument) as ``(name, value)``."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise ValueError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), value.strip()


def _format(value: Any) -> str:
    if isinstance(value, tuple):
        return "–".join(_format(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def preset_table() -> str:
    """The presets as a Markdown table, one row per parameter (the documentation's preset reference is this table, rendered by docs/hooks.py)."""
    header = "| parameter | meaning | " + " | ".join(PRESET_NAMES) + " |"
    rule = "|---|---|" + "---|" * len(PRESET_NAMES)
    rows = [
        f"| `{f.name}` | {DESCRIPTIONS[f.name]} | "
        + " | ".join(_format(getattr(PRESETS[p], f.name)) for p in PRESET_NAMES) + " |"
        for f in fields(AugmentParams)
    ]
    return "\n".join([header, rule, *rows])
