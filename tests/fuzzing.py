"""Deterministic byte damage for tests that check readers fail only with UnreadableScanError."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from medxfer.datasets.scan import UnreadableScanError


def mutations(raw: bytes, seed: int, count: int = 30) -> list[bytes]:
    """``count`` copies of ``raw`` with 1-3 bytes overwritten, mostly in the first 400 (headers)."""
    rng = np.random.default_rng(seed)
    special = [0x00, 0x01, 0x7F, 0x80, 0xFF]
    out = []
    for _ in range(count):
        mutated = bytearray(raw)
        limit = len(raw) if rng.random() < 0.25 else min(len(raw), 400)
        for _ in range(rng.integers(1, 4)):
            value = special[rng.integers(len(special))] if rng.random() < 0.6 else rng.integers(256)
            mutated[rng.integers(limit)] = int(value)
        out.append(bytes(mutated))
    return out


def assert_fails_cleanly(readers: list[Callable], target: Path, variants: list[bytes], label: str) -> None:
    """Write each variant to ``target`` and read it with every reader: success, or an
    ``UnreadableScanError`` with a one-line reason; anything else fails the test."""
    for number, raw in enumerate(variants):
        target.write_bytes(raw)
        for read in readers:
            try:
                read(target)
            except UnreadableScanError as exc:
                assert exc.reason.strip() and "\n" not in str(exc), (label, number, read.__name__)
            except Exception as exc:  # noqa: BLE001 - the point of the check
                pytest.fail(f"{read.__name__}({label} mutation {number}) raised {type(exc).__name__}: {exc}")
