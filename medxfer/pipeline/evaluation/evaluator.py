"""What a reviewer asks of a classifier, computed: discrimination, calibration, per-class rates,
overfitting and subgroup gaps, each with a patient-clustered interval (95 % by default; methods
in ``intervals.py``, the bootstrap only for the figures no closed form covers).

``Evaluator`` learns, on the validation split only, what is then applied unchanged to every
other split: the calibration of the logits (temperature scaling by default, see
``calibration.py``) and, for two classes, the operating threshold on the calibrated probability
of the positive class (Youden's J, or the highest threshold that reaches a target sensitivity).
``evaluate`` scores the splits it is given and returns the ``metrics.json`` structure (its
layout is documented in the README, "Evaluation report") with the score arrays the report
plots.

Intervals resample patients, not images, whenever patient ids exist (``bootstrap.py``): images
of one patient are correlated, and resampling them independently gives intervals that are too
narrow. The same resamples serve every metric of a split, so the gap between a subgroup and the
whole split has a paired interval; a subgroup is flagged when that interval excludes zero.
A metric that cannot be computed (an AUROC of a group with one class only, a subgroup missing
from too many resamples) is ``None`` with its reason, never an error.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy.special import expit, softmax
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    roc_auc_score,
)

from medxfer import __version__
from medxfer.pipeline.calibration.calibrators import (
    adaptive_calibration_error,
    brier_score,
    calibrator_from_dict,
    expected_calibration_error,
    make_calibrator,
    maximum_calibration_error,
    negative_log_likelihood,
    positive_class_calibration_error,
    reliability_bins,
)
from medxfer.pipeline.evaluation.flags import bias_summary
from medxfer.pipeline.evaluation.transfer import transfer_warnings
from medxfer.pipeline.statistics.bootstrap import Resamples, bootstrap_values, draw_resamples, percentile_interval
from medxfer.pipeline.statistics.comparisons import GroupScorer, family, holm
from medxfer.pipeline.statistics.intervals import (
    LOGIT_WALD,
    MEAN_T,
    MOVER,
    WILSON,
    Estimate,
    Interval,
    auroc_estimate,
    average,
    clustered_variance,
    compare,
    logit_interval,
    mean_estimate,
    mean_interval,
    mover_average,
    patient_codes,
    proportion_estimate,
    standard_error_of,
    wilson_interval,
)
from medxfer.pipeline.statistics.scoring import (
    binary_auroc,
    binary_average_precision,
    class_rates,
    confusion_counts,
    macro_auroc,
    ranking_scores,
    sensitivity_specificity,
)

# Attributes reported whenever the scans carry them (DICOM header or manifest column).
STANDARD_ATTRIBUTES = ("sex", "age_band", "site", "manufacturer", "view")
MAX_GROUPS = 20  # an attribute with more distinct values is skipped: bin it first
# Below these, a split's intervals are too wide to carry a conclusion, and the report says so.
MIN_PER_CLASS = 30
WIDE_INTERVAL = 0.2  # width of the AUROC interval
NEGATIVE_NAMES = {"normal", "negative", "no finding", "no_finding", "nofinding", "healthy", "benign", "absent",
                  "none", "control", "no", "0"}
SUBGROUP_METRICS = ("auroc", "sensitivity", "specificity", "ece")
# Intervals checked by simulation (intervals.py) and those left to a percentile bootstrap over
# patients, whose coverage is not checked: they are marked approximate wherever they are shown.
CHECKED_INTERVALS = ("auroc", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "brier")
BOOTSTRAPPED = ("average_precision", "ece", "ece_positive", "per-class f1 and average precision", "subgroup ece")
MIN_BOOTSTRAP = 200  # fewer resamples put the ends of a 95 % interval on a handful of draws
MIN_INTERVAL_PATIENTS = 2  # with one patient of the class a figure rests on, its interval is marked approximate
BOOTSTRAP_METHOD = "percentile bootstrap over patients"
BOOTSTRAP_NOTE = {
    "ece": "approximate: ECE is biased upwards on small sets",
    "ece_positive": "approximate: ECE is biased upwards on small sets",
    "*": "approximate: bootstrap over patients, coverage not checked",
}
INTERVAL_METHODS = {
    "auroc": LOGIT_WALD + " (DeLong's variance, clustered, corrected class by class)",
    "balanced_accuracy": MOVER, "sensitivity": WILSON + " (more than two classes: " + MOVER + ")",
    "specificity": WILSON + " (more than two classes: " + MOVER + ")", "accuracy": WILSON, "prevalence": WILSON,
    "brier": MEAN_T,
    "average_precision": BOOTSTRAP_METHOD, "ece": BOOTSTRAP_METHOD, "ece_positive": BOOTSTRAP_METHOD,
    "gaps": "AUROC: difference of the two estimates, patient-clustered variance, t quantile; rates and prevalence: "
            "Newcombe's hybrid score interval on the effective sizes",
}
CLASS_METRICS = ("precision", "recall", "specificity", "f1", "auroc", "average_precision")
SPLIT_WORDS = {"train": "training", "val": "validation", "test": "test"}  # split names in warnings


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


@dataclass
class Evaluation:
    """``metrics`` (the metrics.json structure), the ``scores`` of each scored split, and the
    fitted ``evaluator`` (calibration and threshold)."""

    metrics: dict[str, Any]
    evaluator: Evaluator
    scores: dict[str, SplitScores] = field(default_factory=dict)


def positive_class_index(classes: Sequence[str], setting: str = "auto") -> int | None:
    """Index of the class whose probability is thresholded: None for more than two classes."""
    if setting != "auto":
        if setting not in classes:
            raise ValueError(f"positive_class {setting!r} is not one of the classes {list(classes)}")
        if len(classes) != 2:
            raise ValueError(f"positive_class applies to two classes; this model has {len(classes)}")
        return list(classes).index(setting)
    if len(classes) != 2:
        return None
    negative = [i for i, name in enumerate(classes) if name.strip().lower() in NEGATIVE_NAMES]
    return 1 - negative[0] if len(negative) == 1 else 1


class Evaluator:
    """Calibration and operating threshold, learned on validation logits (scikit-learn style:
    ``fit`` returns self, learned state ends in ``_``)."""

    def __init__(self, classes: Sequence[str], settings: EvaluationSettings | None = None) -> None:
        self.classes = classes
        self.settings = settings

    def fit(self, val: SplitInputs) -> Evaluator:
        settings = self.settings or EvaluationSettings()
        self.positive_ = positive_class_index(self.classes, settings.positive_class)
        self.calibrator_, self.calibration_note_ = _fit_calibration(settings.calibration, val)
        self.threshold_method_ = "argmax" if self.positive_ is None else settings.threshold
        self.target_sensitivity_ = settings.target_sensitivity if self.threshold_method_ == "sensitivity" else None
        self.threshold_ = None
        self.threshold_note_ = None
        if self.positive_ is not None:
            positive = val.labels == self.positive_
            log_odds = ranking_scores(self.calibrator_.transform(val.logits))[:, self.positive_]
            if positive.all() or not positive.any():
                self.threshold_, self.threshold_note_ = 0.5, "the validation split holds one class only: 0.5 used"
            else:
                self.threshold_, self.threshold_note_ = choose_threshold(positive, log_odds, settings.threshold,
                                                                         settings.target_sensitivity)
        return self

    def predict_proba(self, logits: np.ndarray) -> np.ndarray:
        """(n, K) calibrated probabilities of (n, K) logits."""
        return self.calibrator_.predict_proba(logits)

    def predict(self, probabilities: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """Class indices: the positive class where its calibrated probability reaches the
        validated threshold, or ``threshold`` (a probability) when given (two classes), else the
        most probable class."""
        if self.positive_ is None:
            return probabilities.argmax(1)
        cut = self.threshold_ if threshold is None else threshold
        return np.where(probabilities[:, self.positive_] >= cut, self.positive_, 1 - self.positive_)

    def to_dict(self) -> dict[str, Any]:
        """What ``calibration.json`` holds, for ``from_dict``."""
        return {
            "classes": list(self.classes),
            "positive_class": None if self.positive_ is None else self.classes[self.positive_],
            "calibration": self.calibrator_.to_dict(),
            "threshold": {"method": self.threshold_method_, "target_sensitivity": self.target_sensitivity_,
                          "value": self.threshold_, "chosen_on": "val", "placement": THRESHOLD_PLACEMENT,
                          "note": self.threshold_note_},
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> Evaluator:
        """A fitted evaluator from ``to_dict``'s output (``calibration.json`` of a run)."""
        try:
            classes = list(state["classes"])
            evaluator = cls(classes)
            positive = state["positive_class"]
            evaluator.positive_ = None if positive is None else classes.index(positive)
            evaluator.calibrator_ = calibrator_from_dict(state["calibration"])
            threshold = state["threshold"]
            evaluator.threshold_method_ = threshold["method"]
            evaluator.target_sensitivity_ = threshold.get("target_sensitivity")
            evaluator.threshold_ = None if threshold["value"] is None else float(threshold["value"])
            evaluator.threshold_note_ = threshold.get("note")
            evaluator.calibration_note_ = None  # reported when the run was evaluated
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a medxfer calibration record: {type(exc).__name__}: {exc}") from None
        problem = None
        if (evaluator.positive_ is None) != (evaluator.threshold_ is None):
            problem = "a positive class needs a threshold value, and only a positive class has one"
        elif evaluator.threshold_ is not None and not 0.0 <= evaluator.threshold_ <= 1.0:  # NaN fails too
            problem = f"the threshold {evaluator.threshold_} is not a probability"
        elif evaluator.positive_ is not None and len(classes) != 2:
            problem = f"a positive class with {len(classes)} classes"
        elif getattr(evaluator.calibrator_, "n_classes_", len(classes)) != len(classes):
            problem = f"{len(classes)} classes but a calibration of {evaluator.calibrator_.n_classes_}"
        if problem:
            raise ValueError(f"not a medxfer calibration record: {problem}")
        return evaluator


