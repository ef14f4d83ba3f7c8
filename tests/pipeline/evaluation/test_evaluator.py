"""The evaluation report on synthetic logits: every metrics.json key of issue 6, point estimates
equal to scikit-learn's, calibration and threshold learned on validation only, subgroups that
say "n/a" instead of crashing, and bias, overfitting and size flags raised when (and only when)
the data was built to deserve them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import expit, logit, softmax
from scipy.stats import t as student_t
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from medxfer.pipeline.evaluation.checks import overfitting_check
from medxfer.pipeline.evaluation.decision import Evaluator
from medxfer.pipeline.evaluation.evaluator import evaluate
from medxfer.pipeline.evaluation.inputs import EvaluationSettings, SplitInputs
from medxfer.pipeline.evaluation.subgroups import age_band
from medxfer.pipeline.evaluation.threshold import positive_class_index

CLASSES = ("NORMAL", "PNEUMONIA")
THREE_CLASSES = ("bacterial", "normal", "viral")
FAST = EvaluationSettings(bootstrap=200)

# The keys issue 6 requires in metrics.json; {split} is val and test.
SPLIT_KEYS = (
    "{split}.auroc", "{split}.accuracy", "{split}.balanced_accuracy", "{split}.ece", "{split}.ece_uncalibrated",
    "{split}.brier", "{split}.nll",
)
CLASS_KEYS = (
    "{split}.per_class.{name}.precision", "{split}.per_class.{name}.recall", "{split}.per_class.{name}.specificity",
    "{split}.per_class.{name}.f1", "{split}.per_class.{name}.auroc", "{split}.per_class.{name}.support",
)
GROUP_KEYS = (
    "{split}.subgroups.{attribute}.{group}.n", "{split}.subgroups.{attribute}.{group}.auroc",
    "{split}.subgroups.{attribute}.{group}.sensitivity", "{split}.subgroups.{attribute}.{group}.specificity",
    "{split}.subgroups.{attribute}.{group}.ece",
)
RUN_KEYS = (
    "train.auroc", "calibration.temperature", "overfitting.train_val_auroc_gap", "overfitting.flag", "bias.flags",
)
NIH_GROUPS = {"sex": {"F", "M"}, "age_band": {"<18", "18-39", "40-64", "65+"}, "view": {"AP", "PA"}}


def binary_logits(labels: np.ndarray, rng: np.random.Generator, *, separation: float = 1.5,
                  scale: float = 1.0) -> np.ndarray:
    """Logits (n, 2) whose margin PNEUMONIA minus NORMAL is scale * (+-separation + N(0, 1)):
    calibrated for scale = 2 * separation, overconfident above."""
    margin = scale * (separation * (2 * labels - 1) + rng.normal(size=len(labels)))
    return np.column_stack([-margin, margin]) / 2


def binary_split(n: int, seed: int, *, prevalence: float = 0.4, separation: float = 1.5, scale: float = 1.0,
                 meta: list[dict] | tuple = (), patients: list[str] | tuple = ()) -> SplitInputs:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < prevalence).astype(int)
    return SplitInputs(labels, binary_logits(labels, rng, separation=separation, scale=scale), patients, meta)


def nih_meta(n: int, seed: int) -> list[dict]:
    """Sex, age (1 to 95 years) and view of n images, at random."""
    rng = np.random.default_rng(seed)
    return [{"sex": str(sex), "age": float(age), "view": str(view)}
            for sex, age, view in zip(rng.choice(["F", "M"], n), rng.uniform(1, 95, n), rng.choice(["AP", "PA"], n))]


def nih_split(n: int, seed: int) -> SplitInputs:
    """An NIH-pneumonia-like split: two images per patient, sex, age and view recorded."""
    return binary_split(n, seed, meta=nih_meta(n, seed + 100), patients=[f"patient-{seed}-{i // 2}" for i in range(n)])


def three_class_split(n: int, seed: int) -> SplitInputs:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    return SplitInputs(labels, 1.5 * np.eye(3)[labels] + rng.normal(size=(n, 3)))


def view_split(n: int, seed: int, noisy_view: str | None) -> SplitInputs:
    """Half AP, half PA at random; the logits of ``noisy_view`` carry no information."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.4).astype(int)
    views = rng.choice(["AP", "PA"], n)
    logits = binary_logits(labels, rng)
    noisy = views == noisy_view
    logits[noisy] = binary_logits(labels[noisy], rng, separation=0.0)
    return SplitInputs(labels, logits, meta=[{"view": str(v)} for v in views])


