"""The checked intervals of a split's figures (``statistics.intervals``: patient-clustered,
coverage checked by simulation), each with its method, marked approximate when it rests on too
few patients for its coverage to hold."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from medxfer.pipeline.evaluation.entries import ReportedInterval
from medxfer.pipeline.evaluation.scored import ScoredSplit
from medxfer.pipeline.statistics.intervals import (
    Interval,
    auroc_estimate,
    logit_interval,
    mean_interval,
    mover_average,
    proportion_estimate,
    wilson_interval,
)

# Intervals checked by simulation (intervals.py) and those left to a percentile bootstrap over
# patients, whose coverage is not checked: they are marked approximate wherever they are shown.
CHECKED_INTERVALS = ("auroc", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "brier")
MIN_INTERVAL_PATIENTS = 2  # with one patient of the class a figure rests on, its interval is marked approximate


def reported(interval: Interval | None) -> ReportedInterval:
    """A checked interval as the report shows it (its method; no note)."""
    return ReportedInterval(None) if interval is None else ReportedInterval(interval.as_list(), interval.method)


def checked_interval(split: ScoredSplit, metric: str, within: np.ndarray, value: float | None) -> ReportedInterval:
    """The interval of ``metric`` (whose ``value`` is None where undefined) over the images
    ``within``, with its method, marked approximate when it rests on too few patients."""
    if value is None:
        return ReportedInterval(None)
    interval = _interval(split, metric, within)
    if interval is None:
        return ReportedInterval(None)
    patients, name = _smallest_class(split, metric, within)
    note = None
    if interval.approximate:
        note = f"approximate: {interval.approximate}"
    elif patients < MIN_INTERVAL_PATIENTS:
        note = f"approximate: {patients} patient of {name}"
    return ReportedInterval(interval.as_list(), interval.method, note)


def _interval(split: ScoredSplit, metric: str, within: np.ndarray) -> Interval | None:
    """The method each figure gets: logit-scale Wald for the AUROC, MOVER for a mean of rates,
    a t interval for the Brier score, Wilson for a proportion."""
    estimate = split.estimate(metric, within)
    if metric == "auroc":
        return logit_interval(estimate, split.patients, split.level)
    if metric == "balanced_accuracy" or (metric in ("sensitivity", "specificity") and split.positive is None):
        return _macro_interval(split, metric, within)
    if metric == "brier":
        interval = mean_interval(estimate, split.patients, split.level)
        if interval is not None and interval.low < 0:  # a mean of squares cannot be negative
            interval = replace(interval, low=0.0)
        return interval
    counted = {"accuracy": within, "prevalence": within}.get(metric)
    if counted is None:
        c = split.positive if metric == "sensitivity" else 1 - split.positive
        counted = within & (split.labels == c)
    return wilson_interval(estimate, counted, split.patients, split.level)


def _macro_interval(split: ScoredSplit, metric: str, within: np.ndarray) -> Interval | None:
    """A mean of per-class rates (balanced accuracy; sensitivity and specificity of more than
    two classes) from the classes' own Wilson intervals (MOVER), so that a class at 0 or 1
    keeps its width."""
    present = split.present(within)
    if len(present) < 2:
        return None
    if metric == "specificity":
        parts = [(split.predicted != c, within & (split.labels != c)) for c in present]
    else:
        parts = [(split.predicted == c, within & (split.labels == c)) for c in present]
    values, intervals = [], []
    for success, counted in parts:
        estimate = proportion_estimate(success, counted, split.patients)
        values.append(estimate.value)
        intervals.append(wilson_interval(estimate, counted, split.patients, split.level))
    return mover_average(values, intervals)


def _smallest_class(split: ScoredSplit, metric: str, within: np.ndarray) -> tuple[int, str]:
    """The patients of the class a figure rests on most, and its name."""
    if metric in ("sensitivity", "specificity") and split.positive is not None:
        counted = [split.positive if metric == "sensitivity" else 1 - split.positive]
    elif metric in ("auroc", "balanced_accuracy", "sensitivity", "specificity"):
        counted = split.present(within)
    else:
        return split.groups.patients_of(within), "images"
    sizes = [(split.groups.patients_of(within & (split.labels == c)), split.classes[c]) for c in counted]
    return min(sizes) if sizes else (0, "images")


def proportion_interval(split: ScoredSplit, success: np.ndarray, counted: np.ndarray) -> Interval | None:
    """The Wilson interval of the share of ``success`` among the images ``counted``."""
    return wilson_interval(proportion_estimate(success, counted, split.patients), counted, split.patients,
                           split.level)


def class_auroc_interval(split: ScoredSplit, c: int) -> Interval | None:
    """The interval of class ``c``'s one-vs-rest AUROC."""
    return logit_interval(auroc_estimate(split.labels == c, split.ranking[:, c], split.patients), split.patients,
                          split.level)