def _fit_calibration(method: str, val: SplitInputs) -> tuple[Any, str | None]:
    """The calibration to apply, fitted on ``val``, and a note when it is not the one asked for or
    ended on a bound. What is never applied: a fit on one class (it learns to be sure of it); a
    temperature on a split the network gets all right, or one that ends on its lower bound (no
    finite optimum: probabilities pushed to 0 and 1; measured in benchmarks/statistics.py, the
    network's own probabilities do better on new images); vector scaling on a two-class split some
    threshold separates, or ending on a bound (its bias runs away): temperature scaling instead,
    under the same rules. A temperature on its upper bound (20: every probability flattened
    towards 1/K, 0.5 for two classes: validation says the scores carry little information, and
    probabilities near 1/K say so too) is applied, with the note."""
    notes: list[str] = []
    if method != "none" and len(np.unique(val.labels)) < 2:
        return make_calibrator("none").fit(val.logits, val.labels), (
            f"the validation split holds one class only, so the {method} calibration was not fitted and "
            "probabilities are the network's own")
    if method != "none" and np.array_equal(val.logits.argmax(1), val.labels):
        return make_calibrator("none").fit(val.logits, val.labels), (
            f"every validation image is classified correctly by the network, so the likelihood has no finite "
            f"optimum: {method} scaling would sharpen the probabilities towards 0 and 1 without limit. It was not "
            "fitted: the probabilities are the network's own (T = 1); a larger validation split with some errors "
            "is needed to calibrate")
    if method == "vector" and val.logits.shape[1] == 2 and \
            macro_auroc(val.labels, ranking_scores(val.logits)) == 1.0:
        notes.append("a threshold separates the validation split perfectly, so vector scaling's bias has no finite "
                     "optimum: temperature scaling was fitted instead")
        method = "temperature"
    calibrator = make_calibrator(method).fit(val.logits, val.labels)
    bound = calibrator.at_bound()
    if bound and method == "vector":
        notes.append(f"{bound}; temperature scaling was fitted instead")
        calibrator = make_calibrator("temperature").fit(val.logits, val.labels)
        bound = calibrator.at_bound()
    if bound and "lower" in bound:
        notes.append(f"{bound}, so it was not applied (it would push the probabilities to 0 and 1): the "
                     "probabilities are the network's own (T = 1)")
        calibrator = make_calibrator("none").fit(val.logits, val.labels)
    elif bound:
        notes.append(f"{bound}; compare the test set's NLL and ECE before and after calibration")
    return calibrator, "; ".join(notes) or None


