"""The model card, ``model_card.md``: a short Markdown page that travels with the weights.

It states intended use (research, not a medical device), data, training, metrics with intervals,
calibration and threshold, limitations, known biases and how to reproduce, from the same
``metrics`` as the report (``evaluation.schema.Metrics``). The page is laid out by the Jinja2
template ``templates/model_card.md.j2``; this module gives it the figures as text. User text
(class, group and data set names, the configuration, sentences) is made inert by the template's
``md`` filter. Like the report, the card shows no file path and no patient identifier.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medxfer.files import atomic_write_text
from medxfer.pipeline.evaluation.schema import Metrics
from medxfer.pipeline.evaluation.wording import missing, number
from medxfer.pipeline.reporting.cells import cell_text, epoch_text, family_error, metric_cell, split_label
from medxfer.pipeline.reporting.rendering import render
from medxfer.pipeline.reporting.reproducibility import bootstrap_text, reproducibility, shown_config
from medxfer.pipeline.reporting.summary import calibration_sentence, threshold_rule
from medxfer.pipeline.reporting.tables import OVERALL_METRICS
from medxfer.pipeline.runs.files import MODEL_CARD_FILE


def _data_table(metrics: Metrics) -> dict[str, Any]:
    """Images, patients and images per class of each split."""
    classes = list(metrics["classes"])
    rows = []
    for split in ("train", "val", "test"):
        block = metrics.get(split)
        if not block:
            continue
        recorded = [block["n_patients"], *(block["counts"].get(c) for c in classes)]
        rows.append([split_label(metrics, split), number(block["n"]),
                     *("not recorded" if missing(v) else number(v) for v in recorded)])
    return {"headers": ["split", "images", "patients", *classes], "rows": rows}


def _metrics_table(metrics: Metrics) -> dict[str, Any]:
    """The headline figures with their intervals on the test and validation splits."""
    splits = [s for s in ("test", "val") if s in metrics]
    rows = [[label, *(cell_text(metric_cell(metrics[s], key)) for s in splits)] for key, label in OVERALL_METRICS.items()]
    calibration = {"ece": "Top-label ECE (calibrated)", "ece_positive": "Positive-class ECE (calibrated)",
                   "brier": "Brier score (calibrated)"}
    for key, label in calibration.items():
        if key != "ece_positive" or metrics["positive_class"] is not None:
            rows.append([label, *(cell_text(metric_cell(metrics[s], key)) for s in splits)])
    return {"headers": ["metric", *(split_label(metrics, s) for s in splits)], "rows": rows}


def _training(metrics: Metrics, config: Mapping[str, Any]) -> dict[str, Any]:
    """The training recipe from the resolved configuration (any key may be missing: "n/a")."""
    strategy = str(config.get("strategy", "n/a"))
    if strategy == "partial" and config.get("trainable_stages") is not None:
        strategy += f" (last {config['trainable_stages']} stages trained)"
    return {"backbone": config.get("backbone", "n/a"), "weights": shown_config(config).get("weights", "n/a"),
            "strategy": strategy, "adapt": config.get("adapt", "n/a"), "image_size": config.get("image_size", "n/a"),
            "augment": config.get("augment", "n/a"),
            "kept": epoch_text(metrics.get("best_epoch"), metrics.get("epochs_run")),
            "selection": {"auroc": "AUROC", "loss": "loss", "auroc_loss": "AUROC, ties broken by the loss"}.get(
                str(config.get("selection", "auroc")), "AUROC"),
            "crossfit": _crossfit(metrics)}


def _crossfit(metrics: Metrics) -> str:
    """How a cross-fitted run's model was built, in one sentence ("" for a holdout run)."""
    crossfit = metrics.get("crossfit")  # only in a cross-fitted run
    if not crossfit:
        return ""
    epochs = ", ".join(str(row["best_epoch"]) for row in crossfit["per_fold"])
    return (f"an ensemble of {crossfit['folds']} networks, one per patient-grouped cross-fitting fold of the non-test "
            f"images, their logits averaged (kept epochs: {epochs}); calibration and threshold fitted on the "
            "out-of-fold logits")


def model_card_context(metrics: Metrics, *, config: Mapping[str, Any], environment: Mapping[str, Any]) -> dict:
    """Everything the card shows, as text; user text is escaped by the template."""
    bias = metrics["bias"]
    overfitting = metrics.get("overfitting")  # absent without train and val splits
    return {
        "external": metrics["kind"] == "external validation",
        "data_name": metrics["data_name"],
        "classes": metrics["classes"],
        "positive": metrics["positive_class"],
        "data": _data_table(metrics),
        "training": _training(metrics, config),
        "bootstrap": bootstrap_text(metrics["bootstrap"]),
        "metrics": _metrics_table(metrics),
        "calibration": calibration_sentence(metrics),
        "decisions": threshold_rule(metrics),
        "warnings": metrics["warnings"],  # the transfer warnings first
        "overfitting": overfitting["sentence"] if overfitting else "",
        "flags": [(split_label(metrics, flag["split"]).capitalize(), flag["sentence"]) for flag in bias["flags"]],
        "comparisons": number(bias["comparisons"]),
        "family_error": family_error(bias),
        "attributes": bias["attributes"],
        "skipped": bias["skipped"],
        "facts": reproducibility(metrics, config, environment)["facts"],
    }


def render_model_card(metrics: Metrics, *, config: Mapping[str, Any], environment: Mapping[str, Any]) -> str:
    """The model card's Markdown text; arguments as for ``write_model_card``."""
    return render("model_card.md.j2", model_card_context(metrics, config=config, environment=environment))


def write_model_card(out_dir: Path, metrics: Metrics, *, config: Mapping[str, Any],
                     environment: Mapping[str, Any]) -> Path:
    """Write ``out_dir/model_card.md`` atomically and return its path. ``config`` is the resolved
    configuration (paths withheld), ``environment`` the environment.json record."""
    text = render_model_card(metrics, config=config, environment=environment)
    return atomic_write_text(Path(out_dir) / MODEL_CARD_FILE, text)
