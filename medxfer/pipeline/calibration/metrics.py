"""Calibration metrics: how far probabilities are from the frequencies they claim.

They take true class indices (n,) and probabilities (n, K) and measure calibration: expected
(``expected_calibration_error``, equal-width bins, and ``adaptive_calibration_error``,
equal-mass bins) and maximum calibration error over top-label confidence, the ECE of one class's
probability (``positive_class_calibration_error``), the bins of a reliability diagram
(``reliability_bins``), the Brier score (``brier_score``, and its per-image terms
``brier_terms`` for intervals) and the negative log-likelihood. They are vectorised, since
bootstraps call them many thousands of times.

Written here because scikit-learn has no expected calibration error, and MONAI's
calibration_binning / CalibrationErrorMetric bin every class channel of (segmentation)
probability maps separately, not a classifier's top-label confidence.
"""

from __future__ import annotations

from typing import Any, TypedDict

import numpy as np
from sklearn.metrics import log_loss

from medxfer.pipeline.calibration.arrays import check_n_bins, check_scores


class ReliabilityBin(TypedDict):
    """One bin of a reliability diagram (``reliability_bins``): its edges ``lower`` and
    ``upper`` in [0, 1], the mean top-label ``confidence`` and the share correct (``accuracy``)
    of its images, both None when it is empty, and ``count``, its images."""

    lower: float
    upper: float
    confidence: float | None
    accuracy: float | None
    count: int

