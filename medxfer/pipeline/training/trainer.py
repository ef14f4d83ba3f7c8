"""``medxfer train``: one training run, from a labelled dataset to a finished run directory.

``Trainer`` wires the parts, each in its own module: the run folder (``run_directory``), the
data (``data``), the network and its cached prefix (``network``, ``prefix_cache``), the batches
(``batches``), the optimiser and its schedule (``optimisation``), the step (``steps``), the
epoch (``epoch``), the loop with its callbacks (``loop``, ``early_stopping``, ``progress``,
``history``, ``checkpointing``) and the end of the run (``finishing``).

Reproducible: every random choice (batch order, augmentation, dropout) is drawn from a seed
derived from (run seed, epoch, ...), so a run resumed from its checkpoint after epoch k ends
exactly where an uninterrupted run would, on the same machine.

Distributed (``torchrun``): in a holdout run, N processes of batch size B follow the schedule of
one process with batch size N x B (see ``batches`` and ``steps``); a cross-fitted run shares its
folds out instead, each trained by one process alone (``_train_folds``). Differences left: BatchNorm
layers that train use the statistics of their process's slice, not of the global batch; dropout
masks are drawn per process; sums are taken in another order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from medxfer.datasets.sources import load_labelled
from medxfer.pipeline.decoding.scans import DecodeSettings
from medxfer.pipeline.models.adaptation import DomainClassifier, adapt_batchnorm
from medxfer.pipeline.models.classifier import XrayClassifier
from medxfer.pipeline.models.prefix import split_backbone
from medxfer.pipeline.runs.config import TrainConfig
from medxfer.pipeline.runs.files import CHECKPOINT_FILE, FOLD_FILE, HISTORY_FILE, UNREADABLE_FILE
from medxfer.pipeline.runtime.device import resolve_device, resolve_workers, usable_cores
from medxfer.pipeline.runtime.distributed import Distributed
from medxfer.pipeline.training.batches import EpochSchedule, TrainBatches
from medxfer.pipeline.training.checkpoint import load_checkpoint, save_checkpoint
from medxfer.pipeline.training.checkpointing import Checkpointing
from medxfer.pipeline.training.data import TrainingData, load_training_data
from medxfer.pipeline.training.early_stopping import SCORE_WORDS, EarlyStopping, resolve_selection
from medxfer.pipeline.training.epoch import EpochRunner
from medxfer.pipeline.training.execution import Execution, shuffled_batches
from medxfer.pipeline.training.finishing import Fitted, Outcome, finish, finish_folds
from medxfer.pipeline.training.history import History
from medxfer.pipeline.training.loop import TrainingLoop
from medxfer.pipeline.training.network import build_network, cached_part, cached_stages, resolve_auto
from medxfer.pipeline.training.optimisation import Optimisation, build_optimizer
from medxfer.pipeline.training.prefix_cache import LoopInputs, build_inputs
from medxfer.pipeline.training.progress import ProgressLog, shown
from medxfer.pipeline.training.run_directory import RunDirectory
from medxfer.pipeline.training.steps import DannStep, SupervisedStep, TrainableNet, imbalance_weights
from medxfer.transforms.pipeline import XrayPipeline
from medxfer.transforms.preparation import InputSpec
from medxfer.transforms.presets import augmentation_from_config

__all__ = ["TrainResult", "Trainer", "train"]


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced: the run folder, the epoch whose weights were kept
    (1-based), how many epochs ran, the validation AUROC of the kept weights and the history.
    A cross-fitted run gives each fold's ``Fitted`` in ``folds``, the out-of-fold AUROC as
    ``val_auroc`` (uncalibrated logits) and 0 as ``best_epoch``."""

    run_dir: Path
    best_epoch: int
    epochs_run: int
    val_auroc: float
    history: list[dict[str, float]]
    folds: tuple[Fitted, ...] = ()


@dataclass(frozen=True)
class Prepared:
    """A run's data and network once set up: the network (on its device), its input spec,
    the plain and augmenting input pipelines, the stages cached (0: none; ``cached_stages``)
    and the decoded data."""

    model: XrayClassifier
    spec: InputSpec
    plain: XrayPipeline
    augment: XrayPipeline
    frozen: int
    data: TrainingData


@dataclass(frozen=True)
class LoopParts:
    """What the epochs need: their inputs, the DANN domain classifier (or None), the epoch
    runner (network, step, optimiser, batch schedule) and the training batches."""

    inputs: LoopInputs
    domain: DomainClassifier | None
    runner: EpochRunner
    batches: TrainBatches


