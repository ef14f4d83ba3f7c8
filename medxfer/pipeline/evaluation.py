"""What a reviewer asks of a classifier, computed: discrimination, calibration, per-class rates,
overfitting and subgroup gaps, each with a 95 % bootstrap interval.

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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import softmax
from scipy.stats import binomtest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    roc_auc_score,
    roc_curve,
)

from medxfer import __version__
from medxfer.pipeline.bootstrap import Resamples, bootstrap_values, draw_resamples, interval_of_gap, percentile_interval
from medxfer.pipeline.calibration import (
    adaptive_calibration_error,
    brier_score,
    calibrator_from_dict,
    expected_calibration_error,
    make_calibrator,
    maximum_calibration_error,
    negative_log_likelihood,
    reliability_bins,
)
from medxfer.pipeline.scoring import (
    binary_auroc,
    binary_average_precision,
    brier,
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
MIN_FLAG_COUNT = 10  # a group needs this many images of each class its metric counts to be flagged
# ... and to be at least this much worse than the whole split: in a large set a gap of 0.01 can
# be statistically clear and still of no clinical consequence.
MIN_FLAG_GAP = 0.05
# Metrics whose subgroup gaps are flagged. ECE is reported but not flagged: its estimate is
# biased upwards in small samples, so a small group always looks worse calibrated than the
# whole split, whether or not it is.
FLAGGED_METRICS = ("auroc", "sensitivity", "specificity")
SUBGROUP_METRICS = ("auroc", "sensitivity", "specificity", "ece")
SPLIT_INTERVALS = ("auroc", "average_precision", "accuracy", "balanced_accuracy", "sensitivity", "specificity",
                   "ece", "brier")
CLASS_METRICS = ("precision", "recall", "specificity", "f1", "auroc", "average_precision")
NAMES = {"auroc": "AUROC", "sensitivity": "Sensitivity", "specificity": "Specificity"}
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
        self.calibration_note_ = None
        method = settings.calibration
        if method != "none" and len(np.unique(val.labels)) < 2:
            # a calibration fitted on one class only learns to be sure of that class
            method, self.calibration_note_ = "none", (
                f"the validation split holds one class only, so the {settings.calibration} calibration was not "
                "fitted and probabilities are the network's own")
        elif method != "none" and macro_auroc(val.labels, ranking_scores(val.logits)) == 1.0:
            # the likelihood then keeps falling as the probabilities sharpen: nothing bounds the fit
            self.calibration_note_ = (
                "the validation split is separated perfectly (AUROC 1), so the fit only learns to be more "
                "confident and says little about new data; check the test set's ECE and NLL before and after, "
                "and prefer a larger validation split")
        self.calibrator_ = make_calibrator(method).fit(val.logits, val.labels)
        self.threshold_method_ = "argmax" if self.positive_ is None else settings.threshold
        self.target_sensitivity_ = settings.target_sensitivity if self.threshold_method_ == "sensitivity" else None
        self.threshold_ = None
        self.threshold_note_ = None
        if self.positive_ is not None:
            positive = val.labels == self.positive_
            scores = self.predict_proba(val.logits)[:, self.positive_]
            if positive.all() or not positive.any():
                self.threshold_, self.threshold_note_ = 0.5, "the validation split holds one class only: 0.5 used"
            else:
                self.threshold_ = choose_threshold(positive, scores, settings.threshold, settings.target_sensitivity)
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
                          "value": self.threshold_, "chosen_on": "val", "note": self.threshold_note_},
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


def choose_threshold(positive: np.ndarray, scores: np.ndarray, method: str, target_sensitivity: float) -> float:
    """The operating threshold on ``scores`` (a probability in [0, 1]) for the boolean
    ``positive``: the one maximising Youden's J = sensitivity + specificity - 1 (``youden``), or
    the highest one whose sensitivity reaches ``target_sensitivity`` (``sensitivity``)."""
    fpr, tpr, thresholds = roc_curve(positive, scores, drop_intermediate=False)
    if method == "youden":
        best = int(np.argmax(tpr - fpr))
    elif method == "sensitivity":
        best = int(np.flatnonzero(tpr >= target_sensitivity - 1e-12)[0])
    else:
        raise ValueError(f"threshold must be youden or sensitivity, got {method!r}")
    return float(min(thresholds[best], 1.0))  # roc_curve's first threshold is +inf


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
    """Point estimates (scikit-learn), bootstrap statistics (``scoring.py``) and intervals of one
    split."""

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

    # statistics on an index array, for the bootstrap -----------------------------------------

    def _auroc(self, idx: np.ndarray) -> float:
        if self.positive is not None:
            return binary_auroc(self.labels[idx] == self.positive, self.ranking[idx, self.positive])
        return macro_auroc(self.labels[idx], self.ranking[idx])

    def overall_statistic(self, idx: np.ndarray) -> dict[str, float]:
        labels, probabilities, predicted = self.labels[idx], self.probabilities[idx], self.predicted[idx]
        ranking = self.ranking[idx]
        k = len(self.classes)
        counts = confusion_counts(labels, predicted, k)
        sensitivity, specificity = sensitivity_specificity(counts, self.positive)
        rates = class_rates(counts)
        present = counts.sum(1) > 0
        values = {
            "auroc": self._auroc(idx),
            "average_precision": (binary_average_precision(labels == self.positive, ranking[:, self.positive])
                                  if self.positive is not None else
                                  float(np.mean([binary_average_precision(labels == c, ranking[:, c])
                                                 for c in range(k)]))),
            "accuracy": float(np.mean(labels == predicted)),
            "balanced_accuracy": float(np.mean(rates["recall"][present])) if present.sum() > 1 else float("nan"),
            "sensitivity": sensitivity,
            "specificity": specificity,
            "ece": expected_calibration_error(labels, probabilities),
            "brier": brier(labels, probabilities),
        }
        if self.positive is not None:
            values["prevalence"] = float(np.mean(labels == self.positive))
        rows = counts.sum(1)
        for (i, j), count in np.ndenumerate(counts):  # each cell's share of its true class
            values[f"cell\x00{i}\x00{j}"] = count / rows[i] if rows[i] else float("nan")
        for c, name in enumerate(self.classes):
            for metric in ("precision", "recall", "specificity", "f1"):
                values[f"{name}\x00{metric}"] = float(rates[metric][c])
            values[f"{name}\x00auroc"] = binary_auroc(labels == c, ranking[:, c])
            values[f"{name}\x00average_precision"] = binary_average_precision(labels == c, ranking[:, c])
        return values

    def group_statistic(self, idx: np.ndarray) -> dict[str, float]:
        labels = self.labels[idx]
        counts = confusion_counts(labels, self.predicted[idx], len(self.classes))
        sensitivity, specificity = sensitivity_specificity(counts, self.positive)
        values = {"auroc": self._auroc(idx), "sensitivity": sensitivity, "specificity": specificity,
                  "ece": expected_calibration_error(labels, self.probabilities[idx])}
        if self.positive is not None:
            values["prevalence"] = float(np.mean(labels == self.positive))
        return values

    def _proportion_intervals(self, entry: dict[str, Any], counts: np.ndarray) -> None:
        """Wilson score intervals in place of bootstrap intervals that collapse to a point
        because the proportion is 0 or 1 (a group where every positive was found has a
        bootstrap interval of [1, 1], which no reader should take at face value)."""
        trials: dict[str, tuple[int, int]] = {"accuracy": (int(np.trace(counts)), int(counts.sum()))}
        if self.positive is not None:
            p, q = self.positive, 1 - self.positive
            trials["sensitivity"] = (int(counts[p, p]), int(counts[p].sum()))
            trials["specificity"] = (int(counts[q, q]), int(counts[q].sum()))
        for metric, (successes, n) in trials.items():
            _wilson_if_degenerate(entry, metric, successes, n, self.settings.level)

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

    def overall(self) -> tuple[dict[str, Any], dict[str, np.ndarray] | None]:
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
        per_class: dict[str, Any] = {}
        rates = class_rates(counts)
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
            entry["na"] = entry_na
            per_class[name] = entry
        result["na"] = na
        result["per_class"] = per_class
        result["confusion_matrix"] = {"labels": self.classes, "counts": counts.tolist()}
        result["reliability"] = {"before": reliability_bins(labels, u), "after": reliability_bins(labels, probabilities)}
        draws = None
        if self.resamples is not None:
            draws = bootstrap_values(self.overall_statistic, self.resamples)
            _attach_intervals(result, {m: draws[m] for m in SPLIT_INTERVALS}, self.settings)
            self._proportion_intervals(result, counts)
            result["confusion_matrix"]["share_ci"] = [
                [percentile_interval(draws[f"cell\x00{i}\x00{j}"], level=self.settings.level).as_list()
                 if counts[i].sum() else None for j in range(k)] for i in range(k)]
            total = counts.sum()
            for c, name in enumerate(self.classes):
                entry = per_class[name]
                _attach_intervals(entry, {m: draws[f"{name}\x00{m}"] for m in CLASS_METRICS}, self.settings)
                true_pos, predicted, actual = int(counts[c, c]), int(counts[:, c].sum()), int(counts[c].sum())
                true_neg = int(total - predicted - actual + true_pos)
                for metric, successes, n in (("precision", true_pos, predicted), ("recall", true_pos, actual),
                                             ("specificity", true_neg, int(total - actual))):
                    _wilson_if_degenerate(entry, metric, successes, n, self.settings.level)
        else:
            _no_intervals(result, SPLIT_INTERVALS)
            for name in self.classes:
                _no_intervals(per_class[name], CLASS_METRICS)
        return result, draws

    def score_separation(self, report: dict[str, Any], groups: Mapping[str, list[str]]) -> None:
        """For two classes: how well the score of the positive class tells each group's images
        from the other images *of the same class* (the mean over classes of that AUROC; 0.5: not
        at all), with its interval, stored as ``score_separation`` in each group's entry. A model
        that uses the group as a shortcut scores a group's images differently whatever their label."""
        if self.positive is None:
            return
        scores = self.ranking[:, self.positive]
        for attribute, column in groups.items():
            column_array = np.array(column, dtype=object)
            known = [g for g in report[attribute] if g != "unknown"]

            def statistic(idx: np.ndarray, column_array: np.ndarray = column_array,
                          known: list[str] = known) -> dict[str, float]:
                labels, score, member_of = self.labels[idx], scores[idx], column_array[idx]
                values = {}
                for group in known:
                    per_class = [binary_auroc(member_of[labels == c] == group, score[labels == c])
                                 for c in (0, 1)]
                    defined = [v for v in per_class if not math.isnan(v)]
                    values[group] = float(np.mean(defined)) if defined else float("nan")
                return values

            point = statistic(np.arange(len(self.labels)))
            draws = bootstrap_values(statistic, self.resamples) if self.resamples is not None else {}
            for group in known:
                entry = report[attribute][group]
                entry["score_separation"] = _value(point[group])
                if group in draws:
                    interval = percentile_interval(draws[group], level=self.settings.level)
                    entry["ci"]["score_separation"] = interval.as_list()
                    if interval.reason and entry["score_separation"] is not None:
                        entry["na"]["ci.score_separation"] = interval.reason
                else:
                    entry["ci"]["score_separation"] = None

    def subgroups(self, overall: Mapping[str, Any], overall_draws: Mapping[str, np.ndarray] | None,
                  groups: Mapping[str, list[str]]) -> dict[str, Any]:
        report: dict[str, Any] = {}
        patients = self.inputs.patients
        for attribute, column in groups.items():
            column_array = np.array(column, dtype=object)
            report[attribute] = {}
            for group in sorted(set(column), key=_group_order):
                members = column_array == group
                idx = np.flatnonzero(members)
                labels = self.labels[idx]
                point = self.group_statistic(idx)
                na: dict[str, str] = {}
                if len(set(labels.tolist())) < len(self.classes):
                    na["auroc"] = self._na_auroc(labels)
                na.update(self._na_rates(labels))
                entry: dict[str, Any] = {
                    "n": len(idx),
                    "counts": {name: int(np.sum(labels == c)) for c, name in enumerate(self.classes)},
                    "n_patients": _patient_count([patients[i] for i in idx] if len(patients) else (), len(idx)),
                    "prevalence": (float(np.mean(labels == self.positive)) if self.positive is not None else None),
                    **{m: _value(point[m]) for m in SUBGROUP_METRICS},
                }
                entry["gap"] = {m: (None if entry[m] is None or overall.get(m) is None else entry[m] - overall[m])
                                for m in SUBGROUP_METRICS}
                if self.positive is not None:
                    entry["gap"]["prevalence"] = entry["prevalence"] - overall["prevalence"]
                entry["na"] = na
                if self.resamples is not None and overall_draws is not None:
                    draws = bootstrap_values(self.group_statistic, self.resamples, within=members)
                    why = "the group is missing from some resamples or holds one class only"
                    entry["ci"], entry["gap_ci"] = {}, {}
                    for m in (*SUBGROUP_METRICS, *(("prevalence",) if self.positive is not None else ())):
                        values = draws.get(m, np.full(len(self.resamples.indices), np.nan))
                        interval = percentile_interval(values, level=self.settings.level, why=why)
                        entry["ci"][m] = interval.as_list() if entry.get(m) is not None else None
                        if interval.reason and entry.get(m) is not None:
                            na[f"ci.{m}"] = interval.reason
                        gap = interval_of_gap(values, overall_draws[m], level=self.settings.level, why=why)
                        entry["gap_ci"][m] = gap.as_list()
                    self._proportion_intervals(entry, confusion_counts(labels, self.predicted[idx],
                                                                      len(self.classes)))
                else:
                    entry["ci"] = {m: None for m in SUBGROUP_METRICS}
                    entry["gap_ci"] = {m: None for m in SUBGROUP_METRICS}
                report[attribute][group] = entry
        return report


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


