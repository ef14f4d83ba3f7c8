"""The training history: one row per epoch, kept in memory and written to ``history.csv``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medxfer.csvfiles import write_csv
from medxfer.pipeline.training.epoch import EpochRecord
from medxfer.pipeline.training.loop import Callback, TrainingLoop


class History(Callback):
    """Appends each epoch's row (``EpochRecord.row``) to ``rows_`` and, when ``write`` (rank 0),
    rewrites ``path`` with every row so far (floats to 6 significant digits). A cross-fitted run
    gives each fold's history its ``fold`` (0-based): its rows then open with a 1-based ``fold``
    column, and the run writes every fold's rows with ``save`` once the folds are trained."""

    def __init__(self, path: Path, *, write: bool, fold: int | None = None) -> None:
        self.path, self.write, self.fold = path, write, fold
        self.rows_: list[dict[str, float]] = []

    def on_epoch_end(self, loop: TrainingLoop, record: EpochRecord) -> None:
        self.rows_.append(record.row() if self.fold is None else {"fold": self.fold + 1, **record.row()})
        if self.write:
            self.save(self.rows_)

    def save(self, rows: list[dict[str, float]]) -> None:
        """Rewrite the file with ``rows`` (a cross-fitted run's folds, gathered once all are trained)."""
        write_csv(self.path, list(rows[0]),
                  ({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()} for row in rows))

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.rows_}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows_ = state["history"]
