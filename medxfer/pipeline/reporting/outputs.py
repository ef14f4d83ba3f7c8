"""The files of an evaluation: ``metrics.json``, ``report.html`` and ``model_card.md`` (and, for a
training run, ``calibration.json``, which ``medxfer evaluate`` and ``medxfer predict`` reuse).

``metrics.json`` is written last: a run directory holding it is complete.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medxfer.files import atomic_write_text
from medxfer.pipeline.evaluation.evaluator import Evaluation
from medxfer.pipeline.evaluation.schema import Metrics, Split
from medxfer.pipeline.evaluation.wording import number, percent, with_interval
from medxfer.pipeline.reporting.model_card import write_model_card
from medxfer.pipeline.reporting.report import write_report
from medxfer.pipeline.runs.files import CALIBRATION_FILE, METRICS_FILE


def data_name(path: str | Path) -> str:
    """A data set's name for reports: its folder's name (the manifest's folder for a manifest)."""
    path = Path(path).resolve()
    return path.parent.name if path.is_file() else path.name


def write_json(path: Path, value: Any) -> Path:
    """``value`` as indented JSON, atomically; NaN is refused (undefined values are None)."""
    return atomic_write_text(path, json.dumps(value, indent=2, allow_nan=False) + "\n")


def write_evaluation(out_dir: str | Path, evaluation: Evaluation, *, evaluator_state: Mapping[str, Any] | None,
                     history: Sequence[Mapping[str, Any]] | None, config: Mapping[str, Any],
                     environment: Mapping[str, Any]) -> None:
    """Write ``calibration.json`` (when ``evaluator_state`` is given), ``report.html``,
    ``model_card.md`` and, last, ``metrics.json`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if evaluator_state is not None:
        write_json(out_dir / CALIBRATION_FILE, evaluator_state)
    write_report(out_dir, evaluation.metrics, scores=evaluation.scores, history=list(history) if history else None,
                 config=dict(config), environment=dict(environment))
    write_model_card(out_dir, evaluation.metrics, config=dict(config), environment=dict(environment))
    write_json(out_dir / METRICS_FILE, evaluation.metrics)


def _with_interval(entry: Split, metric: str) -> str:
    """"0.861 (0.801-0.912)": plain text with a hyphen between the bounds, as the terminal has always shown it."""
    return with_interval(entry.get(metric), entry["ci"].get(metric), typeset=False, joiner="-")


def headline(metrics: Metrics) -> list[str]:
    """A few lines for the terminal: the test (or validation) figures, calibration, flags."""
    split = "test" if "test" in metrics else "val"
    entry = metrics.get(split)
    if entry is None:
        return []
    transfer = metrics["transfer"]["warnings"]
    lines = ["WARNING " + warning for warning in transfer]  # before any figure: the model may not apply here
    lines.append(f"{split} (n={entry['n']}): AUROC {_with_interval(entry, 'auroc')}, "
                 f"accuracy {_with_interval(entry, 'accuracy')}")
    threshold = metrics["threshold"]
    if threshold["value"] is not None:
        lines.append(f"  at the threshold {number(threshold['value'], typeset=False)} on P({metrics['positive_class']}) "
                     f"chosen on validation ({threshold['method']}): sensitivity {_with_interval(entry, 'sensitivity')}, "
                     f"specificity {_with_interval(entry, 'specificity')}")
    calibration = metrics["calibration"]
    lines.append(f"  calibration ({calibration['method']}"
                 + (f", T = {number(calibration['temperature'], 2, typeset=False)}" if calibration["temperature"] else "")
                 + f"): top-label ECE {number(entry['ece_uncalibrated'], typeset=False)} before, "
                 f"{number(entry['ece'], typeset=False)} after"
                 + (f"; positive-class ECE {number(entry['ece_positive'], typeset=False)} after"
                    if entry.get("ece_positive") is not None else ""))
    overfitting = metrics.get("overfitting")  # absent without train and val splits
    if overfitting and overfitting["flag"]:
        lines.append("  FLAG " + overfitting["sentence"])
    bias = metrics["bias"]  # present whenever val or test was scored
    lines.extend("  FLAG " + flag["sentence"] for flag in bias["flags"])
    if bias["comparisons"]:
        lines.append(f"  subgroups: {bias['comparisons']} comparisons, {len(bias['flags'])} flagged "
                     f"(Holm: at most a {percent(bias['family_wise_error'], None)} chance of any false flag)")
    lines.extend("  NOTE " + warning for warning in metrics["warnings"] if warning not in transfer)
    return lines
