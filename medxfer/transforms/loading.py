"""Reproducible augmented batches, whatever the number of DataLoader workers.

MONAI transforms keep their own NumPy generator; a DataLoader copies that generator into every
worker, so workers repeat each other's "random" augmentations unless each is re-seeded. Here
no state is shared at all: every image draws its augmentation from a seed derived from
(run seed, epoch, image index), so the same seed gives the same batches in the same epoch with
0, 2 or 16 workers, and no two images or epochs share a draw. Worker processes also get
distinct derived seeds for torch, NumPy and ``random`` (PyTorch's own per-worker seeding, made
reproducible by a seeded DataLoader generator).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from medxfer.datasets.scan import MedxferWarning
from medxfer.transforms.pipeline import XrayPipeline

_AUGMENT, _ORDER, _WORKERS = 0, 1, 2  # what a derived seed is for, so no two streams coincide


def derived_seed(seed: int, epoch: int, index: int, purpose: int = _AUGMENT) -> int:
    """A 32-bit seed for one image (``index``) in one ``epoch`` of a run seeded with ``seed``;
    all arguments are non-negative integers."""
    return int(np.random.SeedSequence([seed, epoch, index, purpose]).generate_state(1)[0])


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)`` keys over ``n`` images, shuffled by (seed, epoch) when
    ``shuffle``. Each pass over the sampler is the next epoch (0, 1, 2...), so augmentation
    never repeats itself by accident; ``set_epoch(e)`` makes the next pass epoch ``e`` (to resume
    a run). The epoch travels with each key, so it reaches persistent workers too."""

    def __init__(self, n: int, *, seed: int = 0, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch = 0  # the epoch of the next pass

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        if self.shuffle:
            generator = torch.Generator().manual_seed(derived_seed(self.seed, epoch, 0, _ORDER))
            order = torch.randperm(self.n, generator=generator).tolist()
        else:
            order = range(self.n)
        return ((epoch, i) for i in order)


class AugmentedDataset(Dataset):
    """Images passed through an ``XrayPipeline``, each augmented from its own derived seed.

    ``images``: any sequence (a list, or a lazy reader) whose items are float (H, W) arrays in
    [0, 1] (``Scan.pixels``) or (3, H, W) 2.5D inputs; ``labels``: one per image, or ``None``
    for unlabelled images. Items are ``(tensor, label)``, or the tensor alone without labels.
    A key is an ``(epoch, index)`` pair as ``EpochSampler`` yields, or a plain index (epoch 0,
    with a warning when augmenting, since every epoch would then repeat the same draws).
    """

    def __init__(
        self,
        images: Sequence[Any],
        labels: Sequence[Any] | None,
        pipeline: XrayPipeline,
        *,
        seed: int = 0,
    ) -> None:
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a whole number >= 0, got {seed!r}")
        self.images, self.labels, self.pipeline, self.seed = images, labels, pipeline, seed
        self._warned = False

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        if isinstance(key, tuple):
            epoch, index = key
        else:
            epoch, index = 0, key
            if self.pipeline.augments and not self._warned:
                self._warned = True
                warnings.warn(
                    "AugmentedDataset read by plain index: every epoch repeats the same augmentation; "
                    "use augmented_loader (or EpochSampler) to get a new draw each epoch",
                    MedxferWarning, stacklevel=2,
                )
        try:
            image = self.pipeline(self.images[index], seed=derived_seed(self.seed, epoch, index))
        except ValueError as exc:
            raise ValueError(f"image {index}: {exc}") from exc
        return image if self.labels is None else (image, self.labels[index])


def augmented_loader(
    dataset: AugmentedDataset,
    *,
    batch_size: int,
    shuffle: bool = True,
    num_workers: int = 0,
    drop_last: bool = False,
    **kwargs: Any,
) -> DataLoader:
    """A DataLoader over ``dataset`` whose batches depend only on ``dataset.seed`` and the epoch,
    not on ``num_workers``. Each pass over the loader is the next epoch; call
    ``loader.sampler.set_epoch(epoch)`` to start elsewhere (resuming a run).
    Extra keyword arguments (``pin_memory``, ``persistent_workers``...) go to ``DataLoader``."""
    sampler = EpochSampler(len(dataset), seed=dataset.seed, shuffle=shuffle)
    generator = torch.Generator().manual_seed(derived_seed(dataset.seed, 0, 0, _WORKERS))
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        drop_last=drop_last, generator=generator, **kwargs,
    )
