"""Training checkpoints: tensors and state round-trip, atomic writes, no unpickling."""

from __future__ import annotations

import pytest
import torch

from medxfer.pipeline.training.checkpoint import load_checkpoint, optimizer_state, optimizer_tensors, save_checkpoint


def test_model_optimizer_and_state_round_trip(tmp_path):
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW([{"params": model.parameters(), "lr": 0.01, "name": "head"}])
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    tensors, rest = optimizer_tensors(optimizer.state_dict())
    path = save_checkpoint(tmp_path / "c.safetensors", {"model": model.state_dict(), "optimizer": tensors},
                           {"epoch": 3, "history": [{"val_auroc": 0.75}], "optimizer": rest})
    parts, state = load_checkpoint(path)
    assert state["epoch"] == 3 and state["history"] == [{"val_auroc": 0.75}]
    assert all(torch.equal(parts["model"][k], v) for k, v in model.state_dict().items())
    fresh = torch.optim.AdamW([{"params": model.parameters(), "lr": 0.01, "name": "head"}])
    fresh.load_state_dict(optimizer_state(parts["optimizer"], state["optimizer"]))
    for a, b in zip(fresh.state_dict()["state"].values(), optimizer.state_dict()["state"].values()):
        assert all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)
    assert fresh.param_groups[0]["betas"] == optimizer.param_groups[0]["betas"]
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temporary file left


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "c.safetensors"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a medxfer training checkpoint"):
        load_checkpoint(path)


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "c.safetensors", {"model": {"w": torch.ones(2)}}, {"epoch": 1})

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", broken)
    with pytest.raises(OSError):
        save_checkpoint(path, {"model": {"w": torch.zeros(2)}}, {"epoch": 2})
    parts, state = load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(parts["model"]["w"], torch.ones(2))
