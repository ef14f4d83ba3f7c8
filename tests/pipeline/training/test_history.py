"""The history: rows in memory, rewritten to history.csv after each epoch by rank 0 only."""

from __future__ import annotations

from medxfer.csvfiles import read_csv
from medxfer.pipeline.training.epoch import EpochRecord
from medxfer.pipeline.training.history import History


def record(epoch: int) -> EpochRecord:
    return EpochRecord(epoch, 0.123456789, 0.5, 0.25, 0.75, {"head": 1e-3, "stage 4": 7e-4}, 2.0, 123.4567)


def test_rows_are_kept_and_written_with_six_significant_digits(tmp_path):
    history = History(tmp_path / "history.csv", write=True)
    for epoch in (1, 2):
        history.on_epoch_end(None, record(epoch))
    rows = read_csv(tmp_path / "history.csv")
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert rows[0]["train_loss"] == "0.123457" and rows[0]["lr_stage_4"] == "0.0007"
    assert history.rows_[1] == record(2).row()


def test_other_processes_write_nothing_and_state_round_trips(tmp_path):
    history = History(tmp_path / "history.csv", write=False)
    history.load_state_dict({"history": [record(1).row()], "epoch": 1})
    history.on_epoch_end(None, record(2))
    assert not (tmp_path / "history.csv").exists()
    assert history.state_dict() == {"history": [record(1).row(), record(2).row()]}


def test_a_folds_rows_open_with_its_one_based_fold_and_save_writes_them_together(tmp_path):
    folds = [History(tmp_path / "history.csv", write=False, fold=fold) for fold in (0, 1)]
    for history in folds:
        history.on_epoch_end(None, record(1))
    assert list(folds[1].rows_[0])[:2] == ["fold", "epoch"] and folds[1].rows_[0]["fold"] == 2
    History(tmp_path / "history.csv", write=True).save(folds[0].rows_ + folds[1].rows_)
    assert [(row["fold"], row["epoch"]) for row in read_csv(tmp_path / "history.csv")] == [("1", "1"), ("2", "1")]
