"""What the report and the model card share: a figure as a table cell, and the names of splits,
runs and epochs.

A missing value reads "n/a" followed by the reason recorded in the sibling ``na`` mapping, never
"None" or "nan"; figures show 3 decimals and intervals an en dash (``evaluation.wording``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from medxfer.pipeline.evaluation.schema import Metrics
from medxfer.pipeline.evaluation.wording import EN_DASH, SPLIT_NAMES, interval, missing, not_available, number, percent

NBSP, WORD_JOINER = "\u00a0", "\u2060"


@dataclass(frozen=True)
class Cell:
    """One table cell: the formatted value, an optional visible note (an n/a reason, a missing
    interval's reason), an optional second line (the gap to the overall value) and a flag."""

    text: str
    note: str = ""
    detail: str = ""
    flag: bool = False


def metric_cell(block: Mapping[str, Any], key: str, *, flag: bool = False) -> Cell:
    """The value of ``block[key]`` with its interval ``block["ci"][key]``: "0.861 (0.801–0.912)";
    "n/a" with the reason from ``block["na"]`` when the value is missing; the value with "no
    interval: reason" when only the interval is. ``block`` is a split, class or group of
    metrics.json, or the train split (which records no interval)."""
    na = block["na"]
    value = block.get(key)  # ece_positive and score_separation are absent where they do not apply
    if missing(value):
        return Cell("n/a", note=na.get(key, "not computed"), flag=flag)
    bounds = interval(block.get("ci", {}).get(key))  # the train split has no "ci"
    if bounds is not None:
        note = block["ci_note"].get(key, "")
        return Cell(f"{number(value)} ({bounds}{', approx.' if note else ''})", note=note, flag=flag)
    reason = na.get(f"ci.{key}")
    return Cell(number(value), note=f"no interval: {reason}" if reason else "", flag=flag)


def cell_text(cell: Cell) -> str:
    """A cell as one line of plain text, for sentences and Markdown ("approx." in the text stands
    for its note)."""
    return f"{cell.text} ({cell.note})" if cell.note and not cell.note.startswith("approximate") else cell.text


def unbroken(text: str) -> str:
    """``text`` with no-break spaces, and a word joiner after each en dash (a browser may break a
    line after an en dash), so that a wrapped line breaks before an interval, not inside it."""
    return text.replace(" ", NBSP).replace(EN_DASH, EN_DASH + WORD_JOINER)


def held_out(metrics: Metrics) -> str:
    """The split the headline figures come from: "test", or "val" when there is no test split
    (a manifest whose split column has none)."""
    return "test" if "test" in metrics else "val"


def scored_splits(metrics: Metrics) -> list[str]:
    """"val" and "test", those present, in that order."""
    return [split for split in ("val", "test") if split in metrics]


def split_label(metrics: Metrics, split: str) -> str:
    """"test set"; for an external validation "external test set (DATA)" and "validation set (training run)";
    a cross-fitted run's validation is "validation set (out-of-fold)"."""
    out_of_fold = " (out-of-fold)" if split == "val" and "crossfit" in metrics else ""
    if metrics["kind"] == "external validation" and split in ("val", "test"):
        if split == "val":
            return f"validation set{out_of_fold} (training run)"
        return f"external test set ({metrics['data_name']})"
    return f"{SPLIT_NAMES.get(split, split)} set{out_of_fold}"


def title(metrics: Metrics) -> str:
    """"training run", or "external validation on DATA"."""
    if metrics["kind"] == "external validation":
        return f"external validation on {metrics['data_name']}"
    return "training run"


def patients(count: Any) -> str:
    """"1 patient", "120 patients"; "" when unknown."""
    return "" if missing(count) else f"{number(count)} patient{'' if count == 1 else 's'}"


def epoch_text(best: Any, run: Any) -> str:
    """"epoch 7 of 12 run"; "n/a (not a training run)" without a kept epoch."""
    if missing(best):
        return not_available("not a training run")
    return f"epoch {number(best)}" + ("" if missing(run) else f" of {number(run)} run")


def family_error(bias: Mapping[str, Any]) -> str:
    """"5 %": the chance of any false flag the report's control allows (1 minus the level)."""
    return percent(bias["family_wise_error"], None)
