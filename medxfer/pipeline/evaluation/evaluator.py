"""What a reviewer asks of a classifier, computed: discrimination, calibration, per-class rates,
overfitting and subgroup gaps, each with a patient-clustered interval (95 % by default; methods
in ``statistics.intervals``, the bootstrap only for the figures no closed form covers).

``evaluate`` scores the splits it is given with an ``Evaluator`` (``decision``: calibration and,
for two classes, the operating threshold, learnt on the validation split only and applied
unchanged to every other split) and returns the ``metrics.json`` structure (its layout is
documented in the README, "Evaluation report") with the score arrays the report plots.

Intervals resample patients, not images, whenever patient ids exist (``statistics.bootstrap``):
images of one patient are correlated, and resampling them independently gives intervals that are
too narrow. The same resamples serve every metric of a split, so the gap between a subgroup and
the whole split has a paired interval; a subgroup is flagged when that interval excludes zero.
A metric that cannot be computed (an AUROC of a group with one class only, a subgroup missing
from too many resamples) is ``None`` with its reason, never an error.

The work is split by job: ``inputs`` (settings, splits, plotted scores), ``threshold`` and ``decision``
(the decision rule), ``subgroups`` (who is in which group), ``scored`` (a split with the rule
applied), ``entries`` (the typed report entries), ``checked`` and ``resampled`` (intervals),
``overall`` and ``subgroup_report`` (a split's entries) and ``checks`` (overfitting, sizes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from medxfer import __version__
from medxfer.pipeline.evaluation.checks import overfitting_check, size_warnings
from medxfer.pipeline.evaluation.decision import Evaluator
from medxfer.pipeline.evaluation.entries import TrainEntry
from medxfer.pipeline.evaluation.flags import bias_summary
from medxfer.pipeline.evaluation.inputs import EvaluationSettings, SplitInputs, SplitScores
from medxfer.pipeline.evaluation.overall import split_entry
from medxfer.pipeline.evaluation.resampled import BOOTSTRAP_METHOD, BOOTSTRAPPED, MIN_BOOTSTRAP
from medxfer.pipeline.evaluation.schema import Metrics
from medxfer.pipeline.evaluation.scored import ScoredSplit, patient_count, value
from medxfer.pipeline.evaluation.subgroup_report import score_separation, subgroup_entries
from medxfer.pipeline.evaluation.subgroups import subgroup_columns
from medxfer.pipeline.evaluation.transfer import transfer_warnings
from medxfer.pipeline.evaluation.wording import SPLIT_WORDS
from medxfer.pipeline.statistics.bootstrap import draw_resamples
from medxfer.pipeline.statistics.comparisons import family, holm
from medxfer.pipeline.statistics.intervals import LOGIT_WALD, MEAN_T, MOVER, WILSON, patient_codes

__all__ = ["INTERVAL_METHODS", "Evaluation", "evaluate"]


@dataclass
class Evaluation:
    """``metrics`` (the metrics.json structure), the ``scores`` of each scored split, and the
    fitted ``evaluator`` (calibration and threshold)."""

    metrics: Metrics
    evaluator: Evaluator
    scores: dict[str, SplitScores] = field(default_factory=dict)


INTERVAL_METHODS = {
    "auroc": LOGIT_WALD + " (DeLong's variance, clustered, corrected class by class)",
    "balanced_accuracy": MOVER, "sensitivity": WILSON + " (more than two classes: " + MOVER + ")",
    "specificity": WILSON + " (more than two classes: " + MOVER + ")", "accuracy": WILSON, "prevalence": WILSON,
    "brier": MEAN_T,
    "average_precision": BOOTSTRAP_METHOD, "ece": BOOTSTRAP_METHOD, "ece_positive": BOOTSTRAP_METHOD,
    "gaps": "AUROC: difference of the two estimates, patient-clustered variance, t quantile; rates and prevalence: "
            "Newcombe's hybrid score interval on the effective sizes",
}


def evaluate(classes: Sequence[str], splits: Mapping[str, SplitInputs], settings: EvaluationSettings, *,
             evaluator: Evaluator | None = None, kind: str = "training run", data_name: str = "",
             best_epoch: int | None = None) -> Evaluation:
    """Score ``splits`` ("train", "val", "test"; any may be missing or empty) of a model with
    these ``classes``. ``evaluator`` (calibration and threshold) is fitted on ``splits["val"]``
    unless given (external validation reuses the run's). Returns the metrics.json structure
    and the scores of "val" and "test" for the report's plots. ``best_epoch``: the epoch the
    validation split chose, named in the overfitting sentence."""
    if 0 < settings.bootstrap < MIN_BOOTSTRAP:
        raise ValueError(f"bootstrap must be 0 (no bootstrap intervals) or at least {MIN_BOOTSTRAP} resamples, got "
                         f"{settings.bootstrap}: fewer give intervals whose ends are mostly noise")
    if evaluator is None:
        if "val" not in splits or not len(splits["val"]):
            raise ValueError("calibration and the threshold are fitted on the validation split, which is empty")
        evaluator = Evaluator(classes, settings).fit(splits["val"])
    evaluation = Evaluation(_header(classes, splits, settings, evaluator, kind, data_name), evaluator)
    metrics = evaluation.metrics
    warnings: list[str] = []
    for offset, name in enumerate(("train", "val", "test")):
        inputs = splits.get(name)
        if inputs is not None and len(inputs):
            warnings += _score_split(evaluation, classes, name, offset, splits, settings)
    if "val" in metrics and "train" in metrics:
        metrics["overfitting"] = overfitting_check(metrics["train"]["auroc"], metrics["val"]["auroc"],
                                                   settings.overfit_gap, best_epoch)
    compared = "test" in metrics and "val" in metrics
    transfer, kinds = (transfer_warnings(metrics["test"], metrics["val"], positive=metrics["positive_class"],
                                         where="on the test set") if compared else ([], []))
    if evaluator.threshold_note_:
        warnings.append(f"Threshold: {evaluator.threshold_note_}.")
    if getattr(evaluator, "calibration_note_", None):
        warnings.append(f"Calibration: {evaluator.calibration_note_}.")
    metrics["transfer"] = {"compared_with": "validation" if compared else None, "warnings": transfer, "kinds": kinds}
    metrics["warnings"] = transfer + warnings
    return evaluation


def _header(classes: Sequence[str], splits: Mapping[str, SplitInputs], settings: EvaluationSettings,
            evaluator: Evaluator, kind: str, data_name: str) -> dict[str, Any]:
    """metrics.json's opening blocks: what was evaluated, the decision rule, the bootstrap (its
    ``defined`` counts filled split by split) and the interval methods."""
    metrics: dict[str, Any] = {
        "medxfer_version": __version__, "kind": kind, "data_name": data_name, "classes": list(classes),
        "positive_class": None if evaluator.positive_ is None else classes[evaluator.positive_],
    }
    state = evaluator.to_dict()
    metrics["threshold"] = state["threshold"]
    calibration = dict(state["calibration"])
    for key in ("temperature", "scale", "bias"):
        calibration.setdefault(key, None)
    calibration.update(fitted_on="val", n=len(splits["val"]) if "val" in splits else None,
                       note=getattr(evaluator, "calibration_note_", None))
    metrics["calibration"] = calibration
    any_patients = any(p is not None for s in splits.values() for p in s.patients)
    metrics["bootstrap"] = {"resamples": settings.bootstrap, "level": settings.level,
                            "unit": "patient" if any_patients else "image", "seed": settings.seed,
                            "used_for": list(BOOTSTRAPPED), "defined": {}}
    metrics["intervals"] = {"level": settings.level, "methods": dict(INTERVAL_METHODS)}
    return metrics


def _score_split(evaluation: Evaluation, classes: Sequence[str], name: str, offset: int,
                 splits: Mapping[str, SplitInputs], settings: EvaluationSettings) -> list[str]:
    """Score the split ``name`` (the ``offset``-th of train, val, test, which seeds its
    resamples) into ``evaluation``; returns its warnings. The training split gets only its AUROC;
    the bias summary is that of the test split, or of validation when there is no test split."""
    inputs, metrics = splits[name], evaluation.metrics
    split = ScoredSplit.of(inputs, evaluation.evaluator, classes, settings.level)
    warnings: list[str] = []
    single = len(set(patient_codes(inputs.patients, len(inputs)).tolist())) < 2
    if single:
        warnings.append(f"The {SPLIT_WORDS.get(name, name)} set holds a single "
                        f"{'patient' if any(inputs.patients) else 'image'}: no interval can be computed.")
    if name == "train":
        train = TrainEntry(n=len(inputs), n_patients=patient_count(inputs.patients, len(inputs)),
                           counts=split.counts(), auroc=value(split.auroc(split.everything)))
        if train.auroc is None:
            train.na["auroc"] = split.na_auroc(split.labels)
        metrics["train"] = train.to_dict()
        return warnings
    resamples = (draw_resamples(len(inputs), list(inputs.patients) or None, resamples=settings.bootstrap,
                                seed=settings.seed * 1000 + offset) if settings.bootstrap > 0 and not single else None)
    defined: dict[str, int] = {}
    entry = split_entry(split, resamples, defined)
    if single:
        entry.withdraw_intervals()
    metrics["bootstrap"]["defined"][name] = defined
    columns, skipped = subgroup_columns(inputs.meta or [{}] * len(inputs), settings)
    entry.subgroups = subgroup_entries(split, entry, columns, resamples)
    score_separation(split, entry.subgroups, columns)
    metrics[name] = entry.to_dict()
    evaluation.scores[name] = SplitScores(split.labels, split.probabilities, split.uncalibrated)
    warnings += size_warnings(name, metrics[name], classes)
    if name == "test" or (name == "val" and not len(splits.get("test", ()))):
        hypotheses = holm(family(split.groups, columns, settings.level), 1 - settings.level)
        metrics["bias"] = bias_summary(name, hypotheses, metrics[name], columns, skipped, metrics["positive_class"],
                                       settings.level)
    return warnings
