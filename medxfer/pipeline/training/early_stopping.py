"""Early stopping on a validation score, keeping the best epoch's weights.

``selection`` names the score: ``auroc`` (the validation AUROC), ``loss`` (minus the validation
cross-entropy of the uncalibrated logits) or ``auroc_loss`` (the AUROC, and between epochs whose
AUROCs tie within ``MIN_DELTA`` the lower loss: once validation AUROC saturates at 1, the loss
still tells epochs apart). Without an AUROC (a validation split of one class) every rule falls
back to the loss. An epoch is better when its score beats the best by more than ``MIN_DELTA``.
The best epoch's weights are restored when the run ends, also after a resume (the stopping rule
is checked again then).
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
SELECTIONS = ("auroc", "loss", "auroc_loss")
# what `selection: auto` means for each protocol: the pairs benchmarks/small_data.py measured
AUTO_SELECTION = {"holdout": "auroc", "crossfit": "loss"}
SCORE_WORDS = {"auroc": "AUROC", "loss": "loss", "auroc_loss": "AUROC (ties: loss)"}


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def resolve_selection(selection: str, *, crossfit: bool) -> str:
    """``selection`` with ``auto`` resolved for the protocol (``AUTO_SELECTION``)."""
    return AUTO_SELECTION["crossfit" if crossfit else "holdout"] if selection == "auto" else selection


class EarlyStopping(Callback):
    """Stops the run after ``patience`` epochs without a better ``selection`` score (0: never
    stops) and puts the best epoch's weights back into ``model`` at the end; ``log`` says so.

    State: ``best_epoch_`` (1-based, 0 before any), ``best_score_`` (the AUROC, or minus the loss
    under ``loss``), ``best_loss_``, ``bad_epochs_`` (epochs since the best) and ``best_weights_``
    (a CPU copy of ``model.state_dict()``; the weights before training until an epoch scores)."""

    def __init__(self, model: nn.Module, *, patience: int, log: Callable[[str], None],
                 selection: str = "auroc") -> None:
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}, got {selection!r}")
        self.model, self.patience, self.log, self.selection = model, patience, log, selection
        self.best_epoch_, self.best_score_, self.best_loss_, self.bad_epochs_ = 0, -math.inf, math.inf, 0
        self.best_weights_: dict[str, torch.Tensor] | None = None

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs_ >= self.patience

    def on_fit_start(self, loop: TrainingLoop) -> None:
        if self.best_weights_ is None:  # not restored from a checkpoint
            self.best_weights_ = _weights(self.model)

    def _better(self, record: EpochRecord) -> bool:
        by_loss = record.val_loss < self.best_loss_ - MIN_DELTA
        if self.selection == "loss" or math.isnan(record.val_auroc):
            return by_loss
        if self.selection == "auroc_loss" and abs(record.val_auroc - self.best_score_) <= MIN_DELTA:
            return by_loss
        return record.val_auroc > self.best_score_ + MIN_DELTA

    def on_epoch_end(self, loop: TrainingLoop, record: EpochRecord) -> None:
        if self._better(record):
            score = -record.val_loss if self.selection == "loss" or math.isnan(record.val_auroc) else record.val_auroc
            self.best_epoch_, self.best_score_, self.best_loss_, self.bad_epochs_ = (
                record.epoch, score, record.val_loss, 0)
            self.best_weights_ = _weights(self.model)
        else:
            self.bad_epochs_ += 1

    def on_fit_end(self, loop: TrainingLoop) -> None:
        if self.should_stop:
            self.log(f"stopped early: validation {SCORE_WORDS[self.selection]} has not improved for "
                     f"{self.patience} epochs")
        self.model.load_state_dict(self.best_weights_)

    def state_dict(self) -> dict[str, Any]:
        return {"best_epoch": self.best_epoch_, "best_score": self.best_score_, "best_loss": self.best_loss_,
                "bad_epochs": self.bad_epochs_}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_epoch_, self.best_score_, self.bad_epochs_ = state["best_epoch"], state["best_score"], state["bad_epochs"]
        self.best_loss_ = state.get("best_loss", math.inf)  # checkpoints before `selection` lack it
