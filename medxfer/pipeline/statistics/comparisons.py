"""Subgroup, confounder and shortcut checks as one family of tests, with the chance of any false
flag controlled.

One report compares dozens of things: each group's AUROC, sensitivity and specificity against the
rest of the split, each group's prevalence (is the attribute confounded with the label?), and
within each class whether the score tells a group's images from the others (a possible
shortcut). Flagging each at its own 5 % would flag something in most reports on pure noise. So
every comparison of a report is one hypothesis of one family, tested with the patient-clustered
t test of ``intervals.compare`` (the score test of ``intervals.compare_proportions`` for
proportions), and the family goes through Holm's step-down procedure: the probability that a report carries any false flag stays at
or below 5 % (strong control of the family-wise error, whatever the dependence between tests).
Holm over a max-statistic permutation: it needs no resampling (a report stays fast and the
suite can check the rate over hundreds of reports), and the tests are few enough once small
groups are left out that it loses little.

A group is tested only when it and the rest of the split each hold at least
``MIN_GROUP_PATIENTS`` patients and, for a metric, ``MIN_CLASS_PATIENTS`` patients of each
class the metric counts (both classes for the AUROC and the score separation, the positives for
sensitivity, the negatives for specificity); smaller groups are shown with their figures but
never flagged, because a t test on a handful of patients does not hold its error rate at the
levels Holm needs. Performance gaps are flagged only when the group is also at least
``MIN_FLAG_GAP`` worse, a difference of clinical consequence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from medxfer.pipeline.statistics.intervals import (
    Comparison,
    Estimate,
    auroc_estimate,
    average,
    compare,
    compare_proportions,
    constant,
    proportion_estimate,
)

MIN_GROUP_PATIENTS = 15
MIN_CLASS_PATIENTS = 8
MIN_EXPECTED_PATIENTS = 5  # prevalence tests: patients of the rarer class expected on each side
MIN_FLAG_GAP = 0.05
PERFORMANCE = ("auroc", "sensitivity", "specificity")


@dataclass(frozen=True)
class Hypothesis:
    """One comparison of the family: ``kind`` "performance" (a group's ``metric`` below the rest),
    "prevalence" (the share of the positive class differs from the rest's) or "separation"
    (within each class the score tells the group from the rest), its test, and after Holm's
    procedure ``adjusted_p`` and ``rejected``."""

    kind: str
    attribute: str
    group: str
    metric: str
    test: Comparison
    adjusted_p: float = float("nan")
    rejected: bool = False


class GroupScorer:
    """Estimates for any set of images of one split: ``labels`` (n,) class indices,
    ``predicted`` (n,), ``ranking`` (n, K) scores that order images by each class's probability,
    ``positive`` the positive class (None: more than two classes, macro averages) and
    ``patients`` (n,) integer codes."""

    def __init__(self, labels: np.ndarray, predicted: np.ndarray, ranking: np.ndarray, positive: int | None,
                 patients: np.ndarray) -> None:
        self.labels, self.predicted, self.ranking = labels, predicted, ranking
        self.positive, self.patients = positive, patients
        self.k = ranking.shape[1]

    def auroc(self, within: np.ndarray) -> Estimate:
        """The AUROC of the images ``within`` with its linearisation (``intervals.auroc_estimate``;
        the macro average of the classes' one-vs-rest AUROCs for more than two classes)."""
        if self.positive is not None:
            return auroc_estimate(self.labels == self.positive, self.ranking[:, self.positive], self.patients, within)
        return average([auroc_estimate(self.labels == c, self.ranking[:, c], self.patients, within)
                        for c in range(self.k)])

    def recall(self, c: int, within: np.ndarray) -> Estimate:
        """Share of class ``c``'s images (within) predicted as ``c``."""
        return proportion_estimate(self.predicted == c, within & (self.labels == c), self.patients)

    def true_negative_rate(self, c: int, within: np.ndarray) -> Estimate:
        """Share of the images of other classes (within) not predicted as ``c``."""
        return proportion_estimate(self.predicted != c, within & (self.labels != c), self.patients)

    def _present(self, within: np.ndarray) -> list[int]:
        return [c for c in range(self.k) if np.any(within & (self.labels == c))]

    def sensitivity(self, within: np.ndarray) -> Estimate:
        """The positive class's recall, or (more classes) the mean recall of the classes present."""
        if self.positive is not None:
            return self.recall(self.positive, within)
        return average([self.recall(c, within) for c in self._present(within)])

    def specificity(self, within: np.ndarray) -> Estimate:
        """The negative class's recall, or (more classes) the mean over the classes present of the
        share of the other classes' images not called that class (undefined with one class only)."""
        if self.positive is not None:
            return self.recall(1 - self.positive, within)
        present = self._present(within)
        return average([self.true_negative_rate(c, within) for c in present]) if len(present) > 1 else average([])

    def prevalence(self, within: np.ndarray) -> Estimate:
        return proportion_estimate(self.labels == self.positive, within, self.patients)

    def separation(self, member: np.ndarray, known: np.ndarray | None = None) -> Estimate:
        """The mean over the two classes of the AUROC with which the positive class's score tells
        the images of ``member`` from the other images of the same class (0.5: not at all), among
        the images ``known`` (those whose group is known; default all)."""
        score = self.ranking[:, self.positive]
        known = np.ones(len(member), bool) if known is None else known
        return average([auroc_estimate(member, score, self.patients, known & (self.labels == c)) for c in (0, 1)])

    def estimate(self, metric: str, within: np.ndarray) -> Estimate:
        return getattr(self, metric)(within)

    def shares(self, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(success, counted): the images a figure that is a share of images counts as successes,
        and those it counts (the prevalence; a two-class sensitivity or specificity); None for a
        figure that is not such a share."""
        if self.positive is None:
            return None
        if metric == "prevalence":
            return self.labels == self.positive, np.ones(len(self.labels), bool)
        if metric in ("sensitivity", "specificity"):
            c = self.positive if metric == "sensitivity" else 1 - self.positive
            return self.predicted == c, self.labels == c
        return None

    def test(self, metric: str, member: np.ndarray, rest: np.ndarray, level: float,
             side: str = "less") -> Comparison | None:
        """``metric`` of ``member`` against ``rest`` (by default one-sided: is the group's lower?):
        the score test for a share of images (``shares``), else ``intervals.compare``."""
        shares = self.shares(metric)
        if shares is not None:
            success, counted = shares
            return compare_proportions(success, member & counted, rest & counted, self.patients, level=level,
                                       side=side)
        return compare(self.estimate(metric, member), self.estimate(metric, rest), self.patients, level=level,
                       side=side)

    def patients_of(self, mask: np.ndarray) -> int:
        return int(np.count_nonzero(np.bincount(self.patients[mask])))

    def large_enough(self, metric: str, within: np.ndarray) -> bool:
        """Whether the images ``within`` hold enough patients, and of each class ``metric`` counts
        (for the prevalence, enough patients of the rarer class *expected* under no difference: a
        group of 40 patients at a prevalence of 5 % expects 2 positive patients, too few to tell
        a group without any from chance)."""
        patients = self.patients_of(within)
        if patients < MIN_GROUP_PATIENTS:
            return False
        if metric == "prevalence":
            share = float(np.mean(self.labels == self.positive))
            return patients * min(share, 1 - share) >= MIN_EXPECTED_PATIENTS
        if self.positive is None:
            counted = range(self.k)
        else:
            counted = {"sensitivity": [self.positive], "specificity": [1 - self.positive]}.get(metric, [0, 1])
        return all(self.patients_of(within & (self.labels == c)) >= MIN_CLASS_PATIENTS for c in counted)


def family(scorer: GroupScorer, groups: Mapping[str, Sequence[str]], level: float) -> list[Hypothesis]:
    """Every comparison of a split that is large enough to test (see the module docstring), in a
    fixed order: attribute by attribute, group by group, performance then prevalence then
    separation. An attribute of two groups gets its prevalence and separation tests once (for one
    group they are the other's, mirrored)."""
    hypotheses: list[Hypothesis] = []
    n = len(scorer.labels)
    for attribute, column in groups.items():
        values = np.asarray(column, dtype=object)
        known = [g for g in dict.fromkeys(column) if g != "unknown"]
        known.sort()
        for number, group in enumerate(known):
            member = values == group
            rest = ~member & (values != "unknown")
            for metric in PERFORMANCE:
                if scorer.large_enough(metric, member) and scorer.large_enough(metric, rest):
                    test = scorer.test(metric, member, rest, level)
                    if test is not None:
                        hypotheses.append(Hypothesis("performance", attribute, group, metric, test))
            if scorer.positive is None or (len(known) == 2 and number == 1):
                continue
            if scorer.large_enough("prevalence", member) and scorer.large_enough("prevalence", rest):
                test = scorer.test("prevalence", member, rest, level, side="two-sided")
                if test is not None:
                    hypotheses.append(Hypothesis("prevalence", attribute, group, "prevalence", test))
            if scorer.large_enough("auroc", member) and scorer.large_enough("auroc", rest):
                test = compare(scorer.separation(member, member | rest), constant(0.5, n), scorer.patients,
                               level=level)
                if test is not None:
                    hypotheses.append(Hypothesis("separation", attribute, group, "score_separation", test))
    return hypotheses


def holm_adjusted(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values: sorted ascending, the i-th (from 0) of m is multiplied
    by m - i, made non-decreasing, capped at 1. Written out rather than taken from statsmodels'
    ``multipletests``, which gives the same values but costs about 60 ms a call in garbage
    collection, and the suite's simulations call it hundreds of times."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order])
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


def holm(hypotheses: list[Hypothesis], alpha: float) -> list[Hypothesis]:
    """The hypotheses with Holm-adjusted p-values, rejected where the adjusted p-value is below
    ``alpha`` (and, for a performance gap, the group is at least ``MIN_FLAG_GAP`` worse)."""
    if not hypotheses:
        return []
    adjusted = holm_adjusted([h.test.p_value for h in hypotheses])
    rejected = adjusted < alpha
    result = []
    for h, reject, p in zip(hypotheses, rejected, adjusted, strict=True):
        material = h.kind != "performance" or h.test.difference <= -MIN_FLAG_GAP
        result.append(Hypothesis(h.kind, h.attribute, h.group, h.metric, h.test, float(p), bool(reject and material)))
    return result
