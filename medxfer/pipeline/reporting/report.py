"""The evaluation report, ``report.html``: the plain-language summary and its flags first, then
every table and figure, for a reviewer.

It presents the ``metrics`` that the evaluation writes to ``metrics.json`` (their structure,
``evaluation.schema.Metrics``, is the contract; nothing here computes a metric). The sections are
built by ``summary``, ``tables``, ``subgroups`` and ``reproducibility`` as text; this module adds
the figures and fills the Jinja2 template ``templates/report.html.j2``. The report is one
self-contained file (inline CSS, figures embedded as base64 PNG, no script, no external link) so
it can be mailed or archived. Nothing here shows file paths or patient identifiers: the inputs are
aggregates and score arrays, and the path-valued configuration keys are withheld.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medxfer.files import atomic_write_text
from medxfer.pipeline.evaluation.inputs import SplitScores
from medxfer.pipeline.evaluation.schema import Metrics
from medxfer.pipeline.evaluation.wording import missing, number
from medxfer.pipeline.reporting import figures
from medxfer.pipeline.reporting.cells import held_out, scored_splits, split_label, title
from medxfer.pipeline.reporting.rendering import render
from medxfer.pipeline.reporting.reproducibility import reproducibility
from medxfer.pipeline.reporting.subgroups import bias_section
from medxfer.pipeline.reporting.summary import CALIBRATION_METHODS, summary, threshold_rule
from medxfer.pipeline.reporting.tables import (
    calibration_table,
    calibration_text,
    overall_table,
    overfitting,
    per_class_table,
    scored_before,
)
from medxfer.pipeline.runs.files import REPORT_FILE

CSS_PX_PER_INCH = 96


def _png_width(png: bytes) -> int:
    """Width in pixels from the PNG header (IHDR is always the first chunk)."""
    return struct.unpack(">I", png[16:20])[0]


def _image(png: bytes | None, alt: str) -> dict[str, Any] | None:
    """A figure as an ``<img>``'s data URI, alt text and CSS width (its size in inches at 96 px/in)."""
    if png is None:
        return None
    width = round(_png_width(png) * CSS_PX_PER_INCH / figures.DPI)
    return {"src": "data:image/png;base64," + base64.b64encode(png).decode("ascii"), "alt": alt, "width": width}


def _confusion_rule(metrics: Metrics) -> str:
    value, positive = metrics["threshold"]["value"], metrics["positive_class"]
    if positive is None or missing(value):
        return "most probable class"
    return f"P({positive}) ≥ {number(value)}, threshold chosen on validation"


def _figures(metrics: Metrics, scores: Mapping[str, SplitScores], history: list[dict] | None) -> dict:
    classes, positive = metrics["classes"], metrics["positive_class"]
    test = metrics[held_out(metrics)]
    bias_flags = [f for f in metrics["bias"]["flags"] if f["split"] == held_out(metrics)]
    overall = {key: test[key] for key in figures.FOREST_METRICS}
    method = CALIBRATION_METHODS[metrics["calibration"]["method"]]
    curves = {split: scores[split] for split in ("val", "test") if split in scores}
    label = split_label(metrics, held_out(metrics))
    threshold = metrics["threshold"]["value"]
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


def report_context(
    metrics: Metrics,
    *,
    scores: Mapping[str, SplitScores],
    history: list[dict] | None,
    config: Mapping[str, Any],
    environment: Mapping[str, Any],
) -> dict[str, Any]:
    """Everything the template shows, already formatted as text (the template only lays it out)."""
    return {
        "title": title(metrics),
        "data_name": metrics["data_name"] or "n/a",
        "classes": ", ".join(metrics["classes"]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "scored_before": scored_before(metrics),
        "summary": summary(metrics),
        "threshold_rule": threshold_rule(metrics),
        "overall": overall_table(metrics),
        "per_class": per_class_table(metrics),
        "calibration": {**calibration_text(metrics), "table": calibration_table(metrics)},
        "overfitting": overfitting(metrics),
        "bias": bias_section(metrics),
        "split_labels": {split: split_label(metrics, split) for split in scored_splits(metrics)},
        "held_out": held_out(metrics),
        "reproducibility": reproducibility(metrics, config, environment),
        "figures": _figures(metrics, scores, history),
    }


def render_report(metrics: Metrics, **inputs: Any) -> str:
    """The report's HTML text; keyword arguments as for ``write_report``."""
    return render("report.html.j2", report_context(metrics, **inputs))


def write_report(
    out_dir: Path,
    metrics: Metrics,
    *,
    scores: Mapping[str, SplitScores],
    history: list[dict] | None,
    config: Mapping[str, Any],
    environment: Mapping[str, Any],
) -> Path:
    """Write ``out_dir/report.html`` atomically and return its path.

    ``metrics`` follows the metrics.json schema; ``scores`` holds the labels and probabilities of
    "val" and "test" (either may be missing, e.g. for an external validation); ``history`` is the
    per-epoch rows (None for an external validation: no learning curves); ``config`` the resolved
    configuration (path-valued keys are withheld) and ``environment`` the environment.json record.
    """
    html = render_report(metrics, scores=scores, history=history, config=config, environment=environment)
    return atomic_write_text(Path(out_dir) / REPORT_FILE, html)
