"""Damaged files for tests: deterministic byte damage, and a DICOM whose PatientID makes pydicom
complain (quoting the ID) when it is read."""

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


def dicom_with_invalid_patient_id(path: Path, patient_id: str = "MRN12345") -> Path:
    """A phantom DICOM whose PatientID element claims VR IS (integer string): pydicom's warning
    and log record on reading it quote the ID, so outputs can be searched for a leak."""
    import pydicom

    from medxfer.datasets import phantom

    phantom.encode_dicom(np.zeros((4, 4), np.float32), path, patient={"PatientID": patient_id})
    raw = bytearray(path.read_bytes())
    at = raw.index(patient_id.encode()) - 4  # explicit VR: tag (4 bytes), VR (2), length (2), value
    assert raw[at:at + 2] == b"LO"
    raw[at:at + 2] = b"IS"
    path.write_bytes(bytes(raw))
    pydicom.dcmread(path)  # still parses
    return path
