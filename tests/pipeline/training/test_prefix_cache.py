"""Cached prefix outputs: the same activations as the prefix on each image, read per view."""

from __future__ import annotations

import numpy as np
import torch

from medxfer.pipeline.models.classifier import build_classifier
from medxfer.pipeline.models.finetune import apply_strategy
from medxfer.pipeline.models.prefix import split_backbone
from medxfer.pipeline.runtime.distributed import Distributed
from medxfer.pipeline.training.execution import Execution
from medxfer.pipeline.training.prefix_cache import Inputs, prefix_outputs
from medxfer.transforms.loading import AugmentedDataset
from medxfer.transforms.pipeline import XrayPipeline
from medxfer.transforms.preparation import InputSpec

CPU = Execution(torch.device("cpu"), Distributed())


def images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.random((40, 36)).astype(np.float32) for _ in range(n)]


def test_prefix_outputs_are_the_prefix_on_each_augmented_view():
    torch.manual_seed(0)
    model = apply_strategy(build_classifier("resnet18", 2, weights="random"), "partial", trainable_stages=2)
    prefix, _ = split_backbone(model, 2)
    pipeline = XrayPipeline(InputSpec(image_size=32), "light")
    pictures = images(10)  # more than one forward batch of 8
    outputs = prefix_outputs(prefix, pictures, pipeline, 1, seed=4, execution=CPU)
    dataset = AugmentedDataset(pictures, None, pipeline, seed=4)
    with torch.no_grad():
        expected = prefix.eval()(torch.stack([dataset[(1, i)] for i in range(10)]))
    torch.testing.assert_close(outputs, expected)
    assert not torch.equal(outputs, prefix_outputs(prefix, pictures, pipeline, 0, seed=4, execution=CPU))


def test_inputs_read_the_epochs_view_or_its_augmentation():
    cached = Inputs(torch.tensor([0, 1, 0]), views=[torch.zeros(3, 2), torch.ones(3, 2)])
    assert len(cached) == 3 and torch.equal(cached.rows([2, 0], epoch=3), torch.ones(2, 2))
    pipeline = XrayPipeline(InputSpec(image_size=32), "light")
    labelled = Inputs(torch.tensor([0, 1]), dataset=AugmentedDataset(images(2), [0, 1], pipeline, seed=1))
    unlabelled = Inputs(None, dataset=AugmentedDataset(images(2), None, pipeline, seed=1))
    assert torch.equal(labelled.rows([1], epoch=2), unlabelled.rows([1], epoch=2))
    assert labelled.rows([0, 1], epoch=2).shape == (2, 3, 32, 32)
