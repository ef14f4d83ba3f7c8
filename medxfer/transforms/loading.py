"""Reproducible augmented images, whatever the number of DataLoader workers.

MONAI transforms keep their own NumPy generator; a DataLoader copies that generator into every
worker, so workers repeat each other's "random" augmentations unless each is re-seeded. Here
no state is shared at all: every image draws its augmentation from a seed derived from
(run seed, epoch, image index), read with an ``(epoch, index)`` key, so the same seed gives the
same images in the same epoch with 0, 2 or 16 workers, and no two images or epochs share a
draw. The training loop's batch sampler (``medxfer.pipeline.training.batches``) hands out those
keys.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from medxfer.datasets.scan import MedxferWarning
from medxfer.transforms.pipeline import XrayPipeline

_AUGMENT = 0  # what a derived seed is for (the training loop's streams use other purposes)


def derived_seed(seed: int, epoch: int, index: int, purpose: int = _AUGMENT) -> int:
    """A 32-bit seed for one image (``index``) in one ``epoch`` of a run seeded with ``seed``;
    all arguments are non-negative integers."""
    return int(np.random.SeedSequence([seed, epoch, index, purpose]).generate_state(1)[0])


class AugmentedDataset(Dataset):
    """Images passed through an ``XrayPipeline``, each augmented from its own derived seed.

    ``images``: any sequence (a list, or a lazy reader) whose items are float (H, W) arrays in
    [0, 1] (``Scan.pixels``) or (3, H, W) 2.5D inputs; ``labels``: one per image, or ``None``
    for unlabelled images. Items are ``(tensor, label)``, or the tensor alone without labels.
    A key is an ``(epoch, index)`` pair, or a plain index (epoch 0, with a warning when
    augmenting, since every epoch would then repeat the same draws).
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
                    "read it with (epoch, index) keys to get a new draw each epoch",
                    MedxferWarning, stacklevel=2,
                )
        try:
            image = self.pipeline(self.images[index], seed=derived_seed(self.seed, epoch, index))
        except ValueError as exc:
            raise ValueError(f"image {index}: {exc}") from exc
        return image if self.labels is None else (image, self.labels[index])

