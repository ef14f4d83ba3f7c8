"""The training loop behind ``medxfer train``.

One loop serves every strategy. The network is seen as ``prefix -> suffix -> head``:

- the *prefix* is the leading part of the backbone whose parameters are all frozen (the whole
  backbone for ``linear``, the stem and early stages for ``partial``, nothing for ``full`` and
  ``adapters``). With caching on (the default whenever there is such a prefix), it runs once per
  image, on ``cache_views`` augmented views of each training image and on the plain validation
  images, and the loop trains the suffix and head from those stored activations: epoch e reads
  view e mod ``cache_views``. This is what makes CPU training fast; the trained network is the
  same network, saved whole.
- without a prefix (or with ``cache: off``) images are augmented on the fly every epoch (in
  DataLoader workers when there are cores to spare, see ``resolve_workers``).

The optimiser is AdamW over ``parameter_groups`` (layer-wise learning-rate decay, no decay on
biases and norms) with a linear warm-up and a cosine decay, stepped per batch. Class imbalance
is handled by a class-weighted loss (weights n / (K n_k), scikit-learn's "balanced") or by
sampling classes equally often. Early stopping watches the validation AUROC; the best epoch's
weights are restored at the end. Gradients are clipped by global norm.

Reproducible: every random choice (batch order, augmentation, dropout) is drawn from a seed
derived from (run seed, epoch, ...), so a run resumed from its checkpoint after epoch k ends
exactly where an uninterrupted run would, on the same machine.

Distributed (``torchrun``): with N processes of batch size B the loop follows the schedule of
one process with batch size N x B: the same epoch order and global batches, process r taking
the r-th slice of each, the loss of each slice divided by B so that DistributedDataParallel's
gradient average is the global batch's mean, DANN's target batch drawn once and sliced alike.
Differences left: BatchNorm layers that train use the statistics of their process's slice, not
of the global batch; dropout masks are drawn per process; sums are taken in another order. The
prefix cache is computed by all processes (each a share) and gathered.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from medxfer.csvfiles import write_csv
from medxfer.datasets.sources import ScanRecord, ScanSet, UnreadableFilesError, load_labelled, load_scans
from medxfer.datasets.splits import assign_splits, write_splits_csv
from medxfer.filenames import shown
from medxfer.pipeline.decoding.scans import DecodeSettings, decode_all
from medxfer.pipeline.evaluation.evaluator import EvaluationSettings, SplitInputs, evaluate
from medxfer.pipeline.models.adaptation import (
    DomainClassifier,
    GradientReversalLayer,
    adapt_batchnorm,
    add_adapters,
    dann_weight,
    domain_loss,
)
from medxfer.pipeline.models.classifier import XrayClassifier, build_classifier
from medxfer.pipeline.models.finetune import apply_strategy, parameter_groups
from medxfer.pipeline.models.prefix import frozen_stage_count, split_backbone
from medxfer.pipeline.reporting.outputs import METRICS_FILE, data_name, headline, write_evaluation
from medxfer.pipeline.runs.config import TrainConfig, diff_configs, load_config, write_config
from medxfer.pipeline.runs.environment import (
    ENVIRONMENT_FILE,
    environment_info,
    records_manifest_hash,
    write_environment,
)
from medxfer.pipeline.runs.saving import save_model
from medxfer.pipeline.runtime.device import resolve_device, resolve_workers, usable_cores
from medxfer.pipeline.runtime.distributed import Distributed
from medxfer.pipeline.statistics.scoring import macro_auroc, ranking_scores
from medxfer.pipeline.training.checkpoint import (
    CHECKPOINT_FILE,
    load_checkpoint,
    optimizer_state,
    optimizer_tensors,
    save_checkpoint,
)
from medxfer.transforms.loading import AugmentedDataset, derived_seed
from medxfer.transforms.pipeline import XrayPipeline
from medxfer.transforms.preparation import InputSpec
from medxfer.transforms.presets import augmentation_from_config

CONFIG_FILE, HISTORY_FILE, SPLITS_FILE = "config.yaml", "history.csv", "splits.csv"
UNREADABLE_FILE = "unreadable.csv"  # with skip_unreadable: the files left out, and why
_ORDER, _DROPOUT, _TARGET = 11, 12, 13  # purposes of derived seeds (loading.py uses 0-2)
_EVAL_BATCH = 64
CACHE_BUDGET = 4 * 2**30  # bytes of cached prefix outputs that "auto" views stay under
# Images per forward pass of the frozen prefix. On CPU small channels-last batches stay in the
# caches: measured on the 2-core development machine at 224 pixels, EfficientNet-Lite0's
# prefix ran at ~85 images/s in channels-last batches of 8, ~40 in batches of 32 and ~20 in
# contiguous batches of 64.
_CPU_PREFIX_BATCH = 8


class RunDirectoryError(ValueError):
    """The run directory cannot be used as asked (an existing run without --resume, or the reverse)."""


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced: the run folder, the epoch whose weights were kept
    (1-based), how many epochs ran, and the validation AUROC of the kept weights."""

    run_dir: Path
    best_epoch: int
    epochs_run: int
    val_auroc: float
    history: list[dict[str, float]]


