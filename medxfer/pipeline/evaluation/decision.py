"""The decision rule learnt on the validation split and applied unchanged to every other split:
the calibration of the logits (temperature scaling by default, see
``medxfer.pipeline.calibration``) and, for two classes, the operating threshold on the
calibrated probability of the positive class (``threshold``). Saved as ``calibration.json``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

import numpy as np

from medxfer.pipeline.calibration.calibrators import calibrator_from_dict, make_calibrator
from medxfer.pipeline.evaluation.inputs import EvaluationSettings, SplitInputs
from medxfer.pipeline.evaluation.schema import ThresholdRecord
from medxfer.pipeline.evaluation.threshold import THRESHOLD_PLACEMENT, choose_threshold, positive_class_index
from medxfer.pipeline.statistics.scoring import macro_auroc, ranking_scores


class EvaluatorRecord(TypedDict):
    """``calibration.json``: the ``classes``, the ``positive_class`` (None for more than two),
    the calibrator's own record (``calibration``, see ``calibrator_from_dict``) and the
    ``threshold`` (as metrics.json shows it)."""

    classes: list[str]
    positive_class: str | None
    calibration: dict[str, Any]
    threshold: ThresholdRecord


class Evaluator:
    """Calibration and operating threshold, learned on validation logits (scikit-learn style:
    ``fit`` returns self, learned state ends in ``_``)."""

    def __init__(self, classes: Sequence[str], settings: EvaluationSettings | None = None) -> None:
        self.classes = classes
        self.settings = settings

    def fit(self, val: SplitInputs) -> Evaluator:
        """Learn the calibration and (two classes) the threshold on the validation split ``val``;
        returns self."""
        settings = self.settings or EvaluationSettings()
        self.positive_ = positive_class_index(self.classes, settings.positive_class)
        self.calibrator_, self.calibration_note_ = fit_calibration(settings.calibration, val)
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

    def to_dict(self) -> EvaluatorRecord:
        """What ``calibration.json`` holds, for ``from_dict``."""
        return EvaluatorRecord(
            classes=list(self.classes),
            positive_class=None if self.positive_ is None else self.classes[self.positive_],
            calibration=self.calibrator_.to_dict(),
            threshold=ThresholdRecord(method=self.threshold_method_, target_sensitivity=self.target_sensitivity_,
                                      value=self.threshold_, chosen_on="val", placement=THRESHOLD_PLACEMENT,
                                      note=self.threshold_note_),
        )

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


def fit_calibration(method: str, val: SplitInputs) -> tuple[Any, str | None]:
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
