"""The resumable checkpoint: everything a resumed run needs, written by rank 0."""

from __future__ import annotations

import torch
from torch import nn

from medxfer.pipeline.runtime.distributed import Distributed
from medxfer.pipeline.training.checkpoint import load_checkpoint
from medxfer.pipeline.training.checkpointing import Checkpointing
from medxfer.pipeline.training.early_stopping import EarlyStopping
from medxfer.pipeline.training.epoch import EpochRecord
from medxfer.pipeline.training.history import History
from medxfer.pipeline.training.loop import TrainingLoop


def parts(tmp_path, seed: int, write: bool = True, fold: int | None = None):
    torch.manual_seed(seed)
    model, domain = nn.Linear(3, 2), nn.Linear(3, 1)
    optimizer = torch.optim.AdamW([*model.parameters(), *domain.parameters()], lr=0.1)
    early = EarlyStopping(model, patience=2, log=print)
    history = History(tmp_path / "history.csv", write=False)
    loop = TrainingLoop(None, None, None, [], epochs=5, dist=Distributed())
    checkpointing = Checkpointing(tmp_path / "c.safetensors", model=model, domain=domain, optimizer=optimizer,
                                  early_stopping=early, stateful=[loop, history], write=write, fold=fold)
    return model, domain, optimizer, early, history, loop, checkpointing


def trained_epoch(tmp_path, fold: int | None = None):
    model, domain, optimizer, early, history, loop, checkpointing = parts(tmp_path, 0, fold=fold)
    early.on_fit_start(loop)
    (model(torch.ones(1, 3)).sum() + domain(torch.ones(1, 3)).sum()).backward()
    optimizer.step()
    record = EpochRecord(1, 0.5, 0.6, 0.4, 0.7, {"head": 0.1}, 1.0, 1.0)
    loop.epoch = 1
    for callback in (early, history, checkpointing):
        callback.on_epoch_end(loop, record)
    return model, domain, optimizer, early


def test_a_restored_run_has_the_saved_weights_optimizer_and_state(tmp_path):
    model, domain, optimizer, early = trained_epoch(tmp_path)
    _, state = load_checkpoint(tmp_path / "c.safetensors")
    assert set(state) == {"epoch", "best_epoch", "best_score", "best_loss", "bad_epochs", "history", "optimizer"}
    model2, domain2, optimizer2, early2, history2, loop2, checkpointing2 = parts(tmp_path, 1)
    messages: list[str] = []
    assert checkpointing2.restore(messages.append, 5) == 1
    assert messages == ["resuming after epoch 1 of 5"]
    for a, b in ((model, model2), (domain, domain2)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert all(torch.equal(early.best_weights_[k], early2.best_weights_[k]) for k in early.best_weights_)
    assert loop2.epoch == 1 and early2.best_epoch_ == 1 and history2.rows_[0]["val_auroc"] == 0.7
    assert optimizer2.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]


def test_without_a_checkpoint_nothing_is_restored_and_other_processes_write_none(tmp_path):
    *_, loop, checkpointing = parts(tmp_path, 0, write=False)
    assert checkpointing.restore(print, 5) == 0
    checkpointing.on_epoch_end(loop, EpochRecord(1, 0.5, 0.6, 0.4, 0.7, {}, 1.0, 1.0))
    assert not (tmp_path / "c.safetensors").exists()


def test_a_checkpoint_of_another_fold_is_not_restored(tmp_path):
    trained_epoch(tmp_path)  # a holdout checkpoint (no fold)
    model, *_, loop, checkpointing = parts(tmp_path, 1, fold=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert checkpointing.restore(print, 5) == 0 and loop.epoch == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    trained_epoch(tmp_path, fold=2)
    assert load_checkpoint(tmp_path / "c.safetensors")[1]["fold"] == 2
    assert parts(tmp_path, 3, fold=1)[-1].restore(print, 5) == 0  # fold 2's checkpoint, fold 1 asks
    messages: list[str] = []
    assert parts(tmp_path, 3, fold=2)[-1].restore(messages.append, 5) == 1
    assert messages == ["resuming fold 3 after epoch 1 of 5"]
