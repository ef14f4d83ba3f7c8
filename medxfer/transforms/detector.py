"""Detector post-processing: unsharp-mask sharpening, as CR and DR systems apply to films.

MONAI's ``RandGaussianSharpen`` first blurs with one Gaussian and subtracts a second one that is
never wider than the first, so at moderate weights it blurs; the unsharp mask here adds back the
detail a single Gaussian removes, using MONAI's ``GaussianSmooth`` for that Gaussian.
"""

from __future__ import annotations

import torch
from monai.transforms import GaussianSmooth

from medxfer.transforms.base import SampledTransform, plain_tensor


def unsharp_mask(image: torch.Tensor, sigma: float, amount: float) -> torch.Tensor:
    """``image + amount * (image - gaussian(image, sigma))`` for a (C, H, W) image; ``sigma`` in
    pixels, ``amount`` >= 0 (0: unchanged). Values may leave [0, 1]; the pipeline clips."""
    values = plain_tensor(image)
    blurred = plain_tensor(GaussianSmooth(sigma=sigma)(values))
    return values + amount * (values - blurred)


class RandUnsharpMask(SampledTransform):
    """With probability ``prob``: ``unsharp_mask`` with sigma uniform in ``sigma_range`` pixels
    and amount uniform in ``amount_range``."""

    def __init__(self, sigma_range: tuple[float, float], amount_range: tuple[float, float], prob: float) -> None:
        SampledTransform.__init__(self, prob)
        self.sigma_range, self.amount_range = sigma_range, amount_range
        self._sigma, self._amount = sigma_range[0], 0.0

    def randomize(self, data: object = None) -> None:
        super().randomize(None)
        if self._do_transform:
            self._sigma = self.R.uniform(*self.sigma_range)
            self._amount = self.R.uniform(*self.amount_range)

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        return unsharp_mask(image, self._sigma, self._amount)
