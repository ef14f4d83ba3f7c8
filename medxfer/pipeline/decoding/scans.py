"""Decoding every scan of a dataset once, already resized to the network's input size.

A full-size radiograph (3000 x 2500 pixels) takes far longer to decode and shrink than the
network takes to look at it, so training decodes each file once, keeps the image resized to
fit the input (``resize_to_fit``: aspect ratio kept, not yet padded), and augments that
small copy every epoch. Resizing an image already at its fitted size is the identity, so the
pipeline applied to the kept copy gives exactly what it gives on the original scan: training
and inference see the same pixels. Memory: about 4 bytes x image_size^2 per scan (0.2 MB at
224 pixels).

Inference (``medxfer predict`` and ``medxfer evaluate``) keeps nothing: ``prepared_batches``
decodes and prepares scans batch by batch in DataLoader workers while the network runs;
``medxfer predict --slices`` takes every slice of a volume through ``PreparedSlices``.

Every path here refuses a blank image (one value everywhere after the window), applies the
pixel budget of ``DecodeSettings.max_pixels``, and decodes in workers through
``recovering_loader``, so that a worker's death costs only the file it was reading.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from medxfer.datasets import budget
from medxfer.datasets.reader import read_scan
from medxfer.datasets.scan import Scan, UnreadableScanError
from medxfer.datasets.sources import UnreadableFile
from medxfer.datasets.volume import volume_to_2d
from medxfer.pipeline.decoding.recovering_loader import InFlight, RecoveringLoader
from medxfer.transforms.preparation import InputSpec, resize_to_fit

# The volume strategies whose 2D input is built around one slice, so that a network trained on
# them can be shown every slice in turn ("mip" sees the whole volume at once: no slice to move).
SLICE_STRATEGIES = ("middle", "2.5d")
# Pixels in [0, 1] whose range is no wider than this are one value: a blank image.
BLANK_RANGE = 1e-6


@dataclass(frozen=True)
class DecodeSettings:
    """How a scan becomes a 2D image: ``window`` as ``read_scan`` takes it, ``volume_strategy``
    as ``volume_to_2d`` takes it, ``spec`` the network input it is resized for, ``max_pixels``
    the pixel budget (None: ``medxfer.datasets.budget``'s default)."""

    spec: InputSpec
    window: str = "default"
    volume_strategy: str = "middle"
    max_pixels: int | None = None

    def __post_init__(self) -> None:
        budget.max_pixels(self.max_pixels)  # a bad budget is one error here, not one per file later


def _read(path: Path, settings: DecodeSettings) -> Scan:
    """The scan, refused when it is blank: an image whose pixels all have one value after the
    window (an empty TIFF page, a window that a negative rescale slope pushes everything out of)
    holds nothing to classify, yet the network would still give it a confident probability."""
    scan = read_scan(path, window=settings.window, max_pixels=settings.max_pixels)
    low, high = float(scan.pixels.min()), float(scan.pixels.max())
    if high - low <= BLANK_RANGE:
        raise UnreadableScanError(path, f"blank image: every pixel has the value {low:.3f} after the window "
                                        f"({scan.meta.get('window', 'default')}), so there is nothing to classify")
    return scan


def decode_scan(path: Path, settings: DecodeSettings) -> torch.Tensor:
    """One scan as a (C, h, w) float32 tensor in [0, 1], resized to fit ``settings.spec``.
    Raises ``UnreadableScanError`` naming the file and the reason."""
    return decode_with_meta(path, settings)[0]


def decode_with_meta(path: Path, settings: DecodeSettings) -> tuple[torch.Tensor, dict]:
    """``decode_scan`` and the scan's non-identifying metadata (``Scan.meta``)."""
    scan = _read(path, settings)
    pixels = volume_to_2d(scan.pixels, settings.volume_strategy) if scan.is_volume else scan.pixels
    try:
        return resize_to_fit(pixels, settings.spec).contiguous(), dict(scan.meta)
    except ValueError as exc:
        raise UnreadableScanError(path, str(exc)) from None


def check_slice_strategy(strategy: str) -> None:
    """Raise ValueError unless a network trained with volume ``strategy`` can be shown single slices."""
    if strategy not in SLICE_STRATEGIES:
        raise ValueError(f"slice-by-slice prediction needs a run trained with volume_strategy "
                         f"{' or '.join(SLICE_STRATEGIES)}; this one used {strategy!r} (whole volumes), so single "
                         "slices are not what it learned from")


def decode_slices(path: Path, settings: DecodeSettings,
                  prepare: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, list[int] | None,
                                                                                          dict]:
    """Every slice of a volume as ``decode_scan`` gives the middle one: slice ``k`` built by
    ``settings.volume_strategy`` centred on ``k`` ("middle": the slice itself; "2.5d": slices
    k-1, k, k+1 as channels, the edge slice repeated), resized and passed through ``prepare``
    (e.g. the network's preparation) one slice at a time into one (n, C, h, w) tensor. Returns
    it, the slice numbers (0-based, along the volume's first axis; None for a 2D scan, returned
    as its one image) and the metadata. Memory beyond the decoded volume: the returned tensor,
    n x C x h x w x 4 bytes (0.6 MB per slice at 224 pixels and 3 channels)."""
    check_slice_strategy(settings.volume_strategy)
    scan = _read(path, settings)
    numbers = list(range(scan.pixels.shape[0])) if scan.is_volume else None
    stack: torch.Tensor | None = None
    for k, number in enumerate(numbers or [None]):
        view = scan.pixels if number is None else volume_to_2d(scan.pixels, settings.volume_strategy, center=number)
        try:
            image = resize_to_fit(view, settings.spec)
        except ValueError as exc:
            raise UnreadableScanError(path, str(exc)) from None
        image = prepare(image) if prepare is not None else image
        if stack is None:
            stack = torch.empty((len(numbers or [None]), *image.shape), dtype=image.dtype)
        stack[k] = image
    return stack, numbers, dict(scan.meta)


def _failure(exc: Exception) -> str:
    """The reason a file could not be prepared, for the errors file: a reader's own reason, or the
    exception of an exotic file (reported, not fatal, so one file cannot end a job over thousands)."""
    if isinstance(exc, UnreadableScanError):
        return exc.reason
    return f"unexpected error: {type(exc).__name__}: {exc}"


class _Decoded(Dataset):
    """Item ``k``: ``(index, image, None)`` for scan ``indices[k]`` of ``paths`` (``decode_scan``),
    or ``(index, None, reason)``."""

    def __init__(self, paths: Sequence[Path], indices: Sequence[int], settings: DecodeSettings,
                 in_flight: InFlight | None) -> None:
        self.paths, self.indices, self.settings, self.in_flight = paths, list(indices), settings, in_flight

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[int, torch.Tensor | None, str | None]:
        index = self.indices[position]
        if self.in_flight is not None:
            self.in_flight.start(index)
        try:
            return index, decode_scan(self.paths[index], self.settings), None
        except UnreadableScanError as exc:
            return self.failed_item(index, exc.reason)
        finally:
            if self.in_flight is not None:
                self.in_flight.done()

    def failed_item(self, index: int, reason: str) -> tuple[int, None, str]:
        return index, None, reason


def decode_all(
    paths: Sequence[Path], settings: DecodeSettings, *, workers: int = 0
) -> tuple[list[torch.Tensor | None], list[UnreadableFile]]:
    """Decode ``paths`` in ``workers`` background processes (0: in this one); a worker that dies
    costs only the file it was reading (``recovering_loader``).

    Returns one image per path (``None`` where the file could not be decoded) and the list of
    files that could not, with the reason, both in the order of the paths.
    """
    images: list[torch.Tensor | None] = [None] * len(paths)
    failed: dict[int, UnreadableFile] = {}

    def make(chosen: Sequence[int], in_flight: InFlight | None) -> Dataset:
        return _Decoded(paths, chosen, settings, in_flight)

    for batch in RecoveringLoader(make, range(len(paths)), batch_size=1, workers=workers):
        for index, image, reason in batch:
            if image is None:
                failed[index] = UnreadableFile(paths[index], reason)
            else:
                # A worker's tensor lives in shared memory, one file descriptor each: copy it out, or
                # thousands of kept images would exhaust descriptors and /dev/shm.
                images[index] = image.clone() if workers else image
    return images, [failed[index] for index in sorted(failed)]


class PreparedScans(Dataset):
    """Scans ready for the network, for inference: item ``k`` is scan ``indices[k]`` of ``paths``
    as ``(index, tensor, meta, None)``, the tensor prepared by ``XrayPipeline(spec, "none")``
    (what training feeds the network), or ``(index, None, {}, reason)`` when the file cannot be
    read. Never raises for a bad file, so that one file cannot end a job over thousands; marks the
    file in hand in ``in_flight`` (``recovering_loader``) so that a worker's death costs only it."""

    def __init__(self, paths: Sequence[Path], indices: Sequence[int], settings: DecodeSettings,
                 in_flight: InFlight | None = None) -> None:
        from medxfer.transforms.pipeline import XrayPipeline  # MONAI: imported when a job needs it

        self.paths, self.indices, self.settings, self.in_flight = paths, list(indices), settings, in_flight
        self.plain = XrayPipeline(settings.spec, "none")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple:
        index = self.indices[position]
        if self.in_flight is not None:
            self.in_flight.start(index)
        try:
            return self._prepare(index)
        except Exception as exc:  # noqa: BLE001 - see _failure
            return self.failed_item(index, _failure(exc))
        finally:
            if self.in_flight is not None:
                self.in_flight.done()

    def _prepare(self, index: int) -> tuple[int, torch.Tensor, dict, None]:
        image, meta = decode_with_meta(self.paths[index], self.settings)
        return index, self.plain(image), meta, None

    def failed_item(self, index: int, reason: str) -> tuple[int, None, dict, str]:
        return index, None, {}, reason


class PreparedSlices(PreparedScans):
    """``PreparedScans`` slice by slice: item ``k`` is ``(index, images, meta, None, slices)``,
    ``images`` a (n, C, S, S) stack of every slice of a volume (``decode_slices``) prepared for
    the network and ``slices`` their numbers, or n = 1 and ``slices`` None for a 2D scan; or
    ``(index, None, {}, reason, None)`` when the file cannot be read."""

    def _prepare(self, index: int) -> tuple[int, torch.Tensor, dict, None, list[int] | None]:
        images, numbers, meta = decode_slices(self.paths[index], self.settings, self.plain)
        return index, images, meta, None, numbers

    def failed_item(self, index: int, reason: str) -> tuple[int, None, dict, str, None]:
        return index, None, {}, reason, None


def prepared_batches(paths: Sequence[Path], indices: Sequence[int], settings: DecodeSettings, *, batch_size: int,
                     workers: int, slices: bool = False) -> RecoveringLoader:
    """Batches (lists of ``PreparedScans`` items) decoded in ``workers`` background processes
    while the caller runs the network; a worker that dies turns only the file it was reading into
    an error item (``recovering_loader``). ``slices``: items of ``PreparedSlices`` instead, one
    file per batch and one batch ahead per worker (a volume can hold hundreds of slices; each
    volume in flight passes through shared memory). Within a loader, items come in the order of
    ``indices``; after a worker's death the rest follow a new loader."""
    kind = PreparedSlices if slices else PreparedScans

    def make(chosen: Sequence[int], in_flight: InFlight | None) -> Dataset:
        return kind(paths, chosen, settings, in_flight)

    if slices:
        return RecoveringLoader(make, indices, batch_size=1, workers=workers,
                                **({"prefetch_factor": 1} if workers else {}))
    return RecoveringLoader(make, indices, batch_size=batch_size, workers=workers)