class Trainer:
    """One training run. ``Trainer(config).run()``; ``resume=True`` continues the run in
    ``config.out`` from its checkpoint. ``log`` receives progress lines (rank 0 only)."""

    def __init__(self, config: TrainConfig, *, resume: bool = False, log: Callable[[str], None] = print) -> None:
        self.config = config
        device = resolve_device(config.device)
        dist = Distributed.from_environment(device)
        if device.type == "cuda" and dist.enabled:
            device = torch.device("cuda", dist.local_rank)
        self.execution = Execution(device, dist, config.channels_last, config.amp, resolve_workers(config.workers))
        self.run_dir = RunDirectory(config.out, resume=resume, dist=dist)
        self._writes = dist.is_main  # this process writes the run's files (rank 0)
        self._log = log
        # Decoding runs alone, before any training: every core can decode (full-size films are slow).
        self.decode_workers = usable_cores() if config.workers == "auto" else self.execution.workers

    @property
    def device(self) -> torch.device:
        return self.execution.device

    def log(self, message: str) -> None:
        if self.execution.dist.is_main:
            self._log(message)

    def run(self) -> TrainResult:
        try:
            self.config = self.run_dir.check(self.config)
            return self.run_dir.guarded(self._train)
        finally:
            self.execution.dist.close()

    def prepare(self) -> Prepared:
        """Read and split the data, build the network, write the run's set-up files."""
        config = self.config
        max_pixels = None if config.max_pixels == "auto" else int(config.max_pixels)
        labelled = load_labelled(config.data, layout=config.layout, skip_unreadable=config.skip_unreadable,
                                 max_pixels=max_pixels)
        model = build_network(config, len(labelled.classes))  # on the CPU until resolve_auto has sized the cache
        spec = model.input_spec(config.image_size, config.fit)
        settings = DecodeSettings(spec, config.window, config.volume_strategy, max_pixels)
        scans, data = load_training_data(labelled, config, settings, workers=self.decode_workers,
                                         unreadable_file=self.run_dir.file(UNREADABLE_FILE), log=self.log)
        frozen = cached_stages(model, config)
        plain = XrayPipeline(spec, "none")
        # a fold trains on K - 1 of the K folds of the non-test images
        n_train = len(data.by_split["train"]) * (data.n_folds - 1) // data.n_folds if data.n_folds else len(
            data.by_split["train"])
        config = replace(config, validation="crossfit" if data.n_folds else "holdout",
                         selection=resolve_selection(config.selection, crossfit=bool(data.n_folds)))
        self.config = config = resolve_auto(config, model, frozen, n_train, data.images[0], plain)
        self.run_dir.write_setup(config, scans, self.device, folds=data.folds)
        augment = XrayPipeline(spec, augmentation_from_config(config.augment))
        return Prepared(self._placed(model), spec, plain, augment, frozen, data)

    def build_inputs(self, prepared: Prepared, data: TrainingData | None = None) -> LoopInputs:
        """What feeds the trainable part (``prefix_cache``) for ``data`` (default: the run's),
        after AdaBN's source-site statistics when asked."""
        config = self.config
        if config.adapt == "adabn":
            # AdaBN standardises each site with its own statistics: the source site's during
            # training (here, before anything is cached), the target site's once trained.
            seen = adapt_batchnorm(prepared.model, shuffled_batches(prepared.data.split_images("train"),
                                                                    prepared.plain, config.seed), device=self.device)
            self.log(f"AdaBN: BatchNorm statistics of the training site estimated on {seen} scans")
        return build_inputs(prepared.model, data or prepared.data, prepared.frozen, plain=prepared.plain,
                            augment=prepared.augment, views=config.cache_views, seed=config.seed,
                            dann=config.adapt == "dann", execution=self.execution, log=self.log)

    def build_loop(self, model: XrayClassifier, inputs: LoopInputs, n_classes: int,
                   execution: Execution | None = None) -> LoopParts:
        """The trainable part fed by ``inputs`` (wrapped in DistributedDataParallel under
        torchrun), the optimiser, the batch schedule and the step, computed as ``execution`` says
        (default: the run's; a fold trained by one process alone passes a single-process one)."""
        config, execution = self.config, execution or self.execution
        domain = DomainClassifier(model.info.feature_dim).to(self.device) if config.adapt == "dann" else None
        net = TrainableNet(inputs.suffix, model.head, domain)
        optimizer = build_optimizer(model, domain, lr=config.lr, layer_decay=config.layer_decay,
                                    weight_decay=config.weight_decay)
        wrapped = net
        if execution.dist.enabled:
            wrapped = DistributedDataParallel(net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        schedule = EpochSchedule(inputs.train.labels, batch_size=config.batch_size, seed=config.seed,
                                 balanced=config.imbalance == "sampler", dist=execution.dist)
        batches = TrainBatches(inputs.train, schedule, workers=execution.workers)
        weights = imbalance_weights(inputs.train.labels, n_classes, config.imbalance)
        common = {"label_smoothing": config.label_smoothing, "per_rank": schedule.per_rank, "execution": execution}
        step = (DannStep(wrapped, weights, target=inputs.target, weight=config.dann_weight,
                         total_steps=config.epochs * schedule.steps, seed=config.seed, **common)
                if domain is not None else SupervisedStep(wrapped, weights, **common))
        runner = EpochRunner(model, net, step, Optimisation(optimizer, config.grad_clip), schedule, seed=config.seed,
                             epochs=config.epochs, execution=execution)
        return LoopParts(inputs, domain, runner, batches)

    def fit(self, model: XrayClassifier, parts: LoopParts, history: History, *, fold: int | None = None,
            log: Callable[[str], None] | None = None) -> Fitted:
        """Train ``model`` with ``parts`` until the last epoch or early stopping (resuming from the
        checkpoint when the run resumes and it is this ``fold``'s); ``model`` ends with the kept
        epoch's weights. Progress goes to ``log`` (default: the run's, rank 0 only)."""
        config, log = self.config, log or self.log
        early_stopping = EarlyStopping(model, patience=config.patience, log=log, selection=config.selection)
        loop = TrainingLoop(parts.runner, parts.batches, parts.inputs.val, [], epochs=config.epochs,
                            dist=parts.runner.execution.dist)
        checkpointing = Checkpointing(self.run_dir.file(CHECKPOINT_FILE), model=model, domain=parts.domain,
                                      optimizer=parts.runner.optimisation.optimizer, early_stopping=early_stopping,
                                      stateful=[loop, history], write=self._writes, fold=fold)
        loop.callbacks = [early_stopping, ProgressLog(log, early_stopping), history, checkpointing]
        if self.run_dir.resume:
            checkpointing.restore(log, config.epochs)
        steps = parts.runner.schedule.steps
        parts.runner.optimisation.start(warmup=round(config.warmup_epochs * steps), total=config.epochs * steps,
                                        first_step=loop.epoch * steps)
        loop.fit()
        best = early_stopping.best_epoch_
        rows = [row for row in history.rows_ if fold is None or row["fold"] == fold + 1]
        return Fitted(best, loop.epoch, rows[best - 1]["val_auroc"] if best else math.nan)

    def _train(self) -> TrainResult:
        prepared = self.prepare()
        if prepared.data.n_folds:
            return self._train_folds(prepared)
        parts = self.build_loop(prepared.model, self.build_inputs(prepared), len(prepared.data.classes))
        history = History(self.run_dir.file(HISTORY_FILE), write=self._writes)
        self.log_start(prepared, parts)
        fitted = self.fit(prepared.model, parts, history)
        self.log(f"kept the weights of epoch {fitted.best_epoch} (validation AUROC {shown(fitted.val_auroc)}"
                 + (f"; chosen on validation {SCORE_WORDS[self.config.selection]})" if self.config.selection != "auroc"
                    else ")"))
        finish(prepared.model, prepared.data, Outcome(fitted.best_epoch, fitted.epochs_run, history.rows_),
               config=self.config, spec=prepared.spec, plain=prepared.plain, run_dir=self.run_dir,
               execution=self.execution, log=self.log)
        return TrainResult(self.run_dir.path, fitted.best_epoch, fitted.epochs_run, fitted.val_auroc, history.rows_)

    def _train_folds(self, prepared: Prepared) -> TrainResult:
        """A cross-fitted run (``validation: crossfit``): the K fold networks, then the ensemble's files.

        The prefix cache is computed once for every non-test image (augmented views to train on and
        the plain view to validate on); fold k trains a fresh network on the rows of the other folds
        with its own early stopping on fold k's rows, so each image's held-out logits come from the
        one network that never saw it. A finished fold's kept weights and history are stored
        (``FOLD_FILE``, a checkpoint file), so a killed run resumes in the fold it was in. Under
        torchrun the folds are shared out: process r trains folds r, r + N, ... alone, and every
        process then reads all of them from their files."""
        data, dist = prepared.data, self.execution.dist
        k = data.n_folds
        shared = self.build_inputs(prepared, replace(data, by_split={**data.by_split, "val": data.by_split["train"]}))
        trained: dict[int, tuple[XrayClassifier, Fitted, list[dict[str, float]]]] = {}
        for fold in dist.shard(k):
            if not self.run_dir.file(FOLD_FILE.format(fold + 1)).is_file():
                trained[fold] = self._train_fold(prepared, shared, fold)
        dist.barrier()
        for fold in set(range(k)) - set(trained):  # another process's folds, or those finished before a resume
            parts, state = load_checkpoint(self.run_dir.file(FOLD_FILE.format(fold + 1)))
            model = prepared.model if fold == 0 else self._placed(build_network(self.config, len(data.classes)))
            model.load_state_dict(parts["model"])
            trained[fold] = model, Fitted(**state["fitted"]), state["history"]
            self.log(f"fold {fold + 1}/{k}: trained " + ("by another process" if dist.enabled
                                                         else "before the interruption")
                     + f" (epoch {trained[fold][1].best_epoch} kept)")
        members = [trained[fold][0] for fold in range(k)]
        fitted = [trained[fold][1] for fold in range(k)]
        rows = [row for fold in range(k) for row in trained[fold][2]]
        if self._writes:
            History(self.run_dir.file(HISTORY_FILE), write=True).save(rows)  # every fold's, in fold order
        cached = shared.val.views[0] if shared.val.views is not None else None
        oof_auroc = finish_folds(members, data, fitted, rows, frozen=prepared.frozen, cached=cached,
                                 config=self.config, spec=prepared.spec, plain=prepared.plain, run_dir=self.run_dir,
                                 execution=self.execution, log=self.log)
        return TrainResult(self.run_dir.path, 0, max(f.epochs_run for f in fitted), oof_auroc, rows,
                           folds=tuple(fitted))

    def _train_fold(self, prepared: Prepared, shared: LoopInputs,
                    fold: int) -> tuple[XrayClassifier, Fitted, list[dict[str, float]]]:
        """Train fold ``fold``'s network from the ``shared`` inputs and store it with its history
        (``FOLD_FILE``); returns it with its kept weights, how it was fitted and its history rows.
        Under torchrun this process trains the fold alone (no gradient exchange) and logs its lines."""
        data, k = prepared.data, prepared.data.n_folds
        model = prepared.model if fold == 0 else self._placed(build_network(self.config, len(data.classes)))
        alone = replace(self.execution, dist=Distributed()) if self.execution.dist.enabled else self.execution
        train_rows, held_out = data.fold_positions(fold)
        suffix = split_backbone(model, prepared.frozen)[1] if prepared.frozen else model.backbone
        parts = self.build_loop(model, LoopInputs(suffix, shared.train.subset(train_rows), shared.val.subset(held_out),
                                                  None), len(data.classes), alone)
        self.log_start(prepared, parts, fold=f"fold {fold + 1}/{k}: ", log=self._log)
        history = History(self.run_dir.file(HISTORY_FILE), write=False, fold=fold)
        fitted = self.fit(model, parts, history, fold=fold, log=self._log)
        self._log(f"fold {fold + 1}/{k}: kept the weights of epoch {fitted.best_epoch} (held-out AUROC "
                  f"{shown(fitted.val_auroc)}; chosen on {SCORE_WORDS[self.config.selection]})")
        save_checkpoint(self.run_dir.file(FOLD_FILE.format(fold + 1)), {"model": model.state_dict()},
                        {"fitted": vars(fitted), "history": history.rows_})
        return model, fitted, history.rows_

    def _placed(self, model: XrayClassifier) -> XrayClassifier:
        """``model`` on the run's device, in channels-last memory when the configuration asks."""
        model.to(self.device)
        if self.config.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def log_start(self, prepared: Prepared, parts: LoopParts, fold: str = "",
                  log: Callable[[str], None] | None = None) -> None:
        """The run's (or a fold's, ``fold`` naming it) opening line to ``log`` (default: the run's):
        classes, images, network, epochs."""
        config, dist, log = self.config, parts.runner.execution.dist, log or self.log
        classes = prepared.data.classes
        log(f"{fold}training {len(classes)} classes ({', '.join(classes)}) on {len(parts.inputs.train)} images, "
            f"validating on {len(parts.inputs.val)}: {config.backbone}, {config.strategy}"
            + (f", {cached_part(prepared.model, prepared.frozen)} cached" if prepared.frozen else "")
            + f", up to {config.epochs} epochs of {parts.runner.schedule.steps} batches, {self.device}"
            + (f" x {dist.world_size}" if dist.enabled else ""))


def train(config: TrainConfig, *, resume: bool = False, log: Callable[[str], None] = print) -> TrainResult:
    """Train as ``config`` says and write the run directory ``config.out``; see ``Trainer``."""
    return Trainer(config, resume=resume, log=log).run()
