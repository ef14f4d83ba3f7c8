"""Reproducible augmented images: per-image seeds, independent of DataLoader workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from medxfer.datasets.scan import MedxferWarning
from medxfer.transforms.loading import AugmentedDataset, derived_seed
from medxfer.transforms.pipeline import XrayPipeline
from medxfer.transforms.preparation import InputSpec


def images(n: int = 10) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.random((70 + 3 * i, 60)).astype(np.float32) for i in range(n)]


def dataset(preset: str = "standard", n: int = 10, seed: int = 5, **kwargs) -> AugmentedDataset:
    pipeline = XrayPipeline(InputSpec(image_size=96), preset)
    return AugmentedDataset(kwargs.pop("pixels", images(n)), list(range(n)), pipeline, seed=seed)


def batches(data: AugmentedDataset, workers: int, epochs=(0, 1), **kwargs) -> list:
    """Each epoch's batches of 4, read with (epoch, index) keys in an order drawn per epoch."""
    out = []
    for epoch in epochs:
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(epoch)).tolist()
        loader = DataLoader(data, batch_size=4, sampler=[(epoch, i) for i in order], num_workers=workers, **kwargs)
        out.append([(x.clone(), y.clone()) for x, y in loader])
    return out


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b)
    )


def test_identical_batches_for_the_same_seed_with_0_and_2_workers():
    """At the real input size, with the main process multi-threaded and workers single-threaded."""
    pipeline = XrayPipeline(InputSpec(image_size=224), "strong")
    data = AugmentedDataset([np.clip(x * 1.1, 0, 1) for x in images(6)], list(range(6)), pipeline, seed=5)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        serial, parallel = batches(data, 0), batches(data, 2)
    finally:
        torch.set_num_threads(threads)
    for epoch in range(2):
        assert same(serial[epoch], parallel[epoch])


def test_epochs_differ_in_augmentation_and_a_key_repeats_its_draw():
    data = dataset()
    assert not torch.equal(data[(0, 3)][0], data[(1, 3)][0])
    assert torch.equal(data[(1, 3)][0], data[(1, 3)][0])


def test_different_run_seeds_give_different_batches():
    assert not same(batches(dataset(seed=1), 0)[0], batches(dataset(seed=2), 0)[0])


def test_copies_of_one_image_get_different_augmentations_across_workers():
    """The MONAI pitfall: workers that inherit one generator repeat each other's draws."""
    copies = [images(1)[0]] * 8
    data = dataset("standard", n=8, pixels=copies)
    loader = DataLoader(data, batch_size=1, sampler=[(0, i) for i in range(8)], num_workers=2)
    outputs = [x[0] for x, _ in loader]
    assert all(not torch.equal(outputs[i], outputs[j]) for i in range(8) for j in range(i + 1, 8))


def test_plain_index_reads_epoch_zero_and_warns_that_draws_repeat():
    data = dataset()
    with pytest.warns(MedxferWarning, match="every epoch repeats the same augmentation"):
        assert torch.equal(data[4][0], data[(0, 4)][0])


def test_unlabelled_dataset_yields_tensors_only():
    data = AugmentedDataset(images(3), None, XrayPipeline(InputSpec(image_size=32), "none"))
    assert isinstance(data[0], torch.Tensor) and data[0].shape == (3, 32, 32)


def test_a_bad_image_is_named_by_its_index():
    data = AugmentedDataset([images(1)[0], np.zeros((8, 8), np.uint8)], None, XrayPipeline(InputSpec(image_size=32)))
    with pytest.raises(ValueError, match="image 1: expected float pixels"):
        data[(0, 1)]


def test_label_count_must_match():
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        AugmentedDataset(images(3), [0, 1], XrayPipeline())


def test_derived_seeds_are_stable_and_distinct():
    seeds = {derived_seed(s, e, i) for s in range(3) for e in range(3) for i in range(50)}
    assert len(seeds) == 450
    assert derived_seed(0, 0, 1) == derived_seed(0, 0, 1)
    assert all(0 <= s < 2**32 for s in seeds)


class PipelineOnly(torch.utils.data.Dataset):
    """A user's own dataset calling the pipeline without a seed."""

    def __init__(self, pipeline: XrayPipeline, image: np.ndarray) -> None:
        self.pipeline, self.image = pipeline, image

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.pipeline(self.image)


def test_unseeded_pipeline_in_workers_does_not_repeat_draws_across_workers():
    pipeline = XrayPipeline(InputSpec(image_size=32), "strong")
    loader = torch.utils.data.DataLoader(PipelineOnly(pipeline, images(1)[0]), batch_size=1, num_workers=2)
    outputs = [x[0] for x in loader]
    assert all(not torch.equal(outputs[i], outputs[j]) for i in range(4) for j in range(i + 1, 4))


def test_a_negative_run_seed_is_refused_up_front():
    with pytest.raises(ValueError, match="seed must be a whole number >= 0"):
        AugmentedDataset(images(1), None, XrayPipeline(), seed=-1)
