"""The end of a run: the kept network(s) scored on every split, then the run's files.

Holdout (``finish``): the kept network's logits on the plain training, validation and test images
(run whole, as at inference), AdaBN to the target site if asked. Cross-fitting (``finish_folds``):
every fold network's logits on every image, the out-of-fold logits as validation, the ensemble's
(mean of logits) as training and test, and each fold's overfitting check. Then (rank 0) the saved
model, the calibration and threshold fitted on validation, the metrics, the report and the model
card; the checkpoint goes last, so an interrupted finish can be resumed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from medxfer.pipeline.evaluation.checks import overfitting_check
from medxfer.pipeline.evaluation.evaluator import Evaluation, evaluate
from medxfer.pipeline.evaluation.inputs import EvaluationSettings, SplitInputs
from medxfer.pipeline.evaluation.schema import Crossfit, CrossfitFold
from medxfer.pipeline.models.adaptation import adapt_batchnorm
from medxfer.pipeline.models.classifier import XrayClassifier
from medxfer.pipeline.models.prefix import split_backbone
from medxfer.pipeline.reporting.outputs import data_name, headline, write_evaluation
from medxfer.pipeline.runs.config import TrainConfig
from medxfer.pipeline.runs.files import CHECKPOINT_FILE, FOLD_FILE
from medxfer.pipeline.runs.saving import save_model
from medxfer.pipeline.statistics.scoring import macro_auroc, ranking_scores
from medxfer.pipeline.training.data import SPLITS, TrainingData
from medxfer.pipeline.training.execution import EVAL_BATCH, Execution, shuffled_batches
from medxfer.pipeline.training.prefix_cache import prefix_outputs
from medxfer.pipeline.training.run_directory import RunDirectory
from medxfer.transforms.pipeline import XrayPipeline
from medxfer.transforms.preparation import InputSpec


@dataclass(frozen=True)
class Fitted:
    """One network's training: the kept epoch (1-based; 0: none scored), the epochs run and the
    kept epoch's validation AUROC (NaN when undefined)."""

    best_epoch: int
    epochs_run: int
    val_auroc: float


@dataclass(frozen=True)
class Outcome:
    """How training went: the 1-based epoch whose weights were kept (0: none scored), the epochs
    run, and the history rows."""

    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]]


def split_inputs(model: XrayClassifier, data: TrainingData, plain: XrayPipeline,
                 execution: Execution) -> dict[str, SplitInputs]:
    """Labels, logits of the whole network, patients and metadata of each split."""
    splits = {}
    for split in SPLITS:
        records = data.split_records(split)
        logits = execution.logits(model, data.split_images(split), plain, model.head[-1].out_features)
        splits[split] = SplitInputs(data.split_labels(split).numpy(), logits,
                                    patients=[r.patient_key for r in records], meta=[r.meta for r in records])
    return splits


def finish(model: XrayClassifier, data: TrainingData, outcome: Outcome, *, config: TrainConfig, spec: InputSpec,
           plain: XrayPipeline, run_dir: RunDirectory, execution: Execution, log: Callable[[str], None]) -> None:
    """Score, adapt, save, evaluate and write the run's files (see the module docstring)."""
    splits = split_inputs(model, data, plain, execution)
    if config.adapt == "adabn":
        # val and test are the training site's patients: scored above with its statistics.
        seen = adapt_batchnorm(model, shuffled_batches(data.target, plain, config.seed), device=execution.device)
        log(f"AdaBN: BatchNorm statistics re-estimated on {seen} target-site scans")
    if execution.dist.is_main:
        log("evaluating: calibration and threshold on the validation split, patient-clustered intervals"
            + (f", {config.bootstrap} bootstrap resamples" if config.bootstrap else ""))
        evaluation = _write_run([model], data, splits, config=config, spec=spec, run_dir=run_dir,
                                recorded={"best_epoch": outcome.best_epoch}, best_epoch=outcome.best_epoch,
                                history=outcome.history)
        metrics = evaluation.metrics
        metrics.update(best_epoch=outcome.best_epoch, epochs_run=outcome.epochs_run)
        metrics["overfitting"].update(best_epoch=outcome.best_epoch, epochs_run=outcome.epochs_run)
        if config.adapt == "adabn":
            metrics["scored_before"] = "AdaBN to the target site"
        _write_files(evaluation, run_dir, config, outcome.history, log)
    execution.dist.barrier()
    log(f"wrote {run_dir.path}")


