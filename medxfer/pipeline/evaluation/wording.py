"""Figures as text, one implementation for every sentence and table: metrics.json's flag and
transfer sentences (``flags``, ``transfer``), the terminal headline, the figures' labels, and
the report and model card (``medxfer.pipeline.reporting``).

Two typographies, on purpose, chosen by ``typeset``:

- ``typeset=True`` (report.html, model_card.md): a minus sign (U+2212), not a hyphen, thousands
  separators in whole numbers ("1,000"), and an interval with a negative bound written
  "−0.250 to −0.050" (an en dash between minus signs misreads).
- ``typeset=False`` (sentences stored in metrics.json, the terminal, figure labels): Python's own
  formatting ("-0.250", "1000"), the text those outputs have always held, which users and scripts
  match.

A missing value (None, NaN or infinite) reads "n/a", or "n/a (reason)" where the reason is known.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

MINUS, EN_DASH = "\u2212", "\u2013"
# Split names as a label or in a legend: "validation set", "train set".
SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}
# In a sentence the training split is the "training set" ("The training set holds only...").
SPLIT_WORDS = {**SPLIT_NAMES, "train": "training"}


def missing(value: Any) -> bool:
    """Whether ``value`` is no number to show: None, NaN or infinite."""
    return value is None or (isinstance(value, float | np.floating) and not math.isfinite(value))


def not_available(reason: str) -> str:
    """"n/a (reason)": a missing value with why it is missing."""
    return f"n/a ({reason})"


def number(value: Any, digits: int = 3, *, typeset: bool = True) -> str:
    """A figure with ``digits`` decimals ("0.861"), a whole number as is ("1,000" typeset,
    "1000" plain), a missing value as "n/a"."""
    if missing(value):
        return "n/a"
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return f"{int(value):,}" if typeset else str(int(value))
    text = f"{float(value):.{digits}f}"
    return text.replace("-", MINUS) if typeset else text


def signed(value: Any, digits: int = 3) -> str:
    """A difference with its sign always shown, typeset: "+0.012", "−0.150"; "n/a" when missing."""
    return "n/a" if missing(value) else f"{float(value):+.{digits}f}".replace("-", MINUS)


def interval(bounds: Sequence[Any] | None, digits: int = 3, *, typeset: bool = True,
             joiner: str | None = None) -> str | None:
    """An interval's bounds: "0.801–0.912" (an en dash), "−0.250 to −0.050" when a bound is
    negative; None when there is no interval or a bound is missing. ``joiner`` forces the text
    between the bounds: the terminal headline's "-" and the transfer warnings' " to ", which
    those outputs have always printed."""
    if bounds is None or any(missing(bound) for bound in bounds):
        return None
    low, high = (float(bound) for bound in bounds)
    if joiner is None:
        joiner = " to " if low < 0 or high < 0 else EN_DASH
    return f"{number(low, digits, typeset=typeset)}{joiner}{number(high, digits, typeset=typeset)}"


def with_interval(value: Any, bounds: Sequence[Any] | None, digits: int = 3, *, typeset: bool = True,
                  joiner: str | None = None) -> str:
    """A figure and its interval: "0.861 (0.801–0.912)"; the figure alone without an interval
    (or without a value: "n/a")."""
    text = interval(bounds, digits, typeset=typeset, joiner=joiner)
    return number(value, digits, typeset=typeset) + (f" ({text})" if text and not missing(value) else "")


def percent(share: Any, digits: int | None = 0, *, spaced: bool = True) -> str:
    """A share in [0, 1] as a percentage: "40 %" (``spaced``, the report's tables and prose) or
    "40%" (the sentences of metrics.json, written with Python's "%" format); ``digits`` None
    gives the shortest form ("5 %", "2.5 %"); "n/a" when missing."""
    if missing(share):
        return "n/a"
    value = 100 * float(share)
    return (f"{value:g}" if digits is None else f"{value:.{digits}f}") + (" %" if spaced else "%")


def points(share: Any) -> str:
    """A difference of shares in percentage points, typeset: "+17 points", "−1 point"."""
    text = signed(100 * share, 0)
    return f"{text} point{'' if text.lstrip('+' + MINUS) == '1' else 's'}"


def p_value(value: Any) -> str:
    """A p-value: "< 0.001" below 0.001, else 3 decimals; "n/a" when missing."""
    if missing(value):
        return "n/a"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"
