"""Fast bootstrap metrics: each equals its scikit-learn counterpart, ties and tiny sets included,
and is NaN where scikit-learn would refuse or divide by zero."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    precision_recall_fscore_support,
    recall_score,
    roc_auc_score,
)

from medxfer.pipeline.statistics.scoring import (
    binary_auroc,
    binary_average_precision,
    class_rates,
    confusion_counts,
    macro_auroc,
    macro_average_precision,
    sensitivity_specificity,
)


def random_binary_sets(count: int = 300, seed: int = 0):
    """(positive, scores) pairs with both classes present: sizes 2 to 60, half of them with scores
    rounded to one decimal (heavy ties), some with integer scores."""
    rng = np.random.default_rng(seed)
    produced = 0
    while produced < count:
        n = int(rng.integers(2, 61))
        positive = rng.random(n) < rng.uniform(0.05, 0.95)
        if positive.all() or not positive.any():
            continue
        scores = rng.random(n) + 0.3 * positive * rng.random()
        if produced % 2:
            scores = np.round(scores, 1)
        if produced % 7 == 0:
            scores = rng.integers(0, 3, n)
        produced += 1
        yield positive, scores


def random_multiclass(n: int, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Labels (n,) with every one of k classes present, and softmax probabilities (n, k)."""
    labels = np.r_[np.arange(k), rng.integers(0, k, n - k)]
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[labels]
    return labels, softmax(np.round(logits, 1), axis=1)


def test_binary_auroc_equals_sklearn_on_random_sets_with_ties_and_tiny_sizes():
    for positive, scores in random_binary_sets():
        assert binary_auroc(positive, scores) == pytest.approx(roc_auc_score(positive, scores), abs=1e-12)


def test_binary_average_precision_equals_sklearn_on_random_sets_with_ties_and_tiny_sizes():
    for positive, scores in random_binary_sets(seed=1):
        expected = average_precision_score(positive, scores)
        assert binary_average_precision(positive, scores) == pytest.approx(expected, abs=1e-12)


def test_average_precision_counts_a_tie_between_classes_as_one_step():
    positive = np.array([True, True, False, False])
    scores = np.array([0.9, 0.5, 0.5, 0.1])
    # Threshold 0.9: precision 1, recall 1/2; threshold 0.5 takes the tied positive and negative
    # together: precision 2/3, recall 1 (not precision 1 by ranking the positive first).
    assert binary_average_precision(positive, scores) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_auroc_of_one_class_only_is_nan_and_average_precision_needs_a_positive():
    scores = np.array([0.2, 0.4, 0.9])
    assert math.isnan(binary_auroc(np.zeros(3, dtype=bool), scores))
    assert math.isnan(binary_auroc(np.ones(3, dtype=bool), scores))
    assert math.isnan(binary_average_precision(np.zeros(3, dtype=bool), scores))
    assert binary_average_precision(np.ones(3, dtype=bool), scores) == 1.0


@pytest.mark.parametrize("k", [3, 4])
def test_macro_auroc_equals_sklearn_one_vs_rest_macro(k):
    rng = np.random.default_rng(k)
    for n in (k, 10, 57):
        labels, probabilities = random_multiclass(n, k, rng)
        expected = roc_auc_score(labels, probabilities, multi_class="ovr", average="macro", labels=range(k))
        assert macro_auroc(labels, probabilities) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("k", [3, 4])
def test_macro_average_precision_equals_sklearn_one_vs_rest_macro(k):
    rng = np.random.default_rng(k + 10)
    for n in (k, 10, 57):
        labels, probabilities = random_multiclass(n, k, rng)
        expected = average_precision_score(np.eye(k)[labels], probabilities, average="macro")
        assert macro_average_precision(labels, probabilities) == pytest.approx(expected, abs=1e-12)
    assert math.isnan(macro_average_precision(np.where(labels == 2, 0, labels), probabilities))
    binary = softmax(rng.normal(size=(20, 2)), axis=1)
    two_labels = np.arange(20) % 2
    assert macro_average_precision(two_labels, binary) == pytest.approx(
        average_precision_score(two_labels, binary[:, 1]), abs=1e-12)


