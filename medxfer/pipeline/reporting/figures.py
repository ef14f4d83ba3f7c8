"""The figures of the evaluation report, each drawn with matplotlib and returned as PNG bytes.

The report embeds its figures in one HTML file, so every function here returns the bytes of a
PNG rather than writing a file. Figures are built with matplotlib's object API (``Figure`` on an
Agg canvas), never with pyplot: pyplot keeps every open figure in a process-wide registry, which
is not thread-safe, leaks memory when a figure is not closed, and may pick a display backend.
Here a figure is an ordinary object, cleared once rendered and then garbage collected.

Colours are the Okabe-Ito palette, which stays distinguishable with the common colour-vision
deficiencies, and lines also differ in style or marker, so no reading depends on colour alone.
Sizes are in inches at ``DPI``; the report shows each PNG at 96 CSS pixels per inch, so a 10 pt
label reads as about 13 px on screen and stays sharp on high-density displays.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from medxfer.pipeline.evaluation.schema import BiasFlag, ReliabilityBin, Split, Subgroup
from medxfer.pipeline.evaluation.wording import SPLIT_NAMES, interval, missing, not_available, number, percent
from medxfer.pipeline.statistics.scoring import binary_auroc, binary_average_precision

if TYPE_CHECKING:
    from medxfer.pipeline.evaluation.inputs import SplitScores

DPI = 150
# the Okabe-Ito palette
BLUE, VERMILLION, GREEN, PURPLE, ORANGE, SKY, BLACK = "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"
CLASS_COLOURS = (BLUE, VERMILLION, GREEN, PURPLE, ORANGE, SKY, BLACK)
GREY = "#777777"
SPLIT_STYLES = {"val": {"color": ORANGE, "linestyle": "--"}, "test": {"color": BLUE, "linestyle": "-"}}
FOREST_METRICS = {"auroc": "AUROC", "sensitivity": "Sensitivity", "specificity": "Specificity"}
NA_TEXT_CHARS = 40  # an n/a reason longer than this is cut in the forest plot (the table shows it whole)


@dataclass(frozen=True)
class _Curve:
    """One line of a ROC or PR plot: the binary truth and score of one split or class."""

    name: str
    truth: np.ndarray  # bool, (n,)
    score: np.ndarray  # float, (n,)
    style: dict[str, Any]

    @property
    def one_class(self) -> bool:
        return bool(self.truth.all() or not self.truth.any())


def _figure(width: float, height: float) -> Figure:
    """A blank figure on its own Agg canvas (no pyplot, no display), laid out by constrained layout."""
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Figure) -> bytes:
    """The figure as PNG bytes on a white background; the figure is cleared afterwards."""
    try:
        with io.BytesIO() as buffer:
            figure.savefig(buffer, format="png", dpi=DPI, facecolor="white")
            return buffer.getvalue()
    finally:
        figure.clear()


def _curves(scores: Mapping[str, SplitScores], classes: Sequence[str], positive_class: str | None) -> Iterator[_Curve]:
    """Binary: the positive class's score on validation then test. More classes: each class
    against the rest on the test set (the validation set when there is no test set)."""
    if positive_class is not None:
        column = list(classes).index(positive_class)
        for split in ("val", "test"):
            if split in scores:
                s = scores[split]
                yield _Curve(SPLIT_NAMES[split], s.labels == column, s.probabilities[:, column], SPLIT_STYLES[split])
        return
    split = "test" if "test" in scores else "val"
    s = scores[split]
    for k, name in enumerate(classes):
        style = {"color": CLASS_COLOURS[k % len(CLASS_COLOURS)], "linestyle": ("-", "--", "-.", ":")[k // 7 % 4]}
        yield _Curve(f"{name} vs rest", s.labels == k, s.probabilities[:, k], style)


def _square_unit_axes(ax: Axes, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_aspect("equal")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)


def _curve_title(kind: str, scores: Mapping[str, SplitScores], positive_class: str | None) -> str:
    if positive_class is not None:
        return f"{kind}: {positive_class} as positive"
    return f"{kind}: each class vs rest, {SPLIT_NAMES['test' if 'test' in scores else 'val']} set"


def roc_curves(scores: Mapping[str, SplitScores], classes: Sequence[str], positive_class: str | None, *,
               threshold: float | None = None) -> bytes:
    """ROC curves with AUROC in the legend and the chance diagonal.

    Binary (``positive_class`` set): one line per split (validation, test) for the positive
    class; with ``threshold`` (on the calibrated probability of the positive class, score >=
    threshold counts as positive) the operating point on the test curve is marked. More than two
    classes: one line per class against the rest, on the test set. A split or class with one
    label only has no curve and says so in the legend.
    """
    figure = _figure(5.4, 5.0)
    ax = figure.add_subplot()
    ax.plot([0, 1], [0, 1], color=GREY, linestyle=":", linewidth=1)
    for curve in _curves(scores, classes, positive_class):
        if curve.one_class:
            ax.plot([], [], label=f"{curve.name}: n/a (one class only)", **curve.style)
            continue
        fpr, tpr, _ = roc_curve(curve.truth, curve.score)
        auroc = number(binary_auroc(curve.truth, curve.score), typeset=False)
        ax.plot(fpr, tpr, linewidth=1.8, label=f"{curve.name} (n = {curve.truth.size}): AUROC {auroc}", **curve.style)
    if positive_class is not None and threshold is not None and "test" in scores:
        _mark_operating_point(ax, scores["test"], list(classes).index(positive_class), threshold)
    _square_unit_axes(
        ax,
        "False positive rate (1 − specificity)",
        "True positive rate (sensitivity)",
        _curve_title("ROC", scores, positive_class) + "\ndotted: chance (AUROC 0.5)",
    )
    ax.legend(loc="lower right", fontsize="small")
    return _png(figure)


def _mark_operating_point(ax: Axes, test: SplitScores, column: int, threshold: float) -> None:
    """The validated threshold applied to the test set's calibrated probabilities, as a point."""
    truth = test.labels == column
    if truth.all() or not truth.any():
        return
    predicted = test.probabilities[:, column] >= threshold
    sensitivity = float(predicted[truth].mean())
    specificity = float(1.0 - predicted[~truth].mean())
    ax.plot(
        1.0 - specificity,
        sensitivity,
        marker="o",
        markersize=9,
        markerfacecolor="white",
        markeredgewidth=2,
        color=SPLIT_STYLES["test"]["color"],
        linestyle="none",
        label=f"test at threshold {number(threshold, typeset=False)}: sens. {number(sensitivity, typeset=False)}, "
        f"spec. {number(specificity, typeset=False)}",
    )