def _attach_intervals(entry: dict[str, Any], draws: Mapping[str, np.ndarray], settings: EvaluationSettings) -> None:
    """``ci.<metric>`` for each metric with a value (an undefined metric has no interval, even
    where some resamples happen to define it)."""
    entry["ci"] = {}
    for metric, values in draws.items():
        if entry.get(metric) is None:
            entry["ci"][metric] = None
            continue
        interval = percentile_interval(values, level=settings.level)
        entry["ci"][metric] = interval.as_list()
        if interval.reason:
            entry["na"][f"ci.{metric}"] = interval.reason


def _wilson_if_degenerate(entry: dict[str, Any], metric: str, successes: int, n: int, level: float) -> None:
    interval, value = entry.get("ci", {}).get(metric), entry.get(metric)
    if interval is None or value is None or n == 0 or interval[0] != interval[1] or value not in (0.0, 1.0):
        return
    wilson = binomtest(successes, n).proportion_ci(confidence_level=level, method="wilson")
    entry["ci"][metric] = [float(wilson.low), float(wilson.high)]
    entry.setdefault("ci_method", {})[metric] = "Wilson score interval: the bootstrap collapses to a point at 0 or 1"


def _no_intervals(entry: dict[str, Any], metrics: Sequence[str]) -> None:
    entry["ci"] = {m: None for m in metrics}


