"""The structure of ``metrics.json``: what the evaluation writes and the report reads.

``evaluator.evaluate`` builds it (``flags.bias_summary`` its ``bias`` block, ``transfer`` its
warnings), ``medxfer train`` adds the kept epoch and ``medxfer evaluate`` (``inference.external``)
carries the training run's figures and replaces the transfer check; ``medxfer.pipeline.reporting``
only reads it. docs/reference/metrics-json.md says what each key means.

Conventions: every number is a plain float or int; a figure that cannot be computed is None with
its reason in the sibling ``na`` mapping (key: the figure, or ``"ci.<figure>"`` for a missing
interval); an interval is ``[low, high]`` at ``intervals.level`` (0.95 by default). Rates, AUROCs,
ECEs and probabilities lie in [0, 1]; gaps and differences in [-1, 1]; NLL is in nats per image.

A key marked ``NotRequired`` may be absent; its comment says when. Mappings keyed by a name the
data chooses (a class, a subgroup attribute, a figure) are ``dict`` rather than TypedDicts.
"""

# No "from __future__ import annotations": Python 3.11 reads NotRequired only from evaluated annotations.
from typing import Literal, NotRequired, TypedDict

from medxfer.pipeline.calibration.metrics import ReliabilityBin  # one bin of the reliability diagrams

Interval = list[float]  # [low, high]
Statistic = list[float]  # [value, standard error, degrees of freedom], patient-clustered


class ThresholdRecord(TypedDict):
    """The operating threshold on the calibrated P(positive class), chosen on validation."""

    method: Literal["youden", "sensitivity", "argmax"]  # argmax: more than two classes, no threshold
    target_sensitivity: float | None  # in (0, 1], for method "sensitivity" only
    value: float | None  # a probability in [0, 1]; None with more than two classes
    chosen_on: Literal["val"]
    placement: str  # in words: mid-gap on the logit scale
    note: str | None  # when something is to be said (one class, no Youden's J above 0)


class CalibrationRecord(TypedDict):
    """The calibration fitted on the validation logits (``calibrators.to_dict`` plus its fit)."""

    method: Literal["temperature", "vector", "none"]
    n_classes: int
    temperature: float | None  # in [0.05, 20]; temperature scaling only
    scale: list[float] | None  # per class, in [0.05, 20]; vector scaling only
    bias: list[float] | None  # per class, in [-20, 20] logits; vector scaling only
    fitted_on: Literal["val"]
    n: int | None  # validation images it was fitted on; None when no validation split was given
    note: str | None  # when it was not fitted as asked or a parameter reached a bound


class BootstrapRecord(TypedDict):
    """The percentile bootstrap over patients, for the figures without a checked interval."""

    resamples: int  # 0: no bootstrap intervals
    level: float  # in (0, 1)
    unit: Literal["patient", "image"]
    seed: int
    used_for: list[str]
    defined: dict[str, dict[str, int]]  # split -> figure -> resamples in which it was defined


class IntervalsRecord(TypedDict):
    level: float  # in (0, 1)
    methods: dict[str, str]  # figure -> the method of its interval, in words


class TrainSplit(TypedDict):
    """The kept network on the plain training images: its AUROC only, without an interval."""

    n: int
    n_patients: int | None  # None without patient ids
    counts: dict[str, int]  # class -> images
    auroc: float | None
    na: dict[str, str]


class PerClass(TypedDict):
    """One class against the rest."""

    precision: float | None
    recall: float | None
    specificity: float | None
    f1: float | None
    auroc: float | None
    average_precision: float | None
    support: int  # images of the class
    na: dict[str, str]
    ci: dict[str, Interval | None]
    ci_method: dict[str, str]
    ci_note: dict[str, str]  # approximate intervals and why


class ConfusionMatrix(TypedDict):
    labels: list[str]
    counts: list[list[int]]  # rows true, columns predicted
    share_ci: list[list[Interval | None]]  # each cell's share of its row; None for an empty row


class Reliability(TypedDict):
    before: list[ReliabilityBin]  # 15 equal-width bins, uncalibrated
    after: list[ReliabilityBin]  # calibrated


class Subgroup(TypedDict):
    """One group of a subgroup attribute; ``gap`` against the whole split, ``gap_rest`` against
    the rest of it (each with its interval)."""

    n: int
    counts: dict[str, int]
    n_patients: int | None
    prevalence: float | None  # None with more than two classes
    auroc: float | None
    sensitivity: float | None
    specificity: float | None
    ece: float
    score_separation: NotRequired[float | None]  # two classes only, and not for the group "unknown"
    na: dict[str, str]
    ci: dict[str, Interval | None]
    ci_method: dict[str, str]
    ci_note: dict[str, str]
    gap: dict[str, float | None]
    gap_ci: dict[str, Interval | None]
    gap_rest: dict[str, float | None]
    gap_rest_ci: dict[str, Interval | None]


class TransferStatistics(TypedDict, total=False):
    """What the transfer checks compare. Every key may be absent: the first three are for two
    classes only (sensitivity and specificity also need their value and interval), and any figure
    whose spread rests on a single patient is left out."""

    sensitivity: Statistic
    specificity: Statistic
    called_minus_observed: Statistic  # share called positive minus share positive
    confidence_minus_accuracy: Statistic  # top label, averaged over the images


