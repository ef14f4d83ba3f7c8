"""The end of a run: the kept network scored on every split, then its files.

The kept network's logits on the plain training, validation and test images (run whole, as at
inference), AdaBN to the target site if asked, then (rank 0) the saved model, the calibration
and threshold fitted on validation, the metrics, the report and the model card; the checkpoint
goes last, so an interrupted finish can be resumed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from medxfer.pipeline.evaluation.evaluator import evaluate
from medxfer.pipeline.evaluation.inputs import EvaluationSettings, SplitInputs
from medxfer.pipeline.models.adaptation import adapt_batchnorm
from medxfer.pipeline.models.classifier import XrayClassifier
from medxfer.pipeline.reporting.outputs import data_name, headline, write_evaluation
from medxfer.pipeline.runs.config import TrainConfig
from medxfer.pipeline.runs.files import CHECKPOINT_FILE
from medxfer.pipeline.runs.saving import save_model
from medxfer.pipeline.training.data import SPLITS, TrainingData
from medxfer.pipeline.training.execution import Execution, shuffled_batches
from medxfer.pipeline.training.run_directory import RunDirectory
from medxfer.transforms.pipeline import XrayPipeline
from medxfer.transforms.preparation import InputSpec


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
        model.cpu()
        save_model(model, run_dir.path, classes=data.classes, spec=spec, strategy=config.strategy,
                   adaptation=config.adapt,
                   extra={"best_epoch": outcome.best_epoch, "seed": config.seed, "window": config.window,
                          "volume_strategy": config.volume_strategy})
        log("evaluating: calibration and threshold on the validation split, patient-clustered intervals"
            + (f", {config.bootstrap} bootstrap resamples" if config.bootstrap else ""))
        evaluation = evaluate(data.classes, splits, EvaluationSettings.from_config(config),
                              data_name=data_name(config.data), best_epoch=outcome.best_epoch)
        metrics = evaluation.metrics
        metrics.update(best_epoch=outcome.best_epoch, epochs_run=outcome.epochs_run)
        metrics["overfitting"].update(best_epoch=outcome.best_epoch, epochs_run=outcome.epochs_run)
        if config.adapt == "adabn":
            metrics["scored_before"] = "AdaBN to the target site"
        write_evaluation(run_dir.path, evaluation, evaluator_state=evaluation.evaluator.to_dict(),
                         history=outcome.history, config=config.to_dict(), environment=run_dir.environment())
        for line in headline(metrics):
            log(line)
        run_dir.file(CHECKPOINT_FILE).unlink(missing_ok=True)
    execution.dist.barrier()
    log(f"wrote {run_dir.path}")
