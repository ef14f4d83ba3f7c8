"""The whole split's entry: discrimination, rates, calibration before and after, per-class
figures, the confusion matrix, reliability bins, the figures the transfer check compares, and
the intervals of them all (checked ones from ``checked``, the rest bootstrapped)."""

from __future__ import annotations

import math
from typing import cast

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from medxfer.pipeline.calibration.metrics import (
    adaptive_calibration_error,
    brier_score,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
    positive_class_calibration_error,
    reliability_bins,
)
from medxfer.pipeline.evaluation import schema
from medxfer.pipeline.evaluation.checked import (
    CHECKED_INTERVALS,
    checked_interval,
    class_auroc_interval,
    proportion_interval,
    reported,
)
from medxfer.pipeline.evaluation.entries import (
    CalibrationFigures,
    ClassEntry,
    ConfusionMatrix,
    SplitEntry,
    Uncertainty,
)
from medxfer.pipeline.evaluation.resampled import BootstrapFigure, bootstrap_interval, split_statistic
from medxfer.pipeline.evaluation.scored import ScoredSplit, patient_count, value
from medxfer.pipeline.statistics.bootstrap import Resamples, bootstrap_values
from medxfer.pipeline.statistics.intervals import Estimate, clustered_variance, mean_estimate, standard_error_of
from medxfer.pipeline.statistics.scoring import (
    binary_auroc,
    binary_average_precision,
    class_rates,
    confusion_counts,
    macro_auroc,
    macro_average_precision,
    sensitivity_specificity,
)


def split_entry(split: ScoredSplit, resamples: Resamples | None, defined: dict[str, int]) -> SplitEntry:
    """The whole split's entry; ``defined`` receives, per bootstrapped figure, the resamples where
    it was defined."""
    labels, predicted, k = split.labels, split.predicted, len(split.classes)
    counts = confusion_counts(labels, predicted, k)
    present = sorted(set(labels.tolist()))
    na: dict[str, str] = {}
    if len(present) == k:
        auroc, ap = _discrimination(split)
    else:
        auroc = ap = float("nan")
        na["auroc"] = na["average_precision"] = split.na_auroc(labels)
    sensitivity, specificity = sensitivity_specificity(counts, split.positive)
    if len(present) < 2:
        na["balanced_accuracy"] = split.na_auroc(labels)
    na.update(split.na_rates(labels))
    entry = SplitEntry(
        n=len(labels), n_patients=patient_count(split.patient_ids, len(labels)), counts=split.counts(),
        prevalence=float(np.mean(labels == split.positive)) if split.positive is not None else None,
        auroc=value(auroc), average_precision=value(ap), accuracy=float(accuracy_score(labels, predicted)),
        balanced_accuracy=float(balanced_accuracy_score(labels, predicted)) if len(present) > 1 else None,
        sensitivity=value(sensitivity), specificity=value(specificity), calibration=_calibration(split),
        uncertainty=Uncertainty(na=na), per_class=_per_class(split, counts),
        confusion_matrix=ConfusionMatrix(split.classes, counts.tolist(), [
            [_share_interval(split, i, j) if counts[i].sum() else None for j in range(k)] for i in range(k)]),
        reliability=schema.Reliability(before=reliability_bins(labels, split.uncalibrated),
                                       after=reliability_bins(labels, split.probabilities)),
    )
    for metric in CHECKED_INTERVALS:
        entry.uncertainty.record(metric, checked_interval(split, metric, split.everything, entry.figure(metric)))
    entry.transfer_statistics = transfer_statistics(split, entry)
    _bootstrap_intervals(split, entry, resamples, defined)
    return entry


def _discrimination(split: ScoredSplit) -> tuple[float, float]:
    """AUROC and average precision of a split holding every class: the positive class's, or the
    macro one-vs-rest averages, on the unsaturated ``ranking`` scores (``statistics.scoring``,
    the implementation the bootstrap, the trainer and the calibration checks use too)."""
    labels, ranking = split.labels, split.ranking
    if split.positive is not None:
        positive = labels == split.positive
        return (binary_auroc(positive, ranking[:, split.positive]),
                binary_average_precision(positive, ranking[:, split.positive]))
    return macro_auroc(labels, ranking), macro_average_precision(labels, ranking)


def _calibration(split: ScoredSplit) -> CalibrationFigures:
    """Calibration of the calibrated probabilities and of the network's own."""
    labels, p, u = split.labels, split.probabilities, split.uncalibrated
    figures = CalibrationFigures(
        ece=expected_calibration_error(labels, p), ece_uncalibrated=expected_calibration_error(labels, u),
        adaptive_ece=adaptive_calibration_error(labels, p), adaptive_ece_uncalibrated=adaptive_calibration_error(labels, u),
        mce=maximum_calibration_error(labels, p), mce_uncalibrated=maximum_calibration_error(labels, u),
        brier=brier_score(labels, p), brier_uncalibrated=brier_score(labels, u),
        nll=negative_log_likelihood(labels, p), nll_uncalibrated=negative_log_likelihood(labels, u),
    )
    if split.positive is not None:
        figures.ece_positive = positive_class_calibration_error(labels, p, split.positive)
        figures.ece_positive_uncalibrated = positive_class_calibration_error(labels, u, split.positive)
    return figures


