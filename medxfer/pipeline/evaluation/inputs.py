"""What an evaluation takes and the scores it gives the report: its settings, the splits to
score and, per split, the arrays the report plots."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, kw_only=True)
class EvaluationSettings:
    """How a run is evaluated (the evaluation keys of the training configuration).

    ``calibration``: temperature | vector | none; ``threshold``: youden | sensitivity (the
    highest threshold whose validation sensitivity reaches ``target_sensitivity``, in (0, 1]);
    ``positive_class``: a class name, or auto (with two classes, the one not named like
    "normal"/"negative", else the second in sorted order); ``bootstrap``: resamples (0: no
    intervals) at confidence ``level``; ``subgroups``: manifest columns reported besides
    ``STANDARD_ATTRIBUTES``; ``intersections``: pairs such as "sex x age_band"; ``age_bands``:
    band edges in years; ``overfit_gap``: train minus validation AUROC above which overfitting is
    flagged; ``seed`` seeds the resamples.
    """

    calibration: str = "temperature"
    threshold: str = "youden"
    target_sensitivity: float = 0.9
    positive_class: str = "auto"
    bootstrap: int = 1000
    level: float = 0.95
    subgroups: tuple[str, ...] = ()
    intersections: tuple[str, ...] = ()
    age_bands: tuple[float, ...] = (18.0, 40.0, 65.0)
    overfit_gap: float = 0.05
    seed: int = 0

    @classmethod
    def from_config(cls, config: Any) -> EvaluationSettings:
        """The evaluation settings of a ``TrainConfig`` (or any object with these attributes)."""
        return cls(calibration=config.calibration, threshold=config.threshold,
                   target_sensitivity=config.target_sensitivity, positive_class=config.positive_class,
                   bootstrap=config.bootstrap, subgroups=tuple(config.subgroups),
                   intersections=tuple(config.intersections), age_bands=tuple(config.age_bands),
                   overfit_gap=config.overfit_gap, seed=config.seed)


@dataclass(frozen=True)
class SplitInputs:
    """One split to score: ``labels`` (n,) class indices, ``logits`` (n, K) of the network,
    ``patients`` (pseudonymous keys, None when unknown) and per-image ``meta`` (sex, age, view...)."""

    labels: np.ndarray
    logits: np.ndarray
    patients: Sequence[str | None] = ()
    meta: Sequence[Mapping[str, Any]] = ()

    def __post_init__(self) -> None:
        n = len(self.labels)
        if self.logits.ndim != 2 or len(self.logits) != n:
            raise ValueError(f"logits must be (n, K) with n = {n} labels, got shape {self.logits.shape}")
        for name in ("patients", "meta"):
            if len(getattr(self, name)) not in (0, n):
                raise ValueError(f"{name} must have one entry per image ({n}), got {len(getattr(self, name))}")

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class SplitScores:
    """What the report plots for one split: true ``labels`` (n,), calibrated ``probabilities``
    (n, K) and ``uncalibrated`` softmax probabilities (n, K)."""

    labels: np.ndarray
    probabilities: np.ndarray
    uncalibrated: np.ndarray

