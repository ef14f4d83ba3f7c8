"""External validation (``medxfer evaluate RUN_DIR --data PATH``): a trained run scored on another
labelled set with the calibration and the threshold fitted on the run's own validation data (its
validation split, or the out-of-fold predictions of a cross-fitted run), unchanged, so that the figures say how the model as shipped does on new data.

Every image of the new set is a test image (a manifest's split column is ignored). Files that
cannot be read are skipped and listed in ``unreadable.csv``; the scans are prepared exactly as
``medxfer predict`` prepares them and scored batch by batch, so memory holds logits, not images. The run's validation figures, training
AUROC and overfitting check are carried over from its ``metrics.json``, and its learning curves
from ``history.csv``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from medxfer.csvfiles import write_csv
from medxfer.datasets.sources import ScanRecord, ScanSet, UnreadableFile, load_scans
from medxfer.filenames import shown
from medxfer.pipeline.decoding.scans import DecodeSettings, prepared_batches
from medxfer.pipeline.evaluation.evaluator import Evaluation, evaluate
from medxfer.pipeline.evaluation.inputs import EvaluationSettings, SplitInputs
from medxfer.pipeline.evaluation.transfer import transfer_warnings
from medxfer.pipeline.reporting.outputs import data_name, headline, write_evaluation
from medxfer.pipeline.runs.environment import environment_info, records_manifest_hash, write_environment
from medxfer.pipeline.runs.files import (
    ENVIRONMENT_FILE,
    EVALUATIONS_DIR,
    METRICS_FILE,
    MODEL_CARD_FILE,
    PREDICTIONS_FILE,
    REPORT_FILE,
    UNREADABLE_FILE,
)
from medxfer.pipeline.runs.trained_run import TrainedRun, check_run, read_json
from medxfer.pipeline.runtime.device import resolve_device

BATCH = 32
PROGRESS = 256  # scans between progress lines
# from the run's metrics.json: the same calibration (with the size of the set it was fitted on),
# the validation figures and the overfitting check
CARRIED = ("calibration", "train", "val", "overfitting", "best_epoch", "epochs_run", "crossfit", "scored_before")


EVALUATION_FILES = frozenset({METRICS_FILE, REPORT_FILE, MODEL_CARD_FILE, PREDICTIONS_FILE, UNREADABLE_FILE,
                              ENVIRONMENT_FILE})


def _check_out(out: Path) -> None:
    """Refuse an ``--out`` that holds anything but an earlier evaluation's files (which this one
    replaces): a training run, another command's output, a user's own files."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; an evaluation is written into a folder")
    if not out.is_dir():
        return
    others = sorted(p.name for p in out.iterdir() if p.name not in EVALUATION_FILES)
    if others:
        raise ValueError(f"--out {out} holds files an evaluation did not write ({', '.join(others[:5])}"
                         f"{', ...' if len(others) > 5 else ''}): choose a new or empty folder")
    metrics = out / METRICS_FILE
    if metrics.is_file() and read_json(metrics).get("kind") != "external validation":
        raise ValueError(f"--out {out} holds the metrics.json of a training run, not of an evaluation: choose a new "
                         "or empty folder")


def _labelled_records(data: Path, layout: str, classes: list[str], max_pixels: int | None) -> ScanSet:
    scans = load_scans(data, layout=layout, labelled=True, max_pixels=max_pixels)
    if scans.layout == "unlabelled":
        raise ValueError(f"{data}: no labels found (give a folder of class subfolders or a manifest with a label "
                         "column); to score unlabelled scans use medxfer predict")
    unlabelled = [r.path for r in scans.records if r.label is None]
    if unlabelled:
        raise ValueError(f"{data}: {len(unlabelled)} file(s) have no label, e.g. {unlabelled[0]}")
    unknown = sorted({r.label for r in scans.records} - set(classes))
    if unknown:
        raise ValueError(f"{data}: label(s) {', '.join(unknown)} are not classes of this model ({', '.join(classes)})")
    if not scans.records:
        raise ValueError(f"{data}: no readable scans")
    return scans


