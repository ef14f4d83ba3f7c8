"""The report entries of a split, typed: what the scoring modules produce and ``metrics.json``
holds (``to_dict`` writes each in metrics.json's layout and key order, documented in
docs/reference/metrics-json.md).

Every entry with intervals carries an ``Uncertainty``: ``ci`` (an interval per figure, None
where there is none), ``ci_method`` (how each was computed), ``ci_note`` (why one is
approximate) and ``na`` (why a figure, or with ``ci.`` in front its interval, is undefined).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from medxfer.pipeline.evaluation import schema


@dataclass(frozen=True)
class ReportedInterval:
    """An interval as the report shows it: ``bounds`` [low, high] (None: no interval), its
    ``method``, a ``note`` when it is approximate and, for a bootstrap interval that was refused,
    the ``refusal`` reason."""

    bounds: list[float] | None
    method: str | None = None
    note: str | None = None
    refusal: str | None = None


@dataclass
class Uncertainty:
    """The intervals of an entry's figures and the reasons some figures are undefined (see the
    module docstring); each dict keeps the order its figures were recorded in."""

    na: dict[str, str] = field(default_factory=dict)
    ci: dict[str, list[float] | None] = field(default_factory=dict)
    ci_method: dict[str, str] = field(default_factory=dict)
    ci_note: dict[str, str] = field(default_factory=dict)

    def record(self, metric: str, interval: ReportedInterval) -> None:
        """Store ``metric``'s interval with its method, note and refusal reason."""
        self.ci[metric] = interval.bounds
        if interval.method is not None:
            self.ci_method[metric] = interval.method
        if interval.note is not None:
            self.ci_note[metric] = interval.note
        if interval.refusal is not None:
            self.na[f"ci.{metric}"] = interval.refusal

    def withdraw(self) -> None:
        """Every interval set to None (a split of one patient: there is no spread to measure)."""
        self.ci = dict.fromkeys(self.ci)

    def to_dict(self) -> dict[str, Any]:
        """``na``, ``ci``, ``ci_method`` and ``ci_note``, the keys an entry of metrics.json ends with."""
        return {"na": self.na, "ci": self.ci, "ci_method": self.ci_method, "ci_note": self.ci_note}


@dataclass
class ClassEntry:
    """One class against the rest: precision, recall, specificity, F1, AUROC and average
    precision (each in [0, 1], None where undefined), ``support`` (its images) and intervals."""

    precision: float | None
    recall: float | None
    specificity: float | None
    f1: float | None
    auroc: float | None
    average_precision: float | None
    support: int
    uncertainty: Uncertainty

    def to_dict(self) -> schema.PerClass:
        u = self.uncertainty
        return schema.PerClass(precision=self.precision, recall=self.recall, specificity=self.specificity, f1=self.f1,
                               auroc=self.auroc, average_precision=self.average_precision, support=self.support,
                               na=u.na, ci=u.ci, ci_method=u.ci_method, ci_note=u.ci_note)


@dataclass
class ConfusionMatrix:
    """``counts[i][j]``: images of class ``labels[i]`` predicted as ``labels[j]``; ``share_ci[i][j]``
    the interval of that share of row i (None for an empty row)."""

    labels: list[str]
    counts: list[list[int]]
    share_ci: list[list[list[float] | None]]

    def to_dict(self) -> schema.ConfusionMatrix:
        return schema.ConfusionMatrix(labels=self.labels, counts=self.counts, share_ci=self.share_ci)


@dataclass
class CalibrationFigures:
    """Calibration of the calibrated probabilities and of the network's own (``_uncalibrated``):
    top-label ECE, adaptive ECE and MCE (in [0, 1]), Brier score (two classes [0, 1], more
    [0, 2]), NLL (nats) and, for two classes, the positive class's ECE (else None)."""

    ece: float
    ece_uncalibrated: float
    adaptive_ece: float
    adaptive_ece_uncalibrated: float
    mce: float
    mce_uncalibrated: float
    brier: float
    brier_uncalibrated: float
    nll: float
    nll_uncalibrated: float
    ece_positive: float | None = None
    ece_positive_uncalibrated: float | None = None

    def to_dict(self) -> dict[str, Any]:
        figures = dict(vars(self))
        if self.ece_positive is None:
            del figures["ece_positive"], figures["ece_positive_uncalibrated"]
        return figures