# --- the whole evaluation ----------------------------------------------------------------


def _interval_text(interval: Sequence[float] | None) -> str:
    return "" if interval is None else f" ({interval[0]:.3f}\u2013{interval[1]:.3f})"


def overfitting_check(train_auroc: float | None, val_auroc: float | None, limit: float) -> dict[str, Any]:
    """The train-validation AUROC gap of the kept model, flagged above ``limit``, with a sentence."""
    if train_auroc is None or val_auroc is None:
        return {"train_val_auroc_gap": None, "limit": limit, "flag": None,
                "sentence": "The train-validation gap could not be computed (an AUROC is undefined)."}
    gap = train_auroc - val_auroc
    if gap > limit:
        sentence = (f"Possible overfitting: AUROC is {train_auroc:.3f} on the training images but {val_auroc:.3f} on "
                    f"validation patients, a gap of {gap:.3f} (more than {limit:.2f}). The model fits the images it "
                    "learned from better than new patients; expect new data to score like validation, not training, "
                    "and consider more data, stronger augmentation or fewer trainable stages.")
    else:
        sentence = (f"No sign of overfitting: AUROC {train_auroc:.3f} on training images and {val_auroc:.3f} on "
                    f"validation patients (gap {gap:.3f}, limit {limit:.2f}).")
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


