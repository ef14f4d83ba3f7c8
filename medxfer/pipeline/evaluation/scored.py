"""One split with the decision rule applied: the arrays every figure of the split is computed
from, the estimates (with their linearisations) behind its checked intervals, and why a figure
is undefined."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import softmax

from medxfer.pipeline.calibration.metrics import brier_terms
from medxfer.pipeline.evaluation.decision import Evaluator
from medxfer.pipeline.evaluation.inputs import SplitInputs
from medxfer.pipeline.statistics.comparisons import GroupScorer
from medxfer.pipeline.statistics.intervals import Estimate, average, mean_estimate, patient_codes, proportion_estimate
from medxfer.pipeline.statistics.scoring import binary_auroc, macro_auroc, ranking_scores


def value(x: float | None) -> float | None:
    """``x`` as a float for metrics.json, None where it is undefined (None or NaN)."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def patient_count(patients: Sequence[str | None], n: int) -> int | None:
    """Distinct patients (images without a patient id count as their own), None if no ids."""
    if not len(patients) or all(p is None for p in patients):
        return None
    return len({p for p in patients if p is not None}) + sum(p is None for p in patients)


@dataclass(frozen=True, eq=False)
class ScoredSplit:
    """A split scored by a fitted ``Evaluator``, n images of K ``classes``: true ``labels`` (n,)
    class indices; ``uncalibrated`` softmax and calibrated ``probabilities`` (n, K) in [0, 1];
    ``ranking`` (n, K), the scores AUROC and average precision rank images by (the calibrated
    probabilities' order, unsaturated: ``scoring.ranking_scores``); ``predicted`` (n,) classes;
    ``positive``, the positive class (None: more than two classes); ``patient_ids`` as given
    (possibly empty) and ``patients`` (n,) integer codes; ``groups``, the estimates of any set of
    its images; ``level``, the confidence of its intervals, in (0, 1).

    Compared by identity (``eq=False``): equality of arrays is not a truth value."""

    classes: list[str]
    labels: np.ndarray
    uncalibrated: np.ndarray
    probabilities: np.ndarray
    ranking: np.ndarray
    predicted: np.ndarray
    positive: int | None
    patient_ids: Sequence[str | None]
    patients: np.ndarray
    groups: GroupScorer
    level: float

    @classmethod
    def of(cls, inputs: SplitInputs, evaluator: Evaluator, classes: Sequence[str], level: float) -> ScoredSplit:
        """``inputs`` with ``evaluator``'s calibration and threshold applied."""
        logits = inputs.logits.astype(np.float64)
        labels = inputs.labels.astype(int)
        probabilities = evaluator.predict_proba(logits)
        ranking = ranking_scores(evaluator.calibrator_.transform(logits))
        predicted = evaluator.predict(probabilities)
        patients = patient_codes(inputs.patients, len(labels))
        groups = GroupScorer(labels, predicted, ranking, evaluator.positive_, patients)
        return cls(list(classes), labels, softmax(logits, axis=1), probabilities, ranking, predicted,
                   evaluator.positive_, inputs.patients, patients, groups, level)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def everything(self) -> np.ndarray:
        """A mask (n,) of every image."""
        return np.ones(len(self.labels), bool)

    def counts(self, within: np.ndarray | None = None) -> dict[str, int]:
        """Images of each class (by name) among ``within`` (a mask or indices; default all)."""
        labels = self.labels if within is None else self.labels[within]
        return {name: int(np.sum(labels == c)) for c, name in enumerate(self.classes)}

    def present(self, within: np.ndarray) -> list[int]:
        """The classes with at least one image among ``within``."""
        return [c for c in range(len(self.classes)) if np.any(within & (self.labels == c))]

    def auroc(self, idx: np.ndarray) -> float:
        """The AUROC of the images ``idx`` (the positive class's, else the macro one-vs-rest), NaN
        where undefined."""
        if self.positive is not None:
            return binary_auroc(self.labels[idx] == self.positive, self.ranking[idx, self.positive])
        return macro_auroc(self.labels[idx], self.ranking[idx])

    def estimate(self, metric: str, within: np.ndarray) -> Estimate:
        """A figure of the images ``within`` and its linearisation (see ``intervals``)."""
        if metric in ("auroc", "sensitivity", "specificity", "prevalence"):
            return self.groups.estimate(metric, within)
        if metric == "accuracy":
            return proportion_estimate(self.labels == self.predicted, within, self.patients)
        if metric == "balanced_accuracy":
            present = self.present(within)
            return average([self.groups.recall(c, within) for c in present]) if len(present) > 1 else average([])
        if metric == "brier":
            return mean_estimate(brier_terms(self.labels, self.probabilities), within, self.patients)
        raise ValueError(metric)

    def na_auroc(self, labels: np.ndarray) -> str:
        """Why an AUROC of images with these true ``labels`` is undefined."""
        present = sorted(set(labels.tolist()))
        if len(present) == 1:
            return f"one class only (all {self.classes[present[0]]})"
        missing = [self.classes[c] for c in range(len(self.classes)) if c not in present]
        return f"no {', '.join(missing)} images (macro AUROC needs every class)"

    def na_rates(self, labels: np.ndarray) -> dict[str, str]:
        """Why sensitivity or specificity is undefined for images of these true ``labels``: for
        two classes, the class it counts is absent; for more (macro averages over the classes
        present), one class only leaves no image to be a true negative, so no specificity."""
        if self.positive is not None:
            return {metric: f"no {self.classes[c]} images"
                    for metric, c in (("sensitivity", self.positive), ("specificity", 1 - self.positive))
                    if not np.any(labels == c)}
        return {"specificity": self.na_auroc(labels)} if len(set(labels.tolist())) < 2 else {}
