"""Warnings when a model does not carry over to a new set: the figures a reader must see before
any other.

A model trained at one hospital can rank another hospital's images no better than chance, call
almost every image positive there, or state probabilities that are far off, while its report
still leads with a table of numbers. ``transfer_warnings`` compares a held-out set (an external
site in ``medxfer evaluate``, the test split in ``medxfer train``) with the validation split the
model was tuned on, and says plainly what each failure means for using the model there.

Each comparison is a test, so that on a set like the validation split a warning stays rare
(measured: ``tests/pipeline/statistics/test_statistics.py`` and ``benchmarks/statistics.py``): the held-out
figure and validation's, each with its patient-clustered standard error, differ at
p < ``ALPHA`` / ``SHIFT_TESTS`` (two-sided t test, the smaller of the two degrees of freedom;
Bonferroni over the four tests, so at most 1 % of sets would be warned about if validation's
figures were unbiased) and by at least a margin of
consequence: ``RATE_SHIFT`` for sensitivity and specificity, ``CALLED_SHIFT`` for the share of
images called positive minus the share that are (the predicted against the observed
prevalence, against the same gap on validation), ``CONFIDENCE_SHIFT`` for the stated confidence
minus the accuracy, averaged over the images (calibration in the large: the shift of every
probability up or down that a new site's case mix or scanner most often causes; unlike the ECE it
is a mean whose spread is known, so it can be tested, but errors of both signs cancel in it, so a
set whose probabilities are too sharp at the top and too flat at the bottom is not caught: compare
the ECEs the report shows). The AUROC needs no
reference: an interval that reaches 0.5 says the model cannot be shown to rank these images
better than chance.

A run trained before these statistics were recorded has only validation's intervals: the
standard error of its sensitivity and specificity is read back from the interval's width (with
the t quantile of its patients less one degrees of freedom: an error no smaller than the one the
interval was built with), and the same test is made; the other two checks need the statistics
and are skipped (``external.py`` says so).

Validation's sensitivity and specificity are optimistic (the threshold was chosen to maximise
them there: in ``benchmarks/statistics.py``'s transfer section, 0.036 and 0.026 above a new
set's at 80 validation patients), which is why a test set drawn like validation is warned about
somewhat more often than the 1 % the tests alone allow.
"""

from __future__ import annotations

import math

from medxfer.pipeline.evaluation.schema import Interval, Split, Statistic
from medxfer.pipeline.evaluation.wording import interval, number, percent
from medxfer.pipeline.statistics.intervals import standard_error_of, t_p_value

ALPHA = 0.01
SHIFT_TESTS = 4  # called-minus-observed, sensitivity, specificity, confidence-minus-accuracy
RATE_SHIFT = 0.10
CALLED_SHIFT = 0.15
CONFIDENCE_SHIFT = 0.05
CHANCE, SHIFT = "not shown better than chance", "does not transfer"


def _differs(here: Statistic | None, there: Statistic | None, margin: float) -> bool:
    """Whether two [value, standard error, df] statistics differ at p < ``ALPHA / SHIFT_TESTS``
    and by ``margin``."""
    if not here or not there:
        return False
    (a, se_a, df_a), (b, se_b, df_b) = here, there
    se = math.hypot(se_a, se_b)
    if abs(a - b) < margin or not se > 0:
        return False
    return t_p_value((a - b) / se, min(df_a, df_b)) < ALPHA / SHIFT_TESTS


def _interval(block: Split, key: str) -> Interval | None:
    return block["ci"].get(key)


def _read_back(block: Split, metric: str) -> Statistic | None:
    """[value, standard error, df] of a rate from its 95 % interval, for a run whose metrics
    predate ``transfer_statistics``: df the split's patients less one (at least the df the
    interval was built with, so the error read back is not too small)."""
    bounds, value, patients = _interval(block, metric), block.get(metric), block.get("n_patients") or block.get("n")
    if bounds is None or value is None or not patients or patients < 2:
        return None
    df = patients - 1
    return [value, standard_error_of(bounds, df), df]


def _rate_differs(held_out: Split, validation: Split, metric: str) -> bool:
    """Sensitivity or specificity shifted (see ``_differs``); a standard error read back from
    its interval where the statistics were not recorded (a run trained before they were)."""
    theirs = validation.get("transfer_statistics")  # absent in a run trained by an earlier medxfer
    before = theirs.get(metric) if theirs is not None else _read_back(validation, metric)
    mine = held_out["transfer_statistics"].get(metric) or _read_back(held_out, metric)
    return _differs(mine, before, RATE_SHIFT)


