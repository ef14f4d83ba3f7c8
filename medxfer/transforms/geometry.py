"""Positioning changes: a small rotation, isotropic zoom and shift, and a conservative random
resized crop. Each random transform draws its parameters, then calls a deterministic function.

Written here rather than taken from MONAI's ``RandAffine`` because that draws the zoom of each
axis separately, which changes the aspect ratio of the anatomy, and because MONAI has no
area-and-aspect random resized crop.
"""

from __future__ import annotations

import math

import torch
from monai.transforms import Affine
from torchvision.transforms.v2 import functional as TF

from medxfer.transforms.base import SampledTransform, plain_tensor


def affine(image: torch.Tensor, angle: float, zoom: float, shift: tuple[float, float]) -> torch.Tensor:
    """Rotate a (C, H, W) image by ``angle`` degrees about its center (positive: clockwise as
    displayed, row 0 at the top), enlarge its content by ``zoom`` (the same factor on both axes;
    below 1 shrinks it) and move it by ``shift`` = (down, right) fractions of its height and
    width. Shape is kept; areas moved in from outside are black (air)."""
    height, width = image.shape[-2:]
    # MONAI's parameters describe where each output pixel is read from in the input, i.e. the
    # inverse mapping: the shift is negated and the zoom inverted to move the content as stated.
    transform = Affine(
        rotate_params=math.radians(angle),
        scale_params=(1.0 / zoom, 1.0 / zoom),
        translate_params=(-shift[0] * height, -shift[1] * width),
        padding_mode="zeros",
        image_only=True,
    )
    return plain_tensor(transform(image))


class RandIsotropicAffine(SampledTransform):
    """With probability ``prob``: rotation uniform in +-``rotation`` degrees, zoom uniform in
    [1 - ``scale``, 1 + ``scale``], shift uniform in +-``translation`` of each side."""

    def __init__(self, rotation: float, scale: float, translation: float, prob: float) -> None:
        SampledTransform.__init__(self, prob)
        self.rotation, self.scale, self.translation = rotation, scale, translation
        self._angle, self._zoom, self._shift = 0.0, 1.0, (0.0, 0.0)

    def randomize(self, data: object = None) -> None:
        super().randomize(None)
        if self._do_transform:
            self._angle = self.R.uniform(-self.rotation, self.rotation)
            self._zoom = self.R.uniform(1.0 - self.scale, 1.0 + self.scale)
            self._shift = tuple(self.R.uniform(-self.translation, self.translation, size=2))

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        return affine(image, self._angle, self._zoom, self._shift)


def resized_crop(image: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    """Crop ``box`` = (top, left, height, width) in pixels from a (C, H, W) image and resize it
    back to (H, W) with antialiased bilinear interpolation."""
    height, width = image.shape[-2:]
    return TF.resized_crop(plain_tensor(image), *box, size=[height, width], antialias=True)


class RandResizedCrop(SampledTransform):
    """With probability ``prob``: keep a random part of the image covering a fraction of its
    area uniform in [``min_area``, 1] with an aspect ratio (width / height, in pixels)
    log-uniform in [1 / ``max_aspect``, ``max_aspect``], resized back to the full size.

    A draw whose crop would not fit in the image is redrawn, up to ``ATTEMPTS`` times, then the
    image is left whole (as torchvision does). torchvision's ``RandomResizedCrop`` draws from
    torch's global generator; drawing from this transform's own generator keeps every image's
    augmentation tied to its own seed.
    """

    ATTEMPTS = 10

    def __init__(self, min_area: float, max_aspect: float, prob: float) -> None:
        SampledTransform.__init__(self, prob)
        self.min_area, self.max_aspect = min_area, max_aspect
        # Candidate draws: area fraction, log aspect ratio, relative top, relative left.
        self._draws: list[tuple[float, float, float, float]] = []

    def randomize(self, data: object = None) -> None:
        super().randomize(None)
        if self._do_transform:
            log_aspect = math.log(self.max_aspect)
            self._draws = [
                (
                    self.R.uniform(self.min_area, 1.0),
                    self.R.uniform(-log_aspect, log_aspect),
                    self.R.uniform(),
                    self.R.uniform(),
                )
                for _ in range(self.ATTEMPTS)
            ]

    def box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """The drawn crop as (top, left, height, width) for an image of the given size: the first
        candidate draw that fits, else the whole image."""
        for area, log_aspect, rel_top, rel_left in self._draws:
            aspect = math.exp(log_aspect)
            crop_h = round(math.sqrt(area * height * width / aspect))
            crop_w = round(math.sqrt(area * height * width * aspect))
            if 1 <= crop_h <= height and 1 <= crop_w <= width:
                return round(rel_top * (height - crop_h)), round(rel_left * (width - crop_w)), crop_h, crop_w
        return 0, 0, height, width

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        return resized_crop(image, self.box(*image.shape[-2:]))
