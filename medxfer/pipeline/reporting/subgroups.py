"""The report's subgroup section: one table per attribute (each group's figures with their gaps
to the whole split and to the rest of it), the attribute-wide flags above their table, and the
comparisons of the family that came nearest a flag."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from medxfer.pipeline.evaluation.schema import Bias, BiasTest, Metrics, Split, Subgroup
from medxfer.pipeline.evaluation.wording import interval, missing, number, p_value, percent, points, signed
from medxfer.pipeline.reporting.cells import Cell, metric_cell, patients, scored_splits, unbroken
from medxfer.pipeline.reporting.summary import flag_kind
from medxfer.pipeline.statistics.comparisons import MIN_CLASS_PATIENTS, MIN_FLAG_GAP, MIN_GROUP_PATIENTS

SUBGROUP_METRICS = {"auroc": "AUROC", "sensitivity": "Sensitivity", "specificity": "Specificity", "ece": "ECE"}
CLOSEST = 5  # the comparisons nearest a flag, shown with their p-values
NAMES_OF_TESTS = {"auroc": "AUROC", "sensitivity": "sensitivity", "specificity": "specificity"}
TEST_KINDS = {"prevalence": "prevalence differs from the rest", "separation": "score shift within class"}


def _gap_line(group: Subgroup, metric: str) -> str:
    """"vs all +0.012 (−0.05 to 0.07); vs rest +0.020 (...)": the group against the whole split
    and against the rest of it."""
    parts = []
    for key, label in (("gap", "vs all"), ("gap_rest", "vs rest")):
        gap = group[key].get(metric)
        if missing(gap):
            continue
        bounds = interval(group[f"{key}_ci"].get(metric))
        parts.append(f"{label} {signed(gap)}" + (f" ({unbroken(bounds)})" if bounds else ""))
    return "; ".join(parts)


def _prevalence_cell(group: Subgroup) -> Cell:
    """The share of the positive class, and its gap to the whole split in percentage points when recorded."""
    gap = group["gap"].get("prevalence")
    if missing(group["prevalence"]) or missing(gap):
        return Cell(percent(group["prevalence"]))
    bounds = group["gap_ci"].get("prevalence")
    shown = interval(None if bounds is None else [100 * bound for bound in bounds], 0)
    return Cell(percent(group["prevalence"]),
                detail=f"gap {unbroken(points(gap))}" + (f" ({unbroken(shown)})" if shown else ""))


def _cells(block: Split | Subgroup, flagged: set[str], binary: bool, *, gaps: bool) -> list[Cell]:
    """A row's figures with their intervals; a group's gap to the overall value underneath (none
    when n/a); for two classes, the score's separation of the group within each class (a
    shortcut's sign)."""
    cells = []
    for metric in SUBGROUP_METRICS:
        cell = metric_cell(block, metric, flag=metric in flagged)
        cells.append(replace(cell, detail=_gap_line(block, metric)) if gaps and not missing(block[metric]) else cell)
    if binary:
        cells.append(metric_cell(block, "score_separation") if "score_separation" in block
                     else Cell("n/a", note="not computed for this group"))
    return cells


def _group_row(name: str, group: Subgroup, flagged: set[str], binary: bool) -> dict[str, Any]:
    return {"group": name, "n": number(group["n"]), "patients": patients(group["n_patients"]),
            "prevalence": _prevalence_cell(group), "cells": _cells(group, flagged, binary, gaps=True),
            "flag": bool(flagged), "overall": False}


def _overall_row(metrics: Metrics, split: Split) -> dict[str, Any]:
    positive = metrics["positive_class"]
    counts, n = split["counts"], split["n"]
    prevalence = counts.get(positive) / n if positive in counts and n else None
    cells = _cells(split, set(), positive is not None, gaps=False)
    if positive is not None:
        cells[-1] = Cell("0.5 by definition")
    return {"group": "all images", "n": number(n), "patients": patients(split["n_patients"]),
            "prevalence": Cell(percent(prevalence)), "cells": cells, "flag": False, "overall": True}


def _subgroup_tables(metrics: Metrics, split: str) -> list[dict[str, Any]]:
    block = metrics[split]
    flags = [f for f in metrics["bias"]["flags"] if f["split"] == split]
    tables = []
    for attribute, groups in block["subgroups"].items():
        rows = [_overall_row(metrics, block)]
        for name, group in groups.items():
            flagged = {f["metric"] for f in flags if f["attribute"] == attribute and f["group"] == name}
            rows.append(_group_row(name, group, flagged, metrics["positive_class"] is not None))
        notes = [{"kind": flag_kind(f), "sentence": f["sentence"]}
                 for f in flags if f["attribute"] == attribute and f["group"] is None]
        tables.append({"attribute": attribute, "rows": rows, "notes": notes})
    return tables


def bias_section(metrics: Metrics) -> dict[str, Any]:
    """The subgroup section: the tables of each scored split, the family's size and guarantee,
    the flags counted, the comparisons nearest a flag and the attributes not checked."""
    bias: Bias = metrics["bias"]
    binary = metrics["positive_class"] is not None
    return {
        "prevalence": binary,  # null by definition for more than two classes
        "headers": [*SUBGROUP_METRICS.values(), *(["Score separation within class"] if binary else [])],
        "tables": {split: _subgroup_tables(metrics, split) for split in scored_splits(metrics)},
        "skipped": [f"{name}: {reason}" for name, reason in bias["skipped"].items()],
        "comparisons": number(bias["comparisons"]),
        "guarantee": bias["guarantee"],
        "closest": _closest_tests(bias["tests"]),
        "group_flags": sum(f["group"] is not None for f in bias["flags"]),
        "confounders": sum(f["group"] is None for f in bias["flags"]),
        "min_gap": number(MIN_FLAG_GAP, 2),
        "min_patients": MIN_GROUP_PATIENTS,
        "min_class_patients": MIN_CLASS_PATIENTS,
    }


def _closest_tests(tests: Sequence[BiasTest]) -> list[dict[str, str]]:
    """The comparisons with the smallest p-values, before and after Holm's adjustment, so that a
    reader sees what came near a flag (and what a single, uncorrected test would have called
    significant)."""
    rows = []
    for test in sorted(tests, key=lambda t: t["p_value"])[:CLOSEST]:
        difference = test["difference"]
        if test["kind"] == "performance":
            what, shown = NAMES_OF_TESTS[test["metric"]] + " below the rest", signed(difference)
        elif test["kind"] == "prevalence":
            what, shown = TEST_KINDS["prevalence"], points(difference)
        else:
            what, shown = TEST_KINDS["separation"], f"AUROC {number(difference + 0.5)}"
        rows.append({"group": f"{test['attribute']} {test['group']}", "what": what, "difference": shown,
                     "p": p_value(test["p_value"]), "adjusted": p_value(test["adjusted_p"]),
                     "flagged": "yes" if test["flagged"] else "no"})
    return rows