def _text(value: float, bounds: Interval | None) -> str:
    """"0.345 (95 % interval 0.233 to 0.477)": the interval named, and "to" rather than a dash, as
    these warnings have always read."""
    shown = interval(bounds, typeset=False, joiner=" to ")
    return number(value, typeset=False) + (f" (95 % interval {shown})" if shown else "")


def transfer_warnings(held_out: Split, validation: Split | None, *, positive: str | None,
                      where: str) -> tuple[list[str], list[str]]:
    """Plain warnings, most serious first, for ``held_out`` (a split's metrics) against
    ``validation`` (None: only the AUROC check; metrics without ``transfer_statistics``: the AUROC
    and the two rates' intervals), and
    their kinds (``CHANCE`` or ``SHIFT``); ``where`` names the held-out set ("at this site", "on
    the test set")."""
    warnings: list[tuple[str, str]] = []
    auroc, auroc_interval = held_out["auroc"], _interval(held_out, "auroc")
    if auroc is not None and auroc_interval is not None and auroc_interval[0] <= 0.5:
        if auroc_interval[1] < 0.5:
            text = (f"The model ranks the images {where} worse than chance: AUROC "
                    f"{_text(auroc, auroc_interval)}, below 0.5, so its scores run the wrong way here. Do "
                    f"not use it {where}: whatever the threshold, its calls mislead.")
            warnings.append((SHIFT, text))
        else:
            text = (f"The model cannot be shown to rank the images {where} better than chance: "
                    f"AUROC {_text(auroc, auroc_interval)}, an interval that reaches 0.5. Until more "
                    f"images {where} show otherwise, its calls may carry no information about the "
                    "label here.")
            warnings.append((CHANCE, text))
    mine = held_out["transfer_statistics"]
    # none without a validation split, or in one from a run trained by an earlier medxfer
    theirs = validation.get("transfer_statistics", {}) if validation is not None else {}
    if positive is not None and _differs(mine.get("called_minus_observed"), theirs.get("called_minus_observed"),
                                         CALLED_SHIFT):
        observed = held_out["counts"].get(positive, 0) / held_out["n"]
        called = observed + mine["called_minus_observed"][0]
        before = validation["counts"].get(positive, 0) / validation["n"]
        metric, cost = ("specificity", "raise more false alarms") if called > observed else \
            ("sensitivity", "miss more cases")
        rate = "" if held_out[metric] is None or validation[metric] is None else (
            f" (its {metric} {number(held_out[metric], typeset=False)} {where} against "
            f"{number(validation[metric], typeset=False)} on validation)")
        text = (f"The model calls {percent(called, spaced=False)} of the images {where} {positive}, while "
                f"{percent(observed, spaced=False)} are (on validation: "
                f"{percent(before + theirs['called_minus_observed'][0], spaced=False)} called, "
                f"{percent(before, spaced=False)} are): the threshold chosen on validation does not fit this set, so its "
                f"labels would {cost} than validated{rate}. Choose and validate a threshold {where} "
                "before using its labels.")
        warnings.append((SHIFT, text))
    for metric in ("sensitivity", "specificity"):
        if validation is not None and _rate_differs(held_out, validation, metric):
            text = (f"{metric.capitalize()} {where} is "
                    f"{_text(held_out[metric], _interval(held_out, metric))}, against "
                    f"{_text(validation[metric], _interval(validation, metric))} on validation: the "
                    f"operating point validated before use does not hold {where}; expect the {metric} "
                    f"measured here, not validation's.")
            warnings.append((SHIFT, text))
    if _differs(mine.get("confidence_minus_accuracy"), theirs.get("confidence_minus_accuracy"), CONFIDENCE_SHIFT):
        gap, before = mine["confidence_minus_accuracy"][0], theirs["confidence_minus_accuracy"][0]
        text = (f"The calibrated probabilities do not carry over: {where} the model's stated "
                f"confidence is {percent(abs(gap), spaced=False)} {'above' if gap > 0 else 'below'} its accuracy, "
                f"against {percent(abs(before), spaced=False)} {'above' if before > 0 else 'below'} on validation "
                f"(top-label ECE {number(held_out['ece'], typeset=False)} against "
                f"{number(validation['ece'], typeset=False)}): do not read them as risks "
                f"{where}; recalibrate on labelled images from there.")
        warnings.append((SHIFT, text))
    return [text for _, text in warnings], [kind for kind, _ in warnings]
