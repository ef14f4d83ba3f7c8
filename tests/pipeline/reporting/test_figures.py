"""The report's figures, inspected as matplotlib objects before they become PNG bytes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from medxfer.pipeline.evaluation.inputs import SplitScores
from medxfer.pipeline.reporting import figures


@pytest.fixture
def keep_figure(monkeypatch):
    """Each figure function returns its Figure instead of PNG bytes."""
    monkeypatch.setattr(figures, "_png", lambda figure: figure)


def _scores(n: int, rng: np.random.Generator) -> SplitScores:
    labels = rng.integers(0, 2, n)
    p = np.clip(0.5 + 0.3 * (labels - 0.5) + rng.normal(0, 0.2, n), 0.01, 0.99)
    probabilities = np.column_stack([1 - p, p])
    return SplitScores(labels=labels, probabilities=probabilities, uncalibrated=probabilities)


def _bins(counts: list[int]) -> list[dict]:
    edges = np.linspace(0, 1, len(counts) + 1)
    return [{"lower": lo, "upper": hi, "count": c, "confidence": None if c == 0 else (lo + hi) / 2,
             "accuracy": None if c == 0 else (lo + hi) / 2} for (lo, hi), c in zip(itertools.pairwise(edges), counts)]


def test_the_pr_legend_spells_out_average_precision(keep_figure):
    """"AP" would read as the AP view of the subgroup tables on a chest X-ray report."""
    rng = np.random.default_rng(0)
    scores = {"val": _scores(100, rng), "test": _scores(100, rng)}
    figure = figures.pr_curves(scores, ["NORMAL", "PNEUMONIA"], "PNEUMONIA")
    legend = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert len(legend) == 2 and all("average precision 0." in line for line in legend)
    assert not any(" AP " in line for line in legend)


def test_the_reliability_count_panels_share_one_scale(keep_figure):
    """Before and after hold the same images: their bin counts compare only on one y scale."""
    before = [0] * 7 + [2, 3, 4, 5, 6, 8, 10, 75]
    after = [0] * 7 + [5, 10, 9, 6, 6, 19, 16, 64]
    split = {"n": sum(before), "ece": 0.09, "ece_uncalibrated": 0.12,
             "reliability": {"before": _bins(before), "after": _bins(after)}}
    figure = figures.reliability_diagrams(split, method="temperature scaling")
    counts = [ax for ax in figure.axes if ax.get_ylabel() == "Images"]
    assert len(counts) == 2
    assert counts[0].get_ylim() == counts[1].get_ylim()
    assert counts[0].get_ylim()[1] >= 75


def test_the_roc_legend_gives_the_auroc_scikit_learn_computes_also_with_ties(keep_figure):
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(2)
    scores = {"test": _scores(120, rng)}
    scores["test"].probabilities[:, 1] = np.round(scores["test"].probabilities[:, 1], 1)  # many ties
    scores["test"].probabilities[:, 0] = 1 - scores["test"].probabilities[:, 1]
    figure = figures.roc_curves(scores, ["NORMAL", "PNEUMONIA"], "PNEUMONIA")
    legend = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    expected = roc_auc_score(scores["test"].labels == 1, scores["test"].probabilities[:, 1])
    assert any(line.endswith(f"AUROC {expected:.3f}") for line in legend), legend


def test_a_crossfitted_history_draws_one_pair_of_lines_per_fold(keep_figure):
    history = [{"fold": fold, "epoch": epoch, "train_loss": 1.0 / epoch, "val_loss": 0.5, "train_auroc": 0.8,
                "val_auroc": 0.7} for fold in (1, 2, 3) for epoch in (1, 2)]
    figure = figures.learning_curves(history, None)
    loss = figure.axes[0]
    assert len(loss.lines) == 6
    assert all(list(line.get_xdata()) == [1.0, 2.0] for line in loss.lines)  # no line runs back from fold to fold
    assert [t.get_text() for t in loss.get_legend().get_texts()] == ["train (augmented), each fold",
                                                                      "held-out fold, each fold"]
