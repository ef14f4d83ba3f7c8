"""Epoch batches: seeded, sliced across processes, and read the same with or without workers."""

from __future__ import annotations

import numpy as np
import torch

from medxfer.pipeline.runtime.distributed import Distributed
from medxfer.pipeline.training.batches import EpochSchedule, KeyBatchSampler, TrainBatches
from medxfer.pipeline.training.prefix_cache import Inputs
from medxfer.transforms.loading import AugmentedDataset
from medxfer.transforms.pipeline import XrayPipeline
from medxfer.transforms.preparation import InputSpec


def schedule(labels: torch.Tensor, batch_size: int = 8, *, balanced: bool = False, rank: int = 0,
             world_size: int = 1) -> EpochSchedule:
    return EpochSchedule(labels, batch_size=batch_size, seed=0, balanced=balanced,
                         dist=Distributed(rank=rank, world_size=world_size))


def test_balanced_sampler_draws_classes_equally_often():
    labels = torch.tensor([0] * 30 + [1] * 6)
    balanced = schedule(labels, 6, balanced=True)
    drawn = torch.tensor([i for epoch in range(20) for batch in balanced.batches(epoch) for i in batch])
    share = (labels[drawn] == 1).float().mean().item()
    assert 0.4 < share < 0.6  # sampled equally often, not 1 in 6


def test_single_process_schedule_covers_each_image_at_most_once_per_epoch():
    one = schedule(torch.tensor([0, 1] * 25))
    batches = one.batches(3)
    flat = [i for batch in batches for i in batch]
    assert len(batches) == 50 // 8 and all(len(b) == 8 for b in batches)
    assert len(set(flat)) == len(flat)
    assert one.batches(3) == batches and one.batches(4) != batches


def test_two_process_slices_are_the_single_process_batches():
    labels = torch.tensor([0, 1] * 25)
    single = schedule(labels, 8)
    ranks = [schedule(labels, 4, rank=r, world_size=2) for r in range(2)]
    for epoch in range(3):
        merged = [a + b for a, b in zip(ranks[0].batches(epoch), ranks[1].batches(epoch))]
        assert merged == single.batches(epoch)


def test_key_batches_carry_the_epoch_with_each_index():
    sampler = KeyBatchSampler(schedule(torch.tensor([0, 1] * 10), 4))
    sampler.epoch = 2
    keys = list(sampler)
    assert len(keys) == len(sampler) == 5
    assert [[i for _, i in batch] for batch in keys] == sampler.schedule.batches(2)
    assert {e for batch in keys for e, _ in batch} == {2}


def test_cached_batches_read_view_epoch_mod_views():
    labels = torch.tensor([0, 1] * 6)
    views = [torch.full((12, 3), float(v)) for v in range(2)]
    batches = TrainBatches(Inputs(labels, views=views), schedule(labels, 4), workers=0)
    for epoch in range(3):
        for (x, y), indices in zip(batches(epoch), batches.schedule.batches(epoch)):
            assert torch.equal(y, labels[indices]) and set(x.flatten().tolist()) == {float(epoch % 2)}


def test_on_the_fly_batches_are_the_same_with_persistent_workers():
    rng = np.random.default_rng(0)
    images = [rng.random((40, 36)).astype(np.float32) for _ in range(8)]
    labels = torch.tensor([0, 1] * 4)
    dataset = AugmentedDataset(images, labels.tolist(), XrayPipeline(InputSpec(image_size=32), "standard"), seed=3)
    serial = TrainBatches(Inputs(labels, dataset=dataset), schedule(labels, 4), workers=0)
    parallel = TrainBatches(Inputs(labels, dataset=dataset), schedule(labels, 4), workers=2)
    for epoch in range(2):
        for (x0, y0), (x2, y2) in zip(serial(epoch), parallel(epoch), strict=True):
            assert torch.equal(x0, x2) and torch.equal(y0, y2)
    first, second = (next(serial(epoch))[0] for epoch in range(2))
    assert not torch.equal(first, second)