THRESHOLD_PLACEMENT = "midpoint of the neighbouring validation scores on the logit scale"


def choose_threshold(positive: np.ndarray, log_odds: np.ndarray, method: str,
                     target_sensitivity: float) -> tuple[float, str | None]:
    """The operating threshold, a probability, for the boolean ``positive`` from the validation
    images' ``log_odds`` of the positive class (the logit of its calibrated probability), and a
    note when there is something to say.

    The rule picks a cut between two neighbouring distinct scores: Youden's J (``youden``, the
    largest sensitivity + specificity - 1; among equal J, the highest cut), or the highest cut
    whose sensitivity reaches ``target_sensitivity`` (``sensitivity``). Every threshold in the
    gap between those two scores classifies the validation images alike; the threshold is the
    midpoint of the gap on the logit scale, not its edge, so that new images a little below the
    lowest validation positive are not all missed (measured: benchmarks/statistics.py). When
    the cut lies below the lowest score there is no lower neighbour and the threshold is that
    score. When no cut gives J above 0 the model does not separate the classes on validation:
    0.5 is used and the note says so."""
    values = np.unique(log_odds)[::-1]  # distinct scores, highest first: cut k calls scores >= values[k]
    positives, negatives = log_odds[positive], log_odds[~positive]
    sensitivity = (positives[:, None] >= values[None, :]).mean(0)
    specificity = (negatives[:, None] < values[None, :]).mean(0)
    if method == "youden":
        j = sensitivity + specificity - 1
        if j.max() <= 1e-12:
            return 0.5, ("no threshold separates the classes on the validation split (Youden's J is 0 or below at "
                         "every one): 0.5 used, and the model's labels are no better than chance there")
        best = int(np.argmax(j))
    elif method == "sensitivity":
        best = int(np.flatnonzero(sensitivity >= target_sensitivity - 1e-12)[0])
    else:
        raise ValueError(f"threshold must be youden or sensitivity, got {method!r}")
    cut = values[best] if best + 1 == len(values) else (values[best] + values[best + 1]) / 2
    return float(expit(cut)), None


# --- subgroups ---------------------------------------------------------------------------