def _enough(entry: Mapping[str, Any], metric: str, positive: str | None) -> bool:
    """Whether a group holds ``MIN_FLAG_COUNT`` images of each class ``metric`` is computed on."""
    counts = entry["counts"]
    if metric == "auroc" or positive is None:
        return min(counts.values()) >= MIN_FLAG_COUNT
    others = sum(v for k, v in counts.items() if k != positive)
    return (counts[positive] if metric == "sensitivity" else others) >= MIN_FLAG_COUNT


def bias_flags(split: str, subgroups: Mapping[str, Any], overall: Mapping[str, Any],
               positive: str | None) -> tuple[list[dict], int]:
    """A flag for each subgroup metric that is worse than the whole split's by at least
    ``MIN_FLAG_GAP`` with a paired gap interval excluding zero, and the number of gaps tested.
    Groups with fewer than
    ``MIN_FLAG_COUNT`` images of a class the metric counts are reported, not tested: their
    intervals rest on too few images."""
    flags, tested = [], 0
    for attribute, groups in subgroups.items():
        for group, entry in groups.items():
            for metric in FLAGGED_METRICS:
                interval = entry["gap_ci"].get(metric)
                if interval is None or entry[metric] is None or not _enough(entry, metric, positive):
                    continue
                tested += 1
                if interval[1] >= 0 or entry["gap"][metric] > -MIN_FLAG_GAP:  # not clearly and materially worse
                    continue
                gap = entry["gap"][metric]
                sentence = (f"{NAMES[metric]} for {attribute} {group} "
                            f"is {entry[metric]:.3f}{_interval_text(entry['ci'][metric])}, {abs(gap):.3f} "
                            f"below the overall {overall[metric]:.3f} "
                            f"(n = {entry['n']}"
                            + (f", prevalence {entry['prevalence']:.0%}" if entry.get("prevalence") is not None else "")
                            + f"); the 95 % interval of the gap, {interval[0]:+.3f} to {interval[1]:+.3f}, "
                            "excludes zero.")
                flags.append({"split": split, "attribute": attribute, "group": group, "metric": metric,
                              "value": entry[metric], "overall": overall[metric], "gap": gap, "ci": interval,
                              "sentence": sentence})
    return flags, tested


