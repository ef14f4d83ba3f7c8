"""Classification metrics fast enough to be recomputed inside a bootstrap.

A bootstrap interval (the report's for average precision, the ECEs and F1) recomputes its metric
on 1,000 resamples of every split and of every subgroup, and the subgroup comparisons score
every group: some 10^4 to 10^5 calls. scikit-learn's ``roc_auc_score`` and
``average_precision_score`` validate their inputs on each call (about 2.5 and 1.3 ms on the
2-core development machine for 150 images), which alone would add minutes to every training
run. The functions here compute the same quantities directly (the AUROC as the Mann-Whitney
statistic with average ranks for ties, the average precision as scikit-learn defines it, one
step per distinct score) in tens of microseconds; ``tests/pipeline/statistics/test_scoring.py``
checks that they equal scikit-learn's on random data with ties (to about 1e-15: the rank
statistic is computed exactly and rounded once, scikit-learn's trapezoids round at every step).
They are the one implementation of the point AUROC and average precision: the reports' whole-split
and per-class figures, the training split's AUROC, the trainer's per-epoch AUROC and the
bootstrap all call them. ``intervals.auroc_estimate`` computes the AUROC's DeLong components,
whose mean is the same AUROC, for its variance.

Every function returns NaN where the metric is undefined (e.g. an AUROC with one class only),
so that a bootstrap can count the resamples where it was.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_softmax
from scipy.stats import rankdata


def ranking_scores(logits: np.ndarray) -> np.ndarray:
    """(n, K) scores that order the images by each class's probability exactly as softmax of the
    (n, K) ``logits`` would in exact arithmetic, without its saturation: once one logit leads by
    more than about 37 (float64) or 17 (float32) the probability rounds to 1.0 and distinct
    images tie, which changes an AUROC. For two classes the logit difference (class 1 minus
    class 0, and its negative for class 0); for more, float64 log-probabilities."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.shape[1] == 2:
        difference = logits[:, 1] - logits[:, 0]
        return np.stack([-difference, difference], axis=1)
    return log_softmax(logits, axis=1)


def binary_auroc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` (n,) for the boolean ``positive`` (n,), in [0, 1];
    NaN unless both classes are present."""
    n_pos = int(np.count_nonzero(positive))
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_average_precision(positive: np.ndarray, scores: np.ndarray) -> float:
    """Average precision of ``scores`` for the boolean ``positive``: the sum over distinct score
    thresholds (highest first) of precision times the gain in recall, as scikit-learn's
    ``average_precision_score``; NaN without positives."""
    n_pos = int(np.count_nonzero(positive))
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, hits = scores[order], positive[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(sorted_scores) - 1]
    true_pos = np.cumsum(hits)[last_of_tie]
    precision = true_pos / (last_of_tie + 1)
    recall_gain = np.diff(np.r_[0, true_pos]) / n_pos
    return float(np.sum(precision * recall_gain))


def confusion_counts(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """(K, K) counts, rows the true class, columns the predicted one (scikit-learn's layout)."""
    return np.bincount(labels * n_classes + predicted, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def macro_auroc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Macro one-vs-rest AUROC of (n, K) probabilities (K > 2), NaN unless every class is
    present; for K = 2 the AUROC of class 1's probability."""
    n_classes = probabilities.shape[1]
    if n_classes == 2:
        return binary_auroc(labels == 1, probabilities[:, 1])
    values = [binary_auroc(labels == k, probabilities[:, k]) for k in range(n_classes)]
    return float(np.mean(values))  # NaN as soon as one class is absent


def macro_average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Macro one-vs-rest average precision of (n, K) ``scores`` (K > 2), NaN unless every class
    is present; for K = 2 the average precision of class 1's score."""
    n_classes = scores.shape[1]
    if n_classes == 2:
        return binary_average_precision(labels == 1, scores[:, 1])
    return float(np.mean([binary_average_precision(labels == k, scores[:, k]) for k in range(n_classes)]))


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else float("nan")


def class_rates(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision, recall (sensitivity), specificity and F1 from confusion ``counts``,
    one-vs-rest; NaN where a denominator is zero (never predicted, absent)."""
    total = counts.sum()
    true_pos = np.diag(counts).astype(float)
    predicted, actual = counts.sum(0), counts.sum(1)
    false_pos, false_neg = predicted - true_pos, actual - true_pos
    true_neg = total - true_pos - false_pos - false_neg
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, true_pos / np.maximum(predicted, 1), np.nan)
        recall = np.where(actual > 0, true_pos / np.maximum(actual, 1), np.nan)
        specificity = np.where(true_neg + false_pos > 0, true_neg / np.maximum(true_neg + false_pos, 1), np.nan)
        f1 = np.where(2 * true_pos + false_pos + false_neg > 0,
                      2 * true_pos / np.maximum(2 * true_pos + false_pos + false_neg, 1), np.nan)
    return {"precision": precision, "recall": recall, "specificity": specificity, "f1": f1}


def sensitivity_specificity(counts: np.ndarray, positive: int | None) -> tuple[float, float]:
    """Sensitivity and specificity of the ``positive`` class from confusion ``counts`` (binary),
    or their macro averages over the classes present (``positive`` None, more than two classes)."""
    if positive is not None:
        negative = 1 - positive
        sensitivity = _ratio(counts[positive, positive], counts[positive].sum())
        specificity = _ratio(counts[negative, negative], counts[negative].sum())
        return sensitivity, specificity
    rates = class_rates(counts)
    present = counts.sum(1) > 0
    sensitivity = float(np.mean(rates["recall"][present])) if present.any() else float("nan")
    specific = rates["specificity"][present]
    specificity = float(np.mean(specific)) if len(specific) and not np.isnan(specific).all() else float("nan")
    return sensitivity, specificity