def finish_folds(members: Sequence[XrayClassifier], data: TrainingData, fitted: Sequence[Fitted],
                 history: list[dict[str, float]], *, frozen: int, cached: torch.Tensor | None, config: TrainConfig,
                 spec: InputSpec, plain: XrayPipeline, run_dir: RunDirectory, execution: Execution,
                 log: Callable[[str], None]) -> float:
    """A cross-fitted run's end: every fold network scored on every non-test and test image; the
    validation split is the out-of-fold logits (each image scored by the network that held it out),
    the training and test splits the ensemble's (the mean of the members' logits); calibration and
    threshold are fitted on the out-of-fold logits; the K networks are saved as one ensemble.
    ``frozen``: the stages the members share, frozen (0: none); ``cached``: their outputs on the
    plain non-test images, as cached for validation. Returns the out-of-fold AUROC of the
    uncalibrated logits (NaN when undefined)."""
    fold_of = data.folds[data.by_split["train"]]
    on_pool = member_logits(members, data.split_images("train"), frozen, plain, execution, cached)
    on_test = member_logits(members, data.split_images("test"), frozen, plain, execution)
    out_of_fold = np.empty_like(on_pool[0])
    for fold, logits in enumerate(on_pool):
        out_of_fold[fold_of == fold] = logits[fold_of == fold]
    labels = data.split_labels("train").numpy()
    records = data.split_records("train")
    patients, meta = [r.patient_key for r in records], [r.meta for r in records]
    test_records = data.split_records("test")
    splits = {"train": SplitInputs(labels, np.mean(on_pool, axis=0), patients=patients, meta=meta),
              "val": SplitInputs(labels, out_of_fold, patients=patients, meta=meta),
              "test": SplitInputs(data.split_labels("test").numpy(), np.mean(on_test, axis=0),
                                  patients=[r.patient_key for r in test_records], meta=[r.meta for r in test_records])}
    crossfit = crossfit_record(labels, fold_of, on_pool, fitted, selection=config.selection,
                               limit=config.overfit_gap)
    if execution.dist.is_main:
        log(f"evaluating the {len(members)}-network ensemble: calibration and threshold on the out-of-fold logits of "
            f"{len(labels)} images, patient-clustered intervals"
            + (f", {config.bootstrap} bootstrap resamples" if config.bootstrap else ""))
        evaluation = _write_run(members, data, splits, config=config, spec=spec, run_dir=run_dir,
                                recorded={"validation": "crossfit", "best_epochs": [f.best_epoch for f in fitted]},
                                best_epoch=None, history=history)
        metrics = evaluation.metrics
        metrics["overfitting"] = overfitting_check(metrics["train"]["auroc"], metrics["val"]["auroc"],
                                                   config.overfit_gap, out_of_fold=True)
        metrics["crossfit"] = crossfit
        _write_files(evaluation, run_dir, config, history, log)
        for fold in range(len(members)):
            run_dir.file(FOLD_FILE.format(fold + 1)).unlink(missing_ok=True)
    execution.dist.barrier()
    log(f"wrote {run_dir.path}")
    return macro_auroc(labels, ranking_scores(out_of_fold))


