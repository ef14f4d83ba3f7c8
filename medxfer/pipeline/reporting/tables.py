"""The report's figure tables, as cells and text: discrimination (overall), per class,
calibration before and after, and the overfitting check."""

from __future__ import annotations

from typing import Any

from medxfer.pipeline.evaluation.schema import Metrics
from medxfer.pipeline.evaluation.wording import SPLIT_NAMES, missing, not_available, number, signed
from medxfer.pipeline.reporting.cells import cell_text, epoch_text, held_out, metric_cell, scored_splits, split_label
from medxfer.pipeline.reporting.summary import calibration_method

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


def overall_table(metrics: Metrics) -> dict[str, Any]:
    """Discrimination and the rates at the operating point, one column per scored split."""
    splits = scored_splits(metrics)
    rows = [
        {"label": label, "cells": [metric_cell(metrics[s], key) for s in splits]}
        for key, label in OVERALL_METRICS.items()
    ]
    headers = [f"{split_label(metrics, s)}, n = {number(metrics[s]['n'])}" for s in splits]
    return {"headers": headers, "rows": rows}


def per_class_table(metrics: Metrics) -> dict[str, Any]:
    """Each class against the rest on the held-out split."""
    rows = []
    for name, block in metrics[held_out(metrics)]["per_class"].items():
        cells = [metric_cell(block, key) for key in PER_CLASS_METRICS]
        rows.append({"label": name, "cells": cells, "support": number(block["support"])})
    return {"headers": list(PER_CLASS_METRICS.values()), "rows": rows}


def calibration_table(metrics: Metrics) -> dict[str, Any]:
    """Every calibration metric before and after, two columns per scored split."""
    splits = scored_splits(metrics)
    headers = [split_label(metrics, s) for s in splits]
    rows = []
    for key, label in CALIBRATION_METRICS.items():
        if key == "ece_positive" and metrics["positive_class"] is None:
            continue  # one class's probability: two-class models only
        cells = []
        for split in splits:
            cells.append(metric_cell(metrics[split], f"{key}_uncalibrated"))
            cells.append(metric_cell(metrics[split], key))
        rows.append({"label": label, "cells": cells})
    return {"headers": headers, "rows": rows}


def calibration_text(metrics: Metrics) -> dict[str, Any]:
    """The calibration section's prose: the method, its parameters, where it was fitted, and which
    cells carry an interval."""
    calibration = metrics["calibration"]
    method = calibration["method"]
    parameters = []
    if method == "temperature":
        parameters.append("The logits are divided by T before the softmax; the predicted class does not change.")
    elif method == "vector":
        for name in ("scale", "bias"):
            values = calibration[name]  # a list for vector scaling
            parameters.append(f"{name.capitalize()} per class: " + ", ".join(number(v) for v in values) + ".")
    fitted_on = SPLIT_NAMES[calibration["fitted_on"]]
    fitted = f"fitted on the {fitted_on} set only (n = {number(calibration['n'])})" if method != "none" else ""
    return {"method": calibration_method(metrics), "parameters": parameters, "fitted": fitted,
            "intervals": _calibration_intervals(metrics)}


def _calibration_intervals(metrics: Metrics) -> str:
    """Which cells of the calibration table carry an interval, when only some "after" cells do
    (the usual case: ECE and Brier score), so that a bare "before" value does not read as an
    omission; "" otherwise."""
    ci = metrics[held_out(metrics)]["ci"]
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


def overfitting(metrics: Metrics) -> dict[str, Any]:
    """The overfitting section: the flag or its sentence, the kept epoch, both AUROCs and their gap."""
    check = metrics.get("overfitting", {})  # absent without train and val splits
    train, val = metrics.get("train"), metrics.get("val")  # an external validation may have neither
    gap = check.get("train_val_auroc_gap")
    return {
        "flag": bool(check.get("flag")),
        "sentence": check.get("sentence", ""),
        "train_auroc": cell_text(metric_cell(train, "auroc")) if train else
        not_available("no training split in these metrics"),
        "val_auroc": cell_text(metric_cell(val, "auroc")) if val else "n/a",
        "gap": "n/a" if missing(gap) else f"{signed(gap)} (flagged above {number(check['limit'])})",
        # the run's own record first: the overfitting check carries the kept epoch in an external validation
        "epoch": epoch_text(check.get("best_epoch", metrics.get("best_epoch")),
                            check.get("epochs_run", metrics.get("epochs_run"))),
        "folds": crossfit_folds(metrics),
    }


def crossfit_folds(metrics: Metrics) -> list[dict[str, str]]:
    """A cross-fitted run's per-fold overfitting check as text cells (empty for a holdout run)."""
    crossfit = metrics.get("crossfit")  # only in a cross-fitted run
    if not crossfit:
        return []
    return [{"fold": str(row["fold"]), "n": f"{row['n_train']} / {row['n_held_out']}",
             "train_auroc": "n/a" if missing(row["train_auroc"]) else number(row["train_auroc"]),
             "held_out_auroc": "n/a" if missing(row["held_out_auroc"]) else number(row["held_out_auroc"]),
             "gap": "n/a" if missing(row["gap"]) else signed(row["gap"]),
             "flag": "n/a" if row["flag"] is None else ("flagged" if row["flag"] else "no"),
             "epoch": epoch_text(row["best_epoch"], row["epochs_run"])}
            for row in crossfit["per_fold"]]


def scored_before(metrics: Metrics) -> str:
    """When the network changed after the figures were scored (``scored_before``: AdaBN to the
    target site), which figures that concerns: a training run's validation and test splits, or,
    in an external validation, only the validation figures carried from the run (this set was
    scored with the network as it was saved); "" when nothing changed."""
    change = metrics.get("scored_before")  # only when the network changed after scoring
    if not change:
        return ""
    if metrics["kind"] == "external validation":
        return (f"The validation figures, carried from the training run, were scored before {change}; this set was "
                "scored with the network as saved, after it.")
    return f"Validation and test were scored before {change}."
