"""The subgroups' entries of a split: each group's figures with their intervals, its gaps to the
whole split and to the rest of it (paired intervals where images are on both sides), and for two
classes the score separation that reveals a possible shortcut."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from medxfer.pipeline.calibration.metrics import expected_calibration_error
from medxfer.pipeline.evaluation.checked import checked_interval, reported
from medxfer.pipeline.evaluation.entries import GroupEntry, SplitEntry, Uncertainty
from medxfer.pipeline.evaluation.resampled import BootstrapFigure, bootstrap_interval, group_ece_statistic
from medxfer.pipeline.evaluation.scored import ScoredSplit, patient_count, value
from medxfer.pipeline.evaluation.subgroups import group_order
from medxfer.pipeline.statistics.bootstrap import Resamples, bootstrap_values
from medxfer.pipeline.statistics.intervals import compare, logit_interval

SUBGROUP_METRICS = ("auroc", "sensitivity", "specificity", "ece")


def subgroup_entries(split: ScoredSplit, overall: SplitEntry, columns: Mapping[str, list[str]],
                     resamples: Resamples | None) -> dict[str, dict[str, GroupEntry]]:
    """The entry of every group of every attribute in ``columns`` (each image's group), groups in
    reading order (``subgroups.group_order``)."""
    report: dict[str, dict[str, GroupEntry]] = {}
    for attribute, column in columns.items():
        values = np.array(column, dtype=object)
        report[attribute] = {}
        for group in sorted(set(column), key=group_order):
            member = values == group
            rest = ~member & (values != "unknown") if group != "unknown" else ~member
            report[attribute][group] = _group_entry(split, overall, member, rest, resamples)
    return report


def _group_entry(split: ScoredSplit, overall: SplitEntry, member: np.ndarray, rest: np.ndarray,
                 resamples: Resamples | None) -> GroupEntry:
    """One group (the images ``member``; ``rest``, the images it is compared with)."""
    idx = np.flatnonzero(member)
    labels = split.labels[idx]
    na: dict[str, str] = {}
    if len(set(labels.tolist())) < len(split.classes):
        na["auroc"] = split.na_auroc(labels)
    na.update(split.na_rates(labels))
    entry = GroupEntry(
        n=len(idx), counts=split.counts(idx),
        n_patients=patient_count([split.patient_ids[i] for i in idx] if len(split.patient_ids) else (), len(idx)),
        prevalence=float(np.mean(labels == split.positive)) if split.positive is not None else None,
        ece=expected_calibration_error(labels, split.probabilities[idx]), uncertainty=Uncertainty(na=na),
    )
    for metric in ("auroc", "sensitivity", "specificity"):
        setattr(entry, metric, None if metric in na else value(split.groups.estimate(metric, member).value))
    for metric in (*SUBGROUP_METRICS, *(("prevalence",) if split.positive is not None else ())):
        if metric == "ece":
            continue
        entry.uncertainty.record(metric, checked_interval(split, metric, member, entry.figure(metric)))
        _gaps(split, entry, metric, member, rest, overall)
    entry.gaps.gap["ece"] = entry.ece - overall.calibration.ece
    entry.gaps.gap_ci["ece"] = entry.gaps.gap_rest["ece"] = entry.gaps.gap_rest_ci["ece"] = None
    if resamples is not None:
        draws = bootstrap_values(lambda i: group_ece_statistic(split, i), resamples, within=member)
        draws = draws or {BootstrapFigure("ece"): np.full(len(resamples.indices), np.nan)}
        interval, _ = bootstrap_interval(draws, BootstrapFigure("ece"), entry.ece, split.level)
        entry.uncertainty.record("ece", interval)
    else:
        entry.uncertainty.ci["ece"] = None
    return entry


def _gaps(split: ScoredSplit, entry: GroupEntry, metric: str, member: np.ndarray, rest: np.ndarray,
          overall: SplitEntry) -> None:
    """The group's ``metric`` minus the whole split's (``gap``) and minus the rest of the
    split's (``gap_rest``), each with its interval (patient-clustered, paired where images
    are on both sides)."""
    figure, gaps = entry.figure(metric), entry.gaps
    for key, other in (("gap", split.everything), ("gap_rest", rest)):
        interval_of = gaps.gap_ci if key == "gap" else gaps.gap_rest_ci
        if figure is None or not other.any():
            (gaps.gap if key == "gap" else gaps.gap_rest)[metric] = interval_of[metric] = None
            continue
        shares = split.groups.shares(metric)
        if shares is not None:
            # against the whole split, which holds the group: the whole's rate is the group's and
            # the other images' weighted by their counted images, so group - whole = (the others'
            # share) x (group - others), and that interval, so scaled, is the paired one
            others = ~member if key == "gap" else rest
            test = split.groups.test(metric, member, others, split.level, side="two-sided")
            if key == "gap" and test is not None:
                counted = shares[1]
                share = (others & counted).sum() / counted.sum()
                test = replace(test, difference=share * test.difference, low=share * test.low,
                               high=share * test.high)
        else:
            test = compare(split.estimate(metric, member), split.estimate(metric, other), split.patients,
                           level=split.level)
        if key == "gap":
            reference = overall.figure(metric)
            gaps.gap[metric] = None if reference is None else figure - reference
        else:
            gaps.gap_rest[metric] = None if test is None else test.difference
        # every figure here lies in [0, 1], so a difference lies in [-1, 1] (a t quantile of one
        # degree of freedom can reach beyond it)
        interval_of[metric] = None if test is None else [max(test.low, -1.0), min(test.high, 1.0)]


def score_separation(split: ScoredSplit, report: dict[str, dict[str, GroupEntry]],
                     columns: Mapping[str, list[str]]) -> None:
    """For two classes: how well the score of the positive class tells each group's images
    from the other images *of the same class* (the mean over classes of that AUROC; 0.5: not
    at all), with its interval, stored as ``score_separation`` in each known group's entry. A
    model that uses the group as a shortcut scores a group's images differently whatever their
    label."""
    if split.positive is None:
        return
    for attribute, column in columns.items():
        values = np.array(column, dtype=object)
        for group in [g for g in report[attribute] if g != "unknown"]:
            entry = report[attribute][group]
            estimate = split.groups.separation(values == group, values != "unknown")
            entry.score_separation, entry.separation_scored = value(estimate.value), True
            if entry.score_separation is None:
                entry.uncertainty.na["score_separation"] = "a class has no images in this group, or none outside it"
            entry.uncertainty.record("score_separation", reported(logit_interval(estimate, split.patients,
                                                                                  split.level)))
