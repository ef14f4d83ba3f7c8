"""The plain-language summary that opens the report: any warning that the model does not carry
over first, then the headline AUROC, the operating point and calibration in three sentences, then
every flag and warning; also the rule that turns probabilities into classes and the calibration's
name, which the model card repeats."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medxfer.pipeline.evaluation.schema import BiasFlag, Metrics
from medxfer.pipeline.evaluation.wording import SPLIT_NAMES, missing, number
from medxfer.pipeline.reporting.cells import cell_text, family_error, held_out, metric_cell, patients, split_label
from medxfer.pipeline.statistics.comparisons import MIN_CLASS_PATIENTS, MIN_GROUP_PATIENTS

CALIBRATION_METHODS = {"temperature": "temperature scaling", "vector": "vector scaling", "none": "no calibration"}
FLAG_KINDS = {"gap": "Subgroup gap", "confounder": "Confounder", "shortcut": "Possible shortcut",
              "score shift": "Score shift"}
TRANSFER_KINDS = {"not shown better than chance": "Not shown to work here", "does not transfer": "Does not transfer"}


def _population(split: Mapping[str, Any]) -> str:
    count = patients(split["n_patients"])
    return f"{number(split['n'])} images" + (f" from {count}" if count else "")


def _test_word(metrics: Metrics) -> str:
    if held_out(metrics) == "val":
        return "Validation (no test split; optimistic, see below)"
    return "External test" if metrics["kind"] == "external validation" else "Test"


def _headline(metrics: Metrics) -> str:
    test = metrics[held_out(metrics)]
    auroc = cell_text(metric_cell(test, "auroc"))
    positive = metrics["positive_class"]
    if positive is None:
        what = "(macro average of each class against the rest)"
    else:
        what = f"for {positive} against {', '.join(c for c in metrics['classes'] if c != positive)}"
    return f"{_test_word(metrics)} AUROC {what}: {auroc}, on {_population(test)}."


def threshold_rule(metrics: Metrics) -> str:
    """How predictions become classes, in words: the validated threshold and how it was chosen."""
    threshold = metrics["threshold"]
    method, value, positive = threshold["method"], threshold["value"], metrics["positive_class"]
    if method == "argmax" or positive is None or missing(value):
        return "the most probable class of each image (no threshold is tuned)"
    if method == "youden":
        how = "by Youden's J (the largest sensitivity + specificity − 1)"
    else:
        how = f"for a target sensitivity of {number(threshold['target_sensitivity'], 2)}"
    if threshold["note"]:
        return f"a threshold of {number(value)} on the calibrated probability of {positive} ({threshold['note']})"
    return (
        f"a threshold of {number(value)} on the calibrated probability of {positive}, chosen on the "
        f"{SPLIT_NAMES[threshold['chosen_on']]} set {how} and applied unchanged to the test set"
    )


def _operating_point(metrics: Metrics) -> str:
    test = metrics[held_out(metrics)]
    sensitivity = cell_text(metric_cell(test, "sensitivity"))
    specificity = cell_text(metric_cell(test, "specificity"))
    averaged = " (macro averages over the classes)" if metrics["positive_class"] is None else ""
    rule = threshold_rule(metrics)
    return f"{_test_word(metrics)} sensitivity {sensitivity} and specificity {specificity}{averaged}, with {rule}."


def calibration_method(metrics: Metrics) -> str:
    """"temperature scaling (T = 1.70)", "vector scaling" or "no calibration"."""
    calibration = metrics["calibration"]
    method = calibration["method"]
    name = CALIBRATION_METHODS[method]
    if method == "temperature" and not missing(calibration["temperature"]):
        name += f" (T = {number(calibration['temperature'], 2)})"
    return name


def calibration_sentence(metrics: Metrics) -> str:
    """Top-label ECE before and after calibration on the held-out split, what it means, and the
    positive-class ECE for two classes."""
    test, where = metrics[held_out(metrics)], split_label(metrics, held_out(metrics))
    before = cell_text(metric_cell(test, "ece_uncalibrated"))
    after = cell_text(metric_cell(test, "ece"))
    gloss = ("Top-label ECE is the average gap between the confidence in the predicted class and how often it "
             "is right; 0 is perfect.")
    positive = metrics["positive_class"]
    if positive is not None and not missing(test.get("ece_positive")):
        gloss += (f" The positive-class ECE ({cell_text(metric_cell(test, 'ece_positive'))} after, "
                  f"{cell_text(metric_cell(test, 'ece_positive_uncalibrated'))} before) is the same gap for P({positive}) "
                  "itself, as torchmetrics and netcal report it; it is usually the larger of the two.")
    if metrics["calibration"]["method"] == "none":
        return f"Calibration on the {where}: top-label ECE {after}; no calibration was applied. {gloss}"
    return (
        f"Calibration on the {where}: top-label ECE {before} before, {after} after {calibration_method(metrics)}, "
        f"fitted on the validation set only (n = {number(metrics['calibration']['n'])}). {gloss}"
    )


def flag_kind(flag: BiasFlag) -> str:
    """The label of a bias flag's box: one group's gap, or a whole attribute that may stand in for
    the label (a confounder, a possible shortcut) or that the scores follow (a score shift)."""
    return FLAG_KINDS[flag["kind"]]


def _flag_sentences(metrics: Metrics) -> list[tuple[str, str]]:
    """Every flag as (kind, sentence) in reading order: overfitting, bias flags (test first, whole
    attributes before single groups), warnings. The transfer warnings head the summary on their
    own (``_transfer_boxes``)."""
    sentences = []
    overfitting = metrics.get("overfitting")  # absent without train and val splits
    if overfitting and overfitting["flag"]:
        sentences.append(("Overfitting", overfitting["sentence"]))
    bias_flags = sorted(metrics["bias"]["flags"], key=lambda f: (f["split"] != "test", f["group"] is not None))
    for flag in bias_flags:
        where = "" if flag["split"] == "test" else f" ({split_label(metrics, flag['split'])})"
        sentences.append((flag_kind(flag), f"{flag['sentence']}{where}"))
    transfer = metrics["transfer"]["warnings"]
    sentences.extend(("Warning", warning) for warning in metrics["warnings"] if warning not in transfer)
    return sentences


def _transfer_boxes(metrics: Metrics) -> list[tuple[str, str]]:
    """The transfer warnings as (label, sentence), to head the summary."""
    transfer = metrics["transfer"]
    return [(TRANSFER_KINDS[kind], warning) for kind, warning in zip(transfer["kinds"], transfer["warnings"], strict=True)]


def _no_flag_line(metrics: Metrics) -> str:
    bias = metrics["bias"]
    tested = (f" in {number(bias['comparisons'])} subgroup comparisons (Holm, at most a {family_error(bias)} "
              "chance of a false flag)")
    return f"No flags: no overfitting flag, no subgroup flagged{tested}, no confounder, no warnings."


def bias_not_checked(metrics: Metrics) -> str | None:
    """Why the subgroup check tested nothing, or None when it ran: a report without flags must
    not read as "no bias found" when nothing was tested."""
    bias = metrics["bias"]
    if bias["flags"] or bias["comparisons"]:
        return None
    if not bias["attributes"]:
        return "no subgroup attribute (sex, age, site, manufacturer, view or a named manifest column) is recorded"
    return (f"no group and the rest of the split both hold {MIN_GROUP_PATIENTS} or more patients, and "
            f"{MIN_CLASS_PATIENTS} or more patients of each class a metric counts")


def summary(metrics: Metrics) -> dict[str, Any]:
    """The plain-language summary: three key sentences, the flag sentences, and the line shown
    when there is no flag."""
    return {
        "transfer": _transfer_boxes(metrics),
        "points": [_headline(metrics), _operating_point(metrics), calibration_sentence(metrics)],
        "flags": _flag_sentences(metrics),
        "no_flags": _no_flag_line(metrics),
        "not_checked": bias_not_checked(metrics),
    }
