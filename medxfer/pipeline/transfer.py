"""Warnings when a model does not carry over to a new set: the figures a reader must see before
any other.

A model trained at one hospital can rank another hospital's images no better than chance, call
almost every image positive there, or state probabilities that are far off, while its report
still leads with a table of numbers. ``transfer_warnings`` compares the figures of a held-out set
(an external site in ``medxfer evaluate``, the test split in ``medxfer train``) with those of the
validation split the model was tuned on, and says plainly what each failure means for using the
model there. Each check is conservative, so that a warning is worth reading: an interval of the
AUROC that reaches 0.5; a sensitivity or specificity at least ``RATE_SHIFT`` away from validation
with intervals that do not overlap; a share of images called positive at least ``PREVALENCE_SHIFT``
away from the share that are; an ECE at least twice validation's and ``ECE_SHIFT`` higher.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

RATE_SHIFT = 0.10
PREVALENCE_SHIFT = 0.15
ECE_SHIFT = 0.05


def _value(block: Mapping[str, Any], key: str) -> float | None:
    value = block.get(key)
    return None if value is None else float(value)


def _interval(block: Mapping[str, Any], key: str) -> list[float] | None:
    return (block.get("ci") or {}).get(key)


def _text(value: float, interval: list[float] | None) -> str:
    return f"{value:.3f}" + (f" (95 % interval {interval[0]:.3f} to {interval[1]:.3f})" if interval else "")


def transfer_warnings(held_out: Mapping[str, Any], validation: Mapping[str, Any] | None, *, positive: str | None,
                      where: str) -> list[str]:
    """Plain warnings, most serious first, for ``held_out`` (a split's metrics) against
    ``validation`` (None: only the checks that need no reference); ``where`` names the held-out
    set in the sentences ("at this site", "on the test set")."""
    warnings: list[str] = []
    auroc, interval = _value(held_out, "auroc"), _interval(held_out, "auroc")
    if auroc is not None and interval is not None and interval[0] <= 0.5:
        below = interval[1] < 0.5
        warnings.append(
            f"The model does not rank the images {where} better than chance: AUROC {_text(auroc, interval)}"
            + (", below 0.5: its scores run the wrong way here" if below else ", an interval that includes 0.5")
            + f". Do not use it {where}: whatever the threshold, its calls carry no information about the label.")
    if positive is not None and held_out.get("n"):
        counts, n = held_out.get("counts") or {}, held_out["n"]
        observed = counts.get(positive, 0) / n
        sensitivity, specificity = _value(held_out, "sensitivity"), _value(held_out, "specificity")
        if sensitivity is not None and specificity is not None:
            called = sensitivity * observed + (1 - specificity) * (1 - observed)
            if abs(called - observed) >= PREVALENCE_SHIFT:
                warnings.append(
                    f"The model calls {called:.0%} of the images {where} {positive}, while {observed:.0%} are: the "
                    "threshold chosen on validation does not fit this set, so its labels would "
                    f"{'flood readers with false alarms' if called > observed else 'miss most cases'} here. Choose "
                    f"and validate a threshold {where} before using its labels.")
    if validation:
        for metric in ("sensitivity", "specificity"):
            now, before = _value(held_out, metric), _value(validation, metric)
            here, there = _interval(held_out, metric), _interval(validation, metric)
            if None in (now, before) or here is None or there is None:
                continue
            apart = here[1] < there[0] or here[0] > there[1]
            if apart and abs(now - before) >= RATE_SHIFT:
                warnings.append(
                    f"{metric.capitalize()} {where} is {_text(now, here)}, against {_text(before, there)} on "
                    f"validation: the validated operating point does not hold {where}, so the report's "
                    f"{metric} is not what a clinician would get there.")
        ece, ece_before = _value(held_out, "ece"), _value(validation, "ece")
        if ece is not None and ece_before is not None and ece >= 2 * ece_before and ece - ece_before >= ECE_SHIFT:
            warnings.append(
                f"The calibrated probabilities are off by {ece:.3f} on average {where} (top-label ECE), against "
                f"{ece_before:.3f} on validation: do not read them as risks {where}; recalibrate on labelled "
                "images from there.")
    return warnings
