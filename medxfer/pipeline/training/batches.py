"""The training batches of each epoch, the same whatever the number of processes and workers.

With N processes of batch size B the loop follows the schedule of one process with batch size
N x B: the same epoch order and global batches, process r taking the r-th slice of each. The
order of epoch e is drawn from a seed derived from (run seed, e), so a resumed run sees the
batches an uninterrupted one would. Images augmented on the fly are read with ``(epoch,
index)`` keys (``AugmentedDataset``), so their augmentation does not depend on the loader's
workers either.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from medxfer.pipeline.runtime.distributed import Distributed
from medxfer.pipeline.training.execution import one_thread
from medxfer.pipeline.training.prefix_cache import Inputs
from medxfer.transforms.loading import derived_seed

ORDER_SEED = 11  # purpose of the derived seeds of the epoch order (loading.py's augmentation uses 0)


class EpochSchedule:
    """Global batches of one epoch over ``labels`` (n,) and this process's slice of each.

    ``batch_size``: images per process and step (at most n / processes); ``seed``: the run
    seed; ``balanced``: draw images with replacement, every class equally often (else a
    permutation, each image at most once per epoch); ``dist``: the process group. Incomplete
    global batches at the end of an epoch are dropped."""

    def __init__(self, labels: torch.Tensor, *, batch_size: int, seed: int, balanced: bool,
                 dist: Distributed) -> None:
        n = len(labels)
        self.per_rank = max(1, min(batch_size, n // dist.world_size))
        self.global_size = self.per_rank * dist.world_size
        self.steps = max(1, n // self.global_size)
        self.labels, self.seed, self.balanced, self.dist = labels, seed, balanced, dist

    def batches(self, epoch: int) -> list[list[int]]:
        """This process's image indices of each step of ``epoch`` (0-based)."""
        n = len(self.labels)
        generator = torch.Generator().manual_seed(derived_seed(self.seed, epoch, 0, ORDER_SEED))
        if self.balanced:
            weights = 1.0 / torch.bincount(self.labels).double()[self.labels]
            order = torch.multinomial(weights, n, replacement=True, generator=generator).tolist()
        else:
            order = torch.randperm(n, generator=generator).tolist()
        start = self.dist.rank * self.per_rank
        return [order[j * self.global_size + start : j * self.global_size + start + self.per_rank]
                for j in range(self.steps)]


class KeyBatchSampler(Sampler[list[tuple[int, int]]]):
    """A DataLoader's ``batch_sampler`` over an ``AugmentedDataset``: ``schedule``'s batches of
    epoch ``epoch`` as ``(epoch, index)`` keys (the epoch travels with each key, so it reaches
    persistent workers too). Set ``epoch`` before each pass."""

    def __init__(self, schedule: EpochSchedule) -> None:
        self.schedule, self.epoch = schedule, 0

    def __len__(self) -> int:
        return self.schedule.steps

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter([[(self.epoch, i) for i in batch] for batch in self.schedule.batches(self.epoch)])


class TrainBatches:
    """This process's ``(inputs, labels)`` batches of each epoch over ``inputs``: gathered from
    the cached views, or loaded and augmented on the fly by ``workers`` DataLoader workers (0:
    in this process, on one thread)."""

    def __init__(self, inputs: Inputs, schedule: EpochSchedule, *, workers: int) -> None:
        self.inputs, self.schedule = inputs, schedule
        self.loader = None
        if inputs.dataset is not None:
            self.loader = DataLoader(inputs.dataset, batch_sampler=KeyBatchSampler(schedule), num_workers=workers,
                                     persistent_workers=workers > 0)

    def __call__(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.loader is None:
            return ((self.inputs.rows(b, epoch), self.inputs.labels[b]) for b in self.schedule.batches(epoch))
        self.loader.batch_sampler.epoch = epoch
        return iter(self.loader) if self.loader.num_workers else one_thread(iter(self.loader))
