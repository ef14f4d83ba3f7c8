"""Intervals and tests that keep their stated error rates on small, clustered test sets.

A test set of a few dozen patients with one to four images each is what medxfer's users have.
The images of one patient are alike, so every variance here is *patient-clustered*: each
estimate is written as a sum of per-image influences (its linearisation: how much the estimate
moves with each image), the influences of a patient's images are added up, and the variance is
the spread of those patient sums (the sandwich or "cluster-robust" variance, with the usual
k / (k - 1) correction for k patients). For the AUROC the influences are DeLong's structural
components, so this is DeLong's variance corrected for clustering (Obuchowski 1997).

Small samples then get three further corrections, each measured by simulation with known truth
(``benchmarks/statistics.py``; the README's "How far to trust the numbers"):

- the AUROC interval is built on the logit scale and mapped back, so it stays inside [0, 1] and
  follows the estimate's skew near 1;
- proportions (sensitivity, specificity, accuracy...) get a Wilson score interval on their
  *effective* sample size (the images' count divided by the design effect that clustering
  causes, never more than the images), which behaves at 0 % and 100 %;
- quantiles come from Student's t with the degrees of freedom the data support (patients of the
  smaller class, minus one), not from the normal distribution: with ten positive patients the
  variance estimate itself is uncertain.

At 24 patients (about 60 images) the percentile bootstrap over patients covered the true AUROC
about 87 % of the time for a nominal 95 %; these intervals cover about 96 %, and 95 % at 120
patients. Why not a library: scikit-learn and SciPy have no clustered AUROC variance, and
statsmodels' cluster-robust covariances are for regression coefficients, not rank statistics.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import expit, logit, stdtr, stdtrit

LOGIT_WALD = "logit-scale Wald, patient-clustered variance, t quantile"
WILSON = "Wilson score on the effective sample size, patient-clustered design effect, t quantile"
MOVER = "MOVER combination of the components' Wilson intervals"
MEAN_T = "t interval of a mean, patient-clustered variance"


def patient_codes(patients: Sequence[Hashable | None], n: int) -> np.ndarray:
    """Integer patient codes (n,), by first appearance; an image without a patient id is a
    patient of its own (it cannot be shown to be related to any other)."""
    if not len(patients):
        return np.arange(n, dtype=np.intp)
    known: dict[Hashable, int] = {}
    codes = np.empty(n, dtype=np.intp)
    for i, patient in enumerate(patients):
        missing = patient is None or (isinstance(patient, float) and math.isnan(patient))
        codes[i] = known.setdefault(("image", i) if missing else ("patient", patient), len(known))
    return codes


@dataclass(frozen=True)
class Estimate:
    """A statistic and its linearisation: ``value`` (NaN when undefined), ``influence`` (n,) the
    per-image influence (zero for images that do not count), ``df``, the degrees of freedom of
    its t quantile (patients of the smaller group that it depends on, minus one), and
    ``strata`` (n,), for an AUROC the class of each image, whose small-sample corrections are
    made class by class, as DeLong's are (None: one stratum)."""

    value: float
    influence: np.ndarray
    df: int
    strata: np.ndarray | None = None

    @property
    def defined(self) -> bool:
        return not math.isnan(self.value)


def _undefined(n: int) -> Estimate:
    return Estimate(float("nan"), np.zeros(n), 0)


def _factor(k: int) -> float:
    return k / (k - 1) if k > 1 else float("nan")


def clustered_variance(influence: np.ndarray, patients: np.ndarray, strata: np.ndarray | None = None) -> float:
    """The sandwich variance of a linearised estimate: the sum over patients of the squared sum
    of their images' influences, times k / (k - 1) for k patients with a non-zero influence. With
    ``strata`` (an AUROC's classes) each stratum's own sum of squares gets its own k_s / (k_s - 1):
    DeLong's m / (m - 1) and n / (n - 1), which matter when one class has few patients."""
    counts = np.bincount(patients, weights=np.abs(influence))
    sums = np.bincount(patients, weights=influence)
    overall = _factor(int(np.count_nonzero(counts)))
    variance = overall * float(np.sum(sums**2))
    if strata is not None:
        for stratum in np.unique(strata[influence != 0]):
            inside = strata == stratum
            part = np.bincount(patients, weights=np.where(inside, influence, 0.0), minlength=len(sums))
            k = int(np.count_nonzero(np.bincount(patients[inside & (influence != 0)], minlength=len(sums))))
            variance += (_factor(k) - overall) * float(np.sum(part**2))
    return variance


