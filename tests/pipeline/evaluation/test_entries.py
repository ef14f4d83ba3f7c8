"""The typed report entries write metrics.json's layout: intervals, notes and refusals land in
their own mappings, optional figures appear only where they apply, and withdrawing intervals
keeps how they would have been computed."""

from __future__ import annotations

from medxfer.pipeline.evaluation.entries import (
    CalibrationFigures,
    GroupEntry,
    ReportedInterval,
    Uncertainty,
)


def calibration_figures(**extra) -> CalibrationFigures:
    names = ("ece", "ece_uncalibrated", "adaptive_ece", "adaptive_ece_uncalibrated", "mce", "mce_uncalibrated",
             "brier", "brier_uncalibrated", "nll", "nll_uncalibrated")
    return CalibrationFigures(**{name: 0.1 * (i + 1) for i, name in enumerate(names)}, **extra)


def test_an_interval_its_method_note_and_refusal_land_in_their_own_mappings():
    uncertainty = Uncertainty(na={"auroc": "one class only"})
    uncertainty.record("auroc", ReportedInterval(None))
    uncertainty.record("brier", ReportedInterval([0.1, 0.2], "t interval", "approximate: 1 patient of NORMAL"))
    uncertainty.record("ece", ReportedInterval(None, "bootstrap", refusal="undefined in 80 of 200 resamples"))
    assert uncertainty.to_dict() == {
        "na": {"auroc": "one class only", "ci.ece": "undefined in 80 of 200 resamples"},
        "ci": {"auroc": None, "brier": [0.1, 0.2], "ece": None},
        "ci_method": {"brier": "t interval", "ece": "bootstrap"},
        "ci_note": {"brier": "approximate: 1 patient of NORMAL"},
    }


def test_withdrawn_intervals_are_none_but_keep_their_methods():
    uncertainty = Uncertainty()
    uncertainty.record("auroc", ReportedInterval([0.7, 0.9], "logit Wald"))
    uncertainty.withdraw()
    assert uncertainty.ci == {"auroc": None} and uncertainty.ci_method == {"auroc": "logit Wald"}


def test_positive_class_ece_is_written_only_for_two_classes():
    assert "ece_positive" not in calibration_figures().to_dict()
    two_classes = calibration_figures(ece_positive=0.3, ece_positive_uncalibrated=0.4).to_dict()
    assert list(two_classes)[-2:] == ["ece_positive", "ece_positive_uncalibrated"]


def test_score_separation_is_written_only_once_scored_even_when_undefined():
    entry = GroupEntry(n=4, counts={"a": 2, "b": 2}, n_patients=None, prevalence=0.5, ece=0.1,
                       uncertainty=Uncertainty())
    assert "score_separation" not in entry.to_dict()
    entry.separation_scored = True
    written = entry.to_dict()
    assert list(written)[-1] == "score_separation" and written["score_separation"] is None
    assert list(written)[:5] == ["n", "counts", "n_patients", "prevalence", "ece"]