def test_macro_auroc_is_nan_when_a_class_is_absent_and_binary_uses_class_one():
    rng = np.random.default_rng(5)
    labels, probabilities = random_multiclass(30, 3, rng)
    assert math.isnan(macro_auroc(np.where(labels == 2, 0, labels), probabilities))
    binary = softmax(rng.normal(size=(20, 2)), axis=1)
    two_labels = np.arange(20) % 2
    assert macro_auroc(two_labels, binary) == pytest.approx(roc_auc_score(two_labels, binary[:, 1]))


def test_confusion_counts_equal_sklearn_confusion_matrix():
    rng = np.random.default_rng(2)
    for k in (2, 3, 5):
        labels, predicted = rng.integers(0, k, 40), rng.integers(0, k, 40)
        expected = confusion_matrix(labels, predicted, labels=range(k))
        np.testing.assert_array_equal(confusion_counts(labels, predicted, k), expected)
    # A class nobody has or predicts keeps its row and column of zeros.
    np.testing.assert_array_equal(confusion_counts(np.array([0, 0]), np.array([0, 2]), 3),
                                  [[1, 0, 1], [0, 0, 0], [0, 0, 0]])


def test_class_rates_equal_sklearn_precision_recall_f1_and_one_vs_rest_specificity():
    rng = np.random.default_rng(3)
    for k in (2, 3, 4):
        labels = np.r_[np.arange(k), rng.integers(0, k, 50)]
        predicted = np.where(rng.random(len(labels)) < 0.6, labels, rng.integers(0, k, len(labels)))
        predicted[:k] = np.arange(k)  # every class predicted at least once: no undefined precision
        counts = confusion_matrix(labels, predicted, labels=range(k))
        precision, recall, f1, _ = precision_recall_fscore_support(labels, predicted, labels=range(k))
        rates = class_rates(counts)
        np.testing.assert_allclose(rates["precision"], precision)
        np.testing.assert_allclose(rates["recall"], recall)
        np.testing.assert_allclose(rates["f1"], f1)
        specificity = [recall_score(labels != c, predicted != c) for c in range(k)]
        np.testing.assert_allclose(rates["specificity"], specificity)


def test_class_rates_are_nan_where_the_denominator_is_zero():
    # Class 1 is never predicted, class 2 is absent and never predicted.
    counts = confusion_matrix([0, 0, 1, 1], [0, 0, 0, 0], labels=range(3))
    rates = class_rates(counts)
    assert rates["precision"][0] == 0.5 and math.isnan(rates["precision"][1]) and math.isnan(rates["precision"][2])
    assert rates["recall"][1] == 0.0 and math.isnan(rates["recall"][2])
    assert rates["f1"][1] == 0.0 and math.isnan(rates["f1"][2])
    assert rates["specificity"][2] == 1.0
    # Every image is class 0: its specificity has no negatives.
    assert math.isnan(class_rates(confusion_matrix([0, 0], [0, 1], labels=range(2)))["specificity"][0])


@pytest.mark.parametrize("positive", [0, 1])
def test_binary_sensitivity_specificity_equal_sklearn_recall_of_each_class(positive):
    rng = np.random.default_rng(4)
    labels, predicted = rng.integers(0, 2, 60), rng.integers(0, 2, 60)
    sensitivity, specificity = sensitivity_specificity(confusion_counts(labels, predicted, 2), positive)
    assert sensitivity == pytest.approx(recall_score(labels, predicted, pos_label=positive))
    assert specificity == pytest.approx(recall_score(labels, predicted, pos_label=1 - positive))


def test_macro_sensitivity_specificity_average_over_the_classes_present():
    rng = np.random.default_rng(6)
    labels = rng.choice([0, 2], 50)  # class 1 absent
    predicted = rng.integers(0, 3, 50)
    sensitivity, specificity = sensitivity_specificity(confusion_counts(labels, predicted, 3), None)
    assert sensitivity == pytest.approx(recall_score(labels, predicted, labels=[0, 2], average="macro"))
    expected_specificity = np.mean([recall_score(labels != c, predicted != c) for c in (0, 2)])
    assert specificity == pytest.approx(expected_specificity)


def test_binary_sensitivity_or_specificity_is_nan_without_that_class():
    counts = confusion_counts(np.array([1, 1, 1]), np.array([1, 0, 1]), 2)
    sensitivity, specificity = sensitivity_specificity(counts, 1)
    assert sensitivity == pytest.approx(2 / 3) and math.isnan(specificity)

