"""The rows of a ``medxfer predict`` job: files from the loader scored by the run (network, then
calibration) and turned into part rows, one per file and, with ``--slices``, one per slice."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medxfer.pipeline.evaluation.decision import Evaluator
from medxfer.pipeline.runs.trained_run import TrainedRun

META_COLUMNS = ("modality", "view", "study_key")  # non-identifying facts kept per row


@dataclass
class ScanItem:
    """One file from the loader: its index in the file list, its images ((n, C, S, S), one per
    slice with ``--slices``, else n = 1) or None with the ``reason`` it cannot be read, its
    metadata, and the slice numbers (None: a 2D scan, or a volume reduced to one image)."""

    index: int
    images: torch.Tensor | None
    meta: dict
    reason: str | None
    slices: list[int] | None = None

    def __post_init__(self) -> None:
        if self.images is not None and self.slices is None and self.images.dim() == 3:
            self.images = self.images.unsqueeze(0)  # PreparedScans gives one (C, S, S) image


class Scorer:
    """The run's network(s) and calibration: calibrated probabilities of the images of several
    files, run through the network ``batch_size`` images at a time."""

    def __init__(self, run: TrainedRun, device: torch.device, batch_size: int) -> None:
        self.run, self.device, self.batch_size = run, device, batch_size

    def score(self, items: Sequence[ScanItem]) -> list[np.ndarray | None]:
        """Per item, its images' calibrated probabilities (n, K), or None for an unreadable file."""
        stacks = [item.images for item in items if item.images is not None]
        if not stacks:
            return [None] * len(items)
        images = torch.cat(stacks)
        logits = [self.run.logits(images[i:i + self.batch_size].to(self.device)).float().cpu()
                  for i in range(0, len(images), self.batch_size)]
        probabilities = self.run.probabilities(torch.cat(logits).numpy().astype(np.float64))
        result: list[np.ndarray | None] = []
        start = 0
        for item in items:
            if item.images is None:
                result.append(None)
            else:
                result.append(probabilities[start:start + len(item.images)])
                start += len(item.images)
        return result


def part_rows(items: Sequence[ScanItem], probabilities: Sequence[np.ndarray | None], relative: list[str],
              classes: list[str], evaluator: Evaluator, cut: float | None,
              aggregate: str | None) -> list[dict[str, Any]]:
    """Part rows of ``items``: per file its row ("ok" or "error"), and with ``aggregate`` the
    rows of a volume's slices ("slice") after it."""
    rows: list[dict[str, Any]] = []
    for item, p in zip(items, probabilities, strict=True):
        row: dict[str, Any] = {"index": item.index, "path": relative[item.index], "slice": ""}
        if p is None:
            rows.append({**row, "status": "error", "reason": item.reason})
            continue
        combined = aggregate_slices(p, aggregate, evaluator.positive_)
        rows.append({**row, "status": "ok", **score_columns(combined, classes, evaluator, cut),
                     **{k: "" if item.meta.get(k) is None else item.meta[k] for k in META_COLUMNS},
                     **({"slices": len(p)} if aggregate else {})})
        for number, slice_p in zip(item.slices or [], p, strict=False):
            rows.append({"index": item.index, "path": relative[item.index], "slice": number, "status": "slice",
                         **score_columns(slice_p, classes, evaluator, cut)})
    return rows


def aggregate_slices(probabilities: np.ndarray, aggregate: str | None, positive: int | None) -> np.ndarray:
    """One probability vector from a file's (n, K) calibrated probabilities: the mean over the
    slices, or for "max" the slice with the highest probability of the ``positive`` class."""
    if aggregate == "max" and positive is not None:
        return probabilities[int(np.argmax(probabilities[:, positive]))]
    return probabilities.mean(axis=0)


def score_columns(p: np.ndarray, classes: list[str], evaluator: Evaluator, cut: float | None) -> dict[str, str]:
    """The probability columns and the predicted label of one probability vector."""
    label = evaluator.predict(p[None, :], threshold=cut)[0]
    return {"predicted": classes[label], **{f"p_{c}": f"{v:.6f}" for c, v in zip(classes, p, strict=True)}}
