"""One log line per epoch: losses, AUROCs, speed, and whether it is the best so far."""

from __future__ import annotations

from collections.abc import Callable

from medxfer.pipeline.evaluation.wording import missing, not_available, number
from medxfer.pipeline.training.early_stopping import EarlyStopping
from medxfer.pipeline.training.epoch import EpochRecord
from medxfer.pipeline.training.loop import Callback, TrainingLoop


def shown(value: float | None) -> str:
    """An AUROC for a log line: three decimals, or why there is none."""
    return not_available("one class only") if missing(value) else number(value, typeset=False)


class ProgressLog(Callback):
    """Sends each epoch's line to ``log``, marked ``(best)`` when ``early_stopping`` kept it."""

    def __init__(self, log: Callable[[str], None], early_stopping: EarlyStopping) -> None:
        self.log, self.early_stopping = log, early_stopping

    def on_epoch_end(self, loop: TrainingLoop, record: EpochRecord) -> None:
        self.log(f"epoch {record.epoch}/{loop.epochs}  train loss {record.train_loss:.3f} auroc "
                 f"{shown(record.train_auroc)}  val loss {record.val_loss:.3f} auroc {shown(record.val_auroc)}  "
                 f"{record.images_per_second:.0f} img/s  {record.seconds:.1f} s"
                 + ("  (best)" if self.early_stopping.best_epoch_ == record.epoch else ""))
