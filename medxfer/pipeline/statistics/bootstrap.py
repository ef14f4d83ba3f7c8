"""Bootstrap confidence intervals that resample patients, for the figures of the evaluation
reports that have no interval whose coverage was checked: the average precision, the ECEs and
F1 (the other intervals are patient-clustered and need no resampling: ``intervals.py``). The
report marks every bootstrap interval approximate. Three steps:

- ``draw_resamples`` draws the resamples once per split, as index arrays into its n images.
  When patient ids exist it is a cluster bootstrap: the patients are drawn with replacement and
  a resample holds every image of every drawn patient, so the interval reflects that images of
  one patient are alike (two views of the same lungs are not two independent observations;
  resampling images then gives intervals that are too narrow, see the tests). Without patient
  ids the images themselves are resampled;
- ``bootstrap_values`` evaluates a statistic (a mapping of figure, any hashable key, to value) on each
  resample, optionally restricted to a subgroup (``within``), with NaN where it is undefined
  (a subgroup missing from the resample, an AUROC of one class);
- ``percentile_interval`` turns those values into an ``Interval``, or refuses (low and high
  None, with the reason) when too many resamples are undefined.

A percentile bootstrap over patients covered the true AUROC only about 87 % of the time for a
nominal 95 % at 24 patients (``benchmarks/statistics.py``), which is why the report no longer
uses it where a checked method exists.

Why this is written here rather than taken from a library:

- scikit-learn's ``sklearn.utils.resample`` draws rows (optionally stratified), not groups, and
  scikit-learn computes no bootstrap intervals;
- ``scipy.stats.bootstrap`` resamples independent observations (``paired=True`` shares one index
  draw between arrays, but still draws single observations), has no notion of clusters, and a
  NaN statistic in any resample makes its interval NaN (the quantile propagates it), so an
  undefined AUROC in one resample of a small subgroup loses the whole interval;
- fairlearn (not a dependency) bootstraps ``MetricFrame`` by resampling rows; it used to raise
  when a group was absent from a resample, and now takes quantiles over the resamples where the
  group is present, which is the conditioning ``percentile_interval`` declines to do.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

# Patient resamples are built this many items (about; 8 bytes each) at a time: vectorised, with
# temporary arrays of bounded size however large the split.
_BLOCK_ITEMS = 1 << 22

Key = TypeVar("Key", bound=Hashable)  # what a statistic names its figures by (a metric name, say)

# Sources checked for the module docstring: scipy 1.17 ``scipy/stats/_resampling.py``
# (``bootstrap``: per-observation resampling, ``stats.quantile`` over all resamples, NaN interval
# when one resample's statistic is NaN, tried here); fairlearn issue #1441 (MetricFrame bootstrap
# fails when a sensitive-feature value is not sampled) and its fix, PR #1450 (NaN for the missing
# group, then ``np.nanquantile``).


@dataclass(frozen=True, eq=False)
class Resamples:
    """Bootstrap resamples of n items (images), drawn by ``draw_resamples``.

    ``indices``: one integer array per resample, each entry an item index in [0, n); an item may
    appear several times. Image unit: every array has length n. Patient unit: the length is the
    sum of the drawn patients' image counts, so it varies around n.
    ``unit``: ``"patient"`` or ``"image"``, what was drawn with replacement.
    ``seed``: the seed of ``np.random.default_rng`` that drew them.
    ``n_groups``: how many units were resampled (patients, counting each image without a patient
    id as its own; or images), which is also the number of draws per resample.

    Compared by identity (``eq=False``): equality of index arrays is not a truth value.
    """

    indices: tuple[np.ndarray, ...]
    unit: str
    seed: int
    n_groups: int


@dataclass(frozen=True)
class Interval:
    """A percentile bootstrap interval, or the reason there is none.

    ``low``, ``high``: the interval's ends (``low <= high``), both None when it is refused.
    ``defined``: the number of resamples where the value was defined (not NaN), 0 to ``total``.
    ``total``: the number of resamples.
    ``reason``: why ``low``/``high`` are None (e.g. ``"undefined in 312 of 1000 resamples: ..."``);
    None when the interval exists.
    """

    low: float | None
    high: float | None
    defined: int
    total: int
    reason: str | None

    def as_list(self) -> list[float] | None:
        """``[low, high]`` for ``metrics.json``, or None when the interval is refused."""
        if self.low is None or self.high is None:
            return None
        return [self.low, self.high]


def _is_missing(group: Hashable | None) -> bool:
    """True for a missing patient id: None, or a float NaN (how pandas writes a missing value)."""
    return group is None or (isinstance(group, float) and math.isnan(group))


def _group_codes(n: int, groups: Sequence[Hashable | None]) -> np.ndarray:
    """Integer group codes (n,) numbered 0, 1, ... by first appearance; each item with a missing
    id gets a code of its own. Numbering by appearance, not by hash or sort order, keeps the
    resamples of a seed the same across Python processes and for any kind of id."""
    codes = np.empty(n, dtype=np.intp)
    known: dict[Hashable, int] = {}
    next_code = 0
    for item, group in enumerate(groups):
        if _is_missing(group):
            codes[item] = next_code
            next_code += 1
        else:
            if group not in known:
                known[group] = next_code
                next_code += 1
            codes[item] = known[group]
    return codes


def draw_resamples(
    n: int,
    groups: Sequence[Hashable | None] | None = None,
    *,
    resamples: int = 1000,
    seed: int = 0,
) -> Resamples:
    """Draw ``resamples`` bootstrap resamples of n items (n >= 1), reproducibly from ``seed``.

    ``groups``: one patient id per item (length n), or None. Cluster (patient) bootstrap when at
    least one id is given: each resample draws, with replacement, as many groups as there are
    distinct groups and holds every item of every drawn group (a group drawn twice contributes its
    items twice). Items whose id is missing (None or NaN) are groups of one. With ``groups`` None
    or all missing, the images are resampled (unit ``"image"``, each resample of length n).

    The same n, groups (in the same order), ``resamples`` and ``seed`` always give the same
    resamples. ``resamples`` may be 0 (no intervals; ``percentile_interval`` then says so).
    """
    if n < 1:
        raise ValueError(f"cannot bootstrap {n} items: need at least one")
    if resamples < 0:
        raise ValueError(f"resamples must be >= 0, got {resamples}")
    if groups is not None and len(groups) != n:
        raise ValueError(f"got {len(groups)} patient ids for {n} items: give one per item (None where unknown)")
    rng = np.random.default_rng(seed)
    if groups is None or all(_is_missing(group) for group in groups):
        draws = rng.integers(0, n, size=(resamples, n), dtype=np.intp)
        return Resamples(indices=tuple(draws), unit="image", seed=seed, n_groups=n)

    codes = _group_codes(n, groups)
    n_groups = int(codes.max()) + 1
    draws = rng.integers(0, n_groups, size=(resamples, n_groups), dtype=np.intp)
    # CSR layout: the items of group g are members[starts[g]:starts[g] + sizes[g]].
    members = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes, minlength=n_groups)
    starts = np.cumsum(sizes) - sizes
    indices: list[np.ndarray] = []
    block = max(1, _BLOCK_ITEMS // n)
    for first in range(0, resamples, block):
        drawn = draws[first : first + block]  # (b, n_groups) group codes, b resamples at once
        drawn_sizes = sizes[drawn]
        flat_sizes = drawn_sizes.ravel()
        # Position of each output item inside its drawn group: 0 .. size - 1, group after group.
        offsets = np.arange(flat_sizes.sum()) - np.repeat(np.cumsum(flat_sizes) - flat_sizes, flat_sizes)
        items = members[np.repeat(starts[drawn.ravel()], flat_sizes) + offsets]
        indices += np.split(items, np.cumsum(drawn_sizes.sum(axis=1))[:-1])
    return Resamples(indices=tuple(indices), unit="patient", seed=seed, n_groups=n_groups)


def bootstrap_values(
    statistic: Callable[[np.ndarray], Mapping[Key, float]],
    resamples: Resamples,
    *,
    within: np.ndarray | None = None,
) -> dict[Key, np.ndarray]:
    """Evaluate ``statistic`` on every resample; returns, per key, the values (R,) for R resamples.

    ``statistic`` takes an integer index array into the n items (repeats included) and returns
    ``{key: value}`` (a key names a figure: a metric name, or any hashable, orderable value),
    with NaN where the value is undefined (e.g. an AUROC on one class); every call must return
    the same keys. Its exceptions propagate.

    ``within``: a boolean mask (n,) of a subgroup's items. Each resample is then restricted to its
    items in the subgroup (``idx[within[idx]]``); where none are left (the subgroup is missing from
    that resample), ``statistic`` is not called and every key gets NaN there.

    The keys are those of the first call; if ``statistic`` is never called (no resamples, or the
    subgroup is missing from all of them) the result is empty, and every value is to be read as
    undefined.
    """
    if within is not None:
        within = np.asarray(within)
        if within.dtype != np.bool_ or within.ndim != 1:
            raise ValueError(f"within must be a boolean mask of shape (n,), got {within.dtype} {within.shape}")
    total = len(resamples.indices)
    values: dict[Key, np.ndarray] = {}
    for position, idx in enumerate(resamples.indices):
        chosen = idx if within is None else idx[within[idx]]
        if chosen.size == 0:
            continue
        row = statistic(chosen)
        if not values:
            values = {key: np.full(total, np.nan) for key in row}
        elif row.keys() != values.keys():
            raise ValueError(
                f"the statistic returned keys {sorted(row)} on resample {position}, but {sorted(values)} before"
            )
        for key, value in row.items():
            values[key][position] = value
    return values


def percentile_interval(
    values: np.ndarray,
    *,
    level: float = 0.95,
    min_defined: float = 0.95,
    why: str = "",
) -> Interval:
    """The percentile bootstrap interval at ``level`` (in (0, 1)) of ``values`` (R,), one per
    resample, NaN where undefined: the (1 - level) / 2 and (1 + level) / 2 quantiles of the
    defined values (linear interpolation). Infinite values count as defined.

    Refused (low and high None) when fewer than ``min_defined`` (in [0, 1]) of the resamples are
    defined, when none is, or when there are no resamples; ``reason`` then says how many were
    undefined, followed by ``why`` when given (e.g. "the group is missing from some resamples or
    holds one class only"). Never raises on NaN values.

    Why refuse rather than take the quantiles of the defined resamples alone: the resamples where a
    metric is undefined are not a random subset. A subgroup's AUROC is undefined exactly in the
    resamples that drew few of its patients or none of its positives, and its value in the
    resamples that remain is systematically different, so an interval conditioned on definedness
    describes a different (luckier) sample than the one reported, and may be both shifted and too
    narrow. With at most a share u of resamples undefined, whatever values they would have taken,
    the ends returned lie at quantile levels of the full bootstrap distribution that are off by at
    most u; ``min_defined = 0.95`` keeps that error within 5 percentage points, and beyond it the
    report says the interval is unknown instead of printing a misleading one.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if not 0 <= min_defined <= 1:
        raise ValueError(f"min_defined must be in [0, 1], got {min_defined}")
    values = np.asarray(values, dtype=float)
    if values.ndim != 1:
        raise ValueError(f"values must have shape (resamples,), got {values.shape}")
    total = values.size
    if total == 0:
        return Interval(low=None, high=None, defined=0, total=0, reason="no bootstrap resamples were drawn")
    kept = values[~np.isnan(values)]
    defined = kept.size
    if defined == 0 or defined / total < min_defined:
        reason = f"undefined in {total - defined} of {total} resamples" + (f": {why}" if why else "")
        return Interval(low=None, high=None, defined=defined, total=total, reason=reason)
    low, high = np.quantile(kept, [(1 - level) / 2, (1 + level) / 2])
    return Interval(low=float(low), high=float(high), defined=defined, total=total, reason=None)
