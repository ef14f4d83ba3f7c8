"""From ``Scan.pixels`` in [0, 1] to the tensor an ImageNet-pretrained network takes.

The same steps run in training and in inference: resize keeping the aspect ratio, make the
image square (letterbox padding by default, or a center crop), give it the number of channels
the network's first convolution expects, and normalise with the network's own mean and std.
Squashing a 3:4 film into a square distorts anatomy, so it happens only when asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FITS = ("letterbox", "crop", "squash")
RANGE_TOLERANCE = 1e-4  # pixels may exceed [0, 1] by this much (rounding in a resampled file)


@dataclass(frozen=True)
class InputSpec:
    """What a network expects as input.

    - ``image_size``: side of the square input, pixels (16..2048);
    - ``fit``: how a non-square image becomes square: ``"letterbox"`` (resize so the longer side
      fits, pad the shorter side with black, i.e. air), ``"crop"`` (resize so the shorter side
      fits, keep the center) or ``"squash"`` (resize both sides independently; distorts anatomy);
    - ``channels``: 1, or 3 for a network whose first convolution takes RGB (grayscale is
      replicated; a 2.5D three-slice input keeps its slices as the channels);
    - ``mean``/``std``: per-channel normalisation applied to [0, 1] values, one entry per channel.
    """

    image_size: int = 224
    fit: str = "letterbox"
    channels: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or not 16 <= self.image_size <= 2048:
            raise ValueError(f"image_size must be a whole number of pixels from 16 to 2048, got {self.image_size!r}")
        if self.fit not in FITS:
            raise ValueError(f"unknown fit {self.fit!r}: use one of {', '.join(FITS)}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(
                f"mean and std need one value per channel ({self.channels}), "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if any(not s > 0 for s in self.std):
            raise ValueError(f"std values must be positive, got {self.std}")


def to_channel_first(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(H, W) or (C, H, W) float pixels in [0, 1] as a new float32 (C, H, W) tensor, C 1 or 3.

    Integer arrays (raw 8- or 16-bit values) and values outside [0, 1] are refused: they would
    otherwise be normalised into nonsense without any error.

    A (3, H, W) array is a 2.5D three-slice input (``volume_to_2d(..., "2.5d")``). Any other
    depth is refused: pick a slice or a projection of the volume first.
    """
    array = pixels.numpy() if isinstance(pixels, torch.Tensor) else np.asarray(pixels)
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(
            f"expected float pixels in [0, 1] (Scan.pixels), got {array.dtype}: "
            "read scans with medxfer.datasets.read_scan, or scale the values to [0, 1] first"
        )
    # Checked in NumPy: torch's single-threaded reductions are ten times slower on a full film.
    if array.size and not np.isfinite(array).all():
        raise ValueError("pixels contain NaN or infinite values")
    if array.size and (array.min() < -RANGE_TOLERANCE or array.max() > 1 + RANGE_TOLERANCE):
        raise ValueError(
            f"pixels must lie in [0, 1] (Scan.pixels), got {float(array.min()):g} to {float(array.max()):g}"
        )
    # A new contiguous float32 array, so that no later step can write into the caller's
    # (possibly cached) array, and views with negative strides (np.flipud) work.
    image = torch.from_numpy(np.ascontiguousarray(np.clip(array, 0.0, 1.0), dtype=np.float32))
    if image.ndim == 2:
        image = image.unsqueeze(0)
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(
            f"expected (H, W) pixels or a (3, H, W) 2.5D input, got shape {tuple(image.shape)}; "
            "turn a volume into 2D first (medxfer.datasets.volume_to_2d)"
        )
    if image.shape[1] < 1 or image.shape[2] < 1:
        raise ValueError(f"empty image of shape {tuple(image.shape)}")
    return image


def fitted_size(height: int, width: int, image_size: int, fit: str) -> tuple[int, int]:
    """(height, width) in pixels after the aspect-preserving resize of ``fit`` (before padding or
    cropping to ``image_size`` x ``image_size``)."""
    if fit == "squash":
        return image_size, image_size
    side = max(height, width) if fit == "letterbox" else min(height, width)
    scale = image_size / side
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a (C, H, W) tensor to ``size`` = (height, width).

    Anti-aliased when shrinking: torch's antialiased bilinear filter is the one PIL uses. MONAI's
    ``Resize(anti_aliasing=True)`` would first Gaussian-blur the full-resolution film, which
    costs far more on a 3000-pixel radiograph for the same result.
    """
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image.unsqueeze(0), size=size, mode="bilinear", antialias=True, align_corners=False)[0]


def pad_to_square(image: torch.Tensor, image_size: int) -> torch.Tensor:
    """Center a (C, h, w) image with h, w <= ``image_size`` on a black square (value 0: air)."""
    height, width = image.shape[-2:]
    top, left = (image_size - height) // 2, (image_size - width) // 2
    return F.pad(image, (left, image_size - width - left, top, image_size - height - top), value=0.0)


def center_crop(image: torch.Tensor, image_size: int) -> torch.Tensor:
    """The central ``image_size`` x ``image_size`` part of a (C, H, W) image with H, W >= it."""
    height, width = image.shape[-2:]
    top, left = (height - image_size) // 2, (width - image_size) // 2
    return image[:, top : top + image_size, left : left + image_size]


def to_square(image: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """Pad (letterbox) or crop a resized image to ``spec.image_size`` square."""
    if spec.fit == "letterbox":
        return pad_to_square(image, spec.image_size)
    if spec.fit == "crop":
        return center_crop(image, spec.image_size)
    return image


def to_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """Give a (C, H, W) image the ``channels`` the network takes: grayscale is replicated to 3;
    a three-slice 2.5D input cannot be fed to a single-channel network and is refused."""
    if image.shape[0] == channels:
        return image
    if image.shape[0] == 1:
        return image.expand(channels, -1, -1).contiguous()
    raise ValueError(
        f"a {image.shape[0]}-channel (2.5D) input needs a network with a 3-channel first convolution, "
        f"this one takes {channels}"
    )


def normalise(image: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(image - mean) / std per channel; ``image`` is (C, H, W) with C == len(mean)."""
    mean_t = torch.tensor(mean, dtype=image.dtype).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=image.dtype).view(-1, 1, 1)
    return (image - mean_t) / std_t


def resize_to_fit(pixels: np.ndarray | torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """(C, h, w) tensor in [0, 1]: the scan resized as ``spec.fit`` says, not yet square."""
    image = to_channel_first(pixels)
    return resize(image, fitted_size(image.shape[1], image.shape[2], spec.image_size, spec.fit))


def fit_image(pixels: np.ndarray | torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """(C, S, S) tensor in [0, 1]: the scan resized and made square as ``spec`` says, before
    channels and normalisation (what a person would look at)."""
    return to_square(resize_to_fit(pixels, spec), spec)


def prepare_input(pixels: np.ndarray | torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """The network input for one scan, float32 (``spec.channels``, S, S), S = ``spec.image_size``.

    ``pixels``: (H, W) in [0, 1], or a (3, H, W) 2.5D input. The same function serves training
    (without augmentation) and inference, so both see identical inputs.
    """
    image = fit_image(pixels, spec)
    return normalise(to_channels(image, spec.channels), spec.mean, spec.std)
