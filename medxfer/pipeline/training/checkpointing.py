"""The resumable checkpoint of a run: written after every epoch, read back by ``--resume``.

It holds the network's weights, the domain classifier's (DANN), the optimiser's moments, the
best weights kept by early stopping, and the state of the loop and its callbacks (epoch, best
epoch and score, epochs without improvement, history), in one file (``checkpoint``: safetensors
written atomically, never unpickled). A run resumed from it after epoch k ends exactly where an
uninterrupted run would, on the same machine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from medxfer.pipeline.training.checkpoint import load_checkpoint, optimizer_state, optimizer_tensors, save_checkpoint
from medxfer.pipeline.training.early_stopping import EarlyStopping
from medxfer.pipeline.training.epoch import EpochRecord
from medxfer.pipeline.training.loop import Callback, TrainingLoop


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Checkpointing(Callback):
    """Saves the checkpoint ``path`` after each epoch when ``write`` (rank 0): ``model``'s and
    ``domain``'s weights, ``optimizer``'s state, ``early_stopping``'s best weights and the
    ``state_dict()`` of each of ``stateful`` (their keys must differ); ``restore`` reads it back.
    ``fold``: the cross-fitting fold being trained (0-based; None for a holdout run), recorded so
    that a checkpoint of another fold is not restored into this one."""

    def __init__(self, path: Path, *, model: nn.Module, domain: nn.Module | None, optimizer: torch.optim.Optimizer,
                 early_stopping: EarlyStopping, stateful: Sequence[Stateful], write: bool,
                 fold: int | None = None) -> None:
        self.path, self.model, self.domain, self.optimizer = path, model, domain, optimizer
        self.early_stopping, self.stateful, self.write = early_stopping, [early_stopping, *stateful], write
        self.fold = fold

    def on_epoch_end(self, loop: TrainingLoop, record: EpochRecord) -> None:
        if not self.write:
            return
        optimizer_parts, optimizer_rest = optimizer_tensors(self.optimizer.state_dict())
        parts = {"model": self.model.state_dict(), "best": self.early_stopping.best_weights_,
                 "optimizer": optimizer_parts}
        if self.domain is not None:
            parts["domain"] = self.domain.state_dict()
        state: dict[str, Any] = {} if self.fold is None else {"fold": self.fold}
        for owner in self.stateful:
            state.update(owner.state_dict())
        save_checkpoint(self.path, parts, {**state, "optimizer": optimizer_rest})

    def restore(self, log: Callable[[str], None], epochs: int) -> int:
        """Load the checkpoint into the network, optimiser and state owners, if there is one;
        returns the number of epochs it had run (0 without a checkpoint, or with one of another fold)."""
        if not self.path.is_file():
            return 0
        parts, state = load_checkpoint(self.path)
        if state.get("fold") != self.fold:  # the last epoch of a fold that has finished since
            return 0
        self.model.load_state_dict(parts["model"])
        self.early_stopping.best_weights_ = parts["best"]
        if self.domain is not None:
            self.domain.load_state_dict(parts["domain"])
        self.optimizer.load_state_dict(optimizer_state(parts["optimizer"], state.pop("optimizer")))
        for owner in self.stateful:
            owner.load_state_dict(state)
        log(f"resuming{'' if self.fold is None else f' fold {self.fold + 1}'} after epoch {state['epoch']} of {epochs}")
        return state["epoch"]