def lookup(metrics: dict, dotted: str):
    """metrics["a"]["b"]... for "a.b...", raising KeyError naming the full path."""
    value = metrics
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            raise KeyError(dotted)
        value = value[key]
    return value


def calibrated_positive(inputs: SplitInputs, metrics: dict) -> np.ndarray:
    """P(PNEUMONIA) of ``inputs`` recomputed from the reported temperature."""
    return softmax(inputs.logits / metrics["calibration"]["temperature"], axis=1)[:, 1]


def youden(positive: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    predicted = scores >= threshold
    return predicted[positive].mean() - predicted[~positive].mean()


def sensitivity_at(positive: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    return float((scores[positive] >= threshold).mean())


def interval_width(metrics: dict, metric: str = "auroc") -> float:
    low, high = metrics["test"]["ci"][metric]
    return high - low


@pytest.fixture(scope="module")
def nih_like():
    splits = {"train": nih_split(300, 1), "val": nih_split(300, 2), "test": nih_split(400, 3)}
    return splits, evaluate(CLASSES, splits, FAST, data_name="nih-like")


@pytest.fixture(scope="module")
def three_class():
    splits = {"train": three_class_split(300, 4), "val": three_class_split(300, 5), "test": three_class_split(400, 6)}
    return splits, evaluate(THREE_CLASSES, splits, FAST)


@pytest.fixture(scope="module")
def annotated():
    """Test images of three sites: A mixed, B only NORMAL, C one image of each class; one
    manufacturer; no view; a user column "scanner"; sex and age unknown for some images."""
    rng = np.random.default_rng(7)
    test = binary_split(300, 8)
    sites = np.where(test.labels == 1, "A", rng.choice(["A", "B"], len(test)))
    sites[[int(np.flatnonzero(test.labels == 1)[0]), int(np.flatnonzero(test.labels == 0)[0])]] = "C"
    meta = [{"site": str(site), "manufacturer": "ACME", "scanner": f"S{i % 2 + 1}",
             "sex": None if i % 10 == 0 else ("F" if i % 3 else "M"), "age": None if i % 15 == 0 else 20.0 + i % 60}
            for i, site in enumerate(sites)]
    splits = {"val": binary_split(300, 9), "test": SplitInputs(test.labels, test.logits, meta=meta)}
    settings = EvaluationSettings(bootstrap=200, subgroups=("scanner",), intersections=("sex x age_band",))
    return evaluate(CLASSES, splits, settings).metrics


# --- the metrics.json contract ------------------------------------------------------------


def test_metrics_has_every_key_issue_6_lists_and_is_strict_json(nih_like):
    _, evaluation = nih_like
    metrics = evaluation.metrics
    for split in ("val", "test"):
        assert {a: set(metrics[split]["subgroups"][a]) for a in NIH_GROUPS} == NIH_GROUPS
    paths = [key.format(split=split) for split in ("val", "test") for key in SPLIT_KEYS]
    paths += [key.format(split=split, name=name) for split in ("val", "test") for name in CLASSES for key in CLASS_KEYS]
    paths += [key.format(split=split, attribute=attribute, group=group) for split in ("val", "test")
              for attribute, groups in NIH_GROUPS.items() for group in groups for key in GROUP_KEYS]
    paths += RUN_KEYS
    for path in paths:
        value = lookup(metrics, path)
        if path == "bias.flags":
            assert isinstance(value, list)
        elif path == "overfitting.flag":
            assert isinstance(value, bool)
        else:
            assert isinstance(value, (int, float)) and np.isfinite(value), (path, value)
    json.loads(json.dumps(metrics, allow_nan=False))


def test_binary_point_estimates_equal_sklearn_at_the_validated_threshold(nih_like):
    splits, evaluation = nih_like
    metrics, test = evaluation.metrics, splits["test"]
    probability = calibrated_positive(test, metrics)
    predicted = (probability >= metrics["threshold"]["value"]).astype(int)
    report = metrics["test"]
    assert report["auroc"] == pytest.approx(roc_auc_score(test.labels, probability))
    assert report["accuracy"] == pytest.approx(accuracy_score(test.labels, predicted))
    assert report["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(test.labels, predicted))
    assert report["confusion_matrix"]["counts"] == confusion_matrix(test.labels, predicted).tolist()
    precision, recall, f1, support = precision_recall_fscore_support(test.labels, predicted)
    for c, name in enumerate(CLASSES):
        entry = report["per_class"][name]
        assert (entry["precision"], entry["recall"], entry["f1"]) == pytest.approx((precision[c], recall[c], f1[c]))
        assert entry["support"] == support[c]
        assert entry["specificity"] == pytest.approx(recall[1 - c])
    assert report["per_class"]["PNEUMONIA"]["auroc"] == pytest.approx(report["auroc"])
    assert report["sensitivity"] == pytest.approx(recall[1])


def test_three_class_point_estimates_equal_sklearn_with_argmax_and_macro_auroc(three_class):
    splits, evaluation = three_class
    metrics, test = evaluation.metrics, splits["test"]
    assert metrics["positive_class"] is None
    assert metrics["threshold"]["method"] == "argmax" and metrics["threshold"]["value"] is None
    probabilities = softmax(test.logits / metrics["calibration"]["temperature"], axis=1)
    predicted = probabilities.argmax(1)
    report = metrics["test"]
    assert report["auroc"] == pytest.approx(roc_auc_score(test.labels, probabilities, multi_class="ovr"))
    assert report["accuracy"] == pytest.approx(accuracy_score(test.labels, predicted))
    assert report["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(test.labels, predicted))
    assert report["confusion_matrix"]["counts"] == confusion_matrix(test.labels, predicted).tolist()
    precision, recall, f1, _ = precision_recall_fscore_support(test.labels, predicted)
    for c, name in enumerate(THREE_CLASSES):
        entry = report["per_class"][name]
        assert (entry["precision"], entry["recall"], entry["f1"]) == pytest.approx((precision[c], recall[c], f1[c]))
        assert entry["auroc"] == pytest.approx(roc_auc_score(test.labels == c, probabilities[:, c]))
    json.dumps(metrics, allow_nan=False)


def test_the_training_and_validation_auroc_of_the_same_images_are_the_same_number():
    """One implementation of the point AUROC: the same images give the same AUROC to the last bit
    whichever split they are scored as, so the train-validation gap is exactly 0."""
    for seed in range(8, 19):  # on several of these, scikit-learn's AUROC and the rank statistic differ in the last bit
        split = nih_split(120, seed)
        metrics = evaluate(CLASSES, {"train": split, "val": split}, EvaluationSettings(bootstrap=0)).metrics
        assert metrics["train"]["auroc"] == metrics["val"]["auroc"] == metrics["val"]["per_class"]["PNEUMONIA"]["auroc"]
        assert metrics["overfitting"]["train_val_auroc_gap"] == 0.0


# --- threshold and calibration ------------------------------------------------------------


def test_threshold_and_temperature_ignore_the_test_logits():
    val, test = binary_split(300, 10), binary_split(300, 11)
    shuffled = SplitInputs(test.labels, np.random.default_rng(12).normal(scale=5.0, size=test.logits.shape))
    settings = EvaluationSettings(bootstrap=0)
    first = evaluate(CLASSES, {"val": val, "test": test}, settings).metrics
    second = evaluate(CLASSES, {"val": val, "test": shuffled}, settings).metrics
    assert first["test"]["auroc"] != second["test"]["auroc"]
    assert first["threshold"] == second["threshold"]
    assert first["calibration"]["temperature"] == second["calibration"]["temperature"]


@pytest.mark.parametrize("seed", [13, 17, 18])
def test_youden_threshold_maximises_j_on_validation_by_brute_force(seed):
    val = binary_split(150, seed, separation=0.5)
    evaluation = evaluate(CLASSES, {"val": val}, EvaluationSettings(bootstrap=0))
    scores, positive = evaluation.scores["val"].probabilities[:, 1], val.labels == 1
    chosen = evaluation.metrics["threshold"]["value"]
    best = max(youden(positive, scores, t) for t in np.unique(scores))
    assert evaluation.metrics["threshold"]["method"] == "youden"
    assert youden(positive, scores, chosen) == pytest.approx(best, abs=1e-12)


def test_sensitivity_threshold_is_the_highest_reaching_the_target_on_validation():
    val = binary_split(250, 14, separation=1.0)
    settings = EvaluationSettings(bootstrap=0, threshold="sensitivity", target_sensitivity=0.9)
    evaluation = evaluate(CLASSES, {"val": val}, settings)
    scores, positive = evaluation.scores["val"].probabilities[:, 1], val.labels == 1
    threshold = evaluation.metrics["threshold"]
    assert threshold["method"] == "sensitivity" and threshold["target_sensitivity"] == 0.9
    assert sensitivity_at(positive, scores, threshold["value"]) >= 0.9
    chosen = scores[scores >= threshold["value"]].min()  # the lowest validation score called positive
    assert sensitivity_at(positive, scores, chosen) >= 0.9
    higher = np.unique(scores[scores > chosen])
    assert all(sensitivity_at(positive, scores, t) < 0.9 for t in higher)
    below = scores[scores < threshold["value"]].max()  # the threshold sits mid-gap on the logit scale
    assert logit(threshold["value"]) == pytest.approx((logit(chosen) + logit(below)) / 2)


def test_temperature_scaling_keeps_ranking_and_predictions_and_lowers_ece_of_overconfident_logits():
    # Calibrated margins would be scaled by 2 * 0.75 = 1.5: these are about 5 times too confident.
    splits = {"val": binary_split(400, 15, separation=0.75, scale=8.0),
              "test": binary_split(400, 16, separation=0.75, scale=8.0)}
    evaluation = evaluate(CLASSES, splits, EvaluationSettings(bootstrap=0))
    metrics, scores = evaluation.metrics, evaluation.scores["test"]
    temperature, threshold = metrics["calibration"]["temperature"], metrics["threshold"]["value"]
    assert 3 < temperature < 8
    labels = splits["test"].labels
    assert roc_auc_score(labels, scores.uncalibrated[:, 1]) == roc_auc_score(labels, scores.probabilities[:, 1])
    # P >= t after calibration is P >= expit(T * logit(t)) before it: the same images are positive.
    uncalibrated_threshold = expit(temperature * logit(threshold))
    np.testing.assert_array_equal(scores.uncalibrated[:, 1] >= uncalibrated_threshold,
                                  scores.probabilities[:, 1] >= threshold)
    predicted = (scores.uncalibrated[:, 1] >= uncalibrated_threshold).astype(int)
    assert metrics["test"]["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    assert metrics["test"]["ece"] < metrics["test"]["ece_uncalibrated"] / 2


# --- subgroups ----------------------------------------------------------------------------


def test_single_class_subgroup_reports_none_with_the_reason(annotated):
    only_normal = annotated["test"]["subgroups"]["site"]["B"]
    assert only_normal["counts"] == {"NORMAL": only_normal["n"], "PNEUMONIA": 0}
    assert only_normal["auroc"] is None and only_normal["na"]["auroc"] == "one class only (all NORMAL)"
    assert only_normal["sensitivity"] is None and "PNEUMONIA" in only_normal["na"]["sensitivity"]
    assert only_normal["specificity"] is not None and only_normal["gap"]["auroc"] is None


def test_a_tiny_subgroup_gets_an_interval_marked_approximate_and_no_bootstrap_interval(annotated):
    tiny = annotated["test"]["subgroups"]["site"]["C"]
    assert tiny["n"] == 2 and tiny["auroc"] == 1.0
    low, high = tiny["ci"]["auroc"]
    assert low < 0.5 and high == 1.0  # one patient of each class: hardly any information
    assert tiny["ci_note"]["auroc"].startswith("approximate: at 1 exactly")
    assert tiny["ci"]["ece"] is None and "of 200 resamples" in tiny["na"]["ci.ece"]


def test_attributes_with_one_value_or_none_recorded_are_skipped_with_the_reason(annotated):
    skipped = annotated["bias"]["skipped"]
    assert skipped["manufacturer"] == "one value only (ACME)"
    assert skipped["view"] == "not recorded"
    assert "manufacturer" not in annotated["test"]["subgroups"] and "view" not in annotated["test"]["subgroups"]


def test_user_column_intersections_and_unknown_values_are_reported(annotated):
    subgroups = annotated["test"]["subgroups"]
    assert set(subgroups["scanner"]) == {"S1", "S2"}
    assert {"F, 18-39", "F, 40-64", "M, 18-39", "M, 40-64", "unknown"} <= set(subgroups["sex x age_band"])
    assert set(subgroups["sex"]) == {"F", "M", "unknown"} and subgroups["sex"]["unknown"]["n"] == 30
    assert list(subgroups["sex"])[-1] == "unknown"
    assert {"scanner", "sex x age_band"} <= set(annotated["bias"]["attributes"])
    json.dumps(annotated, allow_nan=False)


@pytest.mark.parametrize(("age", "band"), [(17.9, "<18"), (0, "<18"), (18, "18-39"), (39.99, "18-39"),
                                           (40, "40-64"), (64.5, "40-64"), (65, "65+"), (101, "65+"),
                                           (None, None), (float("nan"), None)])
def test_age_band_labels_with_default_edges(age, band):
    assert age_band(age, EvaluationSettings().age_bands) == band


def test_planted_worse_view_is_flagged_and_the_better_one_is_not():
    splits = {"val": view_split(400, 17, noisy_view=None), "test": view_split(800, 18, noisy_view="AP")}
    metrics = evaluate(CLASSES, splits, FAST).metrics
    flags = metrics["bias"]["flags"]
    auroc_flags = [f for f in flags if f["metric"] == "auroc"]
    assert [(f["split"], f["attribute"], f["group"]) for f in auroc_flags] == [("test", "view", "AP")]
    assert auroc_flags[0]["sentence"].startswith("AUROC for view AP is ")
    assert auroc_flags[0]["ci"][1] < 0 and auroc_flags[0]["gap"] < -0.1
    assert all(f["group"] != "PA" for f in flags)
    better = metrics["test"]["subgroups"]["view"]["PA"]
    assert better["gap_ci"]["auroc"][0] > 0  # clearly better than the whole split, and not flagged


def test_no_flag_when_no_group_differs():
    splits = {"val": view_split(400, 19, noisy_view=None), "test": view_split(600, 20, noisy_view=None)}
    bias = evaluate(CLASSES, splits, FAST).metrics["bias"]
    assert bias["comparisons"] == 8  # AP and PA: three gaps each, one prevalence test, one score-shift test
    assert bias["flags"] == [] and not any(test["flagged"] for test in bias["tests"])
    assert "at most 5%" in bias["guarantee"] and bias["control"] == "Holm"


def confounded_split(n: int, seed: int, *, view_shift: float) -> SplitInputs:
    """PNEUMONIA in 25 % of AP films and 65 % of PA films; ``view_shift`` is added to the PA
    films' margin whatever their label (a model that has learnt the view)."""
    rng = np.random.default_rng(seed)
    views = rng.choice(["AP", "PA"], n)
    labels = (rng.random(n) < np.where(views == "PA", 0.65, 0.25)).astype(int)
    logits = binary_logits(labels, rng)
    logits[:, 1] += np.where(views == "PA", view_shift, 0.0)
    return SplitInputs(labels, logits, meta=[{"view": str(v)} for v in views])


def test_a_view_confounded_with_the_label_is_flagged_and_a_clean_model_is_not_called_a_shortcut():
    splits = {"val": confounded_split(400, 31, view_shift=0.0), "test": confounded_split(800, 32, view_shift=0.0)}
    metrics = evaluate(CLASSES, splits, FAST).metrics
    [flag] = [f for f in metrics["bias"]["flags"] if f["metric"] == "confounding"]
    assert flag["attribute"] == "view" and flag["group"] is None and not flag["shortcut"]
    assert "differs by view" in flag["sentence"] and "no sign" in flag["sentence"]
    separation = metrics["test"]["subgroups"]["view"]["PA"]["ci"]["score_separation"]
    assert separation[0] <= 0.5 <= separation[1]


def test_a_model_whose_score_follows_the_view_within_each_class_is_called_a_shortcut():
    splits = {"val": confounded_split(400, 33, view_shift=1.5), "test": confounded_split(800, 34, view_shift=1.5)}
    metrics = evaluate(CLASSES, splits, FAST).metrics
    [flag] = [f for f in metrics["bias"]["flags"] if f["metric"] == "confounding"]
    assert flag["shortcut"] and "shortcut" in flag["sentence"]
    pa = metrics["test"]["subgroups"]["view"]["PA"]
    assert pa["score_separation"] > 0.65 and pa["ci"]["score_separation"][0] > 0.5
    ap = metrics["test"]["subgroups"]["view"]["AP"]
    assert ap["score_separation"] == pytest.approx(1 - pa["score_separation"])


def test_no_confounder_when_the_label_does_not_depend_on_the_view():
    splits = {"val": view_split(400, 35, noisy_view=None), "test": view_split(800, 36, noisy_view=None)}
    flags = evaluate(CLASSES, splits, FAST).metrics["bias"]["flags"]
    assert not [f for f in flags if f["metric"] == "confounding"]


def test_a_sensitivity_of_one_gets_a_wilson_interval_below_one():
    val, test = binary_split(300, 21), binary_split(300, 22)
    sites = np.where(np.arange(len(test)) % 2, "A", "B")
    logits = test.logits.copy()
    found = (sites == "B") & (test.labels == 1)
    logits[found] = [-4.0, 4.0]  # every PNEUMONIA image of site B is found
    meta = [{"site": str(site)} for site in sites]
    metrics = evaluate(CLASSES, {"val": val, "test": SplitInputs(test.labels, logits, meta=meta)}, FAST).metrics
    group = metrics["test"]["subgroups"]["site"]["B"]
    positives = int(found.sum())
    assert group["sensitivity"] == 1.0
    low, high = group["ci"]["sensitivity"]
    # The Wilson lower bound for k = n successes is n / (n + z^2), here with Student's t for z (one
    # image per patient: n patients, n - 1 degrees of freedom).
    z = student_t.ppf(0.975, positives - 1)
    assert low == pytest.approx(positives / (positives + z**2))
    assert low < 1 and high == pytest.approx(1.0)
    assert "Wilson" in group["ci_method"]["sensitivity"]


# --- overfitting, size warnings, patients -------------------------------------------------


def test_overfitting_is_flagged_with_a_sentence_when_train_auroc_is_far_above_val():
    splits = {"train": binary_split(400, 23, separation=3.0), "val": binary_split(400, 24, separation=0.7)}
    metrics = evaluate(CLASSES, splits, EvaluationSettings(bootstrap=0)).metrics
    overfitting = metrics["overfitting"]
    assert overfitting["flag"] is True
    assert overfitting["train_val_auroc_gap"] == pytest.approx(metrics["train"]["auroc"] - metrics["val"]["auroc"])
    assert overfitting["train_val_auroc_gap"] > 0.1
    assert "overfitting" in overfitting["sentence"].lower()


def test_no_overfitting_flag_when_train_and_val_auroc_are_close():
    splits = {"train": binary_split(1000, 25), "val": binary_split(1000, 26)}
    overfitting = evaluate(CLASSES, splits, EvaluationSettings(bootstrap=0)).metrics["overfitting"]
    assert overfitting["flag"] is False
    assert abs(overfitting["train_val_auroc_gap"]) < overfitting["limit"]
    assert overfitting["sentence"].startswith("No sign of overfitting")


@pytest.mark.parametrize(("train", "val", "flag"), [(0.95, 0.88, True), (0.95, 0.91, False), (0.80, 0.85, False)])
def test_overfitting_flag_is_raised_just_above_the_limit(train, val, flag):
    check = overfitting_check(train, val, 0.05)
    assert check["flag"] is flag
    assert check["train_val_auroc_gap"] == pytest.approx(train - val)
    assert f"{train:.2f}" in check["sentence"] and f"{val:.2f}" in check["sentence"]


def test_overfitting_is_unknown_without_a_train_auroc():
    check = overfitting_check(None, 0.9, 0.05)
    assert check["flag"] is None and check["train_val_auroc_gap"] is None
    assert "could not be computed" in check["sentence"]


def test_tiny_test_set_gets_a_warning_naming_the_count():
    test = binary_split(200, 27, prevalence=0.0)
    labels = test.labels.copy()
    labels[:12] = 1
    splits = {"val": binary_split(300, 28), "test": SplitInputs(labels, test.logits)}
    warnings = evaluate(CLASSES, splits, FAST).metrics["warnings"]
    assert any("test set" in w and "12 PNEUMONIA" in w for w in warnings), warnings


def clustered_split(patients: int, images_each: int, seed: int, *, with_ids: bool) -> SplitInputs:
    """Every patient's images are near copies of each other (one label, one margin)."""
    rng = np.random.default_rng(seed)
    patient_labels = (rng.random(patients) < 0.5).astype(int)
    labels = np.repeat(patient_labels, images_each)
    margin = np.repeat(1.0 * (2 * patient_labels - 1) + rng.normal(size=patients), images_each)
    margin = margin + rng.normal(scale=0.05, size=len(labels))
    ids = [f"patient-{i // images_each}" for i in range(len(labels))] if with_ids else ()
    return SplitInputs(labels, np.column_stack([-margin, margin]) / 2, ids)


def test_patient_clustered_intervals_are_wider_for_clustered_images():
    val = binary_split(300, 29)
    by_patient = evaluate(CLASSES, {"val": val, "test": clustered_split(60, 8, 30, with_ids=True)}, FAST).metrics
    by_image = evaluate(CLASSES, {"val": val, "test": clustered_split(60, 8, 30, with_ids=False)}, FAST).metrics
    assert by_patient["bootstrap"]["unit"] == "patient" and by_image["bootstrap"]["unit"] == "image"
    assert by_patient["test"]["n_patients"] == 60 and by_image["test"]["n_patients"] is None
    assert by_patient["test"]["auroc"] == by_image["test"]["auroc"]
    assert interval_width(by_patient) > 1.8 * interval_width(by_image)


def test_without_a_bootstrap_only_the_bootstrapped_figures_lack_an_interval(nih_like):
    splits, with_bootstrap = nih_like
    metrics = evaluate(CLASSES, splits, EvaluationSettings(bootstrap=0)).metrics
    test = metrics["test"]
    assert metrics["bootstrap"]["resamples"] == 0
    assert {k for k, v in test["ci"].items() if v is None} == {"average_precision", "ece", "ece_positive"}
    assert test["ci"]["auroc"] == with_bootstrap.metrics["test"]["ci"]["auroc"]
    assert metrics["bias"]["comparisons"] == with_bootstrap.metrics["bias"]["comparisons"] > 0
    json.dumps(metrics, allow_nan=False)


@pytest.mark.parametrize("resamples", [1, 5, 199])
def test_fewer_than_200_resamples_are_refused(resamples):
    with pytest.raises(ValueError, match="at least 200 resamples"):
        evaluate(CLASSES, {"val": binary_split(50, 1)}, EvaluationSettings(bootstrap=resamples))


# --- positive class and the saved evaluator -----------------------------------------------


@pytest.mark.parametrize(("classes", "expected"), [
    (("NORMAL", "PNEUMONIA"), 1), (("PNEUMONIA", "NORMAL"), 0), (("normal", "opacity"), 1), (("opacity", "normal"), 0),
    (("No Finding", "Effusion"), 1), (("cat", "dog"), 1), (("normal", "negative"), 1), (("a", "b", "c"), None),
])
def test_auto_positive_class(classes, expected):
    assert positive_class_index(classes) == expected


def test_explicit_positive_class_is_used_and_an_unknown_one_raises():
    assert positive_class_index(CLASSES, "NORMAL") == 0
    with pytest.raises(ValueError, match="COVID"):
        positive_class_index(CLASSES, "COVID")
    with pytest.raises(ValueError, match="COVID"):
        Evaluator(CLASSES, EvaluationSettings(positive_class="COVID")).fit(binary_split(50, 31))


@pytest.mark.parametrize(("classes", "split", "calibration"), [
    (CLASSES, binary_split, "temperature"), (CLASSES, binary_split, "vector"), (THREE_CLASSES, three_class_split, "none"),
])
def test_evaluator_round_trip_through_json_predicts_the_same(classes, split, calibration):
    evaluator = Evaluator(classes, EvaluationSettings(calibration=calibration)).fit(split(200, 32))
    restored = Evaluator.from_dict(json.loads(json.dumps(evaluator.to_dict(), allow_nan=False)))
    logits = split(100, 33).logits
    np.testing.assert_array_equal(restored.predict_proba(logits), evaluator.predict_proba(logits))
    np.testing.assert_array_equal(restored.predict(restored.predict_proba(logits)),
                                  evaluator.predict(evaluator.predict_proba(logits)))
    assert restored.to_dict() == evaluator.to_dict()


@pytest.fixture(scope="module")
def saved_state() -> dict:
    return Evaluator(CLASSES).fit(binary_split(200, 34)).to_dict()


@pytest.mark.parametrize(("key", "value"), [
    ("classes", None), ("positive_class", "COVID"), ("calibration", {"method": "platt"}), ("threshold", "youden"),
    ("threshold", {"method": "youden", "value": None}), ("threshold", {"method": "youden", "value": "high"}),
    ("threshold", {"method": "youden", "value": float("nan")}), ("threshold", {"method": "youden", "value": 7.0}),
    ("classes", ["NORMAL", "PNEUMONIA", "viral"]),
], ids=["no-classes", "unknown-positive", "unknown-calibration", "threshold-not-a-dict", "no-threshold-value",
        "threshold-text", "threshold-nan", "threshold-above-one", "classes-disagree-with-calibration"])
def test_corrupted_evaluator_record_raises_value_error(saved_state, key, value):
    with pytest.raises(ValueError, match="not a medxfer calibration record"):
        Evaluator.from_dict({**saved_state, key: value})


def test_a_one_class_validation_split_gets_no_calibration_and_says_why():
    val = binary_split(60, 41, prevalence=0.0)
    metrics = evaluate(CLASSES, {"val": val, "test": binary_split(200, 42)}, FAST).metrics
    assert metrics["calibration"]["method"] == "none"
    assert any("one class only" in w and "not fitted" in w for w in metrics["warnings"])
    assert metrics["threshold"]["value"] == 0.5 and "one class only" in metrics["threshold"]["note"]


def test_a_validation_split_the_network_gets_all_right_is_not_calibrated_and_says_why():
    val = binary_split(200, 43, separation=6.0)
    metrics = evaluate(CLASSES, {"val": val, "test": binary_split(200, 44)}, FAST).metrics
    assert metrics["val"]["accuracy"] == 1.0
    assert metrics["calibration"]["method"] == "none"  # not T = 0.05 with probabilities of 0 and 1
    assert any("classified correctly" in w and "no finite optimum" in w for w in metrics["warnings"])


def test_a_single_patient_split_has_no_intervals_and_a_warning():
    test = binary_split(6, 45, prevalence=0.5, patients=["one"] * 6)
    metrics = evaluate(CLASSES, {"val": binary_split(100, 46), "test": test}, FAST).metrics
    assert all(v is None for v in metrics["test"]["ci"].values())
    assert any("single patient" in w for w in metrics["warnings"])


def test_age_bands_are_listed_youngest_first():
    meta = [{"age": age} for age in (70, 10, 30, 50) * 50]
    test = binary_split(200, 47, meta=meta)
    metrics = evaluate(CLASSES, {"val": binary_split(100, 48), "test": test}, FAST).metrics
    assert list(metrics["test"]["subgroups"]["age_band"]) == ["<18", "18-39", "40-64", "65+"]


def test_each_confusion_matrix_cell_has_an_interval_of_its_share_of_the_row(nih_like):
    matrix = nih_like[1].metrics["test"]["confusion_matrix"]
    counts = np.array(matrix["counts"])
    for i, row in enumerate(matrix["share_ci"]):
        for j, (low, high) in enumerate(row):
            assert low <= counts[i, j] / counts[i].sum() <= high


def test_the_metrics_json_medxfer_train_writes_has_every_key_issue_6_lists(run):
    """The file itself, as ``medxfer train`` wrote it for a phantom cohort: every listed key present,
    each a finite number, or null with its reason under the sibling ``na``."""
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    classes = metrics["classes"]
    paths = [key.format(split=split) for split in ("val", "test") for key in SPLIT_KEYS]
    paths += [key.format(split=split, name=name) for split in ("val", "test") for name in classes for key in CLASS_KEYS]
    for split in ("val", "test"):
        subgroups = metrics[split]["subgroups"]
        assert "sex" in subgroups, sorted(subgroups)  # the phantom headers record sex, age and view
        paths += [key.format(split=split, attribute=attribute, group=group)
                  for attribute, groups in subgroups.items() for group in groups for key in GROUP_KEYS]
    for path in (*paths, *RUN_KEYS):
        value = lookup(metrics, path)
        parent, _, name = path.rpartition(".")
        if path == "bias.flags":
            assert isinstance(value, list)
        elif path == "overfitting.flag":
            assert isinstance(value, bool)
        elif value is None:
            assert lookup(metrics, parent)["na"][name], path
        else:
            assert isinstance(value, (int, float)) and np.isfinite(value), (path, value)


def test_a_three_class_group_with_one_class_says_why_it_has_no_specificity():
    test = three_class_split(300, 51)
    meta = [{"site": "B" if label == 0 else "A"} for label in test.labels]
    splits = {"val": three_class_split(300, 52), "test": SplitInputs(test.labels, test.logits, meta=meta)}
    metrics = evaluate(THREE_CLASSES, splits, FAST).metrics
    only_bacterial = metrics["test"]["subgroups"]["site"]["B"]
    assert only_bacterial["specificity"] is None  # a macro average with no true negative anywhere
    assert only_bacterial["na"]["specificity"] == "one class only (all bacterial)"
    assert only_bacterial["sensitivity"] is not None and "sensitivity" not in only_bacterial["na"]
    assert "specificity" not in metrics["test"]["subgroups"]["site"]["A"]["na"]


def test_intersection_groups_are_listed_by_the_first_attribute_then_the_second():
    meta = [{"sex": sex, "age": age} for sex in ("M", "F") for age in (70, 10, 30, 50)] * 25
    test = binary_split(200, 53, meta=meta)
    settings = EvaluationSettings(bootstrap=0, intersections=("sex x age_band",))
    metrics = evaluate(CLASSES, {"val": binary_split(100, 54), "test": test}, settings).metrics
    assert list(metrics["test"]["subgroups"]["sex x age_band"]) == [
        "F, <18", "F, 18-39", "F, 40-64", "F, 65+", "M, <18", "M, 18-39", "M, 40-64", "M, 65+"]


def test_warnings_name_the_validation_split_in_words():
    val = binary_split(60, 55, prevalence=0.2)
    warnings = evaluate(CLASSES, {"val": val, "test": binary_split(300, 56)}, FAST).metrics["warnings"]
    assert any(w.startswith("The validation set holds only") for w in warnings), warnings
    assert not any("val set" in w or "val AUROC" in w for w in warnings), warnings