def _bootstrap_intervals(split: ScoredSplit, entry: SplitEntry, resamples: Resamples | None,
                         defined: dict[str, int]) -> None:
    """The bootstrap intervals of the split's and the classes' figures that no checked interval
    covers."""
    draws = bootstrap_values(lambda idx: split_statistic(split, idx), resamples) if resamples is not None else None
    figures = {"average_precision": entry.average_precision, "ece": entry.calibration.ece}
    if split.positive is not None:
        figures["ece_positive"] = entry.calibration.ece_positive
    for metric, figure_value in figures.items():
        interval, count = bootstrap_interval(draws, BootstrapFigure(metric), figure_value, split.level)
        entry.uncertainty.record(metric, interval)
        if count is not None:
            defined[metric] = count
    for name, class_entry in entry.per_class.items():
        for metric in ("f1", "average_precision"):
            interval, _ = bootstrap_interval(draws, BootstrapFigure(metric, name), getattr(class_entry, metric),
                                             split.level)
            class_entry.uncertainty.record(metric, interval)


def transfer_statistics(split: ScoredSplit, entry: SplitEntry) -> schema.TransferStatistics:
    """[value, standard error, degrees of freedom] of the figures ``transfer.transfer_warnings``
    compares between a held-out set and validation: the stated confidence minus the accuracy
    (top label), and for two classes sensitivity, specificity (their errors read from their
    Wilson intervals, which stay wide at 0 or 1) and the share called positive minus the share
    that is."""
    everything, patients = split.everything, split.patients

    def statistic(estimate: Estimate) -> schema.Statistic | None:
        if not np.any(estimate.influence):  # every image alike (all called right, say): no spread seen
            return [estimate.value, 0.0, estimate.df]
        variance = clustered_variance(estimate.influence, patients)
        if not math.isfinite(variance):  # the spread rests on one patient: it cannot be measured
            return None
        return [estimate.value, math.sqrt(max(variance, 0.0)), estimate.df]

    top = split.probabilities.argmax(1)
    confidence = split.probabilities[np.arange(len(top)), top]
    stats = {"confidence_minus_accuracy": statistic(mean_estimate(confidence - (top == split.labels),
                                                                  everything, patients))}
    if split.positive is not None:
        called, positive = split.predicted == split.positive, split.labels == split.positive
        stats["called_minus_observed"] = statistic(mean_estimate(called.astype(float) - positive, everything,
                                                                 patients))
        for metric in ("sensitivity", "specificity"):
            interval = entry.uncertainty.ci.get(metric)
            figure = getattr(entry, metric)
            if figure is not None and interval is not None:
                df = split.groups.estimate(metric, everything).df
                stats[metric] = [figure, standard_error_of(interval, df, split.level), df]
    return cast(schema.TransferStatistics, {name: figure for name, figure in stats.items() if figure is not None})


def _share_interval(split: ScoredSplit, i: int, j: int) -> list[float] | None:
    """The interval of the share of class ``i``'s images predicted as ``j``."""
    return reported(proportion_interval(split, split.predicted == j, split.labels == i)).bounds


def _per_class(split: ScoredSplit, counts: np.ndarray) -> dict[str, ClassEntry]:
    """Each class against the rest, with the intervals of its rates and AUROC (the bootstrap
    intervals of F1 and average precision are added by ``split_entry``)."""
    labels, ranking = split.labels, split.ranking
    rates = class_rates(counts)
    per_class: dict[str, ClassEntry] = {}
    for c, name in enumerate(split.classes):
        support = int(counts[c].sum())
        na: dict[str, str] = {}
        if counts[:, c].sum() == 0:
            na["precision"] = f"no image predicted {name}"
        if support == 0:
            na["recall"] = f"no {name} images"
        if support == len(labels):
            na["specificity"] = f"every image is {name}"
        f1 = value(float(rates["f1"][c]))
        if f1 is None:
            na["f1"] = f"no {name} images and none predicted"
        auroc = average_precision = None
        if 0 < support < len(labels):
            auroc = binary_auroc(labels == c, ranking[:, c])
            average_precision = binary_average_precision(labels == c, ranking[:, c])
        else:
            na["auroc"] = na["average_precision"] = f"no {name} images" if support == 0 else f"every image is {name}"
        entry = ClassEntry(precision=value(float(rates["precision"][c])), recall=value(float(rates["recall"][c])),
                           specificity=value(float(rates["specificity"][c])), f1=f1, auroc=auroc,
                           average_precision=average_precision, support=support, uncertainty=Uncertainty(na=na))
        for metric, success, counted in (("precision", labels == c, split.predicted == c),
                                         ("recall", split.predicted == c, labels == c),
                                         ("specificity", split.predicted != c, labels != c)):
            interval = proportion_interval(split, success, counted) if getattr(entry, metric) is not None else None
            entry.uncertainty.record(metric, reported(interval))
        entry.uncertainty.record("auroc", reported(class_auroc_interval(split, c) if auroc is not None else None))
        per_class[name] = entry
    return per_class
