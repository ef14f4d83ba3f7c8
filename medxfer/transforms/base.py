"""What every medxfer random transform shares: MONAI's draw-then-apply pattern, plain tensors."""

from __future__ import annotations

import torch
from monai.transforms import RandomizableTransform


def plain_tensor(image: torch.Tensor) -> torch.Tensor:
    """``image`` as a plain ``torch.Tensor`` (MONAI transforms return its ``MetaTensor`` subclass)."""
    return image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)


class SampledTransform(RandomizableTransform):
    """A random transform in MONAI's style: ``randomize`` decides, with probability ``prob``,
    whether to act and draws the parameters from the transform's own generator ``self.R``;
    ``apply`` then calls a deterministic function with the drawn values. A call that does not
    act returns the image unchanged."""

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, image: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        if randomize:
            self.randomize()
        if not self._do_transform:
            return image
        return self.apply(image)