def pr_curves(scores: Mapping[str, SplitScores], classes: Sequence[str], positive_class: str | None) -> bytes:
    """Precision-recall curves with average precision in the legend; each curve's chance
    level (the prevalence of its positive label) is a dotted line of the same colour. Lines are
    chosen as in ``roc_curves``."""
    figure = _figure(5.4, 5.0)
    ax = figure.add_subplot()
    for curve in _curves(scores, classes, positive_class):
        if curve.one_class:
            ax.plot([], [], label=f"{curve.name}: n/a (one class only)", **curve.style)
            continue
        precision, recall, _ = precision_recall_curve(curve.truth, curve.score)
        ap = binary_average_precision(curve.truth, curve.score)
        prevalence = float(curve.truth.mean())
        # "average precision" in full: "AP" also names a radiograph view (AP/PA) in the subgroup tables
        label = (f"{curve.name}: average precision {number(ap, typeset=False)} "
                 f"(chance {number(prevalence, 2, typeset=False)})")
        ax.plot(recall, precision, drawstyle="steps-post", linewidth=1.8, label=label, **curve.style)
        ax.axhline(prevalence, color=curve.style["color"], linestyle=":", linewidth=1)
    _square_unit_axes(ax, "Recall (sensitivity)", "Precision (positive predictive value)", "")
    ax.set_title(_curve_title("Precision-recall", scores, positive_class) + "\ndotted: chance level (prevalence)")
    ax.legend(loc="lower left", fontsize="small")
    return _png(figure)


def _reliability_panel(top: Axes, bottom: Axes, bins: Sequence[ReliabilityBin], title: str) -> None:
    """Accuracy per confidence bin as bars over the diagonal, and the bin counts underneath."""
    lower = np.array([b["lower"] for b in bins], dtype=float)
    width = np.array([b["upper"] for b in bins], dtype=float) - lower
    filled = [i for i, b in enumerate(bins) if b["accuracy"] is not None]
    top.plot([0, 1], [0, 1], color=GREY, linestyle=":", linewidth=1.2, label="perfect calibration")
    top.bar(
        lower[filled],
        [bins[i]["accuracy"] for i in filled],
        width=width[filled],
        align="edge",
        color=SKY,
        edgecolor=BLUE,
        linewidth=0.8,
        label="accuracy in bin",
    )
    confident = [i for i in filled if bins[i]["confidence"] is not None]
    top.plot(
        [bins[i]["confidence"] for i in confident],
        [bins[i]["accuracy"] for i in confident],
        linestyle="none",
        marker="D",
        markersize=4,
        color=VERMILLION,
        label="mean confidence vs accuracy",
    )
    top.set_xlim(0, 1)
    top.set_ylim(0, 1.02)
    top.set_ylabel("Accuracy (fraction correct)")
    top.set_title(title)
    top.legend(loc="upper left", fontsize="small")
    top.grid(alpha=0.3)
    top.tick_params(labelbottom=False)
    bottom.bar(lower, [b["count"] for b in bins], width=width, align="edge", color=GREY, edgecolor="white")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("Confidence (probability of the predicted class)")
    bottom.set_ylabel("Images")


