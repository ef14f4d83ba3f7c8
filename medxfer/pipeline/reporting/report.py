"""The evaluation report (``report.html``) and the model card (``model_card.md``) of a run.

Both present the ``metrics`` dict that the evaluation writes to ``metrics.json`` (its structure is
the contract; this module computes no metric, it formats them): the HTML report for a reviewer,
with a plain-language summary and its flags first, then every table and figure; the model card
as a short Markdown page that travels with the weights.

Presentation rules, everywhere: a missing value reads "n/a" followed by the reason recorded in
the sibling ``na`` mapping, never "None" or "nan"; metrics show 3 decimals, intervals an en dash.
The report is one self-contained file (inline CSS, figures embedded as base64 PNG, no script, no
external link) so it can be mailed or archived, and it is rendered from a Jinja2 template with
autoescaping on, because group names, class names and the configuration are user data.
Nothing here shows file paths or patient identifiers: the inputs are aggregates and score
arrays, and the path-valued configuration keys are withheld from the reproducibility block.
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from jinja2 import Environment, PackageLoader, StrictUndefined

from medxfer.files import atomic_write_text
from medxfer.pipeline.evaluation.evaluator import SplitScores
from medxfer.pipeline.reporting import figures
from medxfer.pipeline.statistics.comparisons import MIN_CLASS_PATIENTS, MIN_FLAG_GAP, MIN_GROUP_PATIENTS

REPORT_FILE, MODEL_CARD_FILE = "report.html", "model_card.md"
SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}
OVERALL_METRICS = {
    "auroc": "AUROC",
    "average_precision": "Average precision",
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
}
PER_CLASS_METRICS = {
    "precision": "Precision",
    "recall": "Recall (sensitivity)",
    "specificity": "Specificity",
    "f1": "F1",
    "auroc": "AUROC",
    "average_precision": "Average precision",
}
CALIBRATION_METRICS = {
    "ece": "Top-label ECE (15 equal-width bins)",
    "ece_positive": "Positive-class ECE (P(positive) in 15 bins)",
    "adaptive_ece": "Adaptive ECE (15 equal-mass bins)",
    "mce": "MCE (largest bin gap)",
    "brier": "Brier score",
    "nll": "NLL (nats per image)",
}
SUBGROUP_METRICS = {"auroc": "AUROC", "sensitivity": "Sensitivity", "specificity": "Specificity", "ece": "ECE"}
CALIBRATION_METHODS = {"temperature": "temperature scaling", "vector": "vector scaling", "none": "no calibration"}
# Configuration keys holding paths on the training machine: shown as withheld (the data hash identifies the data).
PATH_KEYS = {"data": "(path withheld; see the data hash)", "target_data": "(path withheld)", "out": "(path withheld)"}
NAMED_WEIGHTS = ("imagenet", "random")
MINUS, EN_DASH, NBSP, WORD_JOINER = "\u2212", "\u2013", "\u00a0", "\u2060"
CSS_PX_PER_INCH = 96

_TEMPLATES = Environment(
    loader=PackageLoader("medxfer.pipeline.reporting", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


@dataclass(frozen=True)
class Cell:
    """One table cell: the formatted value, an optional visible note (an n/a reason, a missing
    interval's reason), an optional second line (the gap to the overall value) and a flag."""

    text: str
    note: str = ""
    detail: str = ""
    flag: bool = False


# --- numbers as text ---------------------------------------------------------------------------


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def fmt(value: Any, digits: int = 3) -> str:
    """A metric with ``digits`` decimals (a minus sign, not a hyphen), a whole number as is, a
    missing or non-finite value as "n/a"."""
    if _missing(value):
        return "n/a"
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return f"{int(value):,}"
    return f"{float(value):.{digits}f}".replace("-", MINUS)


def fmt_signed(value: Any, digits: int = 3) -> str:
    """A difference with its sign always shown: +0.012, −0.150."""
    return "n/a" if _missing(value) else f"{float(value):+.{digits}f}".replace("-", MINUS)


def fmt_interval(interval: Sequence[Any] | None, digits: int = 3) -> str | None:
    """"0.801–0.912"; "−0.250 to −0.050" when a bound is negative (an en dash between minus signs
    misreads); None when there is no interval."""
    if interval is None or any(_missing(bound) for bound in interval):
        return None
    low, high = (float(bound) for bound in interval)
    if low < 0 or high < 0:
        return f"{fmt(low, digits)} to {fmt(high, digits)}"
    return f"{fmt(low, digits)}{EN_DASH}{fmt(high, digits)}"


def fmt_percent(share: Any) -> str:
    return "n/a" if _missing(share) else f"{100 * float(share):.0f} %"


def metric_cell(block: Mapping[str, Any], key: str, *, ci_key: str | None = None, flag: bool = False) -> Cell:
    """The value of ``block[key]`` with its interval ``block["ci"][ci_key or key]``: "0.861
    (0.801–0.912)"; "n/a" with the reason from ``block["na"]`` when the value is missing; the
    value with "no interval: reason" when only the interval is."""
    na = block.get("na") or {}
    value = block.get(key)
    if _missing(value):
        return Cell("n/a", note=na.get(key, "not computed"), flag=flag)
    ci_key = ci_key or key
    interval = fmt_interval((block.get("ci") or {}).get(ci_key))
    if interval is not None:
        note = (block.get("ci_note") or {}).get(ci_key, "")
        return Cell(f"{fmt(value)} ({interval}{', approx.' if note else ''})", note=note, flag=flag)
    reason = na.get(f"ci.{ci_key}")
    return Cell(fmt(value), note=f"no interval: {reason}" if reason else "", flag=flag)


def cell_text(cell: Cell) -> str:
    """A cell as one line of plain text, for sentences and Markdown ("approx." in the text stands
    for its note)."""
    return f"{cell.text} ({cell.note})" if cell.note and not cell.note.startswith("approximate") else cell.text


# --- the summary -------------------------------------------------------------------------------


def _split_label(metrics: Mapping[str, Any], split: str) -> str:
    """"test set"; for an external validation "external test set (DATA)" and "validation set (training run)"."""
    if metrics.get("kind") == "external validation" and split in ("val", "test"):
        if split == "val":
            return "validation set (training run)"
        return f"external test set ({metrics.get('data_name', 'n/a')})"
    return f"{SPLIT_NAMES.get(split, split)} set"


def _patients(count: Any) -> str:
    """"1 patient", "120 patients"; "" when unknown."""
    return "" if _missing(count) else f"{fmt(count)} patient{'' if count == 1 else 's'}"


def _population(split: Mapping[str, Any]) -> str:
    patients = _patients(split.get("n_patients"))
    return f"{fmt(split.get('n'))} images" + (f" from {patients}" if patients else "")


def held_out(metrics: Mapping[str, Any]) -> str:
    """The split the headline figures come from: "test", or "val" when there is no test split
    (a manifest whose split column has none)."""
    return "test" if "test" in metrics else "val"


def _test_word(metrics: Mapping[str, Any]) -> str:
    if held_out(metrics) == "val":
        return "Validation (no test split; optimistic, see below)"
    return "External test" if metrics.get("kind") == "external validation" else "Test"


def _headline(metrics: Mapping[str, Any]) -> str:
    test = metrics[held_out(metrics)]
    auroc = cell_text(metric_cell(test, "auroc"))
    positive = metrics.get("positive_class")
    if positive is None:
        what = "(macro average of each class against the rest)"
    else:
        what = f"for {positive} against {', '.join(c for c in metrics['classes'] if c != positive)}"
    return f"{_test_word(metrics)} AUROC {what}: {auroc}, on {_population(test)}."


def threshold_rule(metrics: Mapping[str, Any]) -> str:
    """How predictions become classes, in words: the validated threshold and how it was chosen."""
    threshold = metrics.get("threshold") or {}
    method, value, positive = threshold.get("method"), threshold.get("value"), metrics.get("positive_class")
    if method == "argmax" or positive is None or _missing(value):
        return "the most probable class of each image (no threshold is tuned)"
    if method == "youden":
        how = "by Youden's J (the largest sensitivity + specificity − 1)"
    else:
        how = f"for a target sensitivity of {fmt(threshold.get('target_sensitivity'), 2)}"
    chosen_on = SPLIT_NAMES.get(threshold.get("chosen_on", "val"), "validation")
    if threshold.get("note"):
        return f"a threshold of {fmt(value)} on the calibrated probability of {positive} ({threshold['note']})"
    return (
        f"a threshold of {fmt(value)} on the calibrated probability of {positive}, chosen on the {chosen_on} "
        f"set {how} and applied unchanged to the test set"
    )


def _operating_point(metrics: Mapping[str, Any]) -> str:
    test = metrics[held_out(metrics)]
    sensitivity = cell_text(metric_cell(test, "sensitivity"))
    specificity = cell_text(metric_cell(test, "specificity"))
    averaged = " (macro averages over the classes)" if metrics.get("positive_class") is None else ""
    rule = threshold_rule(metrics)
    return f"{_test_word(metrics)} sensitivity {sensitivity} and specificity {specificity}{averaged}, with {rule}."


def calibration_method(metrics: Mapping[str, Any]) -> str:
    """"temperature scaling (T = 1.70)", "vector scaling" or "no calibration"."""
    calibration = metrics.get("calibration") or {}
    method = calibration.get("method", "none")
    name = CALIBRATION_METHODS.get(method, str(method))
    if method == "temperature" and not _missing(calibration.get("temperature")):
        name += f" (T = {fmt(calibration['temperature'], 2)})"
    return name


def _calibration_sentence(metrics: Mapping[str, Any]) -> str:
    test, where = metrics[held_out(metrics)], _split_label(metrics, held_out(metrics))
    before = cell_text(metric_cell(test, "ece_uncalibrated"))
    after = cell_text(metric_cell(test, "ece"))
    gloss = ("Top-label ECE is the average gap between the confidence in the predicted class and how often it "
             "is right; 0 is perfect.")
    positive = metrics.get("positive_class")
    if positive is not None and not _missing(test.get("ece_positive")):
        gloss += (f" The positive-class ECE ({cell_text(metric_cell(test, 'ece_positive'))} after, "
                  f"{cell_text(metric_cell(test, 'ece_positive_uncalibrated'))} before) is the same gap for P({positive}) "
                  "itself, as torchmetrics and netcal report it; it is usually the larger of the two.")
    if (metrics.get("calibration") or {}).get("method", "none") == "none":
        return f"Calibration on the {where}: top-label ECE {after}; no calibration was applied. {gloss}"
    fitted = (metrics.get("calibration") or {}).get("n")
    return (
        f"Calibration on the {where}: top-label ECE {before} before, {after} after {calibration_method(metrics)}, "
        f"fitted on the validation set only (n = {fmt(fitted)}). {gloss}"
    )


def _flag_sentences(metrics: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every flag as (kind, sentence) in reading order: a model that does not transfer first,
    then overfitting, bias flags (test first, whole attributes before single groups), warnings."""
    transfer = list((metrics.get("transfer") or {}).get("warnings") or [])
    sentences = []  # the transfer warnings head the summary on their own (summary()["transfer"])
    overfitting = metrics.get("overfitting") or {}
    if overfitting.get("flag"):
        sentences.append(("Overfitting", overfitting.get("sentence") or "The train-validation AUROC gap is large."))
    bias_flags = sorted((metrics.get("bias") or {}).get("flags") or [],
                        key=lambda f: (f.get("split") != "test", f.get("group") is not None))
    for flag in bias_flags:
        where = "" if flag.get("split") == "test" else f" ({_split_label(metrics, flag.get('split', 'val'))})"
        sentences.append((_flag_kind(flag), f"{flag['sentence']}{where}"))
    sentences.extend(("Warning", warning) for warning in metrics.get("warnings") or [] if warning not in transfer)
    return sentences


def _transfer_boxes(metrics: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The transfer warnings as (label, sentence), to head the summary."""
    transfer = metrics.get("transfer") or {}
    warnings = list(transfer.get("warnings") or [])
    kinds = list(transfer.get("kinds") or ["does not transfer"] * len(warnings))
    labels = {"not shown better than chance": "Not shown to work here", "does not transfer": "Does not transfer"}
    return [(labels.get(kind, "Does not transfer"), warning) for kind, warning in zip(kinds, warnings, strict=True)]


FLAG_KINDS = {"gap": "Subgroup gap", "confounder": "Confounder", "shortcut": "Possible shortcut",
              "score shift": "Score shift"}


def _flag_kind(flag: Mapping[str, Any]) -> str:
    """The label of a bias flag's box: one group's gap, or a whole attribute that may stand in for
    the label (a confounder, a possible shortcut) or that the scores follow (a score shift)."""
    return FLAG_KINDS.get(flag.get("kind"), "Subgroup gap" if flag.get("group") is not None else "Confounder")


def _family_error(bias: Mapping[str, Any]) -> str:
    """"5 %": the chance of any false flag the report's control allows (1 minus the level)."""
    return f"{100 * float(bias.get('family_wise_error', 0.05)):g} %"


def _no_flag_line(metrics: Mapping[str, Any]) -> str:
    bias = metrics.get("bias") or {}
    comparisons = bias.get("comparisons")
    tested = "" if _missing(comparisons) else (f" in {fmt(comparisons)} subgroup comparisons (Holm, at most a "
                                               f"{_family_error(bias)} chance of a false flag)")
    return f"No flags: no overfitting flag, no subgroup flagged{tested}, no confounder, no warnings."


def bias_not_checked(metrics: Mapping[str, Any]) -> str | None:
    """Why the subgroup check tested nothing, or None when it ran: a report without flags must
    not read as "no bias found" when nothing was tested."""
    bias = metrics.get("bias")
    if not bias:
        return "there is no held-out split to check"
    if bias.get("flags") or bias.get("comparisons"):
        return None
    if not bias.get("attributes"):
        return "no subgroup attribute (sex, age, site, manufacturer, view or a named manifest column) is recorded"
    return (f"no group and the rest of the split both hold {MIN_GROUP_PATIENTS} or more patients, and "
            f"{MIN_CLASS_PATIENTS} or more patients of each class a metric counts")


def summary(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The plain-language summary: three key sentences, the flag sentences, and the line shown
    when there is no flag."""
    return {
        "transfer": _transfer_boxes(metrics),
        "points": [_headline(metrics), _operating_point(metrics), _calibration_sentence(metrics)],
        "flags": _flag_sentences(metrics),
        "no_flags": _no_flag_line(metrics),
        "not_checked": bias_not_checked(metrics),
    }


# --- the sections ------------------------------------------------------------------------------


def _splits(metrics: Mapping[str, Any]) -> list[str]:
    return [split for split in ("val", "test") if split in metrics]


def _overall_table(metrics: Mapping[str, Any]) -> dict[str, Any]:
    splits = _splits(metrics)
    rows = [
        {"label": label, "cells": [metric_cell(metrics[s], key) for s in splits]}
        for key, label in OVERALL_METRICS.items()
    ]
    headers = [f"{_split_label(metrics, s)}, n = {fmt(metrics[s].get('n'))}" for s in splits]
    return {"headers": headers, "rows": rows}


def _per_class_table(metrics: Mapping[str, Any]) -> dict[str, Any]:
    per_class = metrics[held_out(metrics)].get("per_class") or {}
    rows = []
    for name, block in per_class.items():
        cells = [metric_cell(block, key) for key in PER_CLASS_METRICS]
        rows.append({"label": name, "cells": cells, "support": fmt(block.get("support"))})
    return {"headers": list(PER_CLASS_METRICS.values()), "rows": rows}


def _calibration_table(metrics: Mapping[str, Any]) -> dict[str, Any]:
    splits = _splits(metrics)
    headers = [_split_label(metrics, s) for s in splits]
    rows = []
    for key, label in CALIBRATION_METRICS.items():
        if key == "ece_positive" and metrics.get("positive_class") is None:
            continue  # one class's probability: two-class models only
        cells = []
        for split in splits:
            cells.append(metric_cell(metrics[split], f"{key}_uncalibrated"))
            cells.append(metric_cell(metrics[split], key))
        rows.append({"label": label, "cells": cells})
    return {"headers": headers, "rows": rows}


def _calibration_text(metrics: Mapping[str, Any]) -> dict[str, Any]:
    calibration = metrics.get("calibration") or {}
    method = calibration.get("method", "none")
    parameters = []
    if method == "temperature":
        parameters.append("The logits are divided by T before the softmax; the predicted class does not change.")
    elif method == "vector":
        for name in ("scale", "bias"):
            values = calibration.get(name) or []
            parameters.append(f"{name.capitalize()} per class: " + ", ".join(fmt(v) for v in values) + ".")
    fitted_on = SPLIT_NAMES.get(calibration.get("fitted_on", "val"), "validation")
    fitted = f"fitted on the {fitted_on} set only (n = {fmt(calibration.get('n'))})" if method != "none" else ""
    return {"method": calibration_method(metrics), "parameters": parameters, "fitted": fitted,
            "intervals": _calibration_intervals(metrics)}


def _scored_before(metrics: Mapping[str, Any]) -> str:
    """When the network changed after the figures were scored (``scored_before``: AdaBN to the
    target site), which figures that concerns: a training run's validation and test splits, or,
    in an external validation, only the validation figures carried from the run (this set was
    scored with the network as it was saved); "" when nothing changed."""
    change = metrics.get("scored_before")
    if not change:
        return ""
    if metrics.get("kind") == "external validation":
        return (f"The validation figures, carried from the training run, were scored before {change}; this set was "
                "scored with the network as saved, after it.")
    return f"Validation and test were scored before {change}."


def _calibration_intervals(metrics: Mapping[str, Any]) -> str:
    """Which cells of the calibration table carry an interval, when only some "after" cells do
    (the usual case: ECE and Brier score), so that a bare "before" value does not read as an
    omission; "" otherwise."""
    ci = metrics[held_out(metrics)].get("ci") or {}
    if any(ci.get(f"{key}_uncalibrated") is not None for key in CALIBRATION_METRICS):
        return ""
    after = [_in_sentence(label.split(" (")[0]) for key, label in CALIBRATION_METRICS.items() if ci.get(key) is not None]
    if not after or len(after) == len(CALIBRATION_METRICS):
        return ""
    named = " and ".join(after) if len(after) < 3 else ", ".join(after[:-1]) + " and " + after[-1]
    return (f"Only the calibrated {named} carry a 95 % interval (the ECEs' marked approximate); the other cells, "
            "including every \"before\" value, are point estimates.")


def _in_sentence(label: str) -> str:
    """A table label inside a sentence: "Top-label ECE" -> "top-label ECE"; names and acronyms
    ("Brier score", "NLL") unchanged."""
    first = label.split()[0]
    return label if first.isupper() or first == "Brier" else label[0].lower() + label[1:]


def _overfitting(metrics: Mapping[str, Any]) -> dict[str, Any]:
    overfitting = metrics.get("overfitting") or {}
    train, val = metrics.get("train") or {}, metrics.get("val") or {}
    gap = overfitting.get("train_val_auroc_gap")
    return {
        "flag": bool(overfitting.get("flag")),
        "sentence": overfitting.get("sentence") or "",
        "train_auroc": cell_text(metric_cell(train, "auroc")) if train else "n/a (no training split in these metrics)",
        "val_auroc": cell_text(metric_cell(val, "auroc")) if val else "n/a",
        "gap": "n/a" if _missing(gap) else f"{fmt_signed(gap)} (flagged above {fmt(overfitting.get('limit'))})",
        "epoch": _epoch_text(overfitting.get("best_epoch", metrics.get("best_epoch")),
                             overfitting.get("epochs_run", metrics.get("epochs_run"))),
    }


def _epoch_text(best: Any, run: Any) -> str:
    if _missing(best):
        return "n/a (not a training run)"
    return f"epoch {fmt(best)}" + ("" if _missing(run) else f" of {fmt(run)} run")


def _gap_line(group: Mapping[str, Any], metric: str) -> str:
    """"vs all +0.012 (−0.05 to 0.07); vs rest +0.020 (...)": the group against the whole split
    and against the rest of it."""
    parts = []
    for key, label in (("gap", "vs all"), ("gap_rest", "vs rest")):
        gap = (group.get(key) or {}).get(metric)
        if _missing(gap):
            continue
        interval = fmt_interval((group.get(f"{key}_ci") or {}).get(metric))
        parts.append(f"{label} {fmt_signed(gap)}" + (f" ({_unbroken(interval)})" if interval else ""))
    return "; ".join(parts)


def _subgroup_cell(group: Mapping[str, Any], metric: str, flagged: set[str]) -> Cell:
    """A group's value and interval, its gap to the overall value underneath (none when n/a)."""
    cell = metric_cell(group, metric, flag=metric in flagged)
    return cell if _missing(group.get(metric)) else replace(cell, detail=_gap_line(group, metric))


def _unbroken(text: str) -> str:
    """``text`` with no-break spaces, and a word joiner after each en dash (a browser may break a
    line after an en dash), so that a wrapped line breaks before an interval, not inside it."""
    return text.replace(" ", NBSP).replace(EN_DASH, EN_DASH + WORD_JOINER)


def _prevalence_cell(group: Mapping[str, Any]) -> Cell:
    """The share of the positive class, and its gap to the whole split in percentage points when recorded."""
    gap = (group.get("gap") or {}).get("prevalence")
    if _missing(group.get("prevalence")) or _missing(gap):
        return Cell(fmt_percent(group.get("prevalence")))
    interval = (group.get("gap_ci") or {}).get("prevalence")
    points = fmt_interval(None if interval is None else [100 * bound for bound in interval], 0)
    return Cell(fmt_percent(group["prevalence"]),
                detail=f"gap {_unbroken(_points(gap))}" + (f" ({_unbroken(points)})" if points else ""))


def _points(share: float) -> str:
    """A difference of shares in percentage points: "+17 points", "−1 point"."""
    text = fmt_signed(100 * share, 0)
    return f"{text} point{'' if text.lstrip('+' + MINUS) == '1' else 's'}"


def _subgroup_row(name: str, group: Mapping[str, Any], flagged: set[str], binary: bool) -> dict[str, Any]:
    cells = [_subgroup_cell(group, metric, flagged) for metric in SUBGROUP_METRICS]
    if binary:  # the score's separation of this group within each class (a shortcut's sign)
        cells.append(metric_cell(group, "score_separation") if "score_separation" in group
                     else Cell("n/a", note="not computed for this group"))
    return {"group": name, "n": fmt(group.get("n")), "patients": _patients(group.get("n_patients")),
            "prevalence": _prevalence_cell(group), "cells": cells, "flag": bool(flagged), "overall": False}


def _overall_row(metrics: Mapping[str, Any], split: Mapping[str, Any]) -> dict[str, Any]:
    positive = metrics.get("positive_class")
    counts, n = split.get("counts") or {}, split.get("n")
    prevalence = counts.get(positive) / n if positive in counts and n else None
    row = _subgroup_row("all images", split, set(), positive is not None)
    if positive is not None:
        row["cells"][-1] = Cell("0.5 by definition")
    return {**row, "prevalence": Cell(fmt_percent(prevalence)), "overall": True}


def _subgroup_tables(metrics: Mapping[str, Any], split: str) -> list[dict[str, Any]]:
    block = metrics[split]
    flags = [f for f in (metrics.get("bias") or {}).get("flags") or [] if f.get("split") == split]
    tables = []
    for attribute, groups in (block.get("subgroups") or {}).items():
        rows = [_overall_row(metrics, block)]
        for name, group in groups.items():
            flagged = {f["metric"] for f in flags if f["attribute"] == attribute and f["group"] == name}
            rows.append(_subgroup_row(name, group, flagged, metrics.get("positive_class") is not None))
        notes = [{"kind": _flag_kind(f), "sentence": f["sentence"]}
                 for f in flags if f["attribute"] == attribute and f.get("group") is None]
        tables.append({"attribute": attribute, "rows": rows, "notes": notes})
    return tables


def _bias(metrics: Mapping[str, Any]) -> dict[str, Any]:
    bias = metrics.get("bias") or {}
    comparisons = bias.get("comparisons")
    flags = bias.get("flags") or []
    return {
        "prevalence": metrics.get("positive_class") is not None,  # null by definition for more than two classes
        "headers": [*SUBGROUP_METRICS.values(),
                    *(["Score separation within class"] if metrics.get("positive_class") is not None else [])],
        "tables": {split: _subgroup_tables(metrics, split) for split in _splits(metrics)},
        "skipped": [f"{name}: {reason}" for name, reason in (bias.get("skipped") or {}).items()],
        "comparisons": fmt(comparisons),
        "guarantee": bias.get("guarantee") or "",
        "closest": _closest_tests(bias.get("tests") or []),
        "group_flags": sum(f.get("group") is not None for f in flags),
        "confounders": sum(f.get("group") is None for f in flags),
        "min_gap": fmt(MIN_FLAG_GAP, 2),
        "min_patients": MIN_GROUP_PATIENTS,
        "min_class_patients": MIN_CLASS_PATIENTS,
    }


CLOSEST = 5  # the comparisons nearest a flag, shown with their p-values


def _closest_tests(tests: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """The comparisons with the smallest p-values, before and after Holm's adjustment, so that a
    reader sees what came near a flag (and what a single, uncorrected test would have called
    significant)."""
    rows = []
    for test in sorted(tests, key=lambda t: t["p_value"])[:CLOSEST]:
        what = {"performance": NAMES_OF_TESTS.get(test["metric"], test["metric"]) + " below the rest",
                "prevalence": "prevalence differs from the rest", "separation": "score shift within class"}
        difference = test["difference"]
        shown = _points(difference) if test["kind"] == "prevalence" else fmt_signed(difference)
        if test["kind"] == "separation":
            shown = f"AUROC {fmt(difference + 0.5)}"
        rows.append({"group": f"{test['attribute']} {test['group']}", "what": what.get(test["kind"], test["kind"]),
                     "difference": shown, "p": _p_text(test["p_value"]), "adjusted": _p_text(test["adjusted_p"]),
                     "flagged": "yes" if test["flagged"] else "no"})
    return rows


NAMES_OF_TESTS = {"auroc": "AUROC", "sensitivity": "sensitivity", "specificity": "specificity"}


def _p_text(value: Any) -> str:
    return "n/a" if _missing(value) else ("< 0.001" if value < 0.001 else f"{value:.3f}")


# --- reproducibility ---------------------------------------------------------------------------


def shown_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration with path-valued keys withheld (the report shows no file paths)."""
    shown = dict(config)
    for key, placeholder in PATH_KEYS.items():
        if shown.get(key) is not None:
            shown[key] = placeholder
    if shown.get("weights") is not None and shown["weights"] not in NAMED_WEIGHTS:
        shown["weights"] = "(weights file withheld)"
    return shown


def _git_text(git: Any) -> str:
    if not isinstance(git, Mapping) or not git.get("commit"):
        return "n/a (not run from a git checkout)"
    return git["commit"] + (" (with uncommitted changes)" if git.get("dirty") else "")


def _bootstrap_text(bootstrap: Mapping[str, Any]) -> str:
    if not bootstrap:
        return "n/a"
    unit = {"patient": "patients", "image": "images"}.get(bootstrap.get("unit"), "n/a")
    level = bootstrap.get("level")
    percent = "n/a" if _missing(level) else f"{100 * level:g} %"
    if not bootstrap.get("resamples"):
        return f"none ({percent} intervals of AUROC, rates and Brier score are patient-clustered, no resampling)"
    return (f"{fmt(bootstrap.get('resamples'))} resamples of {unit} for average precision, ECE and F1 only "
            f"({percent} percentile intervals, marked approximate), seed {fmt(bootstrap.get('seed'))}")


def reproducibility(metrics: Mapping[str, Any], config: Mapping[str, Any], environment: Mapping[str, Any]) -> dict:
    """Label/value pairs that identify the run (no paths, no host), and the configuration as YAML."""
    packages = environment.get("packages") or {}
    python = environment.get("python") or {}
    seed = environment.get("seed", config.get("seed"))
    facts = [
        ("seed", fmt(seed) if isinstance(seed, int) else "n/a"),
        ("medxfer", environment.get("medxfer") or metrics.get("medxfer_version") or "n/a"),
        ("torch", packages.get("torch") or "n/a"),
        ("python", python.get("version") or "n/a"),
        ("git commit", _git_text(environment.get("git"))),
        ("data hash (SHA-256)", environment.get("data_hash") or "n/a"),
        ("bootstrap", _bootstrap_text(metrics.get("bootstrap") or {})),
        ("device", (environment.get("hardware") or {}).get("device") or "n/a"),
        ("run started", environment.get("started_at") or "n/a"),
    ]
    text = yaml.safe_dump(shown_config(config), sort_keys=False, allow_unicode=True, default_flow_style=False)
    return {"facts": facts, "config": text}


# --- figures -----------------------------------------------------------------------------------


def _png_width(png: bytes) -> int:
    """Width in pixels from the PNG header (IHDR is always the first chunk)."""
    return struct.unpack(">I", png[16:20])[0]


def _image(png: bytes | None, alt: str) -> dict[str, Any] | None:
    """A figure as an ``<img>``'s data URI, alt text and CSS width (its size in inches at 96 px/in)."""
    if png is None:
        return None
    width = round(_png_width(png) * CSS_PX_PER_INCH / figures.DPI)
    return {"src": "data:image/png;base64," + base64.b64encode(png).decode("ascii"), "alt": alt, "width": width}


def _figures(metrics: Mapping[str, Any], scores: Mapping[str, SplitScores], history: list[dict] | None) -> dict:
    classes, positive = metrics["classes"], metrics.get("positive_class")
    threshold = (metrics.get("threshold") or {}).get("value")
    test = metrics[held_out(metrics)]
    bias_flags = [f for f in (metrics.get("bias") or {}).get("flags") or [] if f.get("split") == held_out(metrics)]
    overall = {key: test.get(key) for key in figures.FOREST_METRICS}
    method = CALIBRATION_METHODS.get((metrics.get("calibration") or {}).get("method", "none"), "calibration")
    curves = {split: scores[split] for split in ("val", "test") if split in scores}
    label = _split_label(metrics, held_out(metrics))
    return {
        "roc": _image(figures.roc_curves(curves, classes, positive, threshold=threshold), "ROC curves")
        if curves else None,
        "pr": _image(figures.pr_curves(curves, classes, positive), "Precision-recall curves") if curves else None,
        "reliability": _image(figures.reliability_diagrams(test, split_label=label, method=method),
                              "Reliability diagrams"),
        "confusion": _image(figures.confusion_matrix_plot(test, split_label=label, rule=_confusion_rule(metrics)),
                            "Confusion matrix"),
        "learning": _image(figures.learning_curves(history, metrics.get("best_epoch")), "Learning curves"),
        "forest": _image(figures.subgroup_forest(test, overall, flags=bias_flags), "Subgroup forest plot"),
    }


def _confusion_rule(metrics: Mapping[str, Any]) -> str:
    value = (metrics.get("threshold") or {}).get("value")
    positive = metrics.get("positive_class")
    if positive is None or _missing(value):
        return "most probable class"
    return f"P({positive}) ≥ {fmt(value)}, threshold chosen on validation"


# --- writing -----------------------------------------------------------------------------------


def _title(metrics: Mapping[str, Any]) -> str:
    if metrics.get("kind") == "external validation":
        return f"external validation on {metrics.get('data_name', 'n/a')}"
    return "training run"


def report_context(
    metrics: Mapping[str, Any],
    *,
    scores: Mapping[str, SplitScores],
    history: list[dict] | None,
    config: Mapping[str, Any],
    environment: Mapping[str, Any],
) -> dict[str, Any]:
    """Everything the template shows, already formatted as text (the template only lays it out)."""
    return {
        "title": _title(metrics),
        "data_name": metrics.get("data_name") or "n/a",
        "classes": ", ".join(metrics["classes"]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "scored_before": _scored_before(metrics),
        "summary": summary(metrics),
        "threshold_rule": threshold_rule(metrics),
        "overall": _overall_table(metrics),
        "per_class": _per_class_table(metrics),
        "calibration": {**_calibration_text(metrics), "table": _calibration_table(metrics)},
        "overfitting": _overfitting(metrics),
        "bias": _bias(metrics),
        "split_labels": {split: _split_label(metrics, split) for split in _splits(metrics)},
        "held_out": held_out(metrics),
        "reproducibility": reproducibility(metrics, config, environment),
        "figures": _figures(metrics, scores, history),
    }


def render_report(metrics: Mapping[str, Any], **inputs: Any) -> str:
    """The report's HTML text; keyword arguments as for ``write_report``."""
    return _TEMPLATES.get_template("report.html.j2").render(report_context(metrics, **inputs))


def write_report(
    out_dir: Path,
    metrics: dict,
    *,
    scores: dict[str, SplitScores],
    history: list[dict] | None,
    config: dict,
    environment: dict,
) -> Path:
    """Write ``out_dir/report.html`` atomically and return its path.

    ``metrics`` follows the metrics.json schema; ``scores`` holds the labels and probabilities of
    "val" and "test" (either may be missing, e.g. for an external validation); ``history`` is the
    per-epoch rows (None for an external validation: no learning curves); ``config`` the resolved
    configuration (path-valued keys are withheld) and ``environment`` the environment.json record.
    """
    html = render_report(metrics, scores=scores, history=history, config=config, environment=environment)
    return atomic_write_text(Path(out_dir) / REPORT_FILE, html)


# --- the model card ----------------------------------------------------------------------------

_MARKDOWN_SPECIAL = str.maketrans({c: f"\\{c}" for c in "\\`*_[]|#"} | {"<": "&lt;", ">": "&gt;", "&": "&amp;"})


def md(text: Any) -> str:
    """User text made inert in Markdown: no emphasis, link, table cell break or HTML tag."""
    return str(text).translate(_MARKDOWN_SPECIAL)


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _card_data(metrics: Mapping[str, Any]) -> list[str]:
    classes = list(metrics["classes"])
    rows = []
    for split in ("train", "val", "test"):
        block = metrics.get(split)
        if not block:
            continue
        counts = block.get("counts") or {}
        recorded = [block.get("n_patients"), *(counts.get(c) for c in classes)]
        rows.append([md(_split_label(metrics, split)), fmt(block.get("n")),
                     *("not recorded" if _missing(v) else fmt(v) for v in recorded)])
    return _md_table(["split", "images", "patients", *(md(c) for c in classes)], rows)


def _card_training(metrics: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    strategy = str(config.get("strategy", "n/a"))
    if strategy == "partial" and config.get("trainable_stages") is not None:
        strategy += f" (last {config['trainable_stages']} stages trained)"
    return [
        f"- Backbone: {md(config.get('backbone', 'n/a'))}, initial weights {md(shown_config(config).get('weights', 'n/a'))}",
        f"- Fine-tuning strategy: {md(strategy)}; domain adaptation: {md(config.get('adapt', 'n/a'))}",
        f"- Input: {md(config.get('image_size', 'n/a'))} px, augmentation {md(config.get('augment', 'n/a'))}",
        f"- Kept weights: {_epoch_text(metrics.get('best_epoch'), metrics.get('epochs_run'))}"
        + " (the epoch with the best validation AUROC)",
    ]


def _card_metrics(metrics: Mapping[str, Any]) -> list[str]:
    splits = [s for s in ("test", "val") if s in metrics]
    rows = [[label, *(md(cell_text(metric_cell(metrics[s], key))) for s in splits)]
            for key, label in OVERALL_METRICS.items()]
    rows.append(["Top-label ECE (calibrated)", *(md(cell_text(metric_cell(metrics[s], "ece"))) for s in splits)])
    if metrics.get("positive_class") is not None:
        rows.append(["Positive-class ECE (calibrated)",
                     *(md(cell_text(metric_cell(metrics[s], "ece_positive"))) for s in splits)])
    rows.append(["Brier score (calibrated)", *(md(cell_text(metric_cell(metrics[s], "brier"))) for s in splits)])
    return _md_table(["metric", *(md(_split_label(metrics, s)) for s in splits)], rows)


def _card_biases(metrics: Mapping[str, Any]) -> list[str]:
    bias = metrics.get("bias") or {}
    lines = [f"- {md(_split_label(metrics, flag.get('split', 'test')).capitalize())}: {md(flag['sentence'])}"
             for flag in bias.get("flags") or []]
    if not lines:
        comparisons = fmt(bias.get("comparisons"))
        lines = [(f"- None detected in {comparisons} comparisons (Holm's procedure: at most a {_family_error(bias)} "
                  "chance of any false flag); absence of a flag is not evidence of fairness: small groups are not "
                  "tested.")]
    attributes = ", ".join(md(a) for a in bias.get("attributes") or []) or "none"
    lines.append(f"- Attributes checked: {attributes}.")
    lines += [f"- Not checked: {md(name)}: {md(reason)}." for name, reason in (bias.get("skipped") or {}).items()]
    return lines


def _card_limitations(metrics: Mapping[str, Any]) -> list[str]:
    lines = [f"- {md(warning)}" for warning in metrics.get("warnings") or []]  # transfer warnings first
    sentence = (metrics.get("overfitting") or {}).get("sentence")
    if sentence:
        lines.append(f"- {md(sentence)}")
    lines.append("- Evaluated on the population described under Data only; other sites, scanners, views or "
                 "patient groups need their own validation (`medxfer evaluate RUN_DIR --data PATH`).")
    return lines


def _card_title(metrics: Mapping[str, Any]) -> str:
    if metrics.get("kind") == "external validation":
        return md(_title(metrics))
    return f"trained on {md(metrics.get('data_name', 'n/a'))}"


def _card_population(metrics: Mapping[str, Any]) -> str:
    data = md(metrics.get("data_name", "n/a"))
    if metrics.get("kind") == "external validation":
        return f"the patients of the training run (see its own model card), evaluated here on {data}"
    return f"the patients of {data} (see Data)"


def render_model_card(metrics: Mapping[str, Any], *, config: Mapping[str, Any], environment: Mapping[str, Any]) -> str:
    """The model card's Markdown text; arguments as for ``write_model_card``."""
    positive = metrics.get("positive_class")
    task = ", ".join(md(c) for c in metrics["classes"])
    facts = reproducibility(metrics, config, environment)["facts"]
    boot = metrics.get("bootstrap") or {}
    lines = [
        f"# Model card: medxfer classifier, {_card_title(metrics)}",
        "",
        "**Research use only. Not a medical device:** not for diagnosis, triage or any clinical decision.",
        "",
        "## Intended use",
        "",
        f"- Task: classify a chest X-ray image as one of {task}"
        + (f", with {md(positive)} as the positive class." if positive else "."),
        f"- Population: {_card_population(metrics)}; performance elsewhere is unknown until validated there.",
        "- Users: researchers studying classifiers trained on small image sets.",
        "",
        "## Data",
        "",
        *_card_data(metrics),
        "",
        "## Training",
        "",
        *_card_training(metrics, config),
        "",
        "## Metrics",
        "",
        ("Intervals: 95 %, patient-clustered (AUROC on the logit scale, rates as Wilson intervals on the effective "
         f"sample size); bootstrap: {md(_bootstrap_text(boot))}. \"approx.\" marks an interval whose coverage is not "
         "assured."),
        "",
        *_card_metrics(metrics),
        "",
        "## Calibration and threshold",
        "",
        f"- {md(_calibration_sentence(metrics))}",
        f"- Decisions: {md(threshold_rule(metrics))}.",
        "",
        "## Limitations",
        "",
        *_card_limitations(metrics),
        "",
        "## Known biases",
        "",
        *_card_biases(metrics),
        "",
        "## How to reproduce",
        "",
        "Train again from the run's own `config.yaml` (same data, same seed): `medxfer train --config config.yaml --out NEW`.",
        "",
        *(f"- {label}: {md(value)}" for label, value in facts),
        "",
    ]
    return "\n".join(lines)


def write_model_card(out_dir: Path, metrics: dict, *, config: dict, environment: dict) -> Path:
    """Write ``out_dir/model_card.md`` atomically and return its path: intended use, data,
    training, metrics with intervals, calibration and threshold, limitations, known biases and
    how to reproduce. Like the report it shows no file path and no patient identifier."""
    text = render_model_card(metrics, config=config, environment=environment)
    return atomic_write_text(Path(out_dir) / MODEL_CARD_FILE, text)
