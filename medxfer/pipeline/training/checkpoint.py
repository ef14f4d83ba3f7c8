"""Resumable training state in one safetensors file, written atomically.

A checkpoint holds the model's weights, the best weights so far, the optimizer's moments and
the loop's counters and history. Tensors go in as safetensors tensors and everything else as
JSON in the file's metadata, so reading a checkpoint never unpickles anything. The file is
written to a temporary name and renamed (``atomic_write_bytes``): a job killed while writing
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from medxfer.files import atomic_write_bytes

_STATE_KEY = "medxfer_checkpoint"


def optimizer_tensors(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into flat tensors and a JSON-serialisable rest."""
    tensors: dict[str, torch.Tensor] = {}
    slots: dict[str, list[str]] = {}
    for index, per_param in state["state"].items():
        slots[str(index)] = sorted(per_param)
        for name, value in per_param.items():
            tensors[f"{index}/{name}"] = torch.as_tensor(value).detach().clone()
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"slots": slots, "param_groups": groups}


def optimizer_state(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    """The ``optimizer.load_state_dict`` argument ``optimizer_tensors`` was given."""
    state = {int(index): {name: tensors[f"{index}/{name}"] for name in names} for index, names in rest["slots"].items()}
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in rest["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(path: str | Path, parts: dict[str, dict[str, torch.Tensor]], state: dict[str, Any]) -> Path:
    """Write ``parts`` (named groups of tensors, e.g. ``{"model": model.state_dict(), ...}``)
    and ``state`` (JSON-serialisable) to ``path`` atomically."""
    flat = {f"{part}/{key}": value.detach().cpu().contiguous() for part, tensors in parts.items()
            for key, value in tensors.items()}
    return atomic_write_bytes(path, save(flat, metadata={_STATE_KEY: json.dumps(state)}))


def load_checkpoint(path: str | Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """The ``(parts, state)`` that ``save_checkpoint`` wrote; a clear error for anything else."""
    path = Path(path)
    try:
        flat = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            state = json.loads((handle.metadata() or {})[_STATE_KEY])
    except (SafetensorError, ValueError, KeyError) as exc:
        raise ValueError(f"{path}: not a medxfer training checkpoint ({exc})") from None
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        part, _, name = key.partition("/")
        parts.setdefault(part, {})[name] = value
    return parts, state
