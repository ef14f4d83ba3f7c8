"""The shared base of medxfer's random transforms."""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor

from medxfer.transforms.base import SampledTransform, plain_tensor


def test_plain_tensor_strips_the_meta_tensor_subclass():
    data = torch.arange(6.0).reshape(1, 2, 3)
    out = plain_tensor(MetaTensor(data))
    assert type(out) is torch.Tensor
    torch.testing.assert_close(out, data)


def test_plain_tensor_converts_a_numpy_array():
    array = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    out = plain_tensor(array)
    assert type(out) is torch.Tensor
    np.testing.assert_array_equal(out.numpy(), array)


class AddDrawnOffset(SampledTransform):
    """A test transform: adds a number drawn in ``randomize``."""

    def randomize(self, data: object = None) -> None:
        super().randomize(None)
        self.offset = float(self.R.uniform(1, 2))

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        return image + self.offset


def test_a_sampled_transform_acts_with_its_probability_and_reuses_its_last_draw():
    image = torch.zeros(1, 2, 2)
    never, always = AddDrawnOffset(prob=0.0), AddDrawnOffset(prob=1.0)
    never.set_random_state(0)
    always.set_random_state(0)
    assert all(never(image) is image for _ in range(5))
    first = always(image)
    assert 1 <= float(first[0, 0, 0]) <= 2
    assert torch.equal(always(image, randomize=False), first)
    assert not torch.equal(always(image), first)