@torch.no_grad()
def member_logits(members: Sequence[XrayClassifier], images: Sequence[torch.Tensor], frozen: int,
                  plain: XrayPipeline, execution: Execution, cached: torch.Tensor | None = None) -> list[np.ndarray]:
    """Each member's (n, K) logits on the plain ``images``. Without a shared frozen prefix each
    member runs whole; with one (``frozen`` stages, the same weights in every member: they were
    never trained) the prefix runs once (or its ``cached`` outputs are used) and each member runs
    only its suffix and head, K times fewer prefix passes."""
    n_outputs = members[0].head[-1].out_features
    if not frozen or not len(images):  # (no test split: nothing to score)
        return [execution.logits(member, images, plain, n_outputs) for member in members]
    if cached is None:
        cached = prefix_outputs(split_backbone(members[0], frozen)[0], images, plain, 0, seed=0, execution=execution)
    logits = []
    for member in members:
        member.eval()
        suffix = split_backbone(member, frozen)[1]
        rows = [member.head(suffix(execution.to_device(cached[start:start + EVAL_BATCH]))).float().cpu()
                for start in range(0, len(cached), EVAL_BATCH)]
        logits.append((torch.cat(rows) if rows else torch.empty(0, n_outputs)).numpy())
    return logits


def crossfit_record(labels: np.ndarray, fold_of: np.ndarray, on_pool: Sequence[np.ndarray],
                    fitted: Sequence[Fitted], *, selection: str, limit: float) -> Crossfit:
    """metrics.json's ``crossfit`` block: the folds, how the members are combined, the ``selection``
    score, and each fold's overfitting check (``labels`` and ``fold_of`` of the non-test images,
    ``on_pool`` each member's logits on them; a gap above ``limit`` is flagged)."""
    return Crossfit(folds=len(on_pool), combined="mean of the members' logits", selection=selection,
                    per_fold=fold_checks(labels, fold_of, on_pool, fitted, limit))


def fold_checks(labels: np.ndarray, fold_of: np.ndarray, on_pool: Sequence[np.ndarray], fitted: Sequence[Fitted],
                limit: float) -> list[CrossfitFold]:
    """Each fold's overfitting check: the AUROC of its network on the images it trained on and on
    the fold it held out, their gap (flagged above ``limit``), and its kept epoch."""
    rows = []
    for fold, (logits, fit) in enumerate(zip(on_pool, fitted, strict=True)):
        seen, held = fold_of != fold, fold_of == fold
        train_auroc = macro_auroc(labels[seen], ranking_scores(logits[seen]))
        held_auroc = macro_auroc(labels[held], ranking_scores(logits[held]))
        gap = train_auroc - held_auroc
        rows.append(CrossfitFold(fold=fold + 1, n_train=int(seen.sum()), n_held_out=int(held.sum()),
                                 train_auroc=_finite(train_auroc), held_out_auroc=_finite(held_auroc),
                                 gap=_finite(gap), flag=None if math.isnan(gap) else bool(gap > limit),
                                 best_epoch=fit.best_epoch, epochs_run=fit.epochs_run))
    return rows


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _write_run(members: Sequence[XrayClassifier], data: TrainingData, splits: dict[str, SplitInputs], *,
               config: TrainConfig, spec: InputSpec, run_dir: RunDirectory, recorded: dict,
               best_epoch: int | None, history: list[dict[str, float]]) -> Evaluation:
    """Save the network(s) (rank 0; ``recorded``: facts for ``model.json``) and evaluate the splits."""
    for member in members:
        member.cpu()
    save_model(members, run_dir.path, classes=data.classes, spec=spec, strategy=config.strategy,
               adaptation=config.adapt,
               extra={**recorded, "seed": config.seed, "window": config.window,
                      "volume_strategy": config.volume_strategy})
    return evaluate(data.classes, splits, EvaluationSettings.from_config(config), data_name=data_name(config.data),
                    best_epoch=best_epoch)


def _write_files(evaluation: Evaluation, run_dir: RunDirectory, config: TrainConfig,
                 history: list[dict[str, float]], log: Callable[[str], None]) -> None:
    """The calibration, metrics, report and card; the headline to ``log``; the checkpoint removed last."""
    write_evaluation(run_dir.path, evaluation, evaluator_state=evaluation.evaluator.to_dict(),
                     history=history, config=config.to_dict(), environment=run_dir.environment())
    for line in headline(evaluation.metrics):
        log(line)
    run_dir.file(CHECKPOINT_FILE).unlink(missing_ok=True)