def reliability_diagrams(metrics_split: Split, *, split_label: str = "test set", method: str = "calibration") -> bytes:
    """Reliability diagrams before and after calibration, side by side, from the split's
    ``reliability`` bins, with the ECE of each in its title and the image count per bin below.
    ``method`` names the calibration in the right-hand title (e.g. "temperature scaling"). The
    two count panels share their y scale, so that the shift of images between bins reads directly."""
    figure = _figure(10.4, 5.2)
    grid = figure.add_gridspec(2, 2, height_ratios=(3, 1))
    counts_axis = None
    for column, (side, ece_key, title) in enumerate(
        (("before", "ece_uncalibrated", "Before calibration"), ("after", "ece", f"After {method}"))
    ):
        top = figure.add_subplot(grid[0, column])
        bottom = figure.add_subplot(grid[1, column], sharex=top, sharey=counts_axis)
        counts_axis = counts_axis or bottom
        bins = metrics_split["reliability"][side]
        _reliability_panel(top, bottom, bins, f"{title}: ECE {number(metrics_split[ece_key], typeset=False)}")
    bins = len(metrics_split["reliability"]["after"])
    figure.suptitle(f"Reliability, {split_label} (n = {metrics_split['n']}; {bins} equal-width confidence bins)")
    return _png(figure)


def confusion_matrix_plot(metrics_split: Split, *, split_label: str = "test set", rule: str = "") -> bytes:
    """The confusion matrix (rows true, columns predicted): each cell shows its count, its share
    of the true class's row and, when ``share_ci`` is recorded, that share's 95 % interval;
    shading follows the row share. ``rule`` says how predictions
    were made (e.g. "threshold 0.430 chosen on validation"), shown under the title."""
    matrix = metrics_split["confusion_matrix"]
    labels = list(matrix["labels"])
    counts = np.asarray(matrix["counts"], dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    rate = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    share = rate * 100
    side = max(4.4, 1.2 * len(labels) + 2.2)
    figure = _figure(side + 0.8, side)
    ax = figure.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=100)
    intervals = matrix["share_ci"]
    for (i, j), count in np.ndenumerate(counts):
        text = f"{int(count)}" + (f"\n{percent(rate[i, j], 1)}" if rows[i, 0] > 0 else "")
        if intervals[i][j]:
            shown = interval([100 * bound for bound in intervals[i][j]], 0, typeset=False)
            text += f"\n({shown} %)"
        ax.text(j, i, text, ha="center", va="center", fontsize=11, color="white" if share[i, j] > 60 else BLACK)
    ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 3 else 0, ha="right" if len(labels) > 3 else "center")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    title = f"Confusion matrix, {split_label} (n = {int(counts.sum())})"
    ax.set_title(f"{title}\n{rule}" if rule else title)
    figure.colorbar(image, ax=ax, shrink=0.8, label="Share of the true class (%)")
    return _png(figure)