def _top_label(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Confidence (n,), the largest probability of each row, and correctness (n,), 1.0 where
    the most probable class (the first one on ties) is the true one."""
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities[np.arange(len(predicted)), predicted].astype(float)
    return confidence, (predicted == labels).astype(float)


def _equal_width_bins(
    labels: Any, probabilities: Any, n_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Bin edges (n_bins + 1,) and per-bin count, sum of confidence and number correct
    (n_bins,) each, and n, for equal-width bins [lower, upper) over [0, 1], the last bin
    [lower, 1] closed."""
    n_bins = check_n_bins(n_bins)
    labels, probabilities = check_scores(labels, probabilities)
    confidence, correct = _top_label(labels, probabilities)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.digitize(confidence, edges[1:-1])  # edges[i] <= c < edges[i + 1] -> i; 1.0 -> n_bins - 1
    counts = np.bincount(index, minlength=n_bins)
    sum_confidence = np.bincount(index, weights=confidence, minlength=n_bins)
    sum_correct = np.bincount(index, weights=correct, minlength=n_bins)
    return edges, counts, sum_confidence, sum_correct, len(labels)


def expected_calibration_error(labels: Any, probabilities: Any, n_bins: int = 15) -> float:
    """Top-label expected calibration error (Guo et al. 2017), in [0, 1].

    ``labels``: true class indices (n,) in [0, K); ``probabilities``: (n, K), rows summing to 1.
    The confidence of an image is its largest probability, and it is correct when that class
    is the true one. Confidences go into ``n_bins`` equal-width bins over [0, 1], each bin
    [lower, upper) closed on the left, the last one [lower, 1] closed on both sides; the ECE is
    the sum over bins of (count / n) * |accuracy - mean confidence|. 0 is perfect.
    """
    _, _, sum_confidence, sum_correct, n = _equal_width_bins(labels, probabilities, n_bins)
    return float(np.abs(sum_correct - sum_confidence).sum() / n)


def maximum_calibration_error(labels: Any, probabilities: Any, n_bins: int = 15) -> float:
    """Top-label maximum calibration error, in [0, 1]: the largest |accuracy - mean confidence|
    over the non-empty bins of ``expected_calibration_error`` (same inputs and bins). Always
    at least the ECE; noisy on small sets, where a bin may hold one image."""
    _, counts, sum_confidence, sum_correct, _ = _equal_width_bins(labels, probabilities, n_bins)
    filled = counts > 0
    return float((np.abs(sum_correct[filled] - sum_confidence[filled]) / counts[filled]).max())


def positive_class_calibration_error(labels: Any, probabilities: Any, positive: int, n_bins: int = 15) -> float:
    """Expected calibration error of the probability of one class, in [0, 1]: the calibrated
    P(``positive``) of every image in ``n_bins`` equal-width bins over [0, 1] (as
    ``expected_calibration_error``), and the sum over bins of (count / n) * |share of images of
    that class - mean P|. For two classes this is the ECE that torchmetrics' and netcal's binary
    ECE report; the top-label ECE of ``expected_calibration_error`` looks at max(P, 1 - P) and is
    usually smaller on the same scores (about half in the audit's simulations; 0.093 against
    0.111 on the NIH run)."""
    n_bins = check_n_bins(n_bins)
    labels, probabilities = check_scores(labels, probabilities)
    p = probabilities[:, positive].astype(float)
    hit = (labels == positive).astype(float)
    index = np.digitize(p, np.linspace(0.0, 1.0, n_bins + 1)[1:-1])
    difference = np.bincount(index, weights=hit - p, minlength=n_bins)
    return float(np.abs(difference).sum() / len(labels))


def adaptive_calibration_error(labels: Any, probabilities: Any, n_bins: int = 15) -> float:
    """Top-label expected calibration error with equal-mass bins, in [0, 1].

    Same inputs and definition as ``expected_calibration_error``, but the images, sorted by
    confidence, are split into ``n_bins`` groups of nearly equal size (sizes differ by at most
    one; with fewer than ``n_bins`` images, one image per group), so every bin holds data even
    when confidences crowd near 1. Images with equal confidence may fall in neighbouring
    groups. This is the top-label variant, not the class-wise adaptive calibration error of
    Nixon et al. 2019.
    """
    n_bins = check_n_bins(n_bins)
    labels, probabilities = check_scores(labels, probabilities)
    confidence, correct = _top_label(labels, probabilities)
    n = len(labels)
    groups = min(n_bins, n)
    order = np.argsort(confidence, kind="stable")
    index = np.arange(n) * groups // n  # sorted position -> group, sizes floor or ceil of n / groups
    difference = np.bincount(index, weights=correct[order] - confidence[order], minlength=groups)
    return float(np.abs(difference).sum() / n)


def reliability_bins(labels: Any, probabilities: Any, n_bins: int = 15) -> list[ReliabilityBin]:
    """The data of a reliability diagram: one dict per equal-width bin of
    ``expected_calibration_error`` (same inputs and bins), from low to high confidence, with
    ``"lower"`` and ``"upper"`` (bin edges in [0, 1]), ``"confidence"`` (mean top-label
    confidence) and ``"accuracy"`` (share correct), both None for an empty bin, and
    ``"count"`` (images). The ECE is the sum of count / n * |accuracy - confidence|.
    """
    edges, counts, sum_confidence, sum_correct, _ = _equal_width_bins(labels, probabilities, n_bins)
    return [
        ReliabilityBin(
            lower=float(edges[i]),
            upper=float(edges[i + 1]),
            confidence=float(sum_confidence[i] / counts[i]) if counts[i] else None,
            accuracy=float(sum_correct[i] / counts[i]) if counts[i] else None,
            count=int(counts[i]),
        )
        for i in range(len(counts))
    ]


def negative_log_likelihood(labels: Any, probabilities: Any) -> float:
    """Mean negative log-likelihood (cross-entropy, nats) of the true classes,
    mean(-log p[y]), by ``sklearn.metrics.log_loss`` (which clips probabilities to
    [eps, 1 - eps] for the array's float type, so a zero probability gives a large finite
    value). ``labels``: true class indices (n,) in [0, K); ``probabilities``: (n, K)."""
    labels, probabilities = check_scores(labels, probabilities)
    return float(log_loss(labels, probabilities, labels=range(probabilities.shape[1])))


def brier_terms(labels: Any, probabilities: Any) -> np.ndarray:
    """Each image's term of the Brier score, (n,) float64: the sum over classes of
    (p_k - [y == k])^2, halved when K == 2 (then (p_1 - y)^2, in [0, 1]; for more classes in
    [0, 2]). ``labels``: true class indices (n,) in [0, K); ``probabilities``: (n, K).

    Written here rather than taken from ``sklearn.metrics.brier_score_loss``, which returns only
    the mean: a patient-clustered interval of the Brier score needs every image's term."""
    labels, probabilities = check_scores(labels, probabilities)
    n_classes = probabilities.shape[1]
    squared = ((probabilities - np.eye(n_classes)[labels]) ** 2).sum(1)
    return squared / 2 if n_classes == 2 else squared


def brier_score(labels: Any, probabilities: Any) -> float:
    """Brier score, the mean of ``brier_terms``; lower is better. It equals
    ``sklearn.metrics.brier_score_loss(labels, probabilities, labels=range(K))`` with its default
    ``scale_by_half="auto"`` (the tests check it).

    ``labels``: true class indices (n,) in [0, K); ``probabilities``: (n, K). With K classes
    it is mean over images of sum over classes of (p_k - [y == k])^2, halved when K == 2:
    for two classes this equals the usual positive-class Brier score mean((p_1 - y)^2), in
    [0, 1]; for more classes it is the unhalved multi-class score, in [0, 2]. The number of
    classes is K (the columns), even when some class is absent from ``labels``.
    """
    return float(np.mean(brier_terms(labels, probabilities)))