def age_band(age: Any, edges: Sequence[float]) -> str | None:
    """The band of ``age`` (years) between ``edges``: "<18", "18-39", "40-64", "65+" for
    edges (18, 40, 65) (whole-year edges label their last whole year); None when unknown."""
    if age is None or (isinstance(age, float) and math.isnan(age)):
        return None
    age = float(age)
    edges = sorted(edges)
    if not edges or age < edges[0]:
        return f"<{edges[0]:g}" if edges else "all"
    for low, high in itertools.pairwise(edges):
        if age < high:
            upper = f"{high - 1:g}" if float(high).is_integer() and float(low).is_integer() else f"<{high:g}"
            return f"{low:g}-{upper}"
    return f"{edges[-1]:g}+"


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def subgroup_columns(meta: Sequence[Mapping[str, Any]], settings: EvaluationSettings
                     ) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The group of every image for each attribute worth reporting (unknown values form the
    group "unknown"), and the attributes skipped with the reason."""
    values: dict[str, list[str | None]] = {}
    for attribute in dict.fromkeys([*STANDARD_ATTRIBUTES, *settings.subgroups]):
        if attribute == "age_band":
            values[attribute] = [age_band(m.get("age"), settings.age_bands) for m in meta]
        else:
            values[attribute] = [_text(m.get(attribute)) for m in meta]
    groups: dict[str, list[str]] = {}
    skipped: dict[str, str] = {}

    def consider(attribute: str, column: list[str | None]) -> None:
        known = sorted({v for v in column if v is not None})
        if not known:
            skipped[attribute] = ("not recorded" if attribute in STANDARD_ATTRIBUTES
                                  else "no such column, or no value in it, in the data")
        elif len(known) == 1:
            skipped[attribute] = f"one value only ({known[0]})"
        elif len(known) > MAX_GROUPS:
            skipped[attribute] = (f"{len(known)} distinct values; group them into at most {MAX_GROUPS} "
                                  "(e.g. a new manifest column) to report them")
        else:
            groups[attribute] = [v if v is not None else "unknown" for v in column]

    for attribute, column in values.items():
        consider(attribute, column)
    for pair in settings.intersections:
        first, second = parse_intersection(pair)
        name = f"{first} x {second}"
        if first not in values or second not in values:
            skipped[name] = "an attribute of the pair is not reported"
            continue
        column = [None if a is None or b is None else f"{a}, {b}" for a, b in zip(values[first], values[second])]
        consider(name, column)
    return groups, skipped


def parse_intersection(text: str) -> tuple[str, str]:
    """``"sex x age_band"`` -> ("sex", "age_band")."""
    parts = [p.strip() for p in re.split(r"\s+x\s+|\s*\*\s*", text.strip()) if p.strip()]
    if len(parts) != 2:
        raise ValueError(f"an intersection names two attributes as 'A x B', got {text!r}")
    return parts[0], parts[1]


# --- scoring ---------------------------------------------------------------------------


def _value(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


class _SplitScorer:
    """Point estimates (scikit-learn), intervals (``intervals.py``: patient-clustered, checked by
    simulation; a percentile bootstrap over patients only for the figures no such method
    exists for, marked approximate) and subgroup figures of one split."""

    def __init__(self, inputs: SplitInputs, evaluator: Evaluator, classes: Sequence[str],
                 settings: EvaluationSettings, resamples: Resamples | None) -> None:
        self.labels = inputs.labels.astype(int)
        self.uncalibrated = softmax(inputs.logits.astype(np.float64), axis=1)
        self.probabilities = evaluator.predict_proba(inputs.logits.astype(np.float64))
        # AUROC and AP rank images by these (the calibrated probabilities' order, unsaturated)
        self.ranking = ranking_scores(evaluator.calibrator_.transform(inputs.logits.astype(np.float64)))
        self.predicted = evaluator.predict(self.probabilities)
        self.positive = evaluator.positive_
        self.classes = list(classes)
        self.settings = settings
        self.resamples = resamples
        self.inputs = inputs
        self.patients = patient_codes(inputs.patients, len(self.labels))
        self.groups = GroupScorer(self.labels, self.predicted, self.ranking, self.positive, self.patients)
        self.everything = np.ones(len(self.labels), bool)

    # the bootstrap, for the figures without a checked interval ---------------------------------

    def _auroc(self, idx: np.ndarray) -> float:
        if self.positive is not None:
            return binary_auroc(self.labels[idx] == self.positive, self.ranking[idx, self.positive])
        return macro_auroc(self.labels[idx], self.ranking[idx])

    def bootstrapped_statistic(self, idx: np.ndarray) -> dict[str, float]:
        labels, probabilities, ranking = self.labels[idx], self.probabilities[idx], self.ranking[idx]
        k = len(self.classes)
        rates = class_rates(confusion_counts(labels, self.predicted[idx], k))
        values = {
            "average_precision": (binary_average_precision(labels == self.positive, ranking[:, self.positive])
                                  if self.positive is not None else
                                  float(np.mean([binary_average_precision(labels == c, ranking[:, c])
                                                 for c in range(k)]))),
            "ece": expected_calibration_error(labels, probabilities),
        }
        if self.positive is not None:
            values["ece_positive"] = positive_class_calibration_error(labels, probabilities, self.positive)
        for c, name in enumerate(self.classes):
            values[f"{name}\x00f1"] = float(rates["f1"][c])
            values[f"{name}\x00average_precision"] = binary_average_precision(labels == c, ranking[:, c])
        return values

    def _bootstrap(self, entry: dict[str, Any], draws: Mapping[str, np.ndarray] | None, metric: str,
                   key: str | None = None, defined: dict[str, int] | None = None) -> None:
        """``entry``'s interval of ``metric`` from the bootstrap ``draws[key or metric]``, marked
        approximate; no interval without resamples."""
        if draws is None or entry.get(metric) is None:
            entry["ci"][metric] = None
            return
        interval = percentile_interval(draws[key or metric], level=self.settings.level)
        entry["ci"][metric] = interval.as_list()
        entry["ci_method"][metric] = BOOTSTRAP_METHOD
        if interval.reason:
            entry["na"][f"ci.{metric}"] = interval.reason
        else:
            entry["ci_note"][metric] = BOOTSTRAP_NOTE.get(metric.split("\x00")[-1], BOOTSTRAP_NOTE["*"])
        if defined is not None:
            defined[key or metric] = interval.defined

    # the checked intervals -----------------------------------------------------------------------

    def estimate(self, metric: str, within: np.ndarray) -> Estimate:
        """A figure of the images ``within`` and its linearisation (see ``intervals``)."""
        groups = self.groups
        if metric in ("auroc", "sensitivity", "specificity", "prevalence"):
            return groups.estimate(metric, within)
        if metric == "accuracy":
            return proportion_estimate(self.labels == self.predicted, within, self.patients)
        if metric == "balanced_accuracy":
            present = [c for c in range(len(self.classes)) if np.any(within & (self.labels == c))]
            return average([groups.recall(c, within) for c in present]) if len(present) > 1 else \
                average([])
        if metric == "brier":
            onehot = np.eye(len(self.classes))[self.labels]
            squared = ((self.probabilities - onehot) ** 2).sum(1)
            per_image = squared / 2 if len(self.classes) == 2 else squared
            return mean_estimate(per_image, within, self.patients)
        raise ValueError(metric)

    def _macro_interval(self, metric: str, within: np.ndarray) -> Interval | None:
        """A mean of per-class rates (balanced accuracy; sensitivity and specificity of more than
        two classes) from the classes' own Wilson intervals (MOVER), so that a class at 0 or 1
        keeps its width."""
        present = [c for c in range(len(self.classes)) if np.any(within & (self.labels == c))]
        if len(present) < 2:
            return None
        if metric == "specificity":
            parts = [(self.predicted != c, within & (self.labels != c)) for c in present]
        else:
            parts = [(self.predicted == c, within & (self.labels == c)) for c in present]
        values, intervals = [], []
        for success, counted in parts:
            estimate = proportion_estimate(success, counted, self.patients)
            values.append(estimate.value)
            intervals.append(wilson_interval(estimate, counted, self.patients, self.settings.level))
        return mover_average(values, intervals)

    def _smallest_class(self, metric: str, within: np.ndarray) -> tuple[int, str]:
        """The patients of the class a figure rests on most, and its name."""
        if metric in ("sensitivity", "specificity") and self.positive is not None:
            counted = [self.positive if metric == "sensitivity" else 1 - self.positive]
        elif metric in ("auroc", "balanced_accuracy") or (metric in ("sensitivity", "specificity")):
            counted = [c for c in range(len(self.classes)) if np.any(within & (self.labels == c))]
        else:
            return self.groups.patients_of(within), "images"
        sizes = [(self.groups.patients_of(within & (self.labels == c)), self.classes[c]) for c in counted]
        return min(sizes) if sizes else (0, "images")

    def checked_interval(self, entry: dict[str, Any], metric: str, within: np.ndarray) -> None:
        """``entry``'s interval of ``metric`` (computed on the images ``within``), with its method,
        marked approximate when it rests on too few patients for its coverage to hold."""
        if entry.get(metric) is None:
            entry["ci"][metric] = None
            return
        estimate = self.estimate(metric, within)
        if metric == "auroc":
            interval = logit_interval(estimate, self.patients, self.settings.level)
        elif metric == "balanced_accuracy" or (metric in ("sensitivity", "specificity") and self.positive is None):
            interval = self._macro_interval(metric, within)
        elif metric == "brier":
            interval = mean_interval(estimate, self.patients, self.settings.level)
            if interval is not None and interval.low < 0:  # a mean of squares cannot be negative
                interval = replace(interval, low=0.0)
        else:
            counted = {"accuracy": within, "prevalence": within}.get(metric)
            if counted is None:
                c = self.positive if metric == "sensitivity" else 1 - self.positive
                counted = within & (self.labels == c)
            interval = wilson_interval(estimate, counted, self.patients, self.settings.level)
        if interval is None:
            entry["ci"][metric] = None
            return
        entry["ci"][metric] = interval.as_list()
        entry["ci_method"][metric] = interval.method
        patients, name = self._smallest_class(metric, within)
        if interval.approximate:
            entry["ci_note"][metric] = f"approximate: {interval.approximate}"
        elif patients < MIN_INTERVAL_PATIENTS:
            entry["ci_note"][metric] = f"approximate: {patients} patient of {name}"

    # point estimates -------------------------------------------------------------------------

    def _na_auroc(self, labels: np.ndarray) -> str:
        present = sorted(set(labels.tolist()))
        if len(present) == 1:
            return f"one class only (all {self.classes[present[0]]})"
        missing = [self.classes[c] for c in range(len(self.classes)) if c not in present]
        return f"no {', '.join(missing)} images (macro AUROC needs every class)"

    def _na_rates(self, labels: np.ndarray) -> dict[str, str]:
        """Why sensitivity or specificity is undefined for images of these true ``labels``: for
        two classes, the class it counts is absent; for more (macro averages over the classes
        present), one class only leaves no image to be a true negative, so no specificity."""
        if self.positive is not None:
            return {metric: f"no {self.classes[c]} images"
                    for metric, c in (("sensitivity", self.positive), ("specificity", 1 - self.positive))
                    if not np.any(labels == c)}
        return {"specificity": self._na_auroc(labels)} if len(set(labels.tolist())) < 2 else {}

    def overall(self, defined: dict[str, int]) -> dict[str, Any]:
        labels, probabilities, predicted, k = self.labels, self.probabilities, self.predicted, len(self.classes)
        ranking = self.ranking
        counts = confusion_matrix(labels, predicted, labels=range(k))
        present = sorted(set(labels.tolist()))
        na: dict[str, str] = {}
        if len(present) == k:
            if self.positive is not None:
                auroc = roc_auc_score(labels == self.positive, ranking[:, self.positive])
                ap = average_precision_score(labels == self.positive, ranking[:, self.positive])
            else:
                # scikit-learn's one-vs-rest macro AUROC, on unsaturated scores (its multi_class
                # mode insists on probabilities)
                auroc = float(np.mean([roc_auc_score(labels == c, ranking[:, c]) for c in range(k)]))
                ap = float(np.mean([average_precision_score(labels == c, ranking[:, c]) for c in range(k)]))
        else:
            auroc = ap = float("nan")
            na["auroc"] = na["average_precision"] = self._na_auroc(labels)
        sensitivity, specificity = sensitivity_specificity(counts, self.positive)
        if len(present) < 2:
            na["balanced_accuracy"] = self._na_auroc(labels)
        na.update(self._na_rates(labels))
        u = self.uncalibrated
        result: dict[str, Any] = {
            "n": len(labels),
            "n_patients": _patient_count(self.inputs.patients, len(labels)),
            "counts": {name: int(np.sum(labels == c)) for c, name in enumerate(self.classes)},
            "prevalence": float(np.mean(labels == self.positive)) if self.positive is not None else None,
            "auroc": _value(auroc), "average_precision": _value(ap),
            "accuracy": float(accuracy_score(labels, predicted)),
            "balanced_accuracy": float(balanced_accuracy_score(labels, predicted)) if len(present) > 1 else None,
            "sensitivity": _value(sensitivity), "specificity": _value(specificity),
            "ece": expected_calibration_error(labels, probabilities),
            "ece_uncalibrated": expected_calibration_error(labels, u),
            "adaptive_ece": adaptive_calibration_error(labels, probabilities),
            "adaptive_ece_uncalibrated": adaptive_calibration_error(labels, u),
            "mce": maximum_calibration_error(labels, probabilities),
            "mce_uncalibrated": maximum_calibration_error(labels, u),
            "brier": brier_score(labels, probabilities), "brier_uncalibrated": brier_score(labels, u),
            "nll": negative_log_likelihood(labels, probabilities),
            "nll_uncalibrated": negative_log_likelihood(labels, u),
        }
        if self.positive is not None:
            result["ece_positive"] = positive_class_calibration_error(labels, probabilities, self.positive)
            result["ece_positive_uncalibrated"] = positive_class_calibration_error(labels, u, self.positive)
        result.update(na=na, ci={}, ci_method={}, ci_note={})
        per_class = self._per_class(counts)
        result["per_class"] = per_class
        result["confusion_matrix"] = {"labels": self.classes, "counts": counts.tolist(), "share_ci": [
            [self._share_interval(i, j) if counts[i].sum() else None for j in range(k)] for i in range(k)]}
        result["reliability"] = {"before": reliability_bins(labels, u), "after": reliability_bins(labels, probabilities)}
        for metric in CHECKED_INTERVALS:
            self.checked_interval(result, metric, self.everything)
        result["transfer_statistics"] = self._transfer_statistics(result)
        draws = (bootstrap_values(self.bootstrapped_statistic, self.resamples) if self.resamples is not None
                 else None)
        for metric in ("average_precision", "ece", *(("ece_positive",) if self.positive is not None else ())):
            self._bootstrap(result, draws, metric, defined=defined)
        for name, entry in per_class.items():
            for metric in ("f1", "average_precision"):
                self._bootstrap(entry, draws, metric, key=f"{name}\x00{metric}")
        return result

    def _transfer_statistics(self, result: Mapping[str, Any]) -> dict[str, list[float]]:
        """[value, standard error, degrees of freedom] of the figures ``transfer.transfer_warnings``
        compares between a held-out set and validation: the stated confidence minus the accuracy
        (top label), and for two classes sensitivity, specificity (their errors read from their
        Wilson intervals, which stay wide at 0 or 1) and the share called positive minus the share
        that is."""
        everything, patients = self.everything, self.patients

        def statistic(estimate: Estimate) -> list[float] | None:
            if not np.any(estimate.influence):  # every image alike (all called right, say): no spread seen
                return [estimate.value, 0.0, estimate.df]
            variance = clustered_variance(estimate.influence, patients)
            if not math.isfinite(variance):  # the spread rests on one patient: it cannot be measured
                return None
            return [estimate.value, math.sqrt(max(variance, 0.0)), estimate.df]

        top = self.probabilities.argmax(1)
        confidence = self.probabilities[np.arange(len(top)), top]
        stats = {"confidence_minus_accuracy": statistic(mean_estimate(confidence - (top == self.labels),
                                                                      everything, patients))}
        if self.positive is not None:
            called, positive = self.predicted == self.positive, self.labels == self.positive
            stats["called_minus_observed"] = statistic(mean_estimate(called.astype(float) - positive, everything,
                                                                     patients))
            for metric in ("sensitivity", "specificity"):
                interval = result["ci"].get(metric)
                if result.get(metric) is not None and interval is not None:
                    df = self.groups.estimate(metric, everything).df
                    stats[metric] = [result[metric], standard_error_of(interval, df, self.settings.level), df]
        return {name: value for name, value in stats.items() if value is not None}

    def _share_interval(self, i: int, j: int) -> list[float] | None:
        """The interval of the share of class ``i``'s images predicted as ``j``."""
        counted = self.labels == i
        estimate = proportion_estimate(self.predicted == j, counted, self.patients)
        interval = wilson_interval(estimate, counted, self.patients, self.settings.level)
        return None if interval is None else interval.as_list()

    def _per_class(self, counts: np.ndarray) -> dict[str, Any]:
        labels, ranking = self.labels, self.ranking
        rates = class_rates(counts)
        per_class: dict[str, Any] = {}
        for c, name in enumerate(self.classes):
            entry: dict[str, Any] = {m: _value(float(rates[m][c])) for m in ("precision", "recall", "specificity", "f1")}
            entry_na: dict[str, str] = {}
            if counts[:, c].sum() == 0:
                entry_na["precision"] = f"no image predicted {name}"
            if counts[c].sum() == 0:
                entry_na["recall"] = f"no {name} images"
            if counts[c].sum() == len(labels):
                entry_na["specificity"] = f"every image is {name}"
            if entry["f1"] is None:
                entry_na["f1"] = f"no {name} images and none predicted"
            if 0 < counts[c].sum() < len(labels):
                entry["auroc"] = float(roc_auc_score(labels == c, ranking[:, c]))
                entry["average_precision"] = float(average_precision_score(labels == c, ranking[:, c]))
            else:
                entry["auroc"] = entry["average_precision"] = None
                entry_na["auroc"] = entry_na["average_precision"] = (
                    f"no {name} images" if counts[c].sum() == 0 else f"every image is {name}")
            entry["support"] = int(counts[c].sum())
            entry.update(na=entry_na, ci={}, ci_method={}, ci_note={})
            for metric, success, counted in (("precision", labels == c, self.predicted == c),
                                             ("recall", self.predicted == c, labels == c),
                                             ("specificity", self.predicted != c, labels != c)):
                interval = (wilson_interval(proportion_estimate(success, counted, self.patients), counted,
                                            self.patients, self.settings.level) if entry[metric] is not None else None)
                entry["ci"][metric] = None if interval is None else interval.as_list()
                if interval is not None:
                    entry["ci_method"][metric] = interval.method
            interval = (logit_interval(auroc_estimate(labels == c, ranking[:, c], self.patients), self.patients,
                                       self.settings.level) if entry["auroc"] is not None else None)
            entry["ci"]["auroc"] = None if interval is None else interval.as_list()
            if interval is not None:
                entry["ci_method"]["auroc"] = interval.method
            per_class[name] = entry
        return per_class

    def score_separation(self, report: dict[str, Any], groups: Mapping[str, list[str]]) -> None:
        """For two classes: how well the score of the positive class tells each group's images
        from the other images *of the same class* (the mean over classes of that AUROC; 0.5: not
        at all), with its interval, stored as ``score_separation`` in each group's entry. A model
        that uses the group as a shortcut scores a group's images differently whatever their label."""
        if self.positive is None:
            return
        for attribute, column in groups.items():
            values = np.array(column, dtype=object)
            for group in [g for g in report[attribute] if g != "unknown"]:
                entry = report[attribute][group]
                estimate = self.groups.separation(values == group, values != "unknown")
                entry["score_separation"] = _value(estimate.value)
                if entry["score_separation"] is None:
                    entry["na"]["score_separation"] = "a class has no images in this group, or none outside it"
                interval = logit_interval(estimate, self.patients, self.settings.level)
                entry["ci"]["score_separation"] = None if interval is None else interval.as_list()
                if interval is not None:
                    entry["ci_method"]["score_separation"] = interval.method

    def subgroups(self, overall: Mapping[str, Any], groups: Mapping[str, list[str]]) -> dict[str, Any]:
        report: dict[str, Any] = {}
        patients = self.inputs.patients
        metrics = (*SUBGROUP_METRICS, *(("prevalence",) if self.positive is not None else ()))
        for attribute, column in groups.items():
            values = np.array(column, dtype=object)
            report[attribute] = {}
            for group in sorted(set(column), key=_group_order):
                member = values == group
                rest = ~member & (values != "unknown") if group != "unknown" else ~member
                idx = np.flatnonzero(member)
                labels = self.labels[idx]
                na: dict[str, str] = {}
                if len(set(labels.tolist())) < len(self.classes):
                    na["auroc"] = self._na_auroc(labels)
                na.update(self._na_rates(labels))
                entry: dict[str, Any] = {
                    "n": len(idx),
                    "counts": {name: int(np.sum(labels == c)) for c, name in enumerate(self.classes)},
                    "n_patients": _patient_count([patients[i] for i in idx] if len(patients) else (), len(idx)),
                    "prevalence": (float(np.mean(labels == self.positive)) if self.positive is not None else None),
                    "ece": expected_calibration_error(labels, self.probabilities[idx]),
                    "na": na, "ci": {}, "ci_method": {}, "ci_note": {}, "gap": {}, "gap_ci": {}, "gap_rest": {},
                    "gap_rest_ci": {},
                }
                for metric in ("auroc", "sensitivity", "specificity"):
                    if metric in na:
                        entry[metric] = None
                    else:
                        entry[metric] = _value(self.groups.estimate(metric, member).value)
                for metric in metrics:
                    if metric == "ece":
                        continue
                    self.checked_interval(entry, metric, member)
                    self._gaps(entry, metric, member, rest, overall)
                entry["gap"]["ece"] = entry["ece"] - overall["ece"]
                entry["gap_ci"]["ece"] = entry["gap_rest"]["ece"] = entry["gap_rest_ci"]["ece"] = None
                if self.resamples is not None:
                    draws = bootstrap_values(
                        lambda i: {"ece": expected_calibration_error(self.labels[i], self.probabilities[i])},
                        self.resamples, within=member)
                    self._bootstrap(entry, draws or {"ece": np.full(len(self.resamples.indices), np.nan)}, "ece")
                else:
                    entry["ci"]["ece"] = None
                report[attribute][group] = entry
        return report

    def _gaps(self, entry: dict[str, Any], metric: str, member: np.ndarray, rest: np.ndarray,
              overall: Mapping[str, Any]) -> None:
        """The group's ``metric`` minus the whole split's (``gap``) and minus the rest of the
        split's (``gap_rest``), each with its interval (patient-clustered, paired where images
        are on both sides)."""
        value = entry.get(metric)
        for key, other in (("gap", self.everything), ("gap_rest", rest)):
            if value is None or not other.any():
                entry[key][metric] = entry[f"{key}_ci"][metric] = None
                continue
            shares = self.groups.shares(metric)
            if shares is not None:
                # against the whole split, which holds the group: the whole's rate is the group's and
                # the other images' weighted by their counted images, so group - whole = (the others'
                # share) x (group - others), and that interval, so scaled, is the paired one
                others = ~member if key == "gap" else rest
                test = self.groups.test(metric, member, others, self.settings.level, side="two-sided")
                if key == "gap" and test is not None:
                    counted = shares[1]
                    share = (others & counted).sum() / counted.sum()
                    test = replace(test, difference=share * test.difference, low=share * test.low,
                                   high=share * test.high)
            else:
                test = compare(self.estimate(metric, member), self.estimate(metric, other), self.patients,
                               level=self.settings.level)
            if key == "gap":
                reference = overall.get(metric)
                entry["gap"][metric] = None if reference is None else value - reference
            else:
                entry["gap_rest"][metric] = None if test is None else test.difference
            # every figure here lies in [0, 1], so a difference lies in [-1, 1] (a t quantile of one
            # degree of freedom can reach beyond it)
            entry[f"{key}_ci"][metric] = None if test is None else [max(test.low, -1.0), min(test.high, 1.0)]