@dataclass
class SplitEntry:
    """The whole split: sizes, discrimination and rates (in [0, 1], None where undefined; the
    ``prevalence`` of the positive class, None for more than two classes), calibration, per-class
    figures, confusion matrix, reliability bins before and after calibration, the figures the
    transfer check compares, intervals, and (set by ``evaluate``) the subgroups."""

    n: int
    n_patients: int | None
    counts: dict[str, int]
    prevalence: float | None
    auroc: float | None
    average_precision: float | None
    accuracy: float
    balanced_accuracy: float | None
    sensitivity: float | None
    specificity: float | None
    calibration: CalibrationFigures
    uncertainty: Uncertainty
    per_class: dict[str, ClassEntry]
    confusion_matrix: ConfusionMatrix
    reliability: schema.Reliability
    transfer_statistics: schema.TransferStatistics = field(default_factory=dict)
    subgroups: dict[str, dict[str, GroupEntry]] | None = None

    def figure(self, metric: str) -> float | None:
        """The split's value of ``metric``, a field of the entry or of its calibration figures."""
        return getattr(self.calibration if hasattr(self.calibration, metric) else self, metric)

    def withdraw_intervals(self) -> None:
        """A split of one patient: every interval withdrawn, the per-class ones too."""
        self.uncertainty.withdraw()
        for entry in self.per_class.values():
            entry.uncertainty.withdraw()

    def to_dict(self) -> schema.Split:
        result: dict[str, Any] = {
            "n": self.n, "n_patients": self.n_patients, "counts": self.counts, "prevalence": self.prevalence,
            "auroc": self.auroc, "average_precision": self.average_precision, "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy, "sensitivity": self.sensitivity,
            "specificity": self.specificity, **self.calibration.to_dict(), **self.uncertainty.to_dict(),
            "per_class": {name: entry.to_dict() for name, entry in self.per_class.items()},
            "confusion_matrix": self.confusion_matrix.to_dict(), "reliability": self.reliability,
            "transfer_statistics": self.transfer_statistics,
        }
        if self.subgroups is not None:
            result["subgroups"] = {attribute: {group: entry.to_dict() for group, entry in groups.items()}
                                   for attribute, groups in self.subgroups.items()}
        return cast(schema.Split, result)  # built key by key: ece_positive only for two classes


@dataclass
class Gaps:
    """A group's figure minus the whole split's (``gap``) and minus the rest of the split's
    (``gap_rest``), each with its interval (``gap_ci``, ``gap_rest_ci``); None where undefined."""

    gap: dict[str, float | None] = field(default_factory=dict)
    gap_ci: dict[str, list[float] | None] = field(default_factory=dict)
    gap_rest: dict[str, float | None] = field(default_factory=dict)
    gap_rest_ci: dict[str, list[float] | None] = field(default_factory=dict)


@dataclass
class GroupEntry:
    """One group of an attribute: sizes, the positive class's ``prevalence`` (None for more than
    two classes), top-label ``ece``, AUROC, sensitivity and specificity (None where undefined),
    intervals, gaps and, for two classes and a known group, ``score_separation`` (how well the
    score tells the group's images from the others of the same class; 0.5: not at all). Left
    out of metrics.json while ``separation_scored`` is False."""

    n: int
    counts: dict[str, int]
    n_patients: int | None
    prevalence: float | None
    ece: float
    uncertainty: Uncertainty
    auroc: float | None = None
    sensitivity: float | None = None
    specificity: float | None = None
    gaps: Gaps = field(default_factory=Gaps)
    score_separation: float | None = None
    separation_scored: bool = False

    def figure(self, metric: str) -> float | None:
        """The group's value of ``metric`` (auroc, sensitivity, specificity, prevalence, ece)."""
        return getattr(self, metric)

    def to_dict(self) -> schema.Subgroup:
        u, gaps = self.uncertainty, self.gaps
        result = schema.Subgroup(n=self.n, counts=self.counts, n_patients=self.n_patients, prevalence=self.prevalence,
                                 ece=self.ece, na=u.na, ci=u.ci, ci_method=u.ci_method, ci_note=u.ci_note,
                                 gap=gaps.gap, gap_ci=gaps.gap_ci, gap_rest=gaps.gap_rest, gap_rest_ci=gaps.gap_rest_ci,
                                 auroc=self.auroc, sensitivity=self.sensitivity, specificity=self.specificity)
        if self.separation_scored:
            result["score_separation"] = self.score_separation
        return result


@dataclass
class TrainEntry:
    """The training split: only what the overfitting check needs (its AUROC, None where
    undefined, with the reason in ``na``) and its sizes."""

    n: int
    n_patients: int | None
    counts: dict[str, int]
    auroc: float | None
    na: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> schema.TrainSplit:
        return schema.TrainSplit(n=self.n, n_patients=self.n_patients, counts=self.counts, auroc=self.auroc,
                                 na=self.na)
