"""The operating threshold of a two-class model: which class is the positive one, and where on
its calibrated probability the validation split puts the cut."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import expit

NEGATIVE_NAMES = {"normal", "negative", "no finding", "no_finding", "nofinding", "healthy", "benign", "absent",
                  "none", "control", "no", "0"}
THRESHOLD_PLACEMENT = "midpoint of the neighbouring validation scores on the logit scale"


def positive_class_index(classes: Sequence[str], setting: str = "auto") -> int | None:
    """Index of the class whose probability is thresholded: None for more than two classes."""
    if setting != "auto":
        if setting not in classes:
            raise ValueError(f"positive_class {setting!r} is not one of the classes {list(classes)}")
        if len(classes) != 2:
            raise ValueError(f"positive_class applies to two classes; this model has {len(classes)}")
        return list(classes).index(setting)
    if len(classes) != 2:
        return None
    negative = [i for i, name in enumerate(classes) if name.strip().lower() in NEGATIVE_NAMES]
    return 1 - negative[0] if len(negative) == 1 else 1


def choose_threshold(positive: np.ndarray, log_odds: np.ndarray, method: str,
                     target_sensitivity: float) -> tuple[float, str | None]:
    """The operating threshold, a probability, for the boolean ``positive`` from the validation
    images' ``log_odds`` of the positive class (the logit of its calibrated probability), and a
    note when there is something to say.

    The rule picks a cut between two neighbouring distinct scores: Youden's J (``youden``, the
    largest sensitivity + specificity - 1; among equal J, the highest cut), or the highest cut
    whose sensitivity reaches ``target_sensitivity`` (``sensitivity``). Every threshold in the
    gap between those two scores classifies the validation images alike; the threshold is the
    midpoint of the gap on the logit scale, not its edge, so that new images a little below the
    lowest validation positive are not all missed (measured: benchmarks/statistics.py). When
    the cut lies below the lowest score there is no lower neighbour and the threshold is that
    score. When no cut gives J above 0 the model does not separate the classes on validation:
    0.5 is used and the note says so."""
    values = np.unique(log_odds)[::-1]  # distinct scores, highest first: cut k calls scores >= values[k]
    positives, negatives = log_odds[positive], log_odds[~positive]
    sensitivity = (positives[:, None] >= values[None, :]).mean(0)
    specificity = (negatives[:, None] < values[None, :]).mean(0)
    if method == "youden":
        j = sensitivity + specificity - 1
        if j.max() <= 1e-12:
            return 0.5, ("no threshold separates the classes on the validation split (Youden's J is 0 or below at "
                         "every one): 0.5 used, and the model's labels are no better than chance there")
        best = int(np.argmax(j))
    elif method == "sensitivity":
        best = int(np.flatnonzero(sensitivity >= target_sensitivity - 1e-12)[0])
    else:
        raise ValueError(f"threshold must be youden or sensitivity, got {method!r}")
    cut = values[best] if best + 1 == len(values) else (values[best] + values[best + 1]) / 2
    return float(expit(cut)), None
