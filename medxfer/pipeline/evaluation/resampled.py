"""The figures no checked interval covers (average precision, the ECEs, per-class F1 and
average precision, a subgroup's ECE): their percentile bootstrap intervals over patients
(``statistics.bootstrap``), always marked approximate."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from medxfer.pipeline.calibration.metrics import expected_calibration_error, positive_class_calibration_error
from medxfer.pipeline.evaluation.entries import ReportedInterval
from medxfer.pipeline.evaluation.scored import ScoredSplit
from medxfer.pipeline.statistics.bootstrap import percentile_interval
from medxfer.pipeline.statistics.scoring import (
    binary_average_precision,
    class_rates,
    confusion_counts,
    macro_average_precision,
)

MIN_BOOTSTRAP = 200  # fewer resamples put the ends of a 95 % interval on a handful of draws
BOOTSTRAPPED = ("average_precision", "ece", "ece_positive", "per-class f1 and average precision", "subgroup ece")
BOOTSTRAP_METHOD = "percentile bootstrap over patients"
BOOTSTRAP_NOTE = {
    "ece": "approximate: ECE is biased upwards on small sets",
    "ece_positive": "approximate: ECE is biased upwards on small sets",
    "*": "approximate: bootstrap over patients, coverage not checked",
}


@dataclass(frozen=True, order=True)
class BootstrapFigure:
    """What one bootstrap value is of: ``metric`` of the whole split (or of a subgroup), or of
    one class against the rest when ``class_name`` is given."""

    metric: str
    class_name: str | None = None


def split_statistic(split: ScoredSplit, idx: np.ndarray) -> dict[BootstrapFigure, float]:
    """The bootstrapped figures of the split's images ``idx`` (repeats included), NaN where
    undefined: average precision (the positive class's, else the macro one), top-label ECE, for
    two classes the positive class's ECE, and each class's F1 and average precision."""
    labels, probabilities, ranking = split.labels[idx], split.probabilities[idx], split.ranking[idx]
    k, positive = len(split.classes), split.positive
    rates = class_rates(confusion_counts(labels, split.predicted[idx], k))
    values = {
        BootstrapFigure("average_precision"): (
            binary_average_precision(labels == positive, ranking[:, positive]) if positive is not None
            else macro_average_precision(labels, ranking)),
        BootstrapFigure("ece"): expected_calibration_error(labels, probabilities),
    }
    if positive is not None:
        values[BootstrapFigure("ece_positive")] = positive_class_calibration_error(labels, probabilities, positive)
    for c, name in enumerate(split.classes):
        values[BootstrapFigure("f1", name)] = float(rates["f1"][c])
        values[BootstrapFigure("average_precision", name)] = binary_average_precision(labels == c, ranking[:, c])
    return values


def group_ece_statistic(split: ScoredSplit, idx: np.ndarray) -> dict[BootstrapFigure, float]:
    """The top-label ECE of the images ``idx``, for a subgroup's bootstrap."""
    return {BootstrapFigure("ece"): expected_calibration_error(split.labels[idx], split.probabilities[idx])}


def bootstrap_interval(draws: Mapping[BootstrapFigure, np.ndarray] | None, figure: BootstrapFigure,
                       value: float | None, level: float) -> tuple[ReportedInterval, int | None]:
    """The percentile interval at ``level`` of ``figure`` from its bootstrap ``draws``, marked
    approximate, and the number of resamples where it was defined; no interval (and no count)
    without resamples or without a ``value``."""
    if draws is None or value is None:
        return ReportedInterval(None), None
    interval = percentile_interval(draws[figure], level=level)
    note = None if interval.reason else BOOTSTRAP_NOTE.get(figure.metric, BOOTSTRAP_NOTE["*"])
    return ReportedInterval(interval.as_list(), BOOTSTRAP_METHOD, note, interval.reason), interval.defined
