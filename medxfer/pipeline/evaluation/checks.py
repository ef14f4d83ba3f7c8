"""Plain-words checks of a run: overfitting (the train-validation AUROC gap) and splits too
small for their intervals to carry a conclusion."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from medxfer.pipeline.evaluation.schema import Overfitting
from medxfer.pipeline.evaluation.wording import SPLIT_WORDS, interval, number

# Below these, a split's intervals are too wide to carry a conclusion, and the report says so.
MIN_PER_CLASS = 30
WIDE_INTERVAL = 0.2  # width of the AUROC interval


def overfitting_check(train_auroc: float | None, val_auroc: float | None, limit: float,
                      best_epoch: int | None = None, *, out_of_fold: bool = False) -> Overfitting:
    """The train-validation AUROC gap of the kept model, flagged above ``limit``, with a sentence
    that says the validation AUROC is that of the epoch validation itself chose (``best_epoch``),
    or (``out_of_fold``, a cross-fitted ensemble) that it is the out-of-fold AUROC."""
    if train_auroc is None or val_auroc is None:
        return Overfitting(train_val_auroc_gap=None, limit=limit, flag=None,
                                sentence="The train-validation gap could not be computed (an AUROC is undefined).")
    gap = train_auroc - val_auroc
    train, val, shown_gap, shown_limit = (number(train_auroc, typeset=False), number(val_auroc, typeset=False),
                                          number(gap, typeset=False), number(limit, 2, typeset=False))
    kept = (f"the kept epoch {best_epoch}, which validation chose, so its validation AUROC is optimistic"
            if best_epoch else "the kept network")
    if out_of_fold:
        kept = "out-of-fold: each image scored by the fold network that never trained on it"
    if gap > limit:
        sentence = (f"Possible overfitting: AUROC is {train} on the training images but {val} on "
                    f"validation patients ({kept}), a gap of {shown_gap} (more than {shown_limit}). The model fits the "
                    "images it learned from better than new patients; expect new data to score like validation or "
                    "worse, not like training, and consider more data, stronger augmentation or fewer trainable "
                    "stages.")
    else:
        sentence = (f"No sign of overfitting on the training data: AUROC {train} on training images and "
                    f"{val} on validation patients ({kept}; gap {shown_gap}, limit {shown_limit}). This says "
                    "nothing about other sites or scanners.")
    return Overfitting(train_val_auroc_gap=gap, limit=limit, flag=bool(gap > limit), sentence=sentence)


def size_warnings(split: str, entry: Mapping[str, Any], classes: Sequence[str]) -> list[str]:
    """Plain warnings when ``split`` is too small for its intervals to carry a conclusion."""
    split = SPLIT_WORDS.get(split, split)
    warnings = []
    small = {name: count for name, count in entry["counts"].items() if count < MIN_PER_CLASS}
    if small:
        listed = ", ".join(f"{count} {name}" for name, count in small.items())
        warnings.append(f"The {split} set holds only {listed} image(s) (fewer than {MIN_PER_CLASS} per class): its "
                        "figures can move a lot with a few images, so treat them as rough.")
    bounds = entry.get("ci", {}).get("auroc")
    if bounds is not None and bounds[1] - bounds[0] > WIDE_INTERVAL:
        warnings.append(f"The 95 % interval of the {split} AUROC spans {interval(bounds, typeset=False, joiner=' to ')}, wider "
                        f"than {WIDE_INTERVAL:.1f}: too wide to tell a good model from a mediocre one. Evaluate on more "
                        "patients (medxfer evaluate) before relying on it.")
    return warnings

