"""Calibration: calibrators recover the distortion that synthetic data was built with, keep
what they promise to keep, save and restore exactly; the metrics match hand-computed values."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from scipy.special import expit, softmax
from sklearn.exceptions import NotFittedError
from sklearn.metrics import brier_score_loss

from medxfer.pipeline.calibration.calibrators import (
    CALIBRATION_METHODS,
    IdentityCalibration,
    TemperatureScaling,
    VectorScaling,
    calibrator_from_dict,
    make_calibrator,
)
from medxfer.pipeline.calibration.metrics import (
    adaptive_calibration_error,
    brier_score,
    brier_terms,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
    reliability_bins,
)


def sample_classes(rng: np.random.Generator, logits: np.ndarray) -> np.ndarray:
    """One class index per row, drawn from softmax(logits): the labels of a model whose
    probabilities softmax(logits) are exactly calibrated."""
    cumulative = np.cumsum(softmax(logits, axis=1), axis=1)
    return (rng.random((len(logits), 1)) > cumulative[:, :-1]).sum(axis=1)


def calibrated_logits(k: int, n: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits (n, k) whose softmax is calibrated, and labels drawn from it."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, size=(n, k))
    return z, sample_classes(rng, z)


def binary(p1: np.ndarray) -> np.ndarray:
    """(n, 2) probabilities from P(class 1)."""
    return np.column_stack([1 - p1, p1])


ALL_FITTED = {
    "temperature": lambda z, y: TemperatureScaling().fit(z, y),
    "vector": lambda z, y: VectorScaling().fit(z, y),
    "none": lambda z, y: IdentityCalibration().fit(z, y),
}


# ---------------------------------------------------------------------------- temperature scaling


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("true_temperature", [2.5, 0.5])
def test_temperature_scaling_recovers_a_known_temperature(k, true_temperature):
    z, y = calibrated_logits(k)
    fitted = TemperatureScaling().fit(z * true_temperature, y)
    assert fitted.temperature_ == pytest.approx(true_temperature, rel=0.05)


@pytest.mark.parametrize("k", [2, 4])
def test_temperature_scaling_never_changes_the_predicted_class_or_the_ranking(k):
    z, y = calibrated_logits(k, n=5000)
    overconfident = z * 2.5
    calibrator = TemperatureScaling().fit(overconfident, y)
    raw, calibrated = softmax(overconfident, axis=1), calibrator.predict_proba(overconfident)
    assert calibrator.temperature_ > 1.5
    np.testing.assert_array_equal(calibrated.argmax(axis=1), raw.argmax(axis=1))
    if k == 2:  # images sorted by raw P(class 1) are sorted by calibrated P(class 1): same images above any threshold
        order = np.lexsort((calibrated[:, 1], raw[:, 1]))
        assert (np.diff(calibrated[order, 1]) >= 0).all()


def test_temperature_scaling_lowers_nll_and_ece_of_an_overconfident_model():
    z, y = calibrated_logits(4)
    overconfident = z * 2.5
    raw = softmax(overconfident, axis=1)
    calibrated = TemperatureScaling().fit(overconfident, y).predict_proba(overconfident)
    assert negative_log_likelihood(y, calibrated) < negative_log_likelihood(y, raw) - 0.1
    assert expected_calibration_error(y, raw) > 0.1
    assert expected_calibration_error(y, calibrated) < 0.02


def test_temperature_scaling_transform_divides_the_logits():
    z, y = calibrated_logits(3, n=500)
    calibrator = TemperatureScaling().fit(z, y)
    np.testing.assert_allclose(calibrator.transform(z), z / calibrator.temperature_)
    np.testing.assert_allclose(calibrator.predict_proba(z).sum(axis=1), 1.0)


def test_identity_calibration_is_plain_softmax():
    z, y = calibrated_logits(3, n=200)
    np.testing.assert_allclose(IdentityCalibration().fit(z, y).predict_proba(z), softmax(z, axis=1))


# ---------------------------------------------------------------------------- vector and class-wise scaling


def test_vector_scaling_recovers_per_class_scale_and_bias():
    rng = np.random.default_rng(1)
    z = rng.normal(0.0, 2.0, size=(20000, 4))
    scale, bias = np.array([0.5, 1.5, 1.0, 2.0]), np.array([0.5, -0.5, 0.3, -0.3])  # bias sums to 0, as bias_ does
    fitted = VectorScaling().fit(z, sample_classes(rng, z * scale + bias))
    np.testing.assert_allclose(fitted.scale_, scale, atol=0.1)
    np.testing.assert_allclose(fitted.bias_, bias, atol=0.1)
    assert fitted.bias_.sum() == pytest.approx(0.0, abs=1e-9)


def test_vector_scaling_can_change_the_predicted_class():
    rng = np.random.default_rng(2)
    z = rng.normal(0.0, 1.0, size=(5000, 3))
    y = sample_classes(rng, z + np.array([2.0, 0.0, -2.0]))  # the raw logits miss a strong class prior
    calibrated = VectorScaling().fit(z, y).predict_proba(z)
    assert (calibrated.argmax(axis=1) != z.argmax(axis=1)).mean() > 0.1


# ---------------------------------------------------------------------------- saving and restoring


@pytest.mark.parametrize("method", sorted(ALL_FITTED))
def test_calibrators_round_trip_through_json_with_identical_predictions(method):
    z, y = calibrated_logits(3, n=1000)
    fitted = ALL_FITTED[method](z * 2.0, y)
    saved = json.loads(json.dumps(fitted.to_dict()))
    restored = calibrator_from_dict({**saved, "fitted_on": "val"})
    assert saved["method"] == method
    assert type(restored) is type(fitted)
    np.testing.assert_array_equal(restored.predict_proba(z), fitted.predict_proba(z))


@pytest.mark.parametrize(("data", "message"), [
    (["temperature", 1.5], "must be a dict"),
    ({"n_classes": 2, "temperature": 1.5}, "unknown calibration method None"),
    ({"method": "platt", "n_classes": 2}, "unknown calibration method 'platt'"),
    ({"method": "temperature", "temperature": 1.5}, "'n_classes'"),
    ({"method": "temperature", "n_classes": 1, "temperature": 1.5}, "'n_classes'"),
    ({"method": "temperature", "n_classes": 2}, "'temperature', which is missing"),
    ({"method": "temperature", "n_classes": 2, "temperature": -1.0}, "must be positive"),
    ({"method": "temperature", "n_classes": 2, "temperature": "1.5"}, "must be a number"),
    ({"method": "temperature", "n_classes": 2, "temperature": None}, "must be a number"),
    ({"method": "temperature", "n_classes": 2, "temperature": float("nan")}, "must be finite"),
    ({"method": "vector", "n_classes": 3, "scale": [1.0, 1.0], "bias": [0.0, 0.0, 0.0]}, "'scale' must be a list of 3"),
    ({"method": "vector", "n_classes": 2, "scale": [1.0, 1.0]}, "'bias', which is missing"),
])
def test_calibrator_from_dict_rejects_bad_dicts(data, message):
    with pytest.raises(ValueError, match=message):
        calibrator_from_dict(data)


def test_make_calibrator_builds_unfitted_calibrators_and_rejects_unknown_methods():
    kinds = {method: type(make_calibrator(method)) for method in CALIBRATION_METHODS}
    assert kinds == {"temperature": TemperatureScaling, "vector": VectorScaling, "none": IdentityCalibration}
    with pytest.raises(NotFittedError):
        make_calibrator("temperature").predict_proba(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="temperature, vector, none"):
        make_calibrator("isotonic")


@pytest.mark.parametrize("kind", [TemperatureScaling, VectorScaling, IdentityCalibration])
def test_calibrators_refuse_to_work_before_fit(kind):
    with pytest.raises(NotFittedError):
        kind().transform(np.zeros((2, 2)))
    with pytest.raises(NotFittedError):
        kind().to_dict()


# ---------------------------------------------------------------------------- calibration errors


def test_ece_is_near_zero_for_calibrated_scores_and_large_for_overconfident_ones():
    rng = np.random.default_rng(4)
    p1 = rng.random(50000)
    y = (rng.random(50000) < p1).astype(int)
    calibrated = binary(p1)
    overconfident = binary(expit(3 * np.log(p1 / (1 - p1))))
    for error in (expected_calibration_error, adaptive_calibration_error):
        assert error(y, calibrated) < 0.015
        assert error(y, overconfident) > 0.1
    for probabilities in (calibrated, overconfident):
        assert maximum_calibration_error(y, probabilities) >= expected_calibration_error(y, probabilities)


def test_ece_and_mce_match_a_hand_computed_example():
    # confidences 0.85 (right), 0.62 (wrong), 0.95 (right), each alone in its bin of 15
    labels = np.array([1, 0, 0])
    probabilities = binary(np.array([0.85, 0.62, 0.05]))
    assert expected_calibration_error(labels, probabilities) == pytest.approx((0.15 + 0.62 + 0.05) / 3)
    assert maximum_calibration_error(labels, probabilities) == pytest.approx(0.62)


def test_adaptive_ece_uses_groups_of_equal_size():
    labels = np.array([0, 1, 0, 0])  # right, wrong, right, right
    probabilities = binary(np.array([0.4, 0.3, 0.2, 0.1]))  # confidences 0.6, 0.7, 0.8, 0.9
    # two groups: {0.6, 0.7} accuracy 0.5 vs confidence 0.65; {0.8, 0.9} accuracy 1 vs 0.85
    assert adaptive_calibration_error(labels, probabilities, n_bins=2) == pytest.approx(0.15)
    # fewer images than bins: one image per group
    assert adaptive_calibration_error(labels, probabilities) == pytest.approx((0.4 + 0.7 + 0.2 + 0.1) / 4)


def test_reliability_bins_count_every_image_and_reproduce_the_ece():
    z, y = calibrated_logits(3, n=3000)
    probabilities = softmax(z * 2.0, axis=1)
    bins = reliability_bins(y, probabilities)
    assert len(bins) == 15
    assert sum(b["count"] for b in bins) == 3000
    assert bins[0]["lower"] == 0.0 and bins[-1]["upper"] == 1.0
    assert all(a["upper"] == b["lower"] for a, b in itertools.pairwise(bins))
    filled = [b for b in bins if b["count"]]
    assert all(b["lower"] <= b["confidence"] <= b["upper"] for b in filled)
    assert all(b["confidence"] is None and b["accuracy"] is None for b in bins if not b["count"])
    ece = sum(b["count"] / 3000 * abs(b["accuracy"] - b["confidence"]) for b in filled)
    assert ece == pytest.approx(expected_calibration_error(y, probabilities), rel=1e-12)
    mce = max(abs(b["accuracy"] - b["confidence"]) for b in filled)
    assert mce == pytest.approx(maximum_calibration_error(y, probabilities), rel=1e-12)
    json.dumps(bins)


def test_reliability_bins_are_closed_on_the_left_and_the_last_one_holds_certainty():
    edge = np.linspace(0.0, 1.0, 16)[9]  # 0.6: the lower edge of bin 9
    bins = reliability_bins(np.array([1, 1]), binary(np.array([edge, 1.0])))
    assert [i for i, b in enumerate(bins) if b["count"]] == [9, 14]


# ---------------------------------------------------------------------------- Brier score and NLL


def test_brier_score_and_nll_match_hand_computed_values():
    labels = np.array([0, 1, 1, 0])
    p1 = np.array([0.1, 0.9, 0.8, 0.3])
    assert brier_score(labels, binary(p1)) == pytest.approx(np.mean((p1 - labels) ** 2))  # 0.0375, positive class
    assert negative_log_likelihood(labels, binary(p1)) == pytest.approx(-np.log([0.9, 0.9, 0.8, 0.7]).mean())
    # one class absent from the labels: K still comes from the columns
    assert brier_score(np.array([0, 0]), binary(np.array([0.2, 0.4]))) == pytest.approx(0.1)
    three = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    # more than two classes: sum over classes, not halved ((0.09 + 0.04 + 0.01) + (0.01 + 0.09 + 0.16)) / 2
    assert brier_score(np.array([0, 2]), three) == pytest.approx(0.2)
    assert negative_log_likelihood(np.array([0, 2]), three) == pytest.approx(-(np.log(0.7) + np.log(0.6)) / 2)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_brier_score_is_the_mean_of_its_terms_and_equals_sklearn(k):
    rng = np.random.default_rng(k)
    for n in (1, 7, 200):
        probabilities = softmax(rng.normal(0.0, 2.0, size=(n, k)), axis=1)
        labels = rng.integers(0, k, n)
        terms = brier_terms(labels, probabilities)
        assert terms.shape == (n,) and (terms >= 0).all() and (terms <= (1 if k == 2 else 2)).all()
        assert brier_score(labels, probabilities) == pytest.approx(float(np.mean(terms)), abs=0)
        expected = brier_score_loss(labels, probabilities, labels=range(k))
        assert brier_score(labels, probabilities) == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("metric", [
    expected_calibration_error, adaptive_calibration_error, maximum_calibration_error, reliability_bins,
    brier_score, brier_terms, negative_log_likelihood,
])
@pytest.mark.parametrize(("labels", "probabilities", "message"), [
    ([0, 1, 1], [[0.5, 0.5], [0.2, 0.8]], "differ in length"),
    ([0, 1], [0.5, 0.8], "2-D"),
    ([0, 2], [[0.5, 0.5], [0.2, 0.8]], "class indices 0 to 1"),
    ([-1, 0], [[0.5, 0.5], [0.2, 0.8]], "class indices 0 to 1"),
    ([0.0, 1.0], [[0.5, 0.5], [0.2, 0.8]], "integer class indices"),
    (np.zeros(0, dtype=int), np.zeros((0, 2)), "empty"),
    ([0, 1], [[2.0, -1.0], [0.2, 0.8]], r"in \[0, 1\]"),
    ([0, 1], [[0.5, 0.6], [0.2, 0.8]], "row 0 sums to 1.1"),
    ([0, 0], [[1.0], [1.0]], "at least 2"),
])
def test_metrics_reject_bad_input(metric, labels, probabilities, message):
    with pytest.raises(ValueError, match=message):
        metric(np.asarray(labels), np.asarray(probabilities))


@pytest.mark.parametrize("n_bins", [0, 2.5])
def test_binned_metrics_reject_a_bad_number_of_bins(n_bins):
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(np.array([0]), np.array([[0.6, 0.4]]), n_bins=n_bins)


@pytest.mark.parametrize("kind", [TemperatureScaling, VectorScaling, IdentityCalibration])
@pytest.mark.parametrize(("logits", "labels", "message"), [
    (np.zeros((3, 2)), np.array([0, 1]), "differ in length"),
    (np.zeros(3), np.array([0, 1, 1]), "2-D"),
    (np.zeros((2, 2)), np.array([0, 2]), "class indices 0 to 1"),
    (np.zeros((0, 2)), np.zeros(0, dtype=int), "empty"),
    (np.array([[0.0, np.nan]]), np.array([0]), "NaN or infinite"),
    (np.zeros((2, 1)), np.array([0, 0]), "at least 2"),
])
def test_calibrators_reject_bad_training_input(kind, logits, labels, message):
    with pytest.raises(ValueError, match=message):
        kind().fit(logits, labels)


@pytest.mark.parametrize("method", sorted(ALL_FITTED))
def test_calibrators_reject_logits_with_another_number_of_classes(method):
    z, y = calibrated_logits(3, n=100)
    with pytest.raises(ValueError, match="fitted on 3"):
        ALL_FITTED[method](z, y).predict_proba(np.zeros((2, 4)))

