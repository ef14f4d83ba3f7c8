"""Where a job runs: the torch device and the number of decoding worker processes."""

from __future__ import annotations

import os

import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but torch sees no CUDA GPU on this machine; use --device cpu")
    return device


def resolve_workers(workers: int | str) -> int:
    """``auto``: DataLoader worker processes for the cores the network leaves free: none on 2
    cores (measured: the prefix cache fills at 42 images/s with augmentation in the training
    process against 38 with one worker competing for the cores), then cores - 2, at most 8 (on a
    16-core H100 machine full fine-tuning took 360 images/s with 4 workers, 428 with 8 and 429
    with 14: docs/benchmarks.md)."""
    if workers != "auto":
        return int(workers)
    return max(0, min(8, usable_cores() - 2))


def usable_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
