"""Simulated test sets with known truth, to check the report's statistics on a study's design.

A report's intervals and flags promise error rates ("95 %", "a false flag in at most 1 report in
20") that hold only if the methods behave on sets like the user's: a few dozen patients, one to
four correlated images each. ``simulate_test_set`` draws such a set with a known AUROC, known
sensitivity at a fixed threshold and known subgroup structure, and ``simulated_report`` scores
it as ``medxfer evaluate`` would, so that the rates can be counted (``benchmarks/statistics.py``
does, and the suite asserts them). Change the sizes to check a
design before collecting it: how wide will the interval be, how large a subgroup gap can be
found.

The model is binormal with a patient effect: an image's score (the logit of P(positive)) is
``separation * label + u_patient + e_image`` with ``u`` and ``e`` normal, their variances
``correlation`` and ``1 - correlation`` (total 1), so the image-level AUROC is
``Phi(separation / sqrt(2))`` whatever the correlation. A patient's images share the patient's
label and attributes (sex, age band, site, manufacturer); the view varies by image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import norm

from medxfer.pipeline.evaluation.decision import Evaluator
from medxfer.pipeline.evaluation.evaluator import evaluate
from medxfer.pipeline.evaluation.inputs import EvaluationSettings, SplitInputs

CLASSES = ("normal", "opacity")  # class 1, the positive class, is the simulated finding
SEXES = ("F", "M")
AGE_BANDS = ("18-39", "40-64", "65+")
SITES = ("site-1", "site-2", "site-3")
MANUFACTURERS = ("Agfa", "GE", "Siemens")
VIEWS = ("AP", "PA")


def separation_for(auroc: float) -> float:
    """The score separation (in standard deviations) that gives a binormal AUROC of ``auroc``."""
    return float(np.sqrt(2) * norm.ppf(auroc))


@dataclass(frozen=True)
class SimulatedSet:
    """One test set: ``labels`` (n,) 0/1, ``logits`` (n, 2) (class 0's logit 0, class 1's the
    score), ``patients`` (n,) ids, ``meta`` per image, and the truth: ``auroc``, ``sensitivity``
    and ``specificity`` at ``threshold`` (a probability), and ``planted`` (what was made to
    differ, empty for a null set)."""

    labels: np.ndarray
    logits: np.ndarray
    patients: list[str]
    meta: list[dict]
    auroc: float
    threshold: float
    sensitivity: float
    specificity: float
    planted: dict = field(default_factory=dict)


def simulate_test_set(rng: np.random.Generator, *, patients: int, auroc: float = 0.85, prevalence: float = 0.4,
                      images_per_patient: tuple[int, int] = (1, 4), correlation: float = 0.5,
                      group_auroc: float | None = None, group_prevalence: float | None = None,
                      rest_prevalence: float | None = None, group_patients: int = 0) -> SimulatedSet:
    """Draw a test set of ``patients`` patients (each with a uniform number of images in
    ``images_per_patient``, both ends included; each class holds at least two patients).

    Null set (the default): labels and scores independent of every attribute. Planted gap: the
    first ``group_patients`` patients form site-1 (the other sites share the rest), and within it
    the AUROC is ``group_auroc`` (else ``auroc``) and the prevalence ``group_prevalence``, the
    rest's ``rest_prevalence`` (else ``prevalence``). The threshold is the probability at the
    midpoint of the two classes' mean scores, where the true sensitivity and specificity are
    known exactly.
    """
    while True:
        in_group = np.arange(patients) < group_patients
        p_positive = np.where(in_group, prevalence if group_prevalence is None else group_prevalence,
                              prevalence if rest_prevalence is None else rest_prevalence)
        label_of = (rng.random(patients) < p_positive).astype(int)
        if label_of.sum() >= 2 and (1 - label_of).sum() >= 2:
            break
    low, high = images_per_patient
    counts = rng.integers(low, high + 1, patients)
    patient = np.repeat(np.arange(patients), counts)
    labels = label_of[patient]
    shift = np.where(in_group[patient] & (group_auroc is not None),
                     separation_for(group_auroc if group_auroc is not None else auroc), separation_for(auroc))
    effect = np.repeat(rng.normal(0.0, np.sqrt(correlation), patients), counts)
    score = shift * labels + effect + rng.normal(0.0, np.sqrt(1 - correlation), len(patient))
    mu = separation_for(auroc)
    cut = mu / 2
    site = np.where(in_group, 0, 1 + rng.integers(0, len(SITES) - 1, patients)) if group_patients else \
        rng.integers(0, len(SITES), patients)
    sex, band = rng.integers(0, 2, patients), rng.integers(0, len(AGE_BANDS), patients)
    maker = rng.integers(0, len(MANUFACTURERS), patients)
    view = rng.integers(0, len(VIEWS), len(patient))
    meta = [{"sex": SEXES[sex[p]], "age": {0: 30, 1: 50, 2: 75}[int(band[p])], "site": SITES[site[p]],
             "manufacturer": MANUFACTURERS[maker[p]], "view": VIEWS[view[i]]} for i, p in enumerate(patient)]
    planted = {k: v for k, v in {"group": "site-1" if group_patients else None, "group_auroc": group_auroc,
                                 "group_prevalence": group_prevalence}.items() if v is not None}
    return SimulatedSet(labels=labels, logits=np.stack([np.zeros_like(score), score], axis=1),
                        patients=[f"p{p}" for p in patient], meta=meta, auroc=auroc,
                        threshold=float(1 / (1 + np.exp(-cut))), sensitivity=float(norm.sf(cut - mu)),
                        specificity=float(norm.cdf(cut)), planted=planted)


def simulated_evaluator(threshold: float) -> Evaluator:
    """The decision rule of a simulated set: no calibration, ``threshold`` on P(opacity)."""
    return Evaluator.from_dict({"classes": list(CLASSES), "positive_class": "opacity",
                                "calibration": {"method": "none", "n_classes": 2},
                                "threshold": {"method": "youden", "value": threshold}})


def simulated_report(s: SimulatedSet, intersections: tuple[str, ...] = ()) -> dict:
    """The metrics of a simulated test set as ``medxfer evaluate`` computes them, at the set's
    own threshold, with ``intersections`` (e.g. ``("sex x age_band",)``) among the subgroups."""
    inputs = SplitInputs(s.labels, s.logits, s.patients, s.meta)
    settings = EvaluationSettings(bootstrap=0, intersections=intersections)
    return evaluate(CLASSES, {"test": inputs}, settings, evaluator=simulated_evaluator(s.threshold)).metrics