def _listing(pairs: Iterable[tuple[str, str]]) -> str:
    """Group names with a value, for a sentence: "AP 38%, PA 66%"; "F, <18: 100%; F, 18-39: 18%"
    when a name holds a comma itself (the groups of an intersection), so that it reads as one name."""
    pairs = list(pairs)
    if any("," in group for group, _ in pairs):
        return "; ".join(f"{group}: {value}" for group, value in pairs)
    return ", ".join(f"{group} {value}" for group, value in pairs)


def confounding_flags(split: str, subgroups: Mapping[str, Any], overall: Mapping[str, Any],
                      positive: str) -> list[dict]:
    """A flag for each attribute confounded with the label: the share of the ``positive`` class
    differs between its groups (a group's prevalence gap has an interval excluding zero). A
    model can then learn the group (a projection, a site) instead of the finding, and the
    overall AUROC mixes both; the AUROC within each group holds the attribute fixed. When,
    within the classes, the score also tells a group's images from the others (its
    ``score_separation`` interval excludes 0.5), the flag says the model may use it as a shortcut."""
    flags = []
    for attribute, groups in subgroups.items():
        known = {g: e for g, e in groups.items() if g != "unknown"}
        shifted = [g for g, e in known.items()
                   if e["gap_ci"].get("prevalence") is not None
                   and not e["gap_ci"]["prevalence"][0] <= 0 <= e["gap_ci"]["prevalence"][1]]
        if len(known) < 2 or not shifted:
            continue
        shares = _listing((g, f"{e['prevalence']:.0%}") for g, e in known.items())
        within = _listing((g, f"{e['auroc']:.3f}") for g, e in known.items() if e["auroc"] is not None)
        sentence = (f"The share of {positive} differs by {attribute} ({shares}; the interval of the gap excludes zero): "
                    f"{attribute} is confounded with the label in this set, so a model can learn the {attribute} "
                    "instead of the finding, and the overall AUROC mixes both."
                    + (f" The AUROC within each {attribute} group ({within}) holds it fixed." if within else ""))
        separated = {g: e for g, e in known.items()
                     if (e.get("ci") or {}).get("score_separation") is not None
                     and not e["ci"]["score_separation"][0] <= 0.5 <= e["ci"]["score_separation"][1]}
        if separated:
            named = _listing((g, f"{e['score_separation']:.3f}{_interval_text(e['ci']['score_separation'])}")
                              for g, e in separated.items())
            sentence += (f" Within each class the model's P({positive}) also tells these {attribute} groups from "
                         f"the rest (AUROC {named}; 0.5 would be no difference): it may be using the {attribute} as "
                         "a shortcut. Balance or stratify by it when collecting data.")
        else:
            sentence += (f" Within each class the model's P({positive}) does not clearly differ by {attribute} (every "
                         "interval of that AUROC includes 0.5), so there is no sign it uses it as a shortcut.")
        flags.append({"split": split, "attribute": attribute, "group": None, "metric": "confounding",
                      "shortcut": bool(separated), "value": None, "overall": overall.get("auroc"), "gap": None,
                      "ci": None, "sentence": sentence})
    return flags