class Split(TypedDict):
    """The figures of a scored validation or test split."""

    n: int
    n_patients: int | None  # None without patient ids
    counts: dict[str, int]  # class -> images
    prevalence: float | None  # share of the positive class; None with more than two classes
    auroc: float | None  # more than two classes: macro one-vs-rest
    average_precision: float | None
    accuracy: float
    balanced_accuracy: float | None
    sensitivity: float | None  # more than two classes: macro average
    specificity: float | None
    ece: float  # top label, 15 equal-width bins
    ece_uncalibrated: float
    ece_positive: NotRequired[float]  # two classes only
    ece_positive_uncalibrated: NotRequired[float]  # two classes only
    adaptive_ece: float
    adaptive_ece_uncalibrated: float
    mce: float
    mce_uncalibrated: float
    brier: float
    brier_uncalibrated: float
    nll: float
    nll_uncalibrated: float
    na: dict[str, str]
    ci: dict[str, Interval | None]
    ci_method: dict[str, str]
    ci_note: dict[str, str]
    per_class: dict[str, PerClass]
    confusion_matrix: ConfusionMatrix
    reliability: Reliability
    # absent from the validation split of a run trained by an earlier medxfer, carried into an
    # external validation (docs/reference/metrics-json.md: transfer.partial)
    transfer_statistics: NotRequired[TransferStatistics]
    subgroups: dict[str, dict[str, Subgroup]]  # attribute -> group -> figures


class Overfitting(TypedDict):
    train_val_auroc_gap: float | None  # None when an AUROC is undefined
    limit: float
    flag: bool | None  # None when the gap could not be computed
    sentence: str
    best_epoch: NotRequired[int]  # added by medxfer train
    epochs_run: NotRequired[int]  # added by medxfer train


class CrossfitFold(TypedDict):
    """One fold of a cross-fitted run: its network's AUROC on the images it trained on and on the
    fold it held out (None when undefined), their gap, the flag (gap above ``overfit_gap``; None
    when the gap is undefined) and its kept epoch."""

    fold: int  # 1-based
    n_train: int
    n_held_out: int
    train_auroc: float | None
    held_out_auroc: float | None
    gap: float | None
    flag: bool | None
    best_epoch: int
    epochs_run: int


class Crossfit(TypedDict):
    """How a cross-fitted run was validated (``validation: crossfit``)."""

    folds: int
    combined: str  # how the members' outputs are combined
    selection: str  # the validation score that chose each fold's epoch
    per_fold: list[CrossfitFold]


class BiasTest(TypedDict):
    """One comparison of the family tested with Holm's procedure."""

    kind: Literal["performance", "prevalence", "separation"]
    attribute: str
    group: str
    metric: str
    difference: float
    p_value: float  # in [0, 1], one-sided for performance
    adjusted_p: float  # Holm-adjusted, in [0, 1]
    flagged: bool


class BiasFlag(TypedDict):
    """A flag: one group's gap (``group`` set, ``kind`` "gap") or a whole attribute (``group``
    None: confounder, shortcut or score shift)."""

    split: Literal["val", "test"]
    attribute: str
    group: str | None
    metric: str  # auroc, sensitivity, specificity; "confounding" or "score_separation" for an attribute
    kind: Literal["gap", "confounder", "shortcut", "score shift"]
    value: float | None  # the group's figure; None for an attribute
    rest: NotRequired[float]  # the rest of the split's figure; a group's gap only
    shortcut: NotRequired[bool]  # an attribute's flag only
    gap: float | None
    ci: Interval | None
    p_value: float
    adjusted_p: float
    sentence: str


class Bias(TypedDict):
    """The subgroup check of the held-out split (``flags.bias_summary``)."""

    split: Literal["val", "test"]
    attributes: list[str]
    skipped: dict[str, str]  # attribute -> why it was not checked
    comparisons: int
    control: str
    family_wise_error: float  # in (0, 1): 1 minus the level
    min_group_patients: int
    min_class_patients: int
    min_gap: float
    guarantee: str
    tests: list[BiasTest]
    flagged_metrics: list[str]
    flags: list[BiasFlag]


class Transfer(TypedDict):
    """The warnings that the model does not carry over to the held-out set (``transfer``)."""

    compared_with: str | None  # None when there is no validation split to compare with
    warnings: list[str]
    kinds: list[Literal["does not transfer", "not shown better than chance"]]
    partial: NotRequired[bool]  # external validation of a run whose validation lacks transfer_statistics


class Metrics(TypedDict):
    """The whole of ``metrics.json``."""

    medxfer_version: str
    kind: Literal["training run", "external validation"]
    data_name: str
    classes: list[str]
    positive_class: str | None  # None with more than two classes
    threshold: ThresholdRecord
    calibration: CalibrationRecord
    bootstrap: BootstrapRecord
    intervals: IntervalsRecord
    train: NotRequired[TrainSplit]  # absent when no training split was scored (an external validation)
    val: NotRequired[Split]  # absent when not scored (an external validation carries the run's)
    test: NotRequired[Split]  # absent when the data has no test split
    bias: NotRequired[Bias]  # absent only when neither val nor test was scored
    overfitting: NotRequired[Overfitting]  # needs train and val (carried from the run in an external validation)
    best_epoch: NotRequired[int]  # a holdout training run's kept epoch (carried in an external validation)
    epochs_run: NotRequired[int]  # likewise
    crossfit: NotRequired[Crossfit]  # a cross-fitted run's folds (carried in an external validation)
    scored_before: NotRequired[str]  # when the network changed after scoring (AdaBN to the target site)
    trained_on: NotRequired[str | None]  # external validation: the training run's data_name
    unreadable_files: NotRequired[int]  # external validation: files skipped
    transfer: Transfer
    warnings: list[str]  # transfer warnings first, then small sets, calibration and threshold notes