def _series(history: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    """One column of the history as floats, missing or None entries as NaN (not drawn)."""
    return np.array([np.nan if row.get(key) is None else float(row[key]) for row in history], dtype=float)


def learning_curves(history: Sequence[Mapping[str, Any]] | None, best_epoch: int | None) -> bytes | None:
    """Loss and AUROC per epoch for training and validation, side by side, with the kept epoch
    marked by a vertical line; a cross-fitted run's history (a ``fold`` column) draws one pair of
    lines per fold, validation being the held-out fold. None (nothing drawn) without a history, as
    for an external validation."""
    if not history:
        return None
    folds = sorted({int(row["fold"]) for row in history if row.get("fold") is not None})
    runs = [[row for row in history if row.get("fold") == fold] for fold in folds] if folds else [list(history)]
    figure = _figure(10.4, 4.0)
    panels = (
        ("Loss", "Loss (cross-entropy, nats)", "train_loss", "val_loss"),
        ("AUROC", "AUROC", "train_auroc", "val_auroc"),
    )
    for column, (title, ylabel, train_key, val_key) in enumerate(panels):
        ax = figure.add_subplot(1, 2, column + 1)
        for i, rows in enumerate(runs):
            epochs, first = _series(rows, "epoch"), i == 0
            ax.plot(epochs, _series(rows, train_key), color=GREEN, marker="o", markersize=4,
                    label=("train (augmented)" + (", each fold" if folds else "")) if first else None)
            ax.plot(epochs, _series(rows, val_key), marker="s", markersize=4,
                    label=("held-out fold, each fold" if folds else "validation") if first else None,
                    **SPLIT_STYLES["val"])
        if best_epoch is not None:
            ax.axvline(best_epoch, color=BLACK, linestyle=":", linewidth=1.2, label=f"kept epoch ({best_epoch})")
        ax.set_xlabel("Epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title} per epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return _png(figure)


@dataclass(frozen=True)
class _ForestRow:
    """One line of the forest plot: an attribute heading (``group`` None) or one group."""

    attribute: str
    group: str | None
    values: Subgroup | None

    def label(self) -> str:
        if self.group is None:
            return self.attribute
        n = self.values["n"]
        prevalence = self.values["prevalence"]
        extra = "" if prevalence is None else f", prev. {percent(prevalence)}"
        return f"{self.group}  (n = {n}{extra})"


def _forest_rows(subgroups: Mapping[str, Mapping[str, Subgroup]]) -> list[_ForestRow]:
    rows = []
    for attribute, groups in subgroups.items():
        rows.append(_ForestRow(attribute, None, None))
        rows.extend(_ForestRow(attribute, group, values) for group, values in groups.items())
    return rows


def _short(text: str) -> str:
    return text if len(text) <= NA_TEXT_CHARS else text[: NA_TEXT_CHARS - 1] + "…"


def _forest_panel(ax: Axes, rows: Sequence[_ForestRow], metric: str, overall: Any, flagged: set[tuple]) -> None:
    """One metric's column of the forest plot: point and 95 % interval per group, "n/a (reason)"
    as text where the value is missing, flagged groups in vermillion diamonds."""
    for y, row in enumerate(rows):
        if row.group is None:
            continue
        value = row.values[metric]
        if value is None:
            reason = row.values["na"].get(metric, "not computed")
            ax.text(0.02, y, _short(not_available(reason)), va="center", fontsize=8, style="italic", color=GREY,
                    clip_on=True)
            continue
        flag = (row.attribute, row.group, metric) in flagged
        colour = VERMILLION if flag else BLUE
        bounds = row.values["ci"].get(metric)
        if bounds is not None:
            ax.plot(bounds, [y, y], color=colour, linewidth=2.2 if flag else 1.5)
        ax.plot(value, y, marker="D" if flag else "o", markersize=7 if flag else 5.5, color=colour,
                markerfacecolor=colour if bounds is not None else "white")
    ax.set_title(f"{FOREST_METRICS[metric]}, overall {number(overall, typeset=False)}")
    if not missing(overall):
        ax.axvline(overall, color=BLACK, linestyle="--", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"{FOREST_METRICS[metric]} (95 % interval)")
    ax.grid(axis="x", alpha=0.3)


def subgroup_forest(metrics_split: Split, overall: Mapping[str, Any], *, flags: Sequence[BiasFlag] = ()) -> bytes | None:
    """Forest plot of AUROC, sensitivity and specificity per attribute and group with their 95 %
    intervals, the overall value (``overall[metric]``) as a dashed vertical line, groups without
    a value shown as "n/a (reason)", and the groups in ``flags`` (bias flags of this split)
    highlighted; a value without an interval is a hollow marker. Row labels carry n and the
    prevalence, so a group's AUROC reads next to its case mix. None when the split has no
    subgroups."""
    rows = _forest_rows(metrics_split["subgroups"])
    if not rows:
        return None
    flagged = {(f["attribute"], f["group"], f["metric"]) for f in flags}
    flagged_groups = {(attribute, group) for attribute, group, _ in flagged}
    figure = _figure(11.0, 1.55 + 0.3 * len(rows))
    axes = figure.subplots(1, len(FOREST_METRICS), sharey=True)
    for ax, metric in zip(axes, FOREST_METRICS, strict=True):
        _forest_panel(ax, rows, metric, overall.get(metric), flagged)
    axes[0].set_yticks(range(len(rows)), [row.label() for row in rows])
    axes[0].set_ylim(len(rows) - 0.5, -0.7)
    for tick, row in zip(axes[0].get_yticklabels(), rows, strict=True):
        if row.group is None:
            tick.set_fontweight("bold")
        elif (row.attribute, row.group) in flagged_groups:
            tick.set_color(VERMILLION)
            tick.set_fontweight("bold")
    axes[0].tick_params(axis="y", length=0)
    figure.suptitle("Subgroups: point and 95 % interval, dashed line at the overall value, flagged gaps as vermillion "
                    "diamonds;\nhollow marker: no interval (the group is missing from too many resamples, see the table)")
    return _png(figure)
