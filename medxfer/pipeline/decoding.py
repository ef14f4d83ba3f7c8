"""Decoding every scan of a dataset once, already resized to the network's input size.

A full-size radiograph (3000 x 2500 pixels) takes far longer to decode and shrink than the
network takes to look at it, so training decodes each file once, keeps the image resized to
fit the input (``resize_to_fit``: aspect ratio kept, not yet padded), and augments that
small copy every epoch. Resizing an image already at its fitted size is the identity, so the
pipeline applied to the kept copy gives exactly what it gives on the original scan: training
and inference see the same pixels. Memory: about 4 bytes x image_size^2 per scan (0.2 MB at
224 pixels).

Inference (``medxfer predict`` and ``medxfer evaluate``) keeps nothing: ``prepared_batches``
decodes and prepares scans batch by batch in DataLoader workers while the network runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from medxfer.datasets.reader import read_scan
from medxfer.datasets.scan import UnreadableScanError
from medxfer.datasets.sources import UnreadableFile
from medxfer.datasets.volume import volume_to_2d
from medxfer.transforms.preparation import InputSpec, resize_to_fit


@dataclass(frozen=True)
class DecodeSettings:
    """How a scan becomes a 2D image: ``window`` as ``read_scan`` takes it, ``volume_strategy``
    as ``volume_to_2d`` takes it, ``spec`` the network input it is resized for."""

    spec: InputSpec
    window: str = "default"
    volume_strategy: str = "middle"


def decode_scan(path: Path, settings: DecodeSettings) -> torch.Tensor:
    """One scan as a (C, h, w) float32 tensor in [0, 1], resized to fit ``settings.spec``.
    Raises ``UnreadableScanError`` naming the file and the reason."""
    return decode_with_meta(path, settings)[0]


def decode_with_meta(path: Path, settings: DecodeSettings) -> tuple[torch.Tensor, dict]:
    """``decode_scan`` and the scan's non-identifying metadata (``Scan.meta``)."""
    scan = read_scan(path, window=settings.window)
    pixels = volume_to_2d(scan.pixels, settings.volume_strategy) if scan.is_volume else scan.pixels
    try:
        return resize_to_fit(pixels, settings.spec).contiguous(), dict(scan.meta)
    except ValueError as exc:
        raise UnreadableScanError(path, str(exc)) from None


class _Decoded(Dataset):
    def __init__(self, paths: Sequence[Path], settings: DecodeSettings) -> None:
        self.paths, self.settings = list(paths), settings

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return index, decode_scan(self.paths[index], self.settings), None
        except UnreadableScanError as exc:
            return index, None, exc.reason


def decode_all(
    paths: Sequence[Path], settings: DecodeSettings, *, workers: int = 0
) -> tuple[list[torch.Tensor | None], list[UnreadableFile]]:
    """Decode ``paths`` in ``workers`` background processes (0: in this one).

    Returns one image per path (``None`` where the file could not be decoded) and the list of
    files that could not, with the reason; the order of the paths is kept.
    """
    images: list[torch.Tensor | None] = [None] * len(paths)
    failed: list[UnreadableFile] = []
    loader = DataLoader(_Decoded(paths, settings), batch_size=None, num_workers=workers)
    for index, image, reason in loader:
        if image is None:
            failed.append(UnreadableFile(paths[index], reason))
        else:
            # A worker's tensor lives in shared memory, one file descriptor each: copy it out, or
            # thousands of kept images would exhaust descriptors and /dev/shm.
            images[index] = image.clone() if workers else image
    return images, failed


class PreparedScans(Dataset):
    """Scans ready for the network, for inference: item ``k`` is scan ``indices[k]`` of ``paths``
    as ``(index, tensor, meta, None)``, the tensor prepared by ``XrayPipeline(spec, "none")``
    (what training feeds the network), or ``(index, None, {}, reason)`` when the file cannot be
    read. Never raises for a bad file, so that one file cannot end a job over thousands."""

    def __init__(self, paths: Sequence[Path], indices: Sequence[int], settings: DecodeSettings) -> None:
        from medxfer.transforms.pipeline import XrayPipeline  # MONAI: imported when a job needs it

        self.paths, self.indices, self.settings = paths, list(indices), settings
        self.plain = XrayPipeline(settings.spec, "none")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[int, torch.Tensor | None, dict, str | None]:
        index = self.indices[position]
        try:
            image, meta = decode_with_meta(self.paths[index], self.settings)
            return index, self.plain(image), meta, None
        except UnreadableScanError as exc:
            return index, None, {}, exc.reason
        except Exception as exc:  # noqa: BLE001 - an exotic file is reported, not fatal
            return index, None, {}, f"unexpected error: {type(exc).__name__}: {exc}"


def _as_list(batch: list) -> list:
    return batch


def prepared_batches(paths: Sequence[Path], indices: Sequence[int], settings: DecodeSettings, *, batch_size: int,
                     workers: int) -> DataLoader:
    """Batches (lists of ``PreparedScans`` items, in the order of ``indices``) decoded in
    ``workers`` background processes while the caller runs the network."""
    return DataLoader(PreparedScans(paths, indices, settings), batch_size=batch_size, num_workers=workers,
                      collate_fn=_as_list)