def _group_order(group: str) -> tuple:
    """Groups in reading order: by the first number in the name when there is one (age bands:
    "<18" before "18-39" before "65+"), else alphabetically; "unknown" last. The groups of an
    intersection ("F, <18") are ordered part by part: by the first attribute, then the second."""
    return (group == "unknown", tuple(_part_order(part) for part in group.split(", ")))


def _part_order(part: str) -> tuple:
    """The sort key of one group name (or one part of an intersection's): see ``_group_order``."""
    number = re.search(r"\d+(\.\d+)?", part)
    return (number is None, float(number.group()) if number else 0.0, not part.startswith("<"), part)


def _patient_count(patients: Sequence[str | None], n: int) -> int | None:
    """Distinct patients (images without a patient id count as their own), None if no ids."""
    if not len(patients) or all(p is None for p in patients):
        return None
    return len({p for p in patients if p is not None}) + sum(p is None for p in patients)


# --- the whole evaluation ----------------------------------------------------------------


def overfitting_check(train_auroc: float | None, val_auroc: float | None, limit: float,
                      best_epoch: int | None = None) -> dict[str, Any]:
    """The train-validation AUROC gap of the kept model, flagged above ``limit``, with a sentence
    that says the validation AUROC is that of the epoch validation itself chose (``best_epoch``)."""
    if train_auroc is None or val_auroc is None:
        return {"train_val_auroc_gap": None, "limit": limit, "flag": None,
                "sentence": "The train-validation gap could not be computed (an AUROC is undefined)."}
    gap = train_auroc - val_auroc
    kept = (f"the kept epoch {best_epoch}, which validation chose, so its validation AUROC is optimistic"
            if best_epoch else "the kept network")
    if gap > limit:
        sentence = (f"Possible overfitting: AUROC is {train_auroc:.3f} on the training images but {val_auroc:.3f} on "
                    f"validation patients ({kept}), a gap of {gap:.3f} (more than {limit:.2f}). The model fits the "
                    "images it learned from better than new patients; expect new data to score like validation or "
                    "worse, not like training, and consider more data, stronger augmentation or fewer trainable "
                    "stages.")
    else:
        sentence = (f"No sign of overfitting on the training data: AUROC {train_auroc:.3f} on training images and "
                    f"{val_auroc:.3f} on validation patients ({kept}; gap {gap:.3f}, limit {limit:.2f}). This says "
                    "nothing about other sites or scanners.")
    return {"train_val_auroc_gap": gap, "limit": limit, "flag": bool(gap > limit), "sentence": sentence}