@torch.no_grad()
def _score(scans: ScanSet, run: TrainedRun, settings: DecodeSettings, device: torch.device, workers: int,
           log: Callable[[str], None]) -> tuple[list[ScanRecord], np.ndarray, list[UnreadableFile]]:
    """Logits of every readable scan, prepared as ``medxfer predict`` prepares them, batch by
    batch (decoded in ``workers`` processes meanwhile)."""
    records = scans.records
    kept: list[ScanRecord] = []
    logits: list[np.ndarray] = []
    failed: list[UnreadableFile] = []
    batches = prepared_batches([r.path for r in records], range(len(records)), settings, batch_size=BATCH,
                               workers=workers)
    for number, batch in enumerate(batches, 1):
        good = [(index, image) for index, image, _, _ in batch if image is not None]
        failed += [UnreadableFile(records[index].path, reason) for index, image, _, reason in batch if image is None]
        if good:
            logits.append(run.logits(torch.stack([image for _, image in good]).to(device)).float().cpu().numpy())
        kept += [records[index] for index, _ in good]
        if number % (PROGRESS // BATCH) == 0 or number * BATCH >= len(records):
            log(f"  scored {min(number * BATCH, len(records))} of {len(records)} scans")
    return kept, (np.concatenate(logits) if logits else np.empty((0, len(run.classes)), np.float32)), failed


def evaluate_run(run_dir: str | Path, data: str | Path, out: str | Path | None = None, *, layout: str = "auto",
                 bootstrap: int | None = None, subgroups: tuple[str, ...] | None = None,
                 intersections: tuple[str, ...] | None = None, device: str = "auto", workers: int = 0,
                 max_pixels: int | None = None, log: Callable[[str], None] = print) -> Evaluation:
    """Score the labelled set ``data`` with the finished run ``run_dir`` and write
    ``metrics.json``, ``report.html``, ``model_card.md``, ``predictions.csv``,
    ``environment.json`` and, if some files could not be read, ``unreadable.csv`` into ``out``
    (default ``RUN_DIR/evaluations/<data set name>``). ``bootstrap``, ``subgroups`` and
    ``intersections`` override the run's settings; ``max_pixels`` the run's pixel budget."""
    run_dir, data = Path(run_dir), Path(data)
    check_run(run_dir)  # the arguments are checked before the network is built
    if not data.exists():
        raise FileNotFoundError(f"{data}: no such file or folder")
    name = data_name(data)
    out = Path(out) if out is not None else run_dir / EVALUATIONS_DIR / name
    if out.resolve() == run_dir.resolve():
        raise ValueError(f"--out {out} is the run folder itself, whose own report it would replace; choose another")
    _check_out(out)
    run = TrainedRun.load(run_dir)
    overrides = {k: v for k, v in {"bootstrap": bootstrap, "subgroups": subgroups,
                                   "intersections": intersections}.items() if v is not None}
    config = replace(run.config, **overrides).validate()
    evaluator, run_metrics, classes = run.decision, run.metrics, list(run.classes)
    torch_device = resolve_device(device)
    run.to(torch_device)
    if max_pixels is None and config.max_pixels != "auto":
        max_pixels = int(config.max_pixels)
    scans = _labelled_records(data, layout, classes, max_pixels)
    log(f"evaluating {shown(run_dir)} on {len(scans.records)} labelled scans from {shown(data)}")
    settings = run.decode_settings(max_pixels)
    kept, logits, failed = _score(scans, run, settings, torch_device, workers, log)
    unreadable = [*scans.unreadable, *failed]
    if not kept:
        raise ValueError(f"{data}: none of its {len(scans.records) + len(scans.unreadable)} files could be read")
    index = {c: i for i, c in enumerate(classes)}
    inputs = SplitInputs(np.array([index[r.label] for r in kept]), logits,
                         patients=[r.patient_key for r in kept], meta=[r.meta for r in kept])
    evaluation = evaluate(classes, {"test": inputs}, EvaluationSettings.from_config(config), evaluator=evaluator,
                          kind="external validation", data_name=name)
    metrics = evaluation.metrics
    for key in CARRIED:
        if key in run_metrics:
            metrics[key] = run_metrics[key]
    metrics["trained_on"] = run_metrics.get("data_name")
    metrics["unreadable_files"] = len(unreadable)
    transfer, kinds = transfer_warnings(metrics["test"], run_metrics.get("val"), positive=metrics["positive_class"],
                                        where="at this site")
    metrics["transfer"] = {"compared_with": "validation split of the training run" if run_metrics.get("val") else None,
                           "warnings": transfer, "kinds": kinds}
    metrics["warnings"] = transfer + [w for w in metrics["warnings"] if w not in transfer]
    if run_metrics.get("val") and "transfer_statistics" not in run_metrics["val"]:
        metrics["transfer"]["partial"] = True
        metrics["warnings"].append(
            "The run was trained by an earlier medxfer, whose metrics.json lacks validation's patient-clustered "
            "standard errors: only the AUROC and the sensitivity and specificity intervals were compared with "
            "validation; the checks of the share called positive and of the calibration were not made. Retrain "
            "with this version for all four.")
    kept_scans = replace(scans, records=kept)
    out.mkdir(parents=True, exist_ok=True)
    write_environment(out / ENVIRONMENT_FILE, environment_info(
        seed=config.seed, device=torch_device, data_hash=records_manifest_hash(kept_scans),
        extra={"evaluated_run": str(run_dir.resolve().name)}))
    probabilities = evaluation.scores["test"].probabilities  # the calibrated probabilities the report scored
    predicted = evaluator.predict(probabilities)
    probability_columns = [f"p_{c}" for c in classes]
    write_csv(out / PREDICTIONS_FILE, ["path", "label", *probability_columns, "predicted"],
              ({"path": scans.relative(r.path), "label": r.label, "predicted": classes[k],
                **{column: f"{p:.6f}" for column, p in zip(probability_columns, row, strict=True)}}
               for r, row, k in zip(kept, probabilities, predicted, strict=True)))
    if unreadable:
        write_csv(out / UNREADABLE_FILE, ("path", "reason"),
                  ({"path": scans.relative(u.path), "reason": u.reason} for u in unreadable))
        log(f"skipped {len(unreadable)} unreadable file(s): listed in {shown(out / UNREADABLE_FILE)}")
    else:
        (out / UNREADABLE_FILE).unlink(missing_ok=True)  # an earlier evaluation's list would read as this one's
    write_evaluation(out, evaluation, evaluator_state=None, history=run.history(),
                     config=config.to_dict(), environment=read_json(out / ENVIRONMENT_FILE))
    for line in headline(metrics):
        log(line)
    log(f"wrote {shown(out)}")
    return evaluation
