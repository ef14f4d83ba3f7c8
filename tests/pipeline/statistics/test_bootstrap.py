"""Bootstrap intervals: they cover at the nominal rate, resample patients whole, and say when they cannot."""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import pytest
from scipy.stats import norm

from medxfer.pipeline.statistics import bootstrap
from medxfer.pipeline.statistics.bootstrap import (
    Interval,
    Resamples,
    bootstrap_values,
    draw_resamples,
    percentile_interval,
)


def covers(interval: Interval, truth: float) -> bool:
    assert interval.low is not None and interval.high is not None, interval.reason
    return interval.low <= truth <= interval.high


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney AUROC: the share of (positive, negative) pairs ranked right, ties counting one
    half (a resample repeats images, so ties are common); NaN with one class only."""
    negatives = np.sort(scores[labels == 0])
    positives = scores[labels == 1]
    if negatives.size == 0 or positives.size == 0:
        return math.nan
    below = np.searchsorted(negatives, positives, "left") + np.searchsorted(negatives, positives, "right")
    return float(below.sum() / (2 * positives.size * negatives.size))


def multiplicities(resamples: Resamples, n: int) -> np.ndarray:
    """How often each item appears in each resample: (resamples, n)."""
    return np.stack([np.bincount(idx, minlength=n) for idx in resamples.indices])


# --- coverage -------------------------------------------------------------------------------


def test_intervals_of_a_mean_cover_the_true_mean_at_about_the_nominal_rate():
    # 400 replications: Monte-Carlo standard error of the coverage sqrt(0.95 * 0.05 / 400) = 0.011.
    # The percentile interval of a mean of n = 200 is close to mean +- 1.96 * s / sqrt(n) with the
    # plug-in s (a factor sqrt(199/200)) and normal rather than t quantiles: about 0.946 expected.
    # 0.946 +- 3.5 standard errors gives the accepted range [0.91, 0.985].
    rng = np.random.default_rng(1)
    hits = 0
    for replication in range(400):
        x = rng.normal(3.0, 2.0, size=200)
        resamples = draw_resamples(200, resamples=500, seed=replication)
        values = bootstrap_values(lambda idx, x=x: {"mean": x[idx].mean()}, resamples)
        hits += covers(percentile_interval(values["mean"]), 3.0)
    assert 0.91 <= hits / 400 <= 0.985


def test_intervals_of_an_auroc_cover_the_true_auroc_at_about_the_nominal_rate():
    # Binormal scores: negatives N(0, 1), positives N(d, 1), so the true AUROC is Phi(d / sqrt(2)).
    # 150 replications: standard error sqrt(0.95 * 0.05 / 150) = 0.018; the percentile interval of
    # an AUROC from 100 + 100 images undercovers a little (about 0.94). 0.94 - 3.5 standard errors
    # gives the lower bound 0.875; 0.995 rejects only full coverage (probability 0.95^150 < 0.001).
    d = 1.0
    truth = norm.cdf(d / math.sqrt(2))
    labels = np.repeat([0, 1], 100)
    rng = np.random.default_rng(2)
    hits = 0
    for replication in range(150):
        scores = rng.normal(d * labels, 1.0)
        resamples = draw_resamples(200, resamples=300, seed=replication)
        values = bootstrap_values(lambda idx, s=scores: {"auroc": auroc(s[idx], labels[idx])}, resamples)
        hits += covers(percentile_interval(values["auroc"]), truth)
    assert 0.875 <= hits / 150 <= 0.995


def test_only_the_patient_bootstrap_covers_when_the_images_of_a_patient_are_alike():
    # 100 patients x 4 images, image = patient effect N(0, 1) + image noise N(0, 0.5^2): intra-class
    # correlation 0.8, design effect 1 + 3 * 0.8 = 3.4. Resampling images treats 400 images as
    # independent: its interval is sqrt(3.4) = 1.84 times too narrow, coverage about
    # 2 * Phi(1.96 / 1.84) - 1 = 0.71. Resampling patients: about 0.94 (100 clusters). 300
    # replications, standard error 0.013: patient coverage in [0.90, 0.985], image below 0.85.
    patients = np.repeat(np.arange(100), 4)
    rng = np.random.default_rng(3)
    hits = {"patient": 0, "image": 0}
    for replication in range(300):
        y = rng.normal(0.0, 1.0, size=100)[patients] + rng.normal(0.0, 0.5, size=400)
        for unit, groups in (("patient", patients.tolist()), ("image", None)):
            resamples = draw_resamples(400, groups, resamples=500, seed=replication)
            assert resamples.unit == unit
            means = y[np.stack(resamples.indices)].mean(axis=1)  # every resample holds 400 images here
            hits[unit] += covers(percentile_interval(means), 0.0)
    assert 0.90 <= hits["patient"] / 300 <= 0.985
    assert hits["image"] / 300 < 0.85


# --- drawing resamples ----------------------------------------------------------------------


def test_a_resample_holds_every_image_of_each_drawn_patient():
    rng = np.random.default_rng(4)
    groups = [f"p{p}" for p in rng.permutation(np.repeat(np.arange(30), rng.integers(1, 5, size=30)))]
    n = len(groups)
    resamples = draw_resamples(n, groups, resamples=200, seed=0)
    assert resamples.unit == "patient" and resamples.n_groups == 30
    counts = multiplicities(resamples, n)
    drawn = np.zeros((200, 30), dtype=int)
    for p in range(30):
        members = [i for i, g in enumerate(groups) if g == f"p{p}"]
        # Every image of a patient appears as often as the patient was drawn.
        assert (counts[:, members] == counts[:, members[:1]]).all()
        drawn[:, p] = counts[:, members[0]]
    assert (drawn.sum(axis=1) == 30).all()  # as many draws as patients
    assert ((drawn > 0).sum(axis=1) <= 30).all()
    assert (drawn > 1).any()  # with replacement


def test_images_without_a_patient_id_are_resampled_on_their_own():
    groups = ["a", None, "a", "b", None, math.nan, "b", None]
    resamples = draw_resamples(len(groups), groups, resamples=300, seed=0)
    assert resamples.unit == "patient"
    assert resamples.n_groups == 2 + 4  # a, b and four images without an id
    counts = multiplicities(resamples, len(groups))
    assert (counts[:, 0] == counts[:, 2]).all() and (counts[:, 3] == counts[:, 6]).all()
    singletons = counts[:, [1, 4, 5, 7]]
    assert (singletons != singletons[:, :1]).any(axis=0)[1:].all()  # not drawn together


def test_without_patient_ids_the_images_are_resampled():
    for groups in (None, [None] * 50):
        resamples = draw_resamples(50, groups, resamples=100, seed=0)
        assert resamples.unit == "image" and resamples.n_groups == 50
        assert all(idx.shape == (50,) and idx.min() >= 0 and idx.max() < 50 for idx in resamples.indices)
    # Distinct patient ids everywhere: the same resamples as the image bootstrap, unit aside.
    by_patient = draw_resamples(50, [f"p{i}" for i in range(50)], resamples=100, seed=0)
    assert by_patient.unit == "patient"
    assert all((a == b).all() for a, b in zip(by_patient.indices, resamples.indices, strict=True))


def test_the_same_seed_gives_the_same_resamples_and_another_seed_others():
    groups = [i // 3 for i in range(60)]
    first, again, other = (draw_resamples(60, groups, resamples=50, seed=s) for s in (7, 7, 8))
    assert all((a == b).all() for a, b in zip(first.indices, again.indices, strict=True))
    assert any(a.shape != b.shape or (a != b).any() for a, b in zip(first.indices, other.indices, strict=True))
    assert first.seed == 7 and other.seed == 8


def test_patients_are_numbered_by_first_appearance_not_by_their_ids():
    # Renaming the patients (order of appearance kept) leaves the resamples unchanged, so they do
    # not depend on how ids sort or hash (string hashing changes from one Python process to the next).
    original = ["zeta", "alpha", "zeta", "mu", "alpha", "beta", "mu", "mu"]
    renamed = [{"zeta": 1, "alpha": 2, "mu": 3, "beta": 4}[g] for g in original]
    a = draw_resamples(8, original, resamples=100, seed=5)
    b = draw_resamples(8, renamed, resamples=100, seed=5)
    assert all((x == y).all() for x, y in zip(a.indices, b.indices, strict=True))


def test_drawing_1000_patient_resamples_of_1000_images_is_fast():
    rng = np.random.default_rng(6)
    groups = np.repeat(np.arange(400), rng.integers(1, 5, size=400))[:1000].tolist()
    start = time.perf_counter()
    resamples = draw_resamples(1000, groups, resamples=1000, seed=0)
    assert time.perf_counter() - start < 1.0
    assert len(resamples.indices) == 1000


def test_patient_resamples_do_not_depend_on_how_many_are_built_at_once(monkeypatch):
    groups = [i // 3 for i in range(90)] + [None] * 10
    whole = draw_resamples(100, groups, resamples=40, seed=2)
    monkeypatch.setattr(bootstrap, "_BLOCK_ITEMS", 250)  # two or three resamples per block
    in_blocks = draw_resamples(100, groups, resamples=40, seed=2)
    assert len(in_blocks.indices) == 40
    assert all((a == b).all() for a, b in zip(whole.indices, in_blocks.indices, strict=True))


def test_drawing_rejects_ids_that_do_not_match_the_images():
    with pytest.raises(ValueError, match="3 patient ids for 4 items"):
        draw_resamples(4, ["a", "b", "c"])
    with pytest.raises(ValueError, match="at least one"):
        draw_resamples(0)


# --- values on resamples --------------------------------------------------------------------


def test_a_subgroup_missing_from_a_resample_gets_nan_there_without_a_call():
    n = 20
    x = np.arange(n, dtype=float)
    within = np.zeros(n, dtype=bool)
    within[[7]] = True  # a subgroup of one image: missing from about (19/20)^20 = 36 % of resamples
    resamples = draw_resamples(n, resamples=200, seed=0)
    seen = []

    def statistic(idx: np.ndarray) -> dict[str, float]:
        seen.append(idx)
        return {"mean": x[idx].mean(), "n": float(idx.size)}

    values = bootstrap_values(statistic, resamples, within=within)
    present = np.array([7 in idx for idx in resamples.indices])
    assert 0 < present.sum() < 200
    assert len(seen) == present.sum() and all((idx == 7).all() for idx in seen)
    for key in ("mean", "n"):
        assert np.isnan(values[key][~present]).all() and not np.isnan(values[key][present]).any()
    counts = [np.count_nonzero(idx == 7) for idx in resamples.indices]
    assert (values["n"][present] == np.array(counts)[present]).all()  # repeats kept
    interval = percentile_interval(values["mean"], why="the group is missing from some resamples")
    assert interval.as_list() is None
    assert interval.reason == (
        f"undefined in {200 - present.sum()} of 200 resamples: the group is missing from some resamples"
    )


def test_a_single_class_subgroup_has_no_interval_and_says_how_often_it_was_undefined():
    rng = np.random.default_rng(8)
    labels = np.repeat([0, 1], 50)
    scores = rng.normal(labels, 1.0)
    groups = np.repeat(np.arange(50), 2).tolist()  # two images per patient
    women = labels == 0  # in this subgroup every image is negative
    resamples = draw_resamples(100, groups, resamples=250, seed=0)
    values = bootstrap_values(lambda idx: {"auroc": auroc(scores[idx], labels[idx])}, resamples, within=women)
    interval = percentile_interval(values["auroc"], why="holds one class only")
    assert (interval.low, interval.high, interval.defined, interval.total) == (None, None, 0, 250)
    assert interval.reason == "undefined in 250 of 250 resamples: holds one class only"
    everyone = bootstrap_values(lambda idx: {"auroc": auroc(scores[idx], labels[idx])}, resamples)
    overall = percentile_interval(everyone["auroc"])
    assert overall.reason is None and overall.low < overall.high


def test_the_statistics_errors_and_changing_keys_are_not_swallowed():
    resamples = draw_resamples(5, resamples=3, seed=0)
    with pytest.raises(ZeroDivisionError):
        bootstrap_values(lambda idx: {"x": 1 / 0}, resamples)
    calls = iter([{"a": 1.0}, {"b": 1.0}, {"a": 1.0}])
    with pytest.raises(ValueError, match="keys"):
        bootstrap_values(lambda idx: next(calls), resamples)


def test_no_resamples_give_no_values_and_an_interval_that_says_why():
    resamples = draw_resamples(10, resamples=0)
    assert resamples.indices == () and bootstrap_values(lambda idx: {"x": 1.0}, resamples) == {}
    interval = percentile_interval(np.array([]))
    assert interval.as_list() is None and interval.total == 0 and interval.reason


# --- intervals ------------------------------------------------------------------------------


def test_min_defined_accepts_at_its_boundary_and_refuses_just_below():
    values = np.linspace(0.0, 1.0, 1000)
    at_boundary = values.copy()
    at_boundary[:50] = np.nan  # 950 of 1000 defined
    accepted = percentile_interval(at_boundary, min_defined=0.95)
    assert accepted.reason is None and accepted.defined == 950
    assert accepted.as_list() == pytest.approx(np.quantile(values[50:], [0.025, 0.975]).tolist())
    below = values.copy()
    below[:51] = np.nan
    refused = percentile_interval(below, min_defined=0.95)
    assert refused.as_list() is None and refused.reason == "undefined in 51 of 1000 resamples"
    assert percentile_interval(below, min_defined=0.949).reason is None


def test_only_undefined_values_give_a_reason_not_an_error_or_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        interval = percentile_interval(np.full(100, np.nan), min_defined=0.0)
    assert (interval.low, interval.high, interval.defined) == (None, None, 0)
    assert interval.reason == "undefined in 100 of 100 resamples"


def test_the_interval_is_the_central_level_share_of_the_values():
    values = np.arange(1001, dtype=float)
    assert percentile_interval(values).as_list() == pytest.approx([25.0, 975.0])
    assert percentile_interval(values, level=0.5).as_list() == pytest.approx([250.0, 750.0])
    with pytest.raises(ValueError, match="level"):
        percentile_interval(values, level=95)


def test_bootstrap_values_accept_any_hashable_key():
    resamples = draw_resamples(6, ["a", "a", "b", "b", "c", "c"], resamples=50, seed=1)
    values = bootstrap_values(lambda idx: {("mean", None): float(idx.mean()), ("size", "images"): float(len(idx))},
                              resamples)
    assert set(values) == {("mean", None), ("size", "images")}
    assert values[("size", "images")].tolist() == [float(len(idx)) for idx in resamples.indices]