def size_warnings(split: str, entry: Mapping[str, Any], classes: Sequence[str]) -> list[str]:
    """Plain warnings when ``split`` is too small for its intervals to carry a conclusion."""
    split = SPLIT_WORDS.get(split, split)
    warnings = []
    small = {name: count for name, count in entry["counts"].items() if count < MIN_PER_CLASS}
    if small:
        listed = ", ".join(f"{count} {name}" for name, count in small.items())
        warnings.append(f"The {split} set holds only {listed} image(s) (fewer than {MIN_PER_CLASS} per class): its "
                        "figures can move a lot with a few images, so treat them as rough.")
    interval = entry.get("ci", {}).get("auroc")
    if interval is not None and interval[1] - interval[0] > WIDE_INTERVAL:
        warnings.append(f"The 95 % interval of the {split} AUROC spans {interval[0]:.3f} to {interval[1]:.3f}, wider "
                        f"than {WIDE_INTERVAL:.1f}: too wide to tell a good model from a mediocre one. Evaluate on more "
                        "patients (medxfer evaluate) before relying on it.")
    return warnings


def evaluate(classes: Sequence[str], splits: Mapping[str, SplitInputs], settings: EvaluationSettings, *,
             evaluator: Evaluator | None = None, kind: str = "training run", data_name: str = "",
             best_epoch: int | None = None) -> Evaluation:
    """Score ``splits`` ("train", "val", "test"; any may be missing or empty) of a model with
    these ``classes``. ``evaluator`` (calibration and threshold) is fitted on ``splits["val"]``
    unless given (external validation reuses the run's). Returns the metrics.json structure
    and the scores of "val" and "test" for the report's plots. ``best_epoch``: the epoch the
    validation split chose, named in the overfitting sentence."""
    if 0 < settings.bootstrap < MIN_BOOTSTRAP:
        raise ValueError(f"bootstrap must be 0 (no bootstrap intervals) or at least {MIN_BOOTSTRAP} resamples, got "
                         f"{settings.bootstrap}: fewer give intervals whose ends are mostly noise")
    if evaluator is None:
        if "val" not in splits or not len(splits["val"]):
            raise ValueError("calibration and the threshold are fitted on the validation split, which is empty")
        evaluator = Evaluator(classes, settings).fit(splits["val"])
    metrics: dict[str, Any] = {
        "medxfer_version": __version__, "kind": kind, "data_name": data_name, "classes": list(classes),
        "positive_class": None if evaluator.positive_ is None else classes[evaluator.positive_],
    }
    state = evaluator.to_dict()
    metrics["threshold"] = state["threshold"]
    calibration = dict(state["calibration"])
    for key in ("temperature", "scale", "bias"):
        calibration.setdefault(key, None)
    calibration.update(fitted_on="val", n=len(splits["val"]) if "val" in splits else None,
                       note=getattr(evaluator, "calibration_note_", None))
    metrics["calibration"] = calibration
    any_patients = any(p is not None for s in splits.values() for p in s.patients)
    metrics["bootstrap"] = {"resamples": settings.bootstrap, "level": settings.level,
                            "unit": "patient" if any_patients else "image", "seed": settings.seed,
                            "used_for": list(BOOTSTRAPPED), "defined": {}}
    metrics["intervals"] = {"level": settings.level, "methods": dict(INTERVAL_METHODS)}
    evaluation = Evaluation(metrics, evaluator)
    warnings: list[str] = []
    for offset, name in enumerate(("train", "val", "test")):
        inputs = splits.get(name)
        if inputs is None or not len(inputs):
            continue
        resamples = (draw_resamples(len(inputs), list(inputs.patients) or None, resamples=settings.bootstrap,
                                    seed=settings.seed * 1000 + offset)
                     if settings.bootstrap > 0 else None)
        single = len(set(patient_codes(inputs.patients, len(inputs)).tolist())) < 2
        if single:
            resamples = None
            warnings.append(f"The {SPLIT_WORDS.get(name, name)} set holds a single "
                            f"{'patient' if any(inputs.patients) else 'image'}: no interval can be computed.")
        scorer = _SplitScorer(inputs, evaluator, classes, settings, resamples)
        if name == "train":
            train_auroc = _value(scorer._auroc(np.arange(len(inputs))))
            metrics["train"] = {"n": len(inputs), "n_patients": _patient_count(inputs.patients, len(inputs)),
                                "counts": {c: int(np.sum(scorer.labels == i)) for i, c in enumerate(classes)},
                                "auroc": train_auroc, "na": {}}
            if train_auroc is None:
                metrics["train"]["na"]["auroc"] = scorer._na_auroc(scorer.labels)
            continue
        defined: dict[str, int] = {}
        entry = scorer.overall(defined)
        if single:
            _no_intervals(entry)
        metrics["bootstrap"]["defined"][name] = defined
        groups, skipped = subgroup_columns(inputs.meta or [{}] * len(inputs), settings)
        entry["subgroups"] = scorer.subgroups(entry, groups)
        scorer.score_separation(entry["subgroups"], groups)
        metrics[name] = entry
        evaluation.scores[name] = SplitScores(scorer.labels, scorer.probabilities, scorer.uncalibrated)
        warnings += size_warnings(name, entry, classes)
        if name == "test" or (name == "val" and not len(splits.get("test", ()))):
            hypotheses = holm(family(scorer.groups, groups, settings.level), 1 - settings.level)
            metrics["bias"] = bias_summary(name, hypotheses, entry, groups, skipped, metrics["positive_class"],
                                           settings.level)
    if "val" in metrics and "train" in metrics:
        metrics["overfitting"] = overfitting_check(metrics["train"]["auroc"], metrics["val"]["auroc"],
                                                   settings.overfit_gap, best_epoch)
    transfer, kinds = (transfer_warnings(metrics["test"], metrics["val"], positive=metrics["positive_class"],
                                         where="on the test set") if "test" in metrics and "val" in metrics
                       else ([], []))
    if evaluator.threshold_note_:
        warnings.append(f"Threshold: {evaluator.threshold_note_}.")
    if getattr(evaluator, "calibration_note_", None):
        warnings.append(f"Calibration: {evaluator.calibration_note_}.")
    metrics["transfer"] = {"compared_with": "validation" if "test" in metrics and "val" in metrics else None,
                           "warnings": transfer, "kinds": kinds}
    metrics["warnings"] = transfer + warnings
    return evaluation


def _no_intervals(entry: dict[str, Any]) -> None:
    """A split of one patient: every interval withdrawn (there is no spread to measure)."""
    entry["ci"] = {metric: None for metric in entry["ci"]}
    for block in entry["per_class"].values():
        block["ci"] = {metric: None for metric in block["ci"]}
