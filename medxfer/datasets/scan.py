"""The in-memory result of reading one file, and the error raised when a file cannot be read."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medxfer.filenames import shown


class MedxferWarning(UserWarning):
    """Base of medxfer's own warnings. Their text is written by medxfer and never holds patient
    identifiers, so the CLI shows them; warnings from other libraries are not echoed."""


class UnreadableScanError(ValueError):
    """A file that cannot be turned into a scan; ``reason`` is one line a person understands."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        # One printable line whatever the source (decoder messages, bytes from a corrupt header).
        self.reason = " ".join("".join(c if c.isprintable() else " " for c in reason).split())
        super().__init__(f"{shown(self.path)}: {self.reason}")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (library messages often run on), or its type."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass(frozen=True, eq=False)
class Scan:
    """One decoded image or volume.

    ``pixels`` is float32 in [0, 1], air dark and bone bright, shaped (H, W) for a
    single image or (D, H, W) for a volume or multi-frame object (D slices or frames).
    ``meta`` holds non-identifying metadata only (see ``medxfer.datasets.metadata``).
    """

    pixels: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def __post_init__(self) -> None:
        if self.pixels.dtype != np.float32:
            raise TypeError(f"Scan.pixels must be float32, got {self.pixels.dtype}")
        if self.pixels.ndim not in (2, 3):
            raise ValueError(f"Scan.pixels must be (H, W) or (D, H, W), got shape {self.pixels.shape}")

    @property
    def is_volume(self) -> bool:
        """True when ``pixels`` holds several slices or frames, shaped (D, H, W)."""
        return self.pixels.ndim == 3