def _patients_in(mask: np.ndarray, patients: np.ndarray) -> int:
    """Distinct patients among the images ``mask`` selects (codes are small integers)."""
    return int(np.count_nonzero(np.bincount(patients[mask])))


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (``scipy.stats.rankdata``'s default), by
    NumPy alone: rankdata's input handling costs more than the ranking on the small arrays a
    report ranks thousands of times."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2)[inverse]


def auroc_estimate(positive: np.ndarray, scores: np.ndarray, patients: np.ndarray,
                   within: np.ndarray | None = None) -> Estimate:
    """The AUROC of ``scores`` (n,) for the boolean ``positive`` (n,) over the images in
    ``within`` (a boolean mask, default all), with DeLong's structural components as influences:
    for a positive image, (share of negatives it outranks - AUROC) / positives; for a negative
    one, (share of positives that outrank it - AUROC) / negatives. Ties count one half.

    Not a second AUROC: the point estimate is ``scoring.binary_auroc``'s (the same Mann-Whitney
    statistic, equal to within rounding); this computes its linearisation, which
    ``binary_auroc`` has no use for, and the value the influences are centred on. It serves the
    intervals and tests, and the subgroups' AUROC, whose interval it is computed with."""
    n = len(scores)
    within = np.ones(n, bool) if within is None else within
    pos, neg = within & positive, within & ~positive
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    if n_pos == 0 or n_neg == 0:
        return _undefined(n)
    both = np.flatnonzero(pos | neg)
    ranks = _ranks(scores[both])
    is_pos = positive[both]
    # for each positive: negatives below it (+ half the ties) = its rank among all minus its
    # rank among positives; for each negative, symmetrically
    pos_ranks = _ranks(scores[both][is_pos])
    neg_ranks = _ranks(scores[both][~is_pos])
    below = (ranks[is_pos] - pos_ranks) / n_neg  # share of negatives each positive outranks
    above = (n_pos - (ranks[~is_pos] - neg_ranks)) / n_pos  # share of positives outranking each negative
    value = float(below.mean())
    influence = np.zeros(n)
    influence[both[is_pos]] = (below - value) / n_pos
    influence[both[~is_pos]] = (above - value) / n_neg
    df = min(_patients_in(pos, patients), _patients_in(neg, patients)) - 1
    return Estimate(value, influence, max(df, 1), positive.astype(np.intp))


def proportion_estimate(success: np.ndarray, counted: np.ndarray, patients: np.ndarray) -> Estimate:
    """The share of ``success`` (boolean, n) among the images ``counted`` (boolean mask): a
    ratio estimator, influence (success - share) / count for counted images."""
    n = len(success)
    count = int(counted.sum())
    if count == 0:
        return _undefined(n)
    value = float(success[counted].mean())
    influence = np.where(counted, (success.astype(float) - value) / count, 0.0)
    return Estimate(value, influence, max(_patients_in(counted, patients) - 1, 1))


def mean_estimate(values: np.ndarray, counted: np.ndarray, patients: np.ndarray) -> Estimate:
    """The mean of ``values`` over the images ``counted``."""
    n = len(values)
    count = int(counted.sum())
    if count == 0:
        return _undefined(n)
    value = float(values[counted].mean())
    influence = np.where(counted, (values - value) / count, 0.0)
    return Estimate(value, influence, max(_patients_in(counted, patients) - 1, 1))


def average(estimates: Sequence[Estimate]) -> Estimate:
    """The mean of several estimates (balanced accuracy, a macro average); its influence is the
    mean of theirs, its degrees of freedom the smallest of theirs. The AUROCs of a macro average
    keep their classes as strata."""
    if not estimates or any(not e.defined for e in estimates):
        return _undefined(len(estimates[0].influence) if estimates else 0)  # n unknown without estimates: 0
    first = estimates[0].strata
    same = first is not None and all(e.strata is not None and np.array_equal(e.strata, first) for e in estimates)
    strata = first if same else None
    return Estimate(float(np.mean([e.value for e in estimates])),
                    np.mean([e.influence for e in estimates], axis=0), min(e.df for e in estimates), strata)


@dataclass(frozen=True)
class Interval:
    """``low``-``high`` at the stated level, how it was computed, and ``approximate`` with the
    reason when the data are too few for the method's coverage to hold (None otherwise)."""

    low: float
    high: float
    method: str
    approximate: str | None = None

    def as_list(self) -> list[float]:
        return [self.low, self.high]


def _quantile(level: float, df: int) -> float:
    """Student's t quantile for a two-sided interval at ``level`` (``scipy.special.stdtrit``, the
    ufunc behind ``scipy.stats.t.ppf`` without its per-call overhead)."""
    return float(stdtrit(df, (1 + level) / 2))


def _wilson(p: float, effective: float, z: float) -> tuple[float, float]:
    denominator = 1 + z * z / effective
    centre = (p + z * z / (2 * effective)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / effective + z * z / (4 * effective * effective))
    return max(0.0, centre - half), min(1.0, centre + half)


def logit_interval(estimate: Estimate, patients: np.ndarray, level: float = 0.95) -> Interval | None:
    """Wald interval on the logit scale, for a value in [0, 1] such as the AUROC. Where the logit
    has no variance to work with (an AUROC of exactly 0 or 1, the classes perfectly separated, or
    no spread at all) the interval is Wilson's for that value over the patients of the smaller
    class: conservative, and marked approximate."""
    if not estimate.defined:
        return None
    variance = clustered_variance(estimate.influence, patients, estimate.strata)
    z = _quantile(level, estimate.df)
    value = estimate.value
    if value in (0.0, 1.0) or not variance > 0:
        low, high = _wilson(value, estimate.df + 1, z)
        where = f"at {value:.0f} exactly" if value in (0.0, 1.0) else "no spread to measure"
        return Interval(low, high, LOGIT_WALD, approximate=f"{where} (Wilson's bound over the patients of the "
                                                             "smaller class)")
    spread = z * math.sqrt(variance) / (value * (1 - value))
    centre = float(logit(value))
    return Interval(float(expit(centre - spread)), float(expit(centre + spread)), LOGIT_WALD)


def wilson_interval(estimate: Estimate, counted: np.ndarray, patients: np.ndarray,
                    level: float = 0.95) -> Interval | None:
    """Wilson score interval of a proportion, on its effective sample size: the images counted
    divided by the design effect (clustered over simple binomial variance), at most the count.
    At a share of 0 or 1 there is no spread to estimate the design effect from, so the patients
    counted stand in for the effective size (every patient's images alike: conservative)."""
    if not estimate.defined:
        return None
    count = int(counted.sum())
    p = estimate.value
    if p in (0.0, 1.0):
        effective = _patients_in(counted, patients)
    else:
        variance = clustered_variance(estimate.influence, patients)
        effective = count if not variance > 0 else min(count, p * (1 - p) / variance)
    low, high = _wilson(p, effective, _quantile(level, estimate.df))
    return Interval(low, high, WILSON)


def standard_error_of(interval: Sequence[float], df: int, level: float = 0.95) -> float:
    """The standard error an interval symmetric on its scale was built with, read back from its
    width (a Wilson interval is not symmetric: for it, a standard error of the same width)."""
    return (interval[1] - interval[0]) / (2 * _quantile(level, df))


def mover_average(values: Sequence[float], intervals: Sequence[Interval]) -> Interval:
    """The interval of the mean of independent estimates from their own intervals (MOVER, Zou and
    Donner 2008): each bound moves by the root of the summed squared distances of the components'
    bounds. Unlike a variance of the mean, it keeps the width of a component at 0 or 1 (a
    sensitivity of 0 has a Wilson interval, not a zero variance)."""
    k = len(values)
    mean = float(np.mean(values))
    below = math.sqrt(sum((v - i.low) ** 2 for v, i in zip(values, intervals, strict=True))) / k
    above = math.sqrt(sum((i.high - v) ** 2 for v, i in zip(values, intervals, strict=True))) / k
    return Interval(max(0.0, mean - below), min(1.0, mean + above), MOVER)


def mean_interval(estimate: Estimate, patients: np.ndarray, level: float = 0.95) -> Interval | None:
    """t interval of a mean with its patient-clustered variance."""
    if not estimate.defined:
        return None
    variance = clustered_variance(estimate.influence, patients)
    half = _quantile(level, estimate.df) * math.sqrt(variance) if variance > 0 else 0.0
    return Interval(estimate.value - half, estimate.value + half, MEAN_T)


@dataclass(frozen=True)
class Comparison:
    """``difference`` = a - b, its interval at the stated level, and the p-value of the test of
    no difference (``side``: "two-sided", or "less": a below b)."""

    difference: float
    low: float
    high: float
    p_value: float
    df: int


def compare(a: Estimate, b: Estimate, patients: np.ndarray, *, level: float = 0.95, side: str = "two-sided",
            null: float = 0.0) -> Comparison | None:
    """Test ``a - b = null`` (``b`` may be a constant: pass ``constant(c, n)``) with the
    patient-clustered variance of the difference of their influences, which accounts for
    patients who have images on both sides (class by class when both are AUROCs). Student's t
    with the smaller of the two degrees of freedom (conservative, like Welch's lower bound).
    None when the difference has no variance (both AUROCs at 1, say): nothing to test."""
    if not (a.defined and b.defined):
        return None
    difference = a.value - b.value
    strata = a.strata if a.strata is not None else b.strata
    variance = clustered_variance(a.influence - b.influence, patients, strata)
    df = min(a.df, b.df)
    if not variance > 0:
        return None
    se = math.sqrt(variance)
    statistic = (difference - null) / se
    p_value = t_p_value(statistic, df, side)
    half = _quantile(level, df) * se
    return Comparison(difference, difference - half, difference + half, p_value, df)


def compare_proportions(success: np.ndarray, first: np.ndarray, second: np.ndarray, patients: np.ndarray, *,
                        level: float = 0.95, side: str = "two-sided") -> Comparison | None:
    """Two proportions (the share of ``success`` among the images of ``first`` and of
    ``second``, boolean masks) compared by the score test: under the null both sides share the
    pooled proportion p0, so the variance of the difference is p0 (1 - p0) (D / n1 + D / n2),
    D the design effect of clustering measured on both sides together (at least 1). A variance
    taken from each side's own spread would be near zero for a side with no success at all, and
    a group without positives would then look far more different than it is. The interval of
    the difference is Newcombe's hybrid score interval (the two sides' Wilson intervals on their
    effective sizes, combined by MOVER), defined even when a side is at 0 or 1. None when either
    side is empty or every image of both has the same outcome."""
    n1, n2 = int(first.sum()), int(second.sum())
    if n1 == 0 or n2 == 0:
        return None
    a = proportion_estimate(success, first, patients)
    b = proportion_estimate(success, second, patients)
    both = first | second
    pooled = proportion_estimate(success, both, patients)
    p0 = pooled.value
    if p0 in (0.0, 1.0):
        return None
    design = max(1.0, clustered_variance(pooled.influence, patients) / (p0 * (1 - p0) / int(both.sum())))
    variance = p0 * (1 - p0) * design * (1 / n1 + 1 / n2)
    df = min(a.df, b.df)
    difference = a.value - b.value
    p_value = t_p_value(difference / math.sqrt(variance), df, side)
    first_interval = wilson_interval(a, first, patients, level)
    second_interval = wilson_interval(b, second, patients, level)
    low = difference - math.hypot(a.value - first_interval.low, second_interval.high - b.value)
    high = difference + math.hypot(first_interval.high - a.value, b.value - second_interval.low)
    return Comparison(difference, low, high, p_value, df)


def t_p_value(statistic: float, df: int, side: str = "two-sided") -> float:
    """The p-value of a t ``statistic`` (``scipy.special.stdtr``: Student's t distribution function)."""
    if side == "less":
        return float(stdtr(df, statistic))
    if side == "two-sided":
        return float(2 * stdtr(df, -abs(statistic)))
    raise ValueError(f"side must be 'two-sided' or 'less', got {side!r}")


def constant(value: float, n: int, df: int = 10**6) -> Estimate:
    """A fixed reference value (0.5 for "no separation") as an estimate with no variance."""
    return Estimate(value, np.zeros(n), df)
