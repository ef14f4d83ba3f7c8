"""The report's statistics hold their stated error rates, checked by seeded simulation with known
truth (fuller runs: benchmarks/statistics.py, figures in the README's "How far to trust the
numbers"): false flags on null reports, power on planted gaps, interval coverage on small
clustered sets, threshold placement, calibration bounds and the external-collapse warnings."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logit
from scipy.stats import norm

from medxfer.pipeline.calibration.metrics import expected_calibration_error, positive_class_calibration_error
from medxfer.pipeline.evaluation.decision import Evaluator
from medxfer.pipeline.evaluation.evaluator import evaluate
from medxfer.pipeline.evaluation.inputs import EvaluationSettings, SplitInputs
from medxfer.pipeline.evaluation.simulation import CLASSES, separation_for, simulate_test_set, simulated_evaluator
from medxfer.pipeline.evaluation.simulation import simulated_report as report
from medxfer.pipeline.evaluation.threshold import choose_threshold
from medxfer.pipeline.evaluation.transfer import transfer_warnings
from medxfer.pipeline.statistics.comparisons import GroupScorer, holm_adjusted
from medxfer.pipeline.statistics.intervals import (
    auroc_estimate,
    logit_interval,
    patient_codes,
    proportion_estimate,
    wilson_interval,
)
from medxfer.pipeline.statistics.scoring import binary_auroc, ranking_scores

INTERSECTIONS = ("sex x age_band", "view x site")


def test_null_reports_carry_a_flag_at_most_1_time_in_20():
    """About 150 images of 100 patients; sex, age band, site, manufacturer, view and two
    intersections, all independent of labels and scores: at most 5 % of 200 reports may carry any
    flag."""
    rng = np.random.default_rng(2026)
    flagged, comparisons = 0, []
    for _ in range(200):
        bias = report(simulate_test_set(rng, patients=100, images_per_patient=(1, 2)), INTERSECTIONS)["bias"]
        flagged += bool(bias["flags"])
        comparisons.append(bias["comparisons"])
    assert np.mean(comparisons) > 60  # the family is large: without control most reports would carry a flag
    assert flagged / 200 <= 0.05


def test_null_reports_at_a_prevalence_of_10_percent_carry_a_flag_at_most_1_time_in_20():
    """A rare label (about 10 positive patients of 100) makes small groups all-negative by chance;
    a prevalence test needs 5 patients of the rarer class expected on each side before it is made."""
    rng = np.random.default_rng(2027)
    flagged = sum(bool(report(simulate_test_set(rng, patients=100, images_per_patient=(1, 2), prevalence=0.1))
                       ["bias"]["flags"]) for _ in range(200))
    assert flagged / 200 <= 0.05


def test_a_site_that_holds_only_one_class_is_flagged_as_confounded():
    """30 patients of one site all normal, 30 of the others all with opacity: a Wald test has no
    spread to measure there, the score test still rejects."""
    s = simulate_test_set(np.random.default_rng(4), patients=60, group_patients=30, group_prevalence=0.0,
                          rest_prevalence=1.0)
    flags = report(s)["bias"]["flags"]
    assert any(f["attribute"] == "site" and f["metric"] == "confounding" for f in flags), flags


@pytest.mark.parametrize(("planted", "patients"), [
    ({"auroc": 0.9, "group_auroc": 0.7, "prevalence": 0.5}, 300),  # AUROC 0.70 against 0.90
    ({"group_prevalence": 0.8, "rest_prevalence": 0.3}, 150),  # prevalence 80 % against 30 %
], ids=["auroc-gap", "prevalence-gap"])
def test_a_planted_gap_in_a_site_of_60_patients_is_flagged_in_at_least_80_percent_of_reports(planted, patients):
    rng = np.random.default_rng(60 + patients)
    reports = 100
    hits = 0
    for _ in range(reports):
        flags = report(simulate_test_set(rng, patients=patients, group_patients=60, **planted))["bias"]["flags"]
        hits += any(f["attribute"] == "site" and f["group"] in (None, "site-1") for f in flags)
    assert hits / reports >= 0.8


def coverage(patients: int, auroc: float, reps: int, seed: int) -> dict[str, float]:
    """Coverage of the AUROC, sensitivity and specificity intervals the report computes."""
    rng = np.random.default_rng(seed)
    hits = {"auroc": 0, "sensitivity": 0, "specificity": 0}
    for _ in range(reps):
        s = simulate_test_set(rng, patients=patients, auroc=auroc)
        codes = patient_codes(s.patients, len(s.labels))
        positive = s.labels == 1
        called = s.logits[:, 1] >= logit(s.threshold)
        interval = logit_interval(auroc_estimate(positive, s.logits[:, 1], codes), codes)
        hits["auroc"] += interval.low <= s.auroc <= interval.high
        for name, success, counted, truth in (("sensitivity", called, positive, s.sensitivity),
                                              ("specificity", ~called, ~positive, s.specificity)):
            interval = wilson_interval(proportion_estimate(success, counted, codes), counted, codes)
            hits[name] += interval.low <= truth <= interval.high
    return {name: count / reps for name, count in hits.items()}


@pytest.mark.parametrize(("patients", "auroc"), [(24, 0.8), (24, 0.9), (120, 0.8), (120, 0.9)])
def test_95_percent_intervals_cover_at_least_93_percent_on_small_clustered_sets(patients, auroc):
    """About 60 images of 24 patients, or 300 of 120, one to four correlated images each."""
    result = coverage(patients, auroc, reps=800, seed=patients * 10 + int(auroc * 10))
    assert min(result.values()) >= 0.93, result


@pytest.mark.parametrize(("patients", "auroc", "prevalence"), [(24, 0.85, 0.4), (120, 0.85, 0.4), (120, 0.85, 0.1)])
def test_the_report_s_accuracy_and_balanced_accuracy_intervals_cover_at_least_93_percent(patients, auroc, prevalence):
    """The intervals as ``evaluate`` writes them, for every checked figure; at 10 % prevalence
    about 12 positive patients of 120."""
    rng = np.random.default_rng(patients + int(100 * prevalence))
    reps, hits = (500 if patients < 100 else 300), {}  # the small sets are quick: more of them
    for _ in range(reps):
        s = simulate_test_set(rng, patients=patients, auroc=auroc, prevalence=prevalence)
        ci = report(s)["test"]["ci"]
        share = float(np.mean(s.labels))  # accuracy given the labels drawn
        for name, truth in (("auroc", s.auroc), ("sensitivity", s.sensitivity), ("specificity", s.specificity),
                            ("accuracy", s.sensitivity * share + s.specificity * (1 - share)),
                            ("balanced_accuracy", (s.sensitivity + s.specificity) / 2)):
            hits[name] = hits.get(name, 0) + int(ci[name] is not None and ci[name][0] <= truth <= ci[name][1])
    result = {name: count / reps for name, count in hits.items()}
    assert min(result.values()) >= 0.93, result


def test_a_balanced_accuracy_interval_holds_its_estimate_when_every_image_is_called_negative():
    s = simulate_test_set(np.random.default_rng(9), patients=30)
    metrics = evaluate(CLASSES, {"test": SplitInputs(s.labels, s.logits, s.patients)},
                       EvaluationSettings(bootstrap=0), evaluator=simulated_evaluator(0.9999)).metrics["test"]
    assert metrics["sensitivity"] == 0.0 and metrics["balanced_accuracy"] == pytest.approx(0.5)
    low, high = metrics["ci"]["balanced_accuracy"]
    assert low < 0.5 < high and "MOVER" in metrics["ci_method"]["balanced_accuracy"]


def test_the_report_shows_the_intervals_whose_coverage_is_checked():
    s = simulate_test_set(np.random.default_rng(5), patients=40)
    metrics = report(s)["test"]
    codes = patient_codes(s.patients, len(s.labels))
    expected = logit_interval(auroc_estimate(s.labels == 1, s.logits[:, 1], codes), codes)
    assert metrics["ci"]["auroc"] == pytest.approx([expected.low, expected.high])
    assert "logit" in metrics["ci_method"]["auroc"] and "Wilson" in metrics["ci_method"]["sensitivity"]
    groups = GroupScorer(s.labels, (s.logits[:, 1] >= logit(s.threshold)).astype(int),
                         ranking_scores(s.logits), 1, codes)
    member = np.array([m["sex"] == "F" for m in s.meta])
    interval = wilson_interval(groups.sensitivity(member), member & (s.labels == 1), codes)
    assert metrics["subgroups"]["sex"]["F"]["ci"]["sensitivity"] == pytest.approx([interval.low, interval.high])


def test_a_rate_s_gap_to_the_whole_split_is_its_gap_to_the_rest_scaled_by_the_rest_s_share():
    """The whole split holds the group: group - whole = (rest's share) x (group - rest), for the
    point and for the interval (not an interval of two independent samples, which would be about
    twice as wide when the group is half the split)."""
    s = simulate_test_set(np.random.default_rng(14), patients=100)
    entry = report(s)["test"]["subgroups"]["sex"]["F"]
    female = np.array([m["sex"] == "F" for m in s.meta])
    for metric, counted in (("prevalence", np.ones_like(female)), ("sensitivity", s.labels == 1),
                            ("specificity", s.labels == 0)):
        share = (~female & counted).sum() / counted.sum()
        assert entry["gap"][metric] == pytest.approx(share * entry["gap_rest"][metric])
        assert entry["gap_ci"][metric] == pytest.approx([share * bound for bound in entry["gap_rest_ci"][metric]])


def test_the_threshold_sits_mid_gap_on_a_separated_validation_split_and_finds_more_new_positives():
    """20 + 20 validation images that the model separates: at the midpoint of the gap the
    threshold finds more new positives than at the lowest validation positive (the edge)."""
    rng = np.random.default_rng(20)
    separation = separation_for(0.995)
    edge, middle = [], []
    while len(middle) < 100:
        val = simulate_test_set(rng, patients=40, auroc=0.995, prevalence=0.5, images_per_patient=(1, 1))
        positive, score = val.labels == 1, val.logits[:, 1]
        if positive.sum() != 20 or binary_auroc(positive, score) < 1.0:
            continue
        chosen, note = choose_threshold(positive, score, "youden", 0.9)
        assert note is None
        gap = (score[~positive].max(), score[positive].min())
        assert logit(chosen) == pytest.approx(sum(gap) / 2)
        middle.append(norm.sf(logit(chosen) - separation))
        edge.append(norm.sf(gap[1] - separation))
    assert np.mean(middle) > np.mean(edge) + 0.02


def test_equal_youden_cuts_take_the_highest_and_no_j_above_zero_falls_back_to_half():
    positive = np.array([True, False, True, False])
    # cuts at 3 and at 1 both give J = 0.5: the higher one is taken, mid-gap between 3 and 2
    value, note = choose_threshold(positive, np.array([3.0, 2.0, 1.0, 0.0]), "youden", 0.9)
    assert logit(value) == pytest.approx(2.5) and note is None
    value, note = choose_threshold(positive, np.array([0.0, 1.0, 2.0, 3.0]), "youden", 0.9)  # inverted
    assert value == 0.5 and "no better than chance" in note


def test_a_validation_split_classified_without_error_keeps_t_1_and_a_bound_is_reported():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 30)
    separated = SplitInputs(labels, 6.0 * np.eye(3)[labels] + rng.normal(size=(30, 3)))
    evaluator = Evaluator(("a", "b", "c"), EvaluationSettings(bootstrap=0)).fit(separated)
    assert evaluator.calibrator_.method == "none" and "no finite optimum" in evaluator.calibration_note_
    # logits 1000 times too small and one error: the temperature ends at its lower bound, and says so
    labels = rng.integers(0, 2, 200)
    logits = 0.001 * np.column_stack([-(2 * labels - 1) * 3.0, (2 * labels - 1) * 3.0]) + 1e-4 * rng.normal(size=(200, 2))
    logits[0] = logits[0][::-1]
    bound = Evaluator(CLASSES, EvaluationSettings(bootstrap=0)).fit(SplitInputs(labels, logits))
    assert "reached its lower bound" in bound.calibration_note_
    assert bound.calibrator_.method == "none"  # not applied: the network's own probabilities


def test_vector_scaling_on_a_two_class_split_a_threshold_separates_falls_back_to_temperature():
    """The argmax errs (so a temperature has an optimum) but a threshold separates the classes: the
    vector's bias would run away, so temperature scaling is fitted and the note says why."""
    rng = np.random.default_rng(12)
    labels = np.repeat([0, 1], 30)
    score = np.where(labels == 1, 2.0, -2.0) + rng.uniform(-1, 1, 60) + 1.5  # all positives above all negatives
    logits = np.column_stack([np.zeros(60), score])
    assert not np.array_equal(logits.argmax(1), labels)
    fitted = Evaluator(CLASSES, EvaluationSettings(bootstrap=0, calibration="vector")).fit(SplitInputs(labels, logits))
    assert fitted.calibrator_.method == "temperature" and "temperature scaling was fitted instead" in \
        fitted.calibration_note_


def test_positive_class_ece_is_the_gap_of_one_class_s_probability():
    labels = np.array([1, 1, 0, 0, 1, 0, 0, 0])
    p = np.array([0.9, 0.9, 0.9, 0.9, 0.2, 0.2, 0.2, 0.2])  # two bins: 50 % at 0.9, 25 % at 0.2
    probabilities = np.column_stack([1 - p, p])
    assert positive_class_calibration_error(labels, probabilities, 1) == pytest.approx(0.5 * 0.4 + 0.5 * 0.05)
    assert expected_calibration_error(labels, probabilities) == pytest.approx(0.5 * 0.4 + 0.5 * 0.05)
    report_ = evaluate(CLASSES, {"val": SplitInputs(labels, np.log(probabilities))},
                       EvaluationSettings(bootstrap=0, calibration="none")).metrics["val"]
    assert report_["ece_positive"] == pytest.approx(0.225) and "ece_positive_uncalibrated" in report_


def test_a_model_that_does_not_transfer_is_warned_about_before_any_figure():
    """The audit's external collapse: AUROC below 0.5 at a new site, nearly every image called
    positive there; the warnings name each figure and come first."""
    rng = np.random.default_rng(8)
    val = simulate_test_set(rng, patients=80, auroc=0.9, prevalence=0.5)
    collapsed = simulate_test_set(rng, patients=120, auroc=0.3, prevalence=0.5)
    logits = collapsed.logits.copy()
    logits[:, 1] += 4.0  # the new site's images all score high
    metrics = evaluate(CLASSES, {"val": SplitInputs(val.labels, val.logits, val.patients),
                                 "test": SplitInputs(collapsed.labels, logits, collapsed.patients)},
                       EvaluationSettings(bootstrap=0, calibration="none")).metrics
    warnings = metrics["transfer"]["warnings"]
    assert warnings and metrics["warnings"][:len(warnings)] == warnings
    assert "ranks the images on the test set worse than chance" in warnings[0]
    assert metrics["transfer"]["kinds"][0] == "does not transfer"
    assert any("calls" in w and "opacity, while" in w for w in warnings)
    assert any(w.startswith("Specificity on the test set is") for w in warnings)


def test_a_test_split_drawn_like_validation_is_rarely_warned_about_and_a_moved_one_is():
    """Validation of 80 patients, test of 120, the same model: at most 5 % of 100 such test splits
    get a transfer warning; with the scores one logit higher (the threshold no longer fits) at
    least 80 % do."""
    rng = np.random.default_rng(31)

    def warned(shift: float) -> bool:
        val, test = simulate_test_set(rng, patients=80), simulate_test_set(rng, patients=120)
        logits = test.logits + np.array([0.0, shift])
        metrics = evaluate(CLASSES, {"val": SplitInputs(val.labels, val.logits, val.patients),
                                     "test": SplitInputs(test.labels, logits, test.patients)},
                           EvaluationSettings(bootstrap=0)).metrics
        return bool(metrics["transfer"]["warnings"])

    assert sum(warned(0.0) for _ in range(100)) <= 5
    assert sum(warned(1.0) for _ in range(50)) >= 40


def test_without_recorded_statistics_rates_are_tested_with_errors_read_back_from_their_intervals():
    """A run trained before the statistics were recorded: the standard errors are read back from
    the 95 % intervals and the same test is made (the Shenzhen-Montgomery case warns; a drop of
    0.19 with intervals that overlap, p about 0.03, does not)."""
    validation = {"n_patients": 95, "sensitivity": 0.792, "ci": {"sensitivity": [0.652, 0.885]}}
    # the held-out split is scored by this version (its own statistics recorded; none needed here)
    collapsed = {"n": 138, "n_patients": 138, "counts": {"tb": 58}, "auroc": None, "sensitivity": 0.345,
                 "ci": {"sensitivity": [0.233, 0.477]}, "transfer_statistics": {}}
    warnings, kinds = transfer_warnings(collapsed, validation, positive="tb", where="at this site")
    assert kinds == ["does not transfer"] and warnings[0].startswith("Sensitivity at this site is 0.345")
    near = {**collapsed, "sensitivity": 0.60, "ci": {"sensitivity": [0.47, 0.72]}}
    assert transfer_warnings(near, validation, positive="tb", where="at this site") == ([], [])


def test_a_validation_split_called_without_error_still_anchors_the_called_share_check():
    """Every validation image called right: the share called minus the share positive is 0 on
    every image (no spread seen, recorded as exact), and a test split where nearly every image is
    called positive is still warned about."""
    rng = np.random.default_rng(17)
    val = simulate_test_set(rng, patients=30, auroc=0.9999, prevalence=0.5, images_per_patient=(1, 1))
    test = simulate_test_set(rng, patients=80, prevalence=0.5)
    metrics = evaluate(CLASSES, {"val": SplitInputs(val.labels, val.logits, val.patients),
                                 "test": SplitInputs(test.labels, test.logits + np.array([0.0, 4.0]), test.patients)},
                       EvaluationSettings(bootstrap=0, calibration="none")).metrics
    assert metrics["val"]["accuracy"] == 1.0
    assert metrics["val"]["transfer_statistics"]["called_minus_observed"][:2] == [0.0, 0.0]
    assert any(w.startswith("The model calls") for w in metrics["transfer"]["warnings"])


def test_holm_adjusted_p_values_step_down_and_never_fall():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04, then made non-decreasing
    adjusted = holm_adjusted([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_adjusted([0.6, 0.9]) == pytest.approx([1.0, 1.0])
