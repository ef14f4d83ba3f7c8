"""The training loop: epochs until the last or until a callback stops it, in the style of
PyTorch Lightning.

The loop only runs epochs (``EpochRunner``) and calls its callbacks in order; each callback
owns one concern (``early_stopping``, ``progress``, ``history``, ``checkpointing``). Objects
whose state a resumed run needs (the loop's epoch counter, early stopping's best epoch, the
history) give it as JSON-serialisable ``state_dict()`` and take it back with
``load_state_dict``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from medxfer.pipeline.runtime.distributed import Distributed
from medxfer.pipeline.training.epoch import EpochRecord, EpochRunner
from medxfer.pipeline.training.prefix_cache import Inputs


class Callback:
    """Hooks the loop calls, each callback in turn; each does nothing unless overridden."""

    def on_fit_start(self, loop: TrainingLoop) -> None:
        """Before the first epoch this call runs (after any resume)."""

    def on_epoch_end(self, loop: TrainingLoop, record: EpochRecord) -> None:
        """After each epoch, ``loop.epoch`` already counting it."""

    def on_fit_end(self, loop: TrainingLoop) -> None:
        """After the last epoch, or once a callback has stopped the run."""

    @property
    def should_stop(self) -> bool:
        """True to end the run before another epoch."""
        return False


class TrainingLoop:
    """Runs ``runner``'s epochs on ``batches(epoch)`` and validates on ``val``, from ``epoch``
    (0-based, the next to run; a resumed run's) up to ``epochs`` or until a callback stops it.
    ``dist``: the process group, synchronised after each epoch's callbacks."""

    def __init__(self, runner: EpochRunner, batches: Callable[[int], Iterable], val: Inputs,
                 callbacks: Sequence[Callback], *, epochs: int, dist: Distributed) -> None:
        self.runner, self.batches, self.val, self.callbacks = runner, batches, val, list(callbacks)
        self.epochs, self.dist = epochs, dist
        self.epoch = 0

    @property
    def stopped(self) -> bool:
        return any(callback.should_stop for callback in self.callbacks)

    def fit(self) -> None:
        for callback in self.callbacks:
            callback.on_fit_start(self)
        while self.epoch < self.epochs and not self.stopped:
            # The batches first: a DataLoader draws its workers' base seed from torch's global
            # generator, which the epoch then reseeds for dropout.
            batches = self.batches(self.epoch)
            record = self.runner.run(self.epoch, batches, self.val)
            self.epoch += 1
            for callback in self.callbacks:
                callback.on_epoch_end(self, record)
            self.dist.barrier()
        for callback in self.callbacks:
            callback.on_fit_end(self)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = state["epoch"]
