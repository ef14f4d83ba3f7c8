"""The files of an evaluation: ``metrics.json``, ``report.html`` and ``model_card.md`` (and, for a
training run, ``calibration.json``, which ``medxfer evaluate`` and ``medxfer predict`` reuse).

``metrics.json`` is written last: a run directory holding it is complete.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medxfer.files import atomic_write_text
from medxfer.pipeline.evaluation.evaluator import Evaluation
from medxfer.pipeline.reporting.report import write_model_card, write_report

METRICS_FILE, CALIBRATION_FILE = "metrics.json", "calibration.json"


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


def _number(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _with_interval(entry: Mapping[str, Any], metric: str) -> str:
    interval = entry.get("ci", {}).get(metric)
    text = _number(entry.get(metric))
    return text + (f" ({interval[0]:.3f}-{interval[1]:.3f})" if interval and entry.get(metric) is not None else "")


def headline(metrics: Mapping[str, Any]) -> list[str]:
    """A few lines for the terminal: the test (or validation) figures, calibration, flags."""
    split = "test" if "test" in metrics else "val"
    entry = metrics.get(split)
    if entry is None:
        return []
    transfer = list((metrics.get("transfer") or {}).get("warnings") or [])
    lines = ["WARNING " + warning for warning in transfer]  # before any figure: the model may not apply here
    lines.append(f"{split} (n={entry['n']}): AUROC {_with_interval(entry, 'auroc')}, "
                 f"accuracy {_with_interval(entry, 'accuracy')}")
    threshold = metrics["threshold"]
    if threshold["value"] is not None:
        lines.append(f"  at the threshold {threshold['value']:.3f} on P({metrics['positive_class']}) chosen on "
                     f"validation ({threshold['method']}): sensitivity {_with_interval(entry, 'sensitivity')}, "
                     f"specificity {_with_interval(entry, 'specificity')}")
    calibration = metrics["calibration"]
    lines.append(f"  calibration ({calibration['method']}"
                 + (f", T = {calibration['temperature']:.2f}" if calibration.get("temperature") else "")
                 + f"): top-label ECE {_number(entry['ece_uncalibrated'])} before, {_number(entry['ece'])} after"
                 + (f"; positive-class ECE {_number(entry.get('ece_positive'))} after"
                    if entry.get("ece_positive") is not None else ""))
    overfitting = metrics.get("overfitting")
    if overfitting and overfitting["flag"]:
        lines.append("  FLAG " + overfitting["sentence"])
    bias = metrics.get("bias") or {}
    for flag in bias.get("flags", []):
        lines.append("  FLAG " + flag["sentence"])
    if bias.get("comparisons"):
        lines.append(f"  subgroups: {bias['comparisons']} comparisons, {len(bias.get('flags', []))} flagged "
                     f"(Holm: at most a {100 * float(bias.get('family_wise_error', 0.05)):g} % chance of any false flag)")
    lines.extend("  NOTE " + warning for warning in metrics.get("warnings", []) if warning not in transfer)
    return lines
