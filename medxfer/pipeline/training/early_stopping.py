"""Early stopping on the validation AUROC, keeping the best epoch's weights.

The score is the validation AUROC, or minus the validation loss when the validation split holds
one class only (AUROC undefined); it is only compared, never reported. An epoch is better when
its score beats the best by more than ``MIN_DELTA``. The best epoch's weights are restored when
the run ends, also after a resume (the stopping rule is checked again then).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from medxfer.pipeline.training.epoch import EpochRecord
from medxfer.pipeline.training.loop import Callback, TrainingLoop

MIN_DELTA = 1e-4  # the smallest gain in score that counts as an improvement


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


class EarlyStopping(Callback):
    """Stops the run after ``patience`` epochs without a better score (0: never stops) and puts
    the best epoch's weights back into ``model`` at the end; ``log`` says so.

    State: ``best_epoch_`` (1-based, 0 before any), ``best_score_``, ``bad_epochs_`` (epochs
    since the best) and ``best_weights_`` (a CPU copy of ``model.state_dict()``; the weights
    before training until an epoch scores)."""

    def __init__(self, model: nn.Module, *, patience: int, log: Callable[[str], None]) -> None:
        self.model, self.patience, self.log = model, patience, log
        self.best_epoch_, self.best_score_, self.bad_epochs_ = 0, -math.inf, 0
        self.best_weights_: dict[str, torch.Tensor] | None = None

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs_ >= self.patience

    def on_fit_start(self, loop: TrainingLoop) -> None:
        if self.best_weights_ is None:  # not restored from a checkpoint
            self.best_weights_ = _weights(self.model)

    def on_epoch_end(self, loop: TrainingLoop, record: EpochRecord) -> None:
        score = record.val_auroc if not math.isnan(record.val_auroc) else -record.val_loss
        if score > self.best_score_ + MIN_DELTA:
            self.best_epoch_, self.best_score_, self.bad_epochs_ = record.epoch, score, 0
            self.best_weights_ = _weights(self.model)
        else:
            self.bad_epochs_ += 1

    def on_fit_end(self, loop: TrainingLoop) -> None:
        if self.should_stop:
            self.log(f"stopped early: validation AUROC has not improved for {self.patience} epochs")
        self.model.load_state_dict(self.best_weights_)

    def state_dict(self) -> dict[str, Any]:
        return {"best_epoch": self.best_epoch_, "best_score": self.best_score_, "bad_epochs": self.bad_epochs_}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_epoch_, self.best_score_, self.bad_epochs_ = state["best_epoch"], state["best_score"], state["bad_epochs"]