def auto_epochs(n_train: int) -> int:
    """Epochs when the configuration says ``auto``: about 6,000 image passes, at least 5 and
    at most 30 epochs (30 for 200 training images, 9 for 700, 5 from 1,200 on). On the NIH set
    (715 training images) the default settings peaked at epoch 2 and early stopping ended the
    runs at epoch 7; small sets need more passes for the same number of optimiser steps, and
    large ones fewer epochs to stay within 15 minutes for 5,000 images on 2 cores."""
    return int(min(30, max(5, math.ceil(6000 / max(n_train, 1)))))


def auto_views(n_train: int, bytes_per_view: int) -> int:
    """Cached augmented views per training image when the configuration says ``auto``: 4 up to
    2,000 training images, then fewer (2 at 3,500, 1 from 8,000 on), so that the cache costs
    about 8,000 prefix passes and a 5,000-image set stays within its time budget; and never
    more than fit in ``CACHE_BUDGET`` bytes (``bytes_per_view``: one image's prefix output)."""
    n = max(n_train, 1)
    return int(max(1, min(4, 8000 // n, CACHE_BUDGET // (n * max(bytes_per_view, 1)))))


def imbalance_weights(labels: torch.Tensor, n_classes: int, imbalance: str) -> torch.Tensor:
    """Per-class loss weights: n / (K n_k) for ``weighted`` (scikit-learn's "balanced": every
    class contributes equally and the weights average 1 over the training images), else 1."""
    if imbalance != "weighted":
        return torch.ones(n_classes)
    weights = compute_class_weight("balanced", classes=np.arange(n_classes), y=labels.numpy())
    return torch.tensor(weights, dtype=torch.float32)


def auroc(labels: np.ndarray, logits: np.ndarray) -> float:
    """AUROC of (n, K) logits: the ranking of class 1's probability for two classes, the macro
    one-vs-rest mean for more (scored on ``ranking_scores``, which order images as softmax would
    without its saturation at 1.0); NaN when ``labels`` hold a single class."""
    if len(np.unique(labels)) < 2:
        return float("nan")
    return macro_auroc(labels, ranking_scores(logits))


class TrainableNet(nn.Module):
    """What the loop trains: the backbone's suffix and the head, plus the DANN domain
    classifier when there is one. ``forward`` returns the logits, and the domain logits of
    every image seen through a gradient-reversal layer of weight ``reversal`` when given
    (inside ``forward``, so DistributedDataParallel averages the domain classifier's gradients
    too)."""

    def __init__(self, suffix: nn.Module, head: nn.Module, domain: nn.Module | None = None) -> None:
        super().__init__()
        self.suffix, self.head, self.domain = suffix, head, domain

    def forward(self, x: torch.Tensor, reversal: float | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        features = self.suffix(x)
        if reversal is None or self.domain is None:
            return self.head(features), None
        return self.head(features), self.domain(GradientReversalLayer(reversal)(features))


@dataclass
class _Inputs:
    """Inputs of one split for the trainable part: cached prefix outputs (``views`` tensors,
    each (n, ...)) or images augmented on the fly (``dataset``)."""

    labels: torch.Tensor
    views: list[torch.Tensor] | None = None
    dataset: AugmentedDataset | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class _Prepared:
    """A run's data and network once set up: decoded images of every split (kept in memory,
    resized to fit), class indices, which images are in which split, the target site's images
    for adaptation, and the plain and augmenting input pipelines."""

    model: XrayClassifier
    classes: list[str]
    spec: InputSpec
    images: list[torch.Tensor]
    labels: torch.Tensor
    by_split: dict[str, list[int]]
    target: list[torch.Tensor] | None
    plain: XrayPipeline
    augment: XrayPipeline
    frozen: int  # stages computed once and cached (len(stages) + 1: the whole backbone); 0: no cache
    records: list[ScanRecord]  # one per image: patient key and metadata for the subgroup report

    def split_images(self, split: str) -> list[torch.Tensor]:
        return [self.images[i] for i in self.by_split[split]]


class _Schedule:
    """Global batches of one epoch and this process's slice of each (see module docstring)."""

    def __init__(self, labels: torch.Tensor, config: TrainConfig, dist: Distributed) -> None:
        n = len(labels)
        self.per_rank = max(1, min(config.batch_size, n // dist.world_size))
        self.global_size = self.per_rank * dist.world_size
        self.steps = max(1, n // self.global_size)
        self.labels, self.config, self.dist = labels, config, dist

    def batches(self, epoch: int) -> list[list[int]]:
        n, config = len(self.labels), self.config
        generator = torch.Generator().manual_seed(derived_seed(config.seed, epoch, 0, _ORDER))
        if config.imbalance == "sampler":
            counts = torch.bincount(self.labels).double()
            weights = 1.0 / counts[self.labels]
            order = torch.multinomial(weights, n, replacement=True, generator=generator).tolist()
        else:
            order = torch.randperm(n, generator=generator).tolist()
        start = self.dist.rank * self.per_rank
        return [order[j * self.global_size + start : j * self.global_size + start + self.per_rank]
                for j in range(self.steps)]


def _one_thread(batches: Iterator) -> Iterator:
    """``batches`` produced on one thread. Augmenting in the training process (no loader
    workers, as on 2 cores) is faster on one thread than on the network's two: the standard
    preset ran at 142 against 114 images/s at 224 px, its many small operations gaining nothing
    from a second thread but its synchronisation."""
    threads = torch.get_num_threads()
    while True:
        torch.set_num_threads(1)
        try:
            batch = next(batches)
        except StopIteration:
            return
        finally:
            torch.set_num_threads(threads)
        yield batch


@dataclass
class _Loop:
    """The training loop's parts (see ``Trainer.build_loop``)."""

    train: _Inputs
    val: _Inputs
    target: Any
    net: TrainableNet
    wrapped: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: _Schedule
    class_weights: torch.Tensor
    loader: DataLoader | None

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This process's (inputs, labels) batches of ``epoch``."""
        if self.train.views is not None:
            view = self.train.views[epoch % len(self.train.views)]
            return ((view[b], self.train.labels[b]) for b in self.schedule.batches(epoch))
        self.loader.batch_sampler.epoch = epoch
        return iter(self.loader) if self.loader.num_workers else _one_thread(iter(self.loader))


class _KeyBatches(torch.utils.data.Sampler):
    """Batches of (epoch, index) keys for an ``AugmentedDataset``; set ``epoch`` before a pass."""

    def __init__(self, schedule: _Schedule) -> None:
        self.schedule, self.epoch = schedule, 0

    def __len__(self) -> int:
        return self.schedule.steps

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter([[(self.epoch, i) for i in batch] for batch in self.schedule.batches(self.epoch)])


def _cached_part(model: XrayClassifier, frozen: int) -> str:
    n = len(model.info.stages)
    return "the whole backbone" if frozen > n else f"the first {frozen} of {n} stages"


def _shown(value: float | None) -> str:
    """An AUROC for a log line: three decimals, or why there is none."""
    return "n/a (one class only)" if value is None or math.isnan(value) else f"{value:.3f}"


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


class Trainer:
    """One training run. ``Trainer(config).run()``; ``resume=True`` continues the run in
    ``config.out`` from its checkpoint. ``log`` receives progress lines (rank 0 only)."""

    def __init__(self, config: TrainConfig, *, resume: bool = False, log: Callable[[str], None] = print) -> None:
        self.config, self.resume = config, resume
        self.device = resolve_device(config.device)
        self.dist = Distributed.from_environment(self.device)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
        self._log = log
        self._written: list[Path] = []  # set-up files of a new run, removed if it fails before training
        self.run_dir = Path(config.out)
        self.workers = resolve_workers(config.workers)
        # Decoding runs alone, before any training: every core can decode (full-size films are slow).
        self.decode_workers = usable_cores() if config.workers == "auto" else self.workers

    def log(self, message: str) -> None:
        if self.dist.is_main:
            self._log(message)

    @property
    def _max_pixels(self) -> int | None:
        return None if self.config.max_pixels == "auto" else int(self.config.max_pixels)

    def _undo_setup(self) -> None:
        """A new run that stopped before it finished an epoch (an error, Ctrl-C) leaves no files
        behind (a plain rerun would otherwise be refused as "already holds a run"): the set-up
        files this call wrote, and the run folder if this call created it and nothing else is in
        it."""
        for path in sorted(self._written, key=lambda p: p == self.run_dir):
            if path == self.run_dir:
                with contextlib.suppress(OSError):
                    path.rmdir()  # only when empty
            else:
                path.unlink(missing_ok=True)
        self._written = []

    # --- set-up -----------------------------------------------------------------------------

    def _check_run_dir(self) -> None:
        try:
            self._check_run_dir_alone()
        finally:
            # Rank 0 writes config.yaml next: every process must have looked at the folder first.
            self.dist.barrier()

    def _check_run_dir_alone(self) -> None:
        has_run = (self.run_dir / CONFIG_FILE).is_file()
        if self.resume and not has_run:
            raise RunDirectoryError(f"{self.run_dir}: no run to resume here (no {CONFIG_FILE}); start one without --resume")
        if self.resume and not (self.run_dir / CHECKPOINT_FILE).is_file() and (self.run_dir / METRICS_FILE).is_file():
            raise RunDirectoryError(f"{self.run_dir}: this run has already finished; there is nothing to resume")
        if not self.resume and has_run:
            raise RunDirectoryError(
                f"{self.run_dir} already holds a run; continue it with --resume or choose another --out"
            )
        if not self.resume and self.run_dir.exists():
            if not self.run_dir.is_dir():
                raise RunDirectoryError(f"--out {self.run_dir} is a file; a run is written into a folder")
            if any(self.run_dir.iterdir()):
                raise RunDirectoryError(f"--out {self.run_dir} holds files that are not a medxfer run: a new run goes "
                                        "into a new or empty folder")
        if self.resume:
            saved = load_config(self.run_dir / CONFIG_FILE)
            wanted = self.config
            for key in ("epochs", "cache_views"):  # "auto" was resolved when the run started
                if getattr(wanted, key) == "auto":
                    wanted = replace(wanted, **{key: getattr(saved, key)})
            # The folder may be named differently from another working directory, and the number of
            # loader workers changes no result.
            changed = {k: v for k, v in diff_configs(saved, wanted).items() if k not in ("out", "workers")}
            if changed:
                items = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
                raise RunDirectoryError(
                    f"{self.run_dir}: --resume continues the run as configured; these settings differ: {items}"
                )
            self.config = saved

    def _build_model(self, n_classes: int) -> XrayClassifier:
        config = self.config
        torch.manual_seed(config.seed)
        model = build_classifier(config.backbone, n_classes, weights=config.weights, in_channels=config.in_channels,
                                 dropout=config.dropout)
        if config.strategy == "adapters":
            add_adapters(model)
        return apply_strategy(model, config.strategy, trainable_stages=config.trainable_stages)

    def _load_data(self, scans: ScanSet, settings: DecodeSettings) -> tuple[ScanSet, list[torch.Tensor]]:
        config = self.config
        self.log(f"decoding {len(scans.records)} scans from {config.data}")
        images, failed = decode_all([r.path for r in scans.records], settings, workers=self.decode_workers)
        if failed and not config.skip_unreadable:
            raise UnreadableFilesError(failed)
        kept = [i for i, image in enumerate(images) if image is not None]
        scans = replace(scans, records=[scans.records[i] for i in kept], unreadable=[*scans.unreadable, *failed])
        if scans.unreadable:
            self.log(f"skipped {len(scans.unreadable)} unreadable file(s) (skip_unreadable), listed in "
                     f"{shown(self.run_dir / UNREADABLE_FILE)}:")
            for item in scans.unreadable:
                self.log(f"  {shown(item.path)}: {item.reason}")
        scans = assign_splits(scans, val_fraction=config.val_fraction, test_fraction=config.test_fraction,
                              seed=config.seed)
        return scans, [images[i] for i in kept]

    def _load_target(self, settings: DecodeSettings) -> list[torch.Tensor]:
        config = self.config
        target = load_scans(config.target_data, layout="auto", max_pixels=self._max_pixels)
        images, failed = decode_all([r.path for r in target.records], settings, workers=self.decode_workers)
        images = [image for image in images if image is not None]
        skipped = [*target.unreadable, *failed]
        self.log(f"target site: {len(images)} unlabelled scans from {config.target_data}"
                 + (f"; skipped {len(skipped)} unreadable file(s):" if skipped else ""))
        for item in skipped:
            self.log(f"  {shown(item.path)}: {item.reason}")
        if not images:
            raise ValueError(f"{config.target_data}: no readable scans to adapt to")
        return images

    # --- inputs -----------------------------------------------------------------------------

    @torch.no_grad()
    def _prefix_outputs(self, prefix: nn.Module, images: Sequence[torch.Tensor], pipeline: XrayPipeline,
                        view: int) -> torch.Tensor:
        """Prefix activations of every image (view ``view`` of the augmentation), computed by
        all processes, each for its share, and gathered."""
        shard = list(self.dist.shard(len(images)))
        dataset = AugmentedDataset(images, None, pipeline, seed=self.config.seed)
        loader = DataLoader(dataset, batch_size=self._forward_batch, sampler=[(view, i) for i in shard],
                            num_workers=self.workers if pipeline.augments else 0)
        prefix.eval()
        batches = loader if loader.num_workers else _one_thread(iter(loader))
        outputs = [prefix(self._to_device(x)).float().cpu() for x in batches]
        local = torch.cat(outputs) if outputs else torch.empty(0)
        if not outputs:  # a process with no share still needs the shape to gather
            probe = prefix(self._to_device(dataset[(view, 0)][None])).float().cpu()
            local = probe[:0]
        return self.dist.gather_rows(local, len(images))

    @property
    def _forward_batch(self) -> int:
        return _CPU_PREFIX_BATCH if self.device.type == "cpu" else _EVAL_BATCH

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.config.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> TrainResult:
        try:
            return self._run()
        finally:
            self.dist.close()

    def _run(self) -> TrainResult:
        self._check_run_dir()
        try:
            return self._train()
        except BaseException:
            if not (self.run_dir / CHECKPOINT_FILE).is_file() and not (self.run_dir / METRICS_FILE).is_file():
                self._undo_setup()  # nothing trained yet: the same command can simply run again
            raise

    def _train(self) -> TrainResult:
        data = self.prepare()
        loop = self.build_loop(data)
        model, config, optimizer, domain = data.model, self.config, loop.optimizer, loop.net.domain
        state = {"epoch": 0, "best_epoch": 0, "best_score": -math.inf, "bad_epochs": 0, "history": []}
        # best_score is the validation AUROC, or minus the validation loss when the validation
        # split holds one class only (AUROC undefined); it is only compared, never reported.
        best: dict[str, torch.Tensor] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        checkpoint = self.run_dir / CHECKPOINT_FILE
        if self.resume and checkpoint.is_file():
            parts, state = load_checkpoint(checkpoint)
            model.load_state_dict(parts["model"])
            best = parts["best"]
            if domain is not None:
                domain.load_state_dict(parts["domain"])
            optimizer.load_state_dict(optimizer_state(parts["optimizer"], state.pop("optimizer")))
            self.log(f"resuming after epoch {state['epoch']} of {config.epochs}")
        self.log(f"training {len(data.classes)} classes ({', '.join(data.classes)}) on {len(loop.train)} images, "
                 f"validating on {len(loop.val)}: {config.backbone}, {config.strategy}"
                 + (f", {_cached_part(model, data.frozen)} cached" if data.frozen else "")
                 + f", up to {config.epochs} epochs of {loop.schedule.steps} batches, {self.device}"
                 + (f" x {self.dist.world_size}" if self.dist.enabled else ""))

        while state["epoch"] < config.epochs and not self._stopped(state):
            epoch = state["epoch"]
            row = self.run_epoch(epoch, loop.batches(epoch), model, loop)
            val_loss, val_logits = self._evaluate(loop.net, loop.val, model)
            row.update(val_loss=val_loss, val_auroc=auroc(loop.val.labels.numpy(), val_logits))
            row = {k: row[k] for k in ("epoch", "train_loss", "train_auroc", "val_loss", "val_auroc")} | row
            state["history"].append(row)
            state["epoch"] = epoch + 1
            score = row["val_auroc"] if not math.isnan(row["val_auroc"]) else -val_loss
            if score > state["best_score"] + 1e-4:
                state.update(best_epoch=epoch + 1, best_score=score, bad_epochs=0)
                best = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            else:
                state["bad_epochs"] += 1
            self.log(f"epoch {epoch + 1}/{config.epochs}  train loss {row['train_loss']:.3f} auroc "
                     f"{_shown(row['train_auroc'])}  val loss {val_loss:.3f} auroc {_shown(row['val_auroc'])}  "
                     f"{row['images_per_second']:.0f} img/s  {row['seconds']:.1f} s"
                     + ("  (best)" if state["best_epoch"] == epoch + 1 else ""))
            if self.dist.is_main:
                self._write_history(state["history"])
                opt_tensors, opt_rest = optimizer_tensors(optimizer.state_dict())
                parts = {"model": model.state_dict(), "best": best, "optimizer": opt_tensors}
                if domain is not None:
                    parts["domain"] = domain.state_dict()
                save_checkpoint(checkpoint, parts, {**state, "optimizer": opt_rest})
            self.dist.barrier()
        if self._stopped(state):
            self.log(f"stopped early: validation AUROC has not improved for {config.patience} epochs")
        model.load_state_dict(best)
        best_auroc = state["history"][state["best_epoch"] - 1]["val_auroc"] if state["best_epoch"] else math.nan
        self.log(f"kept the weights of epoch {state['best_epoch']} (validation AUROC {_shown(best_auroc)})")
        self._finish(data, state)
        return TrainResult(self.run_dir, state["best_epoch"], state["epoch"], best_auroc, state["history"])

    def _stopped(self, state: dict[str, Any]) -> bool:
        """True once early stopping has ended the run (checked again after a resume)."""
        return self.config.patience > 0 and state["bad_epochs"] >= self.config.patience

    def build_loop(self, data: _Prepared) -> _Loop:
        """What the epochs need: inputs (cached or on the fly), the trainable part (wrapped in
        DistributedDataParallel under torchrun), the optimiser, the batch schedule, class weights."""
        config, model = self.config, data.model
        suffix, train, val, target = self._inputs(data, data.frozen)
        domain = DomainClassifier(model.info.feature_dim).to(self.device) if config.adapt == "dann" else None
        net = TrainableNet(suffix, model.head, domain)
        groups = parameter_groups(model, lr=config.lr, layer_decay=config.layer_decay,
                                  weight_decay=config.weight_decay)
        if domain is not None:
            groups.append({"params": list(domain.parameters()), "lr": config.lr,
                           "weight_decay": config.weight_decay, "name": "domain classifier"})
        for group in groups:
            group["initial_lr"] = group["lr"]
        optimizer = torch.optim.AdamW(groups, lr=config.lr)
        wrapped: nn.Module = net
        if self.dist.enabled:
            wrapped = DistributedDataParallel(
                net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        schedule = _Schedule(train.labels, config, self.dist)
        loader = None
        if train.dataset is not None:
            loader = DataLoader(train.dataset, batch_sampler=_KeyBatches(schedule), num_workers=self.workers,
                                persistent_workers=self.workers > 0)
        return _Loop(train, val, target, net, wrapped, optimizer, schedule,
                     imbalance_weights(train.labels, len(data.classes), config.imbalance), loader)

    def prepare(self) -> _Prepared:
        """Read and split the data, build the network, write the run's set-up files."""
        config = self.config
        labelled = load_labelled(config.data, layout=config.layout, skip_unreadable=config.skip_unreadable,
                                 max_pixels=self._max_pixels)
        classes = list(labelled.classes)
        model = self._build_model(len(classes))
        if config.adapt == "adabn" and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            raise ValueError(f"adapt 'adabn' re-estimates BatchNorm statistics, and {config.backbone} has no BatchNorm "
                             "layer; use another backbone or adapt 'dann'")
        spec = model.input_spec(config.image_size, config.fit)
        settings = DecodeSettings(spec, config.window, config.volume_strategy, self._max_pixels)
        scans, images = self._load_data(labelled, settings)
        target = self._load_target(settings) if config.adapt in ("adabn", "dann") else None
        index = {name: i for i, name in enumerate(classes)}
        labels = torch.tensor([index[r.label] for r in scans.records])
        by_split = {s: [i for i, r in enumerate(scans.records) if r.split == s] for s in ("train", "val", "test")}
        n_train = len(by_split["train"])
        if len(labels[by_split["train"]].unique()) < len(classes):
            raise ValueError(f"{config.data}: the training split lacks some classes; more data is needed")
        frozen = frozen_stage_count(model)
        if config.cache == "off" or (config.cache == "auto" and frozen == 0):
            frozen = 0
        elif frozen == 0:
            raise ValueError(f"cache: on needs a frozen part of the backbone, and strategy {config.strategy!r} "
                             "trains all of it; use cache: auto or off")
        plain = XrayPipeline(spec, "none")
        epochs = config.epochs if config.epochs != "auto" else auto_epochs(n_train)
        views = config.cache_views
        if views == "auto":
            prefix = split_backbone(model, frozen)[0] if frozen else None
            with torch.no_grad():
                view_bytes = prefix.eval()(plain(images[0])[None]).numel() * 4 if prefix else 0
            views = auto_views(n_train, view_bytes)
        self.config = config = replace(config, epochs=epochs, cache_views=views)
        self._write_setup(scans)
        model.to(self.device)
        if config.channels_last:
            model.to(memory_format=torch.channels_last)
        return _Prepared(model, classes, spec, images, labels, by_split, target, plain,
                         XrayPipeline(spec, augmentation_from_config(config.augment)), frozen, scans.records)

    def _write_setup(self, scans: ScanSet) -> None:
        config = self.config
        data_hash = records_manifest_hash(scans)
        saved_environment = self.run_dir / ENVIRONMENT_FILE
        if self.resume and saved_environment.is_file() and data_hash != json.loads(
                saved_environment.read_text(encoding="utf-8")).get("data_hash"):
            raise RunDirectoryError(
                f"{config.data} is not the data this run started on (its files, labels, splits or sizes "
                "changed), so the run cannot be resumed; start a new run"
            )
        if self.dist.is_main:
            if not self.run_dir.exists():
                self._written.append(self.run_dir)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if not self.resume:
                self._written += [path for path in (self.run_dir / name for name in (
                    CONFIG_FILE, SPLITS_FILE, ENVIRONMENT_FILE, UNREADABLE_FILE, HISTORY_FILE)) if not path.exists()]
                write_config(config, self.run_dir / CONFIG_FILE)
            write_splits_csv(scans, self.run_dir / SPLITS_FILE)
            if scans.unreadable:
                write_csv(self.run_dir / UNREADABLE_FILE, ("path", "reason"),
                          [{"path": scans.relative(u.path), "reason": u.reason} for u in scans.unreadable])
            write_environment(self.run_dir / ENVIRONMENT_FILE, environment_info(
                seed=config.seed, device=self.device, data_hash=data_hash,
                extra={"world_size": self.dist.world_size, "resumed": self.resume}))
        self.dist.barrier()

    def _inputs(self, data: _Prepared, frozen: int) -> tuple[nn.Module, _Inputs, _Inputs, Any]:
        """The trainable suffix and what feeds it: cached prefix outputs when ``frozen`` stages
        are cached, else images augmented on the fly; the DANN target inputs, if any."""
        config, model = self.config, data.model
        train_images, val_images = data.split_images("train"), data.split_images("val")
        train_labels, val_labels = data.labels[data.by_split["train"]], data.labels[data.by_split["val"]]
        if config.adapt == "adabn":
            # AdaBN standardises each site with its own statistics: the source site's during
            # training (here, before anything is cached), the target site's once trained.
            seen = adapt_batchnorm(model, self._adabn_batches(train_images, data.plain), device=self.device)
            self.log(f"AdaBN: BatchNorm statistics of the training site estimated on {seen} scans")
        if not frozen:
            train = _Inputs(train_labels, dataset=AugmentedDataset(train_images, train_labels.tolist(), data.augment,
                                                                   seed=config.seed))
            val = _Inputs(val_labels, dataset=AugmentedDataset(val_images, val_labels.tolist(), data.plain,
                                                               seed=config.seed))
            target = (AugmentedDataset(data.target, None, data.augment, seed=config.seed)
                      if config.adapt == "dann" else None)
            return model.backbone, train, val, target
        prefix, suffix = split_backbone(model, frozen)
        views = config.cache_views if data.augment.augments else 1
        self.log(f"computing the frozen part of the network once: {views} view(s) of "
                 f"{len(train_images)} training images, {len(val_images)} validation images")
        start = time.perf_counter()
        train = _Inputs(train_labels, views=[self._prefix_outputs(prefix, train_images, data.augment, v)
                                             for v in range(views)])
        val = _Inputs(val_labels, views=[self._prefix_outputs(prefix, val_images, data.plain, 0)])
        # Target images are augmented like the source's, so the domain classifier cannot tell the
        # sites apart by augmentation alone.
        target = self._prefix_outputs(prefix, data.target, data.augment, 0) if config.adapt == "dann" else None
        self.log(f"  done in {time.perf_counter() - start:.1f} s")
        return suffix, train, val, target

    def run_epoch(self, epoch: int, batches: Iterator, model: XrayClassifier, loop: _Loop) -> dict[str, float]:
        """One pass over ``batches`` (``loop.batches(epoch)`` in a run) with the optimiser
        steps of epoch ``epoch``; returns the history row without the validation columns."""
        config, net, optimizer, schedule = self.config, loop.net, loop.optimizer, loop.schedule
        torch.manual_seed(derived_seed(config.seed, epoch, self.dist.rank, _DROPOUT))
        net.train()
        model.train()  # frozen BatchNorm, dropout and stochastic depth back in eval mode
        total_steps, warmup = config.epochs * schedule.steps, round(config.warmup_epochs * schedule.steps)
        start = time.perf_counter()
        losses, logits_seen, labels_seen = [], [], []
        progress = tqdm(batches, total=schedule.steps, desc=f"epoch {epoch + 1}/{config.epochs}", unit="img",
                        unit_scale=schedule.global_size, leave=False,
                        disable=not (self.dist.is_main and sys.stderr.isatty()))
        for step_in_epoch, (x, y) in enumerate(progress):
            step = epoch * schedule.steps + step_in_epoch
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * _lr_factor(step, warmup, total_steps)
            loss, logits = self._step(loop.wrapped, net, x, y, loop.class_weights, loop.target, epoch, step,
                                      total_steps, schedule.per_rank)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], config.grad_clip)
            optimizer.step()
            losses.append(loss.detach().item())
            progress.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
            logits_seen.append(logits.detach().float().cpu())
            labels_seen.append(torch.as_tensor(y).cpu())
        seconds = time.perf_counter() - start
        train_logits = self.dist.gather_all(torch.cat(logits_seen))
        train_labels = self.dist.gather_all(torch.cat(labels_seen))
        return {
            "epoch": epoch + 1,
            # each process's loss is its slice's share of the global batch's: average over all
            "train_loss": float(self.dist.gather_all(torch.tensor(losses, dtype=torch.float64)).mean()),
            "train_auroc": auroc(train_labels.numpy(), train_logits.numpy()),
            **{f"lr_{g['name'].replace(' ', '_')}": g["lr"] for g in optimizer.param_groups
               if not g["name"].endswith("no_decay")},
            "seconds": seconds,
            "images_per_second": schedule.steps * schedule.global_size / seconds,
        }

    def _finish(self, data: _Prepared, state: dict[str, Any]) -> None:
        """The kept network's logits on the plain training, validation and test images (run whole,
        as at inference), AdaBN to the target site if asked, then the model, the calibration, the
        metrics, the report and the model card."""
        config, model = self.config, data.model
        splits = {}
        for split in ("train", "val", "test"):
            chosen = data.by_split[split]
            records = [data.records[i] for i in chosen]
            splits[split] = SplitInputs(data.labels[chosen].numpy(), self._logits(model, data.split_images(split),
                                                                                  data.plain),
                                        patients=[r.patient_key for r in records], meta=[r.meta for r in records])
        if config.adapt == "adabn":
            # val and test are the training site's patients: scored above with its statistics.
            seen = adapt_batchnorm(model, self._adabn_batches(data.target, data.plain), device=self.device)
            self.log(f"AdaBN: BatchNorm statistics re-estimated on {seen} target-site scans")
        if self.dist.is_main:
            model.cpu()
            save_model(model, self.run_dir, classes=data.classes, spec=data.spec, strategy=config.strategy,
                       adaptation=config.adapt,
                       extra={"best_epoch": state["best_epoch"], "seed": config.seed, "window": config.window,
                              "volume_strategy": config.volume_strategy})
            self.log("evaluating: calibration and threshold on the validation split, patient-clustered intervals"
                     + (f", {config.bootstrap} bootstrap resamples" if config.bootstrap else ""))
            evaluation = evaluate(data.classes, splits, EvaluationSettings.from_config(config),
                                  data_name=data_name(config.data), best_epoch=state["best_epoch"])
            metrics = evaluation.metrics
            metrics.update(best_epoch=state["best_epoch"], epochs_run=state["epoch"])
            metrics["overfitting"].update(best_epoch=state["best_epoch"], epochs_run=state["epoch"])
            if config.adapt == "adabn":
                metrics["scored_before"] = "AdaBN to the target site"
            write_evaluation(self.run_dir, evaluation, evaluator_state=evaluation.evaluator.to_dict(),
                             history=state["history"], config=config.to_dict(),
                             environment=json.loads((self.run_dir / ENVIRONMENT_FILE).read_text(encoding="utf-8")))
            for line in headline(metrics):
                self.log(line)
            (self.run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
        self.dist.barrier()
        self.log(f"wrote {self.run_dir}")

    def _step(self, wrapped: nn.Module, net: TrainableNet, x: torch.Tensor, y: torch.Tensor,
              class_weights: torch.Tensor, target: Any, epoch: int, step: int, total: int,
              per_rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.config
        x, y = self._to_device(x), y.to(self.device)
        n_source = len(x)
        reversal = None
        if net.domain is not None:
            x = torch.cat([x, self._to_device(self._target_batch(target, epoch, step, n_source))])
            reversal = config.dann_weight * dann_weight(min(1.0, step / max(1, total)))
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda" and config.amp):
            logits, domain_logits = wrapped(x, reversal)
        logits = logits[:n_source].float()
        per_image = F.cross_entropy(logits, y, reduction="none", label_smoothing=config.label_smoothing)
        loss = (per_image * class_weights.to(self.device)[y]).sum() / per_rank
        if domain_logits is not None:
            loss = loss + domain_loss(domain_logits.float(), n_source)
        return loss, logits

    def _target_batch(self, target: Any, epoch: int, step: int, size: int) -> torch.Tensor:
        """This process's slice of the step's target batch (drawn for all processes together)."""
        n = len(target)
        generator = torch.Generator().manual_seed(derived_seed(self.config.seed, epoch, step, _TARGET))
        chosen = torch.randint(n, (size * self.dist.world_size,), generator=generator)
        chosen = chosen[self.dist.rank * size : (self.dist.rank + 1) * size].tolist()
        if isinstance(target, torch.Tensor):
            return target[chosen]
        return torch.stack([target[(epoch, i)] for i in chosen])

    @torch.no_grad()
    def _logits(self, model: XrayClassifier, images: Sequence[torch.Tensor], pipeline: XrayPipeline) -> np.ndarray:
        """(n, K) float32 logits of the whole network on ``images`` (in eval mode, full precision),
        each process computing a share."""
        model.eval()
        shard = list(self.dist.shard(len(images)))
        chunks = [model(self._to_device(batch)).float().cpu()
                  for batch in self._plain_batches([images[i] for i in shard], pipeline)]
        local = torch.cat(chunks) if chunks else torch.empty(0, model.head[-1].out_features)
        return self.dist.gather_rows(local, len(images)).numpy()

    def _adabn_batches(self, images: Sequence[torch.Tensor], pipeline: XrayPipeline) -> Iterator[torch.Tensor]:
        """Plain images in shuffled batches of 64 (seeded), as ``adapt_batchnorm`` asks for."""
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.config.seed)).tolist()
        return self._plain_batches([images[i] for i in order], pipeline, size=_EVAL_BATCH)

    def _plain_batches(self, images: Sequence[torch.Tensor], pipeline: XrayPipeline,
                       size: int | None = None) -> Iterator[torch.Tensor]:
        size = size or self._forward_batch
        for start in range(0, len(images), size):
            yield torch.stack([pipeline(image) for image in images[start : start + size]])

    @torch.no_grad()
    def _evaluate(self, net: TrainableNet, inputs: _Inputs, model: XrayClassifier) -> tuple[float, np.ndarray]:
        """Mean cross-entropy and (n, K) logits on ``inputs``, in eval mode."""
        net.eval()
        shard = list(self.dist.shard(len(inputs)))
        logits = []
        for start in range(0, len(shard), _EVAL_BATCH):
            chunk = shard[start : start + _EVAL_BATCH]
            if inputs.views is not None:
                x = inputs.views[0][chunk]
            else:
                x = torch.stack([inputs.dataset[(0, i)][0] for i in chunk])
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda" and self.config.amp):
                logits.append(net(self._to_device(x))[0].float().cpu())
        local = torch.cat(logits) if logits else torch.empty(0, model.head[-1].out_features)
        all_logits = self.dist.gather_rows(local, len(inputs))
        loss = float(F.cross_entropy(all_logits, inputs.labels))
        return loss, all_logits.numpy()

    def _write_history(self, history: list[dict[str, float]]) -> None:
        write_csv(self.run_dir / HISTORY_FILE, list(history[0]),
                         ({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()} for row in history))


def train(config: TrainConfig, *, resume: bool = False, log: Callable[[str], None] = print) -> TrainResult:
    """Train as ``config`` says and write the run directory ``config.out``; see ``Trainer``."""
    return Trainer(config, resume=resume, log=log).run()
