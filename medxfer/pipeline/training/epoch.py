"""One epoch: a training pass of optimiser steps, then the validation pass, as one record.

Every random choice of a pass (dropout, stochastic depth) is drawn from a seed derived from
(run seed, epoch, process), so a run resumed after epoch k goes on exactly as an uninterrupted
one, on the same machine. AUROCs are scored on ``ranking_scores`` of the logits, which order
images as softmax would without its saturation at 1.0 (``macro_auroc``: NaN when a class is
missing, as on a validation split of one class).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from medxfer.pipeline.statistics.scoring import macro_auroc, ranking_scores
from medxfer.pipeline.training.batches import EpochSchedule
from medxfer.pipeline.training.execution import EVAL_BATCH, Execution
from medxfer.pipeline.training.optimisation import Optimisation
from medxfer.pipeline.training.prefix_cache import Inputs
from medxfer.pipeline.training.steps import SupervisedStep
from medxfer.transforms.loading import derived_seed

DROPOUT_SEED = 12  # purpose of the derived seeds of each epoch's dropout draws


@dataclass(frozen=True)
class EpochRecord:
    """What one epoch did: its 1-based number, mean training loss and AUROC of the batches as
    trained on, validation loss (mean cross-entropy) and AUROC in eval mode, each weight-decayed
    group's learning rate at the epoch's last step (by group name), the training pass's seconds
    and its images per second. AUROCs are in [0, 1], NaN with one class only."""

    epoch: int
    train_loss: float
    train_auroc: float
    val_loss: float
    val_auroc: float
    rates: dict[str, float]
    seconds: float
    images_per_second: float

    def row(self) -> dict[str, float]:
        """The epoch's row of ``history.csv``, in its column order."""
        return {"epoch": self.epoch, "train_loss": self.train_loss, "train_auroc": self.train_auroc,
                "val_loss": self.val_loss, "val_auroc": self.val_auroc,
                **{f"lr_{name.replace(' ', '_')}": rate for name, rate in self.rates.items()},
                "seconds": self.seconds, "images_per_second": self.images_per_second}


@dataclass(frozen=True)
class TrainPass:
    """A training pass's part of an ``EpochRecord``."""

    loss: float
    auroc: float
    rates: dict[str, float]
    seconds: float
    images_per_second: float


class EpochRunner:
    """Runs epochs of ``net`` (the ``TrainableNet``; ``model`` the whole classifier it is part
    of, whose ``train()`` keeps frozen layers in eval mode) with ``step``'s loss, ``optimisation``'s
    updates and ``schedule``'s batch sizes; ``seed``: the run seed; ``epochs``: for progress bars."""

    def __init__(self, model: nn.Module, net: nn.Module, step: SupervisedStep, optimisation: Optimisation,
                 schedule: EpochSchedule, *, seed: int, epochs: int, execution: Execution) -> None:
        self.model, self.net, self.step, self.optimisation = model, net, step, optimisation
        self.schedule, self.seed, self.epochs, self.execution = schedule, seed, epochs, execution

    def run(self, epoch: int, batches: Iterable, val: Inputs) -> EpochRecord:
        """Train on ``batches`` as 0-based epoch ``epoch``, then validate on ``val``."""
        trained = self.train(epoch, batches)
        val_loss, val_logits = self.validate(val)
        return EpochRecord(epoch + 1, trained.loss, trained.auroc, val_loss,
                           macro_auroc(val.labels.numpy(), ranking_scores(val_logits)), trained.rates,
                           trained.seconds, trained.images_per_second)

    def train(self, epoch: int, batches: Iterable) -> TrainPass:
        """One pass over ``batches`` (``(inputs, labels)`` pairs) with the optimiser steps of ``epoch``."""
        dist, schedule = self.execution.dist, self.schedule
        torch.manual_seed(derived_seed(self.seed, epoch, dist.rank, DROPOUT_SEED))
        self.net.train()
        self.model.train()  # frozen BatchNorm, dropout and stochastic depth back in eval mode
        start = time.perf_counter()
        losses, logits_seen, labels_seen, rates = [], [], [], {}
        progress = tqdm(batches, total=schedule.steps, desc=f"epoch {epoch + 1}/{self.epochs}", unit="img",
                        unit_scale=schedule.global_size, leave=False, disable=not (dist.is_main and sys.stderr.isatty()))
        for step_in_epoch, (x, y) in enumerate(progress):
            out = self.step(x, y, epoch, epoch * schedule.steps + step_in_epoch)
            rates = self.optimisation.rates()  # this step's, before the schedule moves on
            self.optimisation.step(out.loss)
            losses.append(out.loss.detach().item())
            progress.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
            logits_seen.append(out.logits.detach().float().cpu())
            labels_seen.append(torch.as_tensor(y).cpu())
        seconds = time.perf_counter() - start
        logits, labels = dist.gather_all(torch.cat(logits_seen)), dist.gather_all(torch.cat(labels_seen))
        # each process's loss is its slice's share of the global batch's: average over all
        loss = float(dist.gather_all(torch.tensor(losses, dtype=torch.float64)).mean())
        return TrainPass(loss, macro_auroc(labels.numpy(), ranking_scores(logits.numpy())), rates, seconds,
                         schedule.steps * schedule.global_size / seconds)

    @torch.no_grad()
    def validate(self, inputs: Inputs) -> tuple[float, np.ndarray]:
        """Mean cross-entropy and (n, K) logits of ``inputs`` in eval mode, each process a share."""
        self.net.eval()
        dist = self.execution.dist
        shard = list(dist.shard(len(inputs)))
        logits = []
        for start in range(0, len(shard), EVAL_BATCH):
            x = inputs.rows(shard[start : start + EVAL_BATCH])
            with self.execution.autocast():
                logits.append(self.net(self.execution.to_device(x))[0].float().cpu())
        local = torch.cat(logits) if logits else torch.empty(0, self.net.head[-1].out_features)
        all_logits = dist.gather_rows(local, len(inputs))
        return float(F.cross_entropy(all_logits, inputs.labels)), all_logits.numpy()
