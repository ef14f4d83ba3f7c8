"""How far to trust the report's numbers: its statistics checked by simulation with known truth.

Every rate the README states in "How far to trust the numbers" comes from this script:

- null reports: test sets where labels and scores are independent of every attribute (sex, age
  band, site, manufacturer, view; optionally two intersections); the share of reports that carry
  any subgroup, confounder or score-shift flag (the promise: at most 5 %);
- planted gaps: one site of 60 or 100 patients with AUROC 0.70 against 0.90 elsewhere, or a
  prevalence of 80 % against 30 %; the share of reports that flag that site (the power);
- coverage: how often the 95 % intervals of AUROC, sensitivity, specificity, accuracy and
  balanced accuracy contain the true value, at 24 patients (about 60 images) and 120 (about
  300), true AUROC 0.8 and 0.9, one to four correlated images per patient; beside them the
  percentile bootstrap over patients the report used before, and a sweep over the number of
  positive patients that sets where an interval is marked approximate;
- threshold placement: the test sensitivity of a threshold chosen on a perfectly separated
  validation split (20 + 20 images), at the midpoint of the gap against at its edge;
- calibration bounds: test NLL and ECE when the validation split is classified without error,
  fitting the temperature anyway (it ends on its 0.05 bound) against keeping T = 1;
- transfer warnings: how often a test split drawn like validation is warned about (the promise:
  rarely), and how often one whose scores moved or whose AUROC fell is.

Every simulation calls the code the report runs (``medxfer.pipeline.evaluation.evaluator.evaluate``,
``comparisons``, ``intervals``, ``Evaluator``) on sets from ``medxfer.pipeline.evaluation.simulation``.

    .venv/bin/python benchmarks/statistics.py                # the README's figures (about 55 min on 2 cores)
    .venv/bin/python benchmarks/statistics.py --quick        # a tenth of the repetitions
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
from scipy.special import logit
from scipy.stats import norm

from medxfer.pipeline.calibration.calibrators import TemperatureScaling
from medxfer.pipeline.calibration.metrics import expected_calibration_error, negative_log_likelihood
from medxfer.pipeline.evaluation.evaluator import evaluate
from medxfer.pipeline.evaluation.inputs import EvaluationSettings, SplitInputs
from medxfer.pipeline.evaluation.simulation import CLASSES, SimulatedSet, simulate_test_set
from medxfer.pipeline.evaluation.simulation import simulated_report as report
from medxfer.pipeline.evaluation.threshold import choose_threshold
from medxfer.pipeline.statistics.bootstrap import bootstrap_values, draw_resamples, percentile_interval
from medxfer.pipeline.statistics.intervals import (
    auroc_estimate,
    logit_interval,
    patient_codes,
    proportion_estimate,
    wilson_interval,
)
from medxfer.pipeline.statistics.scoring import binary_auroc

INTERSECTIONS = ("sex x age_band", "view x site")


def null_rate(reps: int, seed: int, patients: int, intersections: tuple[str, ...],
              prevalence: float = 0.4) -> tuple[float, float]:
    """Share of null reports with any flag, and the mean number of comparisons; one or two images
    a patient, as in the audit (about 160 images of 100 patients)."""
    rng = np.random.default_rng(seed)
    flagged, comparisons = 0, []
    for _ in range(reps):
        s = simulate_test_set(rng, patients=patients, images_per_patient=(1, 2), prevalence=prevalence)
        bias = report(s, intersections)["bias"]
        flagged += bool(bias["flags"])
        comparisons.append(bias["comparisons"])
    return flagged / reps, float(np.mean(comparisons))


def power(reps: int, seed: int, intersections: tuple[str, ...], **planted) -> tuple[float, float]:
    """Share of reports that flag the planted site (any flag), and that flag its AUROC."""
    rng = np.random.default_rng(seed)
    hits = auroc_hits = 0
    for _ in range(reps):
        flags = report(simulate_test_set(rng, **planted), intersections)["bias"]["flags"]
        on_site = [f for f in flags if f["attribute"] == "site" and f["group"] in (None, "site-1")]
        hits += bool(on_site)
        auroc_hits += any(f["metric"] == "auroc" for f in on_site)
    return hits / reps, auroc_hits / reps


def _table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n{title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def null_section(scale: float) -> None:
    reps = max(50, int(1000 * scale))
    rows = []
    for prevalence in (0.4, 0.1):
        for patients in (100, 300):
            for intersections in ((), INTERSECTIONS):
                rate, comparisons = null_rate(reps, patients + len(intersections) + int(100 * prevalence), patients,
                                              intersections, prevalence)
                rows.append([f"{patients} patients", f"{prevalence:.0%}", "two" if intersections else "none",
                             f"{comparisons:.0f}", f"{rate:.3f}"])
    _table(f"Null reports ({reps} each, 1-2 images a patient): share with any flag (promise: at most 0.05)",
           ["test set", "prevalence", "intersections", "comparisons (mean)", "reports flagged"], rows)


def power_section(scale: float) -> None:
    reps = max(50, int(500 * scale))
    rows = []
    for label, planted in (
        ("AUROC 0.70 vs 0.90", {"auroc": 0.9, "group_auroc": 0.7, "prevalence": 0.5}),
        ("prevalence 80 % vs 30 %", {"group_prevalence": 0.8, "rest_prevalence": 0.3}),
    ):
        for group, patients in ((60, 150), (60, 300), (100, 250)):
            for intersections in ((), INTERSECTIONS):
                rate, auroc_rate = power(reps, group + patients, intersections, patients=patients,
                                         group_patients=group, **planted)
                rows.append([label, f"{group} of {patients}", "two" if intersections else "none", f"{rate:.3f}",
                             f"{auroc_rate:.3f}"])
    _table(f"Planted gaps ({reps} reports each): share flagging the planted site",
           ["planted", "site patients of all", "intersections", "power (any flag on the site)",
            "AUROC flag on the site"], rows)


def _coverage(reps: int, seed: int, patients: int, auroc: float, prevalence: float,
              bootstrap: int) -> dict[str, float]:
    """Coverage of each interval over ``reps`` simulated sets (the percentile bootstrap with
    ``bootstrap`` resamples, 0 to skip it)."""
    rng = np.random.default_rng(seed)
    hits: dict[str, int] = {}

    def hit(name: str, interval, truth: float) -> None:
        hits[name] = hits.get(name, 0) + int(interval is not None and interval[0] <= truth <= interval[1])

    for _ in range(reps):
        s = simulate_test_set(rng, patients=patients, auroc=auroc, prevalence=prevalence)
        metrics = report(s)["test"]
        hit("AUROC", metrics["ci"]["auroc"], s.auroc)
        hit("sensitivity", metrics["ci"]["sensitivity"], s.sensitivity)
        hit("specificity", metrics["ci"]["specificity"], s.specificity)
        share = float(np.mean(s.labels))  # accuracy = sens * share + spec * (1 - share), conditional on the labels
        hit("accuracy", metrics["ci"]["accuracy"], s.sensitivity * share + s.specificity * (1 - share))
        hit("balanced accuracy", metrics["ci"]["balanced_accuracy"], (s.sensitivity + s.specificity) / 2)
        if bootstrap:
            draws = _percentile_draws(s, bootstrap, int(rng.integers(1 << 30)))
            hit("AUROC, percentile bootstrap", percentile_interval(draws["auroc"]).as_list(), s.auroc)
            hit("sensitivity, percentile bootstrap", percentile_interval(draws["sens"]).as_list(), s.sensitivity)
    return {name: count / reps for name, count in hits.items()}


def _percentile_draws(s: SimulatedSet, bootstrap: int, seed: int) -> dict[str, np.ndarray]:
    """AUROC and sensitivity on ``bootstrap`` patient resamples of ``s`` (the method before)."""
    score, cut = s.logits[:, 1], logit(s.threshold)

    def statistic(i: np.ndarray) -> dict[str, float]:
        positive = s.labels[i] == 1
        return {"auroc": binary_auroc(positive, score[i]),
                "sens": float(np.mean(score[i][positive] >= cut)) if positive.any() else float("nan")}

    return bootstrap_values(statistic, draw_resamples(len(s.labels), s.patients, resamples=bootstrap, seed=seed))


def coverage_section(scale: float) -> None:
    reps = max(100, int(2000 * scale))
    cells = [(24, 0.8, 0.4), (24, 0.9, 0.4), (120, 0.8, 0.4), (120, 0.9, 0.4), (120, 0.85, 0.1)]
    results = {cell: _coverage(reps, 100 * cell[0] + int(10 * cell[1]) + int(100 * cell[2]), *cell,
                               bootstrap=500 if scale >= 0.5 else 200)
               for cell in cells}
    names = list(results[cells[0]])
    _table(f"Coverage of the 95 % intervals ({reps} simulated test sets a cell; 1-4 images per patient, "
           "correlation 0.5; the last two rows are the previous method)",
           ["interval", *(f"{p} patients, AUROC {a}, prevalence {q:.0%}" for p, a, q in cells)],
           [[name, *(f"{results[cell][name]:.3f}" for cell in cells)] for name in names])
    rows = []
    rng = np.random.default_rng(7)
    for positives in (2, 3, 4, 5, 6, 8, 10):
        hits_auroc = hits_sens = 0
        for _ in range(reps):
            s = simulate_test_set(rng, patients=positives + 20, auroc=0.85, prevalence=positives / (positives + 20))
            codes = patient_codes(s.patients, len(s.labels))
            positive = s.labels == 1
            interval = logit_interval(auroc_estimate(positive, s.logits[:, 1], codes), codes)
            hits_auroc += interval is not None and interval.low <= s.auroc <= interval.high
            called = s.logits[:, 1] >= logit(s.threshold)
            interval = wilson_interval(proportion_estimate(called, positive, codes), positive, codes)
            hits_sens += interval is not None and interval.low <= s.sensitivity <= interval.high
        rows.append([f"about {positives}", f"{hits_auroc / reps:.3f}", f"{hits_sens / reps:.3f}"])
    _table(f"Coverage with few positive patients (20 negative patients, AUROC 0.85, {reps} sets each)",
           ["positive patients", "AUROC", "sensitivity"], rows)


def threshold_section(scale: float) -> None:
    reps = max(100, int(2000 * scale))
    rng = np.random.default_rng(11)
    auroc = 0.995
    separation = float(np.sqrt(2) * norm.ppf(auroc))
    edge, middle = [], []
    while len(middle) < reps:
        # a validation split of 20 + 20 images that happens to be perfectly separated
        val = simulate_test_set(rng, patients=40, auroc=auroc, prevalence=0.5, images_per_patient=(1, 1))
        positive = val.labels == 1
        if positive.sum() != 20 or binary_auroc(positive, val.logits[:, 1]) < 1.0:
            continue
        chosen, _ = choose_threshold(positive, val.logits[:, 1], "youden", 0.9)
        # new images' sensitivity at a cut c on the score: P(score >= c | positive), score ~ N(separation, 1)
        middle.append(float(norm.sf(logit(chosen) - separation)))
        edge.append(float(norm.sf(val.logits[positive, 1].min() - separation)))  # the cut before: at the lowest positive
    _table(f"Threshold on a perfectly separated validation split of 20 + 20 images ({reps} splits, AUROC {auroc}): "
           "the true sensitivity on new images",
           ["threshold placed", "mean sensitivity", "worst 5 %"],
           [["at the lowest validation positive (before)", f"{np.mean(edge):.3f}", f"{np.quantile(edge, 0.05):.3f}"],
            ["midpoint of the gap, logit scale (now)", f"{np.mean(middle):.3f}", f"{np.quantile(middle, 0.05):.3f}"]])


def _transfer_rate(reps: int, seed: int, shift: float, auroc: float) -> tuple[float, float, float, float]:
    """Share of test splits with any transfer warning, and with one about the operating point,
    when validation (80 patients) and test (120) come from one model; the test split's scores
    moved by ``shift`` (logit units) and its AUROC ``auroc`` (validation's 0.85). Also the mean
    of validation's sensitivity and specificity minus the test split's (the optimism of a
    threshold chosen on validation, when nothing moved)."""
    rng = np.random.default_rng(seed)
    warned = moved = 0
    optimism = []
    for _ in range(reps):
        val = simulate_test_set(rng, patients=80, auroc=0.85)
        test = simulate_test_set(rng, patients=120, auroc=auroc)
        logits = test.logits.copy()
        logits[:, 1] += shift
        metrics = evaluate(CLASSES, {"val": SplitInputs(val.labels, val.logits, val.patients),
                                     "test": SplitInputs(test.labels, logits, test.patients)},
                           EvaluationSettings(bootstrap=0)).metrics
        warnings = metrics["transfer"]["warnings"]
        warned += bool(warnings)
        moved += any(w.startswith(("The model calls", "Sensitivity", "Specificity")) for w in warnings)
        optimism.append([metrics["val"][m] - metrics["test"][m] for m in ("sensitivity", "specificity")])
    sensitivity, specificity = np.mean(optimism, axis=0)
    return warned / reps, moved / reps, float(sensitivity), float(specificity)


def transfer_section(scale: float) -> None:
    reps = max(50, int(500 * scale))
    rows = []
    for label, shift, auroc in (("same model, same distribution (null)", 0.0, 0.85),
                                ("scores 0.5 logit higher", 0.5, 0.85), ("scores 1 logit higher", 1.0, 0.85),
                                ("AUROC 0.60, no shift", 0.0, 0.6), ("AUROC 0.50, no shift", 0.0, 0.5)):
        warned, moved, sensitivity, specificity = _transfer_rate(reps, int(10 * shift + 100 * auroc), shift, auroc)
        rows.append([label, f"{warned:.3f}", f"{moved:.3f}", f"{sensitivity:+.3f}", f"{specificity:+.3f}"])
    _table(f"Transfer warnings ({reps} pairs each: validation 80 patients, test 120, AUROC 0.85 on validation, "
           "temperature and threshold fitted on validation): share of test splits warned about",
           ["test split", "any warning", "operating-point warning", "validation minus test: sensitivity",
            "specificity"], rows)


def _three_class(rng: np.random.Generator, n: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels (n,) of three classes and logits (n, 3): the true class's logit 3 higher, plus unit
    noise, all times ``scale`` (1: underconfident, the softmax below the accuracy; 4: overconfident)."""
    labels = rng.integers(0, 3, n)
    return labels, scale * (3.0 * np.eye(3)[labels] + rng.normal(size=(n, 3)))


def calibration_section(scale: float) -> None:
    reps = max(50, int(500 * scale))
    rows = []
    for network, logit_scale in (("underconfident (logits x 1)", 1.0), ("overconfident (logits x 4)", 4.0)):
        rng = np.random.default_rng(13)
        results: dict[str, list[tuple[float, float]]] = {"fitted anyway": [], "kept at T = 1 (now)": []}
        temperatures = []
        while len(temperatures) < reps:
            # a network that gets its validation split of 30 images all right, but errs on new images
            labels, logits = _three_class(rng, 30, logit_scale)
            if not np.array_equal(logits.argmax(1), labels):
                continue
            test_labels, test_logits = _three_class(rng, 2000, logit_scale)
            fitted = TemperatureScaling().fit(logits, labels)
            temperatures.append(fitted.temperature_)
            for name, temperature in zip(results, (fitted.temperature_, 1.0), strict=True):
                z = test_logits / temperature
                p = np.exp(z - z.max(1, keepdims=True))
                p /= p.sum(1, keepdims=True)
                results[name].append((negative_log_likelihood(test_labels, p),
                                      expected_calibration_error(test_labels, p)))
        for name, values in results.items():
            label = f"fitted anyway (T = {np.median(temperatures):.2f}, median)" if name == "fitted anyway" else name
            rows.append([network, label, f"{np.mean([v[0] for v in values]):.3f}",
                         f"{np.mean([v[1] for v in values]):.3f}"])
    _table(f"Calibration when every validation image is right (three classes, 30 validation images, {reps} splits "
           "each): test NLL and top-label ECE", ["network", "temperature", "test NLL", "test ECE"], rows)


SECTIONS: dict[str, Callable[[float], None]] = {
    "null": null_section, "power": power_section, "coverage": coverage_section, "threshold": threshold_section,
    "calibration": calibration_section, "transfer": transfer_section,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tenth of the repetitions")
    parser.add_argument("--only", choices=list(SECTIONS), action="append", help="run only these sections")
    args = parser.parse_args()
    scale = 0.1 if args.quick else 1.0
    for name in args.only or SECTIONS:
        started = time.perf_counter()
        SECTIONS[name](scale)
        print(f"\n({name}: {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
