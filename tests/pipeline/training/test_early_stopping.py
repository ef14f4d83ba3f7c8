"""Early stopping: patience, the best epoch's weights, and the loss when AUROC is undefined."""

from __future__ import annotations

import math

import torch
from torch import nn

from medxfer.pipeline.training.early_stopping import EarlyStopping
from medxfer.pipeline.training.epoch import EpochRecord


def record(epoch: int, val_auroc: float, val_loss: float = 1.0) -> EpochRecord:
    return EpochRecord(epoch, 1.0, 0.5, val_loss, val_auroc, {"head": 1e-3}, 1.0, 10.0)


def play(stopper: EarlyStopping, model: nn.Linear, scores: list[float], losses: list[float] | None = None) -> int:
    """Feed epochs (setting the weight to the epoch number) until the stopper stops; returns the epochs run."""
    stopper.on_fit_start(None)
    for epoch, score in enumerate(scores, 1):
        if stopper.should_stop:
            return epoch - 1
        with torch.no_grad():
            model.weight.fill_(epoch)
        stopper.on_epoch_end(None, record(epoch, score, losses[epoch - 1] if losses else 1.0))
    return len(scores)


def test_stops_after_patience_epochs_without_improvement_and_restores_the_best_weights():
    model, messages = nn.Linear(1, 1), []
    stopper = EarlyStopping(model, patience=2, log=messages.append)
    assert play(stopper, model, [0.6, 0.8, 0.79, 0.8 + 5e-5, 0.95]) == 4  # gains under 1e-4 do not count
    assert stopper.best_epoch_ == 2 and stopper.should_stop
    stopper.on_fit_end(None)
    assert model.weight.item() == 2.0
    assert messages == ["stopped early: validation AUROC has not improved for 2 epochs"]


def test_patience_zero_never_stops():
    model = nn.Linear(1, 1)
    stopper = EarlyStopping(model, patience=0, log=print)
    assert play(stopper, model, [0.9, 0.5, 0.4, 0.3]) == 4 and not stopper.should_stop


def test_with_one_class_in_validation_the_lower_loss_wins():
    model = nn.Linear(1, 1)
    stopper = EarlyStopping(model, patience=0, log=print)
    play(stopper, model, [math.nan] * 3, losses=[0.7, 0.4, 0.6])
    assert stopper.best_epoch_ == 2 and stopper.best_score_ == -0.4


def test_without_any_scored_epoch_the_initial_weights_are_kept():
    model = nn.Linear(1, 1)
    initial = model.weight.item()
    stopper = EarlyStopping(model, patience=1, log=print)
    play(stopper, model, [math.nan], losses=[math.nan])
    stopper.on_fit_end(None)
    assert stopper.best_epoch_ == 0 and model.weight.item() == initial


def test_state_round_trips():
    stopper = EarlyStopping(nn.Linear(1, 1), patience=3, log=print)
    stopper.load_state_dict({"best_epoch": 4, "best_score": 0.8, "best_loss": 0.3, "bad_epochs": 3, "epoch": 7})
    assert stopper.should_stop
    assert stopper.state_dict() == {"best_epoch": 4, "best_score": 0.8, "best_loss": 0.3, "bad_epochs": 3}


def test_loss_selection_keeps_the_lowest_validation_loss_whatever_the_auroc():
    model = nn.Linear(1, 1)
    stopper = EarlyStopping(model, patience=0, log=print, selection="loss")
    play(stopper, model, [0.9, 0.95, 0.99, 0.7], losses=[0.6, 0.3, 0.5, 0.2 + 1e-3])
    assert stopper.best_epoch_ == 4 and stopper.best_score_ == -(0.2 + 1e-3)


def test_auroc_loss_selection_breaks_a_saturated_auroc_tie_by_the_loss():
    model = nn.Linear(1, 1)
    by_auroc = EarlyStopping(model, patience=0, log=print)
    play(by_auroc, model, [1.0, 1.0, 1.0, 0.98], losses=[0.5, 0.2, 0.3, 0.1])
    assert by_auroc.best_epoch_ == 1  # AUROC alone keeps the first epoch that reached 1
    tied = EarlyStopping(model, patience=0, log=print, selection="auroc_loss")
    play(tied, model, [1.0, 1.0, 1.0, 0.98], losses=[0.5, 0.2, 0.3, 0.1])
    assert tied.best_epoch_ == 2  # the lowest loss among the tied epochs; a lower AUROC never wins
    better = EarlyStopping(model, patience=0, log=print, selection="auroc_loss")
    play(better, model, [0.8, 0.9], losses=[0.2, 0.4])
    assert better.best_epoch_ == 2  # a higher AUROC wins even with a higher loss


def test_patience_counts_epochs_without_a_better_loss_and_the_log_names_the_score():
    model, messages = nn.Linear(1, 1), []
    stopper = EarlyStopping(model, patience=2, log=messages.append, selection="loss")
    assert play(stopper, model, [0.5, 0.9, 0.95, 0.99], losses=[0.3, 0.4, 0.35, 0.1]) == 3
    stopper.on_fit_end(None)
    assert model.weight.item() == 1.0 and messages == ["stopped early: validation loss has not improved for 2 epochs"]


def test_a_checkpoint_without_the_best_loss_still_restores():
    stopper = EarlyStopping(nn.Linear(1, 1), patience=3, log=print, selection="auroc_loss")
    stopper.load_state_dict({"best_epoch": 2, "best_score": 0.9, "bad_epochs": 1})
    assert stopper.best_loss_ == math.inf and stopper.state_dict()["best_epoch"] == 2
