"""``medxfer train``: one training run, from a labelled dataset to a finished run directory.

``Trainer`` wires the parts, each in its own module: the run folder (``run_directory``), the
data (``data``), the network and its cached prefix (``network``, ``prefix_cache``), the batches
(``batches``), the optimiser and its schedule (``optimisation``), the step (``steps``), the
epoch (``epoch``), the loop with its callbacks (``loop``, ``early_stopping``, ``progress``,
``history``, ``checkpointing``) and the end of the run (``finishing``).

Reproducible: every random choice (batch order, augmentation, dropout) is drawn from a seed
derived from (run seed, epoch, ...), so a run resumed from its checkpoint after epoch k ends
exactly where an uninterrupted run would, on the same machine.

Distributed (``torchrun``): with N processes of batch size B the loop follows the schedule of
one process with batch size N x B (see ``batches`` and ``steps``). Differences left: BatchNorm
layers that train use the statistics of their process's slice, not of the global batch; dropout
masks are drawn per process; sums are taken in another order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from medxfer.datasets.sources import load_labelled
from medxfer.pipeline.decoding.scans import DecodeSettings
from medxfer.pipeline.models.adaptation import DomainClassifier, adapt_batchnorm
from medxfer.pipeline.models.classifier import XrayClassifier
from medxfer.pipeline.runs.config import TrainConfig
from medxfer.pipeline.runs.files import CHECKPOINT_FILE, HISTORY_FILE, UNREADABLE_FILE
from medxfer.pipeline.runtime.device import resolve_device, resolve_workers, usable_cores
from medxfer.pipeline.runtime.distributed import Distributed
from medxfer.pipeline.training.batches import EpochSchedule, TrainBatches
from medxfer.pipeline.training.checkpointing import Checkpointing
from medxfer.pipeline.training.data import TrainingData, load_training_data
from medxfer.pipeline.training.early_stopping import EarlyStopping
from medxfer.pipeline.training.epoch import EpochRunner
from medxfer.pipeline.training.execution import Execution, shuffled_batches
from medxfer.pipeline.training.finishing import Outcome, finish
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
    (1-based), how many epochs ran, and the validation AUROC of the kept weights."""

    run_dir: Path
    best_epoch: int
    epochs_run: int
    val_auroc: float
    history: list[dict[str, float]]


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
        model = build_network(config, len(labelled.classes))
        spec = model.input_spec(config.image_size, config.fit)
        settings = DecodeSettings(spec, config.window, config.volume_strategy, max_pixels)
        scans, data = load_training_data(labelled, config, settings, workers=self.decode_workers,
                                         unreadable_file=self.run_dir.file(UNREADABLE_FILE), log=self.log)
        frozen = cached_stages(model, config)
        plain = XrayPipeline(spec, "none")
        self.config = config = resolve_auto(config, model, frozen, len(data.by_split["train"]), data.images[0], plain)
        self.run_dir.write_setup(config, scans, self.device)
        model.to(self.device)
        if config.channels_last:
            model.to(memory_format=torch.channels_last)
        return Prepared(model, spec, plain, XrayPipeline(spec, augmentation_from_config(config.augment)), frozen, data)

    def build_loop(self, prepared: Prepared) -> LoopParts:
        """Inputs (cached or on the fly), the trainable part (wrapped in DistributedDataParallel
        under torchrun), the optimiser, the batch schedule and the step."""
        config, model, execution = self.config, prepared.model, self.execution
        if config.adapt == "adabn":
            # AdaBN standardises each site with its own statistics: the source site's during
            # training (here, before anything is cached), the target site's once trained.
            seen = adapt_batchnorm(model, shuffled_batches(prepared.data.split_images("train"), prepared.plain,
                                                           config.seed), device=self.device)
            self.log(f"AdaBN: BatchNorm statistics of the training site estimated on {seen} scans")
        inputs = build_inputs(model, prepared.data, prepared.frozen, plain=prepared.plain, augment=prepared.augment,
                              views=config.cache_views, seed=config.seed, dann=config.adapt == "dann",
                              execution=execution, log=self.log)
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
        weights = imbalance_weights(inputs.train.labels, len(prepared.data.classes), config.imbalance)
        common = {"label_smoothing": config.label_smoothing, "per_rank": schedule.per_rank, "execution": execution}
        step = (DannStep(wrapped, weights, target=inputs.target, weight=config.dann_weight,
                         total_steps=config.epochs * schedule.steps, seed=config.seed, **common)
                if domain is not None else SupervisedStep(wrapped, weights, **common))
        runner = EpochRunner(model, net, step, Optimisation(optimizer, config.grad_clip), schedule, seed=config.seed,
                             epochs=config.epochs, execution=execution)
        return LoopParts(inputs, domain, runner, batches)

    def _train(self) -> TrainResult:
        prepared = self.prepare()
        parts = self.build_loop(prepared)
        config, model, is_main = self.config, prepared.model, self.execution.dist.is_main
        early_stopping = EarlyStopping(model, patience=config.patience, log=self.log)
        history = History(self.run_dir.file(HISTORY_FILE), write=is_main)
        loop = TrainingLoop(parts.runner, parts.batches, parts.inputs.val, [], epochs=config.epochs,
                            dist=self.execution.dist)
        checkpointing = Checkpointing(self.run_dir.file(CHECKPOINT_FILE), model=model, domain=parts.domain,
                                      optimizer=parts.runner.optimisation.optimizer, early_stopping=early_stopping,
                                      stateful=[loop, history], write=is_main)
        loop.callbacks = [early_stopping, ProgressLog(self.log, early_stopping), history, checkpointing]
        if self.run_dir.resume:
            checkpointing.restore(self.log, config.epochs)
        self._log_start(prepared, parts)
        steps = parts.runner.schedule.steps
        parts.runner.optimisation.start(warmup=round(config.warmup_epochs * steps), total=config.epochs * steps,
                                        first_step=loop.epoch * steps)
        loop.fit()
        best = early_stopping.best_epoch_
        best_auroc = history.rows_[best - 1]["val_auroc"] if best else math.nan
        self.log(f"kept the weights of epoch {best} (validation AUROC {shown(best_auroc)})")
        finish(model, prepared.data, Outcome(best, loop.epoch, history.rows_), config=config, spec=prepared.spec,
               plain=prepared.plain, run_dir=self.run_dir, execution=self.execution, log=self.log)
        return TrainResult(self.run_dir.path, best, loop.epoch, best_auroc, history.rows_)

    def _log_start(self, prepared: Prepared, parts: LoopParts) -> None:
        config, dist = self.config, self.execution.dist
        classes = prepared.data.classes
        self.log(f"training {len(classes)} classes ({', '.join(classes)}) on {len(parts.inputs.train)} images, "
                 f"validating on {len(parts.inputs.val)}: {config.backbone}, {config.strategy}"
                 + (f", {cached_part(prepared.model, prepared.frozen)} cached" if prepared.frozen else "")
                 + f", up to {config.epochs} epochs of {parts.runner.schedule.steps} batches, {self.device}"
                 + (f" x {dist.world_size}" if dist.enabled else ""))


def train(config: TrainConfig, *, resume: bool = False, log: Callable[[str], None] = print) -> TrainResult:
    """Train as ``config`` says and write the run directory ``config.out``; see ``Trainer``."""
    return Trainer(config, resume=resume, log=log).run()
