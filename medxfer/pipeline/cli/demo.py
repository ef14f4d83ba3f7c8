"""``medxfer demo``: the whole pipeline, offline, on a phantom two-site cohort.

1. A synthetic cohort of two hospitals (``site-a``: CR, MONOCHROME1; ``site-b``: DX,
   MONOCHROME2, another exposure, noise and blur), written as real DICOM files.
2. Its manifests: site A labelled (to train on), site B's patients divided into unlabelled
   scans for adaptation and labelled scans for testing, so that no patient is in two roles.
3. ``medxfer train`` on site A with the defaults (ImageNet EfficientNet-Lite0 from the packaged
   weights, partial fine-tuning, temperature scaling and threshold fitted on site A's validation
   patients, the report with calibration, overfitting and subgroup sections), adapted to site B
   with AdaBN from the unlabelled site-B scans. ``--crossfit``: a cross-fitted ensemble of fold
   networks instead (``validation: crossfit``), not adapted.
4. ``medxfer evaluate`` on the held-out site-B patients: the external validation report.
5. ``medxfer predict`` over a folder of those site-B scans with broken files mixed in.
6. ``medxfer augment-preview`` of the standard augmentation on one radiograph.

Every step is the library's own function, called as the commands call it; the demo adds only
the phantom data and the file layout. Sizes: the defaults (240 patients, 128-pixel input) keep
the demo short: 36 s on 2 idle CPU cores (64 s at 224 pixels), about 4 minutes when another job
shares the cores.
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medxfer.datasets import phantom
from medxfer.pipeline.evaluation.schema import Metrics
from medxfer.pipeline.evaluation.wording import number, with_interval

SOURCE, TARGET = "site-a", "site-b"


@dataclass(frozen=True)
class DemoSettings:
    """How big the demo is: phantom ``patients`` (spread over the two sites), ``seed``, the
    network input side ``image_size`` (pixels), ``epochs`` (``auto`` or a number), the
    ``bootstrap`` resamples of the report's intervals and ``crossfit``: train a cross-fitted
    ensemble (``validation: crossfit``) without AdaBN, which cross-fitting does not combine with."""

    patients: int = 240
    seed: int = 0
    image_size: int = 128  # train's default is 224; 128 takes about half the time (see the module docstring)
    epochs: int | str = "auto"
    bootstrap: int = 1000
    crossfit: bool = False


@dataclass(frozen=True)
class DemoResult:
    """Where the demo wrote its outputs, and the figures it printed."""

    cohort: phantom.CohortSummary
    study: phantom.SiteStudy
    run_dir: Path
    external_dir: Path
    predictions: Path
    errors: Path
    preview: Path
    metrics: Metrics
    external_metrics: Metrics
    predicted: int
    failed: int


def _inbox(out: Path, study: phantom.SiteStudy, seed: int) -> tuple[Path, int]:
    """A folder as a PACS export delivers it: the held-out site-B scans, copied, with broken
    files mixed in. Returns the folder and the number of good scans."""
    inbox = out / "inbox"
    root = study.target_test.parent
    with open(study.target_test, newline="", encoding="utf-8") as handle:
        paths = [row["path"] for row in csv.DictReader(handle)]
    for relative in paths:
        target = inbox / Path(relative).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / relative, target)
    phantom.write_broken_files(inbox / "broken", root / paths[0], seed=seed)
    return inbox, len(paths)


def run_demo(out: str | Path, settings: DemoSettings = DemoSettings(), *,
             log: Callable[[str], None] = print) -> DemoResult:
    """Run the demo into ``out``, a new or empty folder (``ValueError`` otherwise: nothing is
    overwritten), and return where everything went."""
    from medxfer.pipeline.decoding.preview import write_augment_preview
    from medxfer.pipeline.inference.external import evaluate_run
    from medxfer.pipeline.inference.predict import predict_scans
    from medxfer.pipeline.runs.config import load_config
    from medxfer.pipeline.runs.trained_run import TrainedRun
    from medxfer.pipeline.training.trainer import train

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out}: not empty; the demo writes into a new or empty folder (remove it, or give another "
                         "--out)")
    step = _Steps(log)
    step("generating a phantom two-site cohort", out / "cohort")
    cohort = phantom.generate_cohort(out / "cohort", n_patients=settings.patients, seed=settings.seed, n_volumes=0,
                                     sites=(SOURCE, TARGET))
    log(f"      {cohort.n_images} DICOM radiographs of {cohort.n_patients} patients: "
        + ", ".join(f"{site} {n}" for site, n in cohort.site_counts.items()))
    study = phantom.write_site_study(cohort, source=SOURCE, target=TARGET, seed=settings.seed)
    log(f"      {SOURCE}: {study.n_source} labelled scans to train on; {TARGET}: {study.n_target_unlabelled} "
        f"unlabelled scans to adapt to, {study.n_target_test} labelled scans of other patients to test on")

    adaptation = ({"validation": "crossfit"} if settings.crossfit else
                  {"validation": "holdout", "adapt": "adabn", "target_data": str(study.target_unlabelled)})
    step(f"training on {SOURCE} (ImageNet EfficientNet-Lite0, default strategy), "
         + ("cross-fitted: one network per fold, not adapted" if settings.crossfit
            else f"adapting to {TARGET} with AdaBN"), out / "run")
    config = load_config(None, {
        "data": str(study.source), "out": str(out / "run"), "seed": settings.seed, "image_size": settings.image_size,
        "epochs": settings.epochs, "bootstrap": settings.bootstrap, **adaptation,
    }).validate(need_data=True, check_paths=True)
    run_dir = train(config, log=lambda line: log("      " + line)).run_dir
    metrics = TrainedRun.load(run_dir).metrics

    step(f"external validation on the held-out {TARGET} patients, with {SOURCE}'s calibration and threshold",
         out / "evaluation-site-b")
    external = evaluate_run(run_dir, study.target_test, out / "evaluation-site-b",
                            log=lambda line: log("      " + line))

    step(f"batch inference over a folder of {TARGET} scans with broken files mixed in", out / "predictions.csv")
    inbox, good = _inbox(out, study, settings.seed)
    summary = predict_scans(run_dir, inbox, out / "predictions.csv", workers=0,
                            log=lambda line: log("      " + line))

    step("previewing the standard augmentation on one radiograph", out / "augment-preview.png")
    preview = write_augment_preview(inbox / min(p.name for p in inbox.glob("*.dcm")),
                                    out / "augment-preview.png", draws=7, seed=settings.seed)

    log("")
    log("demo finished")
    log(f"  {SOURCE} (trained on), held-out patients: {brief(metrics)}")
    log(f"  {TARGET} ({'not adapted' if settings.crossfit else 'adapted to with AdaBN'}, never labelled in training), "
        f"held-out patients: {brief(external.metrics)}")
    log(f"  batch inference: {summary.predicted} of {good + len(phantom.BROKEN_FILES)} files predicted, "
        f"{summary.failed} could not be read (listed in {summary.errors})")
    log("  AUROC measures ranking, which can hold at a new site while the threshold and the calibration fitted at "
        f"{SOURCE} do not: compare sensitivity, specificity and ECE between the two reports.")
    log("open these:")
    log(f"  {run_dir / 'report.html'}   the report of the trained model (calibration, overfitting, subgroups)")
    log(f"  {out / 'evaluation-site-b' / 'report.html'}   the same model on {TARGET} (external validation)")
    log(f"  {summary.out}   one row per scan: calibrated probabilities and the predicted label")
    return DemoResult(cohort=cohort, study=study, run_dir=run_dir, external_dir=out / "evaluation-site-b",
                      predictions=summary.out, errors=summary.errors, preview=preview, metrics=metrics,
                      external_metrics=external.metrics, predicted=summary.predicted, failed=summary.failed)


def brief(metrics: Metrics) -> str:
    """One line of an evaluation's ``metrics.json``: the test AUROC with its interval, the
    operating point, ECE before and after calibration, and how many flags the report raises."""
    split = "test" if "test" in metrics else "val"
    entry = metrics[split]

    def value(key: str) -> str:
        return with_interval(entry.get(key), entry["ci"].get(key), typeset=False, joiner="-")

    flags = len(metrics["bias"]["flags"]) + bool(metrics.get("overfitting", {}).get("flag"))  # no check: no entry
    return (f"{split} AUROC {value('auroc')} on {entry['n']} images; at the validated threshold sensitivity "
            f"{value('sensitivity')}, specificity {value('specificity')}; ECE "
            f"{number(entry['ece_uncalibrated'], typeset=False)} before and {number(entry['ece'], typeset=False)} "
            f"after calibration; {flags} flag(s) in the report")


class _Steps:
    """Numbered progress lines: ``[k/5] what -> where``."""

    TOTAL = 5

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log, self.number = log, 0

    def __call__(self, what: str, where: Path) -> None:
        self.number += 1
        self.log(f"[{self.number}/{self.TOTAL}] {what} -> {where}")