def evaluate(classes: Sequence[str], splits: Mapping[str, SplitInputs], settings: EvaluationSettings, *,
             evaluator: Evaluator | None = None, kind: str = "training run", data_name: str = "") -> Evaluation:
    """Score ``splits`` ("train", "val", "test"; any may be missing or empty) of a model with
    these ``classes``. ``evaluator`` (calibration and threshold) is fitted on ``splits["val"]``
    unless given (external validation reuses the run's). Returns the metrics.json structure
    and the scores of "val" and "test" for the report's plots."""
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
    calibration.update(fitted_on="val", n=len(splits["val"]) if "val" in splits else None)
    metrics["calibration"] = calibration
    any_patients = any(p is not None for s in splits.values() for p in s.patients)
    metrics["bootstrap"] = {"resamples": settings.bootstrap, "level": settings.level,
                            "unit": "patient" if any_patients else "image", "seed": settings.seed}
    evaluation = Evaluation(metrics, evaluator)
    warnings: list[str] = []
    for offset, name in enumerate(("train", "val", "test")):
        inputs = splits.get(name)
        if inputs is None or not len(inputs):
            continue
        resamples = (draw_resamples(len(inputs), list(inputs.patients) or None, resamples=settings.bootstrap,
                                    seed=settings.seed * 1000 + offset)
                     if settings.bootstrap > 0 else None)
        if resamples is not None and resamples.n_groups < 2:
            resamples = None  # one patient (or image): every resample is the split itself
            warnings.append(f"The {SPLIT_WORDS.get(name, name)} set holds a single {'patient' if any(inputs.patients) else 'image'}: "
                            "no interval can be computed.")
        scorer = _SplitScorer(inputs, evaluator, classes, settings, resamples)
        if name == "train":
            train_auroc = _value(scorer._auroc(np.arange(len(inputs))))
            metrics["train"] = {"n": len(inputs), "n_patients": _patient_count(inputs.patients, len(inputs)),
                                "counts": {c: int(np.sum(scorer.labels == i)) for i, c in enumerate(classes)},
                                "auroc": train_auroc, "na": {}}
            if train_auroc is None:
                metrics["train"]["na"]["auroc"] = scorer._na_auroc(scorer.labels)
            continue
        entry, draws = scorer.overall()
        groups, skipped = subgroup_columns(inputs.meta or [{}] * len(inputs), settings)
        entry["subgroups"] = scorer.subgroups(entry, draws, groups)
        scorer.score_separation(entry["subgroups"], groups)
        metrics[name] = entry
        evaluation.scores[name] = SplitScores(scorer.labels, scorer.probabilities, scorer.uncalibrated)
        warnings += size_warnings(name, entry, classes)
        if name == "test" or (name == "val" and not len(splits.get("test", ()))):
            flags, tested = bias_flags(name, entry["subgroups"], entry, metrics["positive_class"])
            if metrics["positive_class"] is not None:
                flags += confounding_flags(name, entry["subgroups"], entry, metrics["positive_class"])
            metrics["bias"] = {"split": name, "attributes": list(groups), "skipped": skipped, "comparisons": tested,
                               "flagged_metrics": list(FLAGGED_METRICS), "flags": flags}
    if "val" in metrics and "train" in metrics:
        metrics["overfitting"] = overfitting_check(metrics["train"]["auroc"], metrics["val"]["auroc"],
                                                   settings.overfit_gap)
    if evaluator.threshold_note_:
        warnings.append(f"Threshold: {evaluator.threshold_note_}.")
    if getattr(evaluator, "calibration_note_", None):
        warnings.append(f"Calibration: {evaluator.calibration_note_}.")
    metrics["warnings"] = warnings
    return evaluation
