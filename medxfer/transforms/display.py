"""Display processing that differs between sites: the window a film is read at, gamma, contrast,
intensity curves and CLAHE.

Each random transform draws its parameters, then calls a deterministic function. MONAI has no
window jitter (its ``ScaleIntensityRange``, used here, is the fixed window) and no CLAHE;
scikit-image's ``equalize_adapthist`` is the maintained CLAHE.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.transforms import ScaleIntensityRange
from skimage.exposure import equalize_adapthist

from medxfer.transforms.base import SampledTransform, plain_tensor


def window(image: torch.Tensor, center: float, width: float) -> torch.Tensor:
    """Re-window a [0, 1] display image: values in [center - width/2, center + width/2] map
    linearly to [0, 1], values outside are clipped. (0.5, 1.0) leaves the image unchanged."""
    transform = ScaleIntensityRange(
        a_min=center - width / 2, a_max=center + width / 2, b_min=0.0, b_max=1.0, clip=True
    )
    return plain_tensor(transform(image))


class RandWindowJitter(SampledTransform):
    """With probability ``prob``: re-window with the center moved uniformly by up to
    +-``center_shift`` and the width multiplied by a factor log-uniform in
    [1 / (1 + ``width_change``), 1 + ``width_change``]."""

    def __init__(self, center_shift: float, width_change: float, prob: float) -> None:
        SampledTransform.__init__(self, prob)
        self.center_shift, self.width_change = center_shift, width_change
        self._center, self._width = 0.5, 1.0

    def randomize(self, data: object = None) -> None:
        super().randomize(None)
        if self._do_transform:
            self._center = 0.5 + self.R.uniform(-self.center_shift, self.center_shift)
            spread = math.log1p(self.width_change)
            self._width = math.exp(self.R.uniform(-spread, spread))

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        return window(image, self._center, self._width)


def clahe(image: torch.Tensor, clip_limit: float) -> torch.Tensor:
    """Contrast-limited adaptive histogram equalisation of each channel of a (C, H, W) image in
    [0, 1], tiles of 1/8 of the image side, ``clip_limit`` in (0, 1] (higher: more contrast).

    Like scikit-image, each channel is first stretched to its own full range. A flat channel,
    which scikit-image would turn white, is returned unchanged.
    """
    channels = plain_tensor(image).clamp(0.0, 1.0).numpy()
    out = np.stack([
        equalize_adapthist(c, clip_limit=clip_limit) if np.ptp(c) > 1e-6 else c for c in channels
    ]).astype(np.float32)
    return torch.from_numpy(out)


class RandCLAHE(SampledTransform):
    """With probability ``prob``: CLAHE with a clip limit uniform in ``clip_range``."""

    def __init__(self, clip_range: tuple[float, float], prob: float) -> None:
        SampledTransform.__init__(self, prob)
        self.clip_range = clip_range
        self._clip = clip_range[0]

    def randomize(self, data: object = None) -> None:
        super().randomize(None)
        if self._do_transform:
            self._clip = self.R.uniform(*self.clip_range)

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        return clahe(image, self._clip)


def contrast(image: torch.Tensor, factor: float) -> torch.Tensor:
    """Scale deviations from the image mean by ``factor`` (1: unchanged), keeping the mean.

    Written here rather than taken from MONAI's ``RandScaleIntensityFixedMean``: torch's mean
    depends on the number of threads, which made DataLoader workers (one thread each) and the
    main process give different results; NumPy's float64 mean does not.
    """
    values = plain_tensor(image)
    mean = float(np.mean(values.numpy(), dtype=np.float64))
    return (values - mean) * factor + mean


class RandContrast(SampledTransform):
    """With probability ``prob``: ``contrast`` with a factor uniform in 1 +- ``spread``."""

    def __init__(self, spread: float, prob: float) -> None:
        SampledTransform.__init__(self, prob)
        self.spread = spread
        self._factor = 1.0

    def randomize(self, data: object = None) -> None:
        super().randomize(None)
        if self._do_transform:
            self._factor = 1.0 + self.R.uniform(-self.spread, self.spread)

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        return contrast(image, self._factor)


def gamma_curve(image: torch.Tensor, gamma: float) -> torch.Tensor:
    """Apply ``gamma`` between the image's own minimum and maximum (1: unchanged; above 1
    darkens the mid-tones): ``((x - min) / range) ** gamma * range + min``.

    Written here rather than taken from MONAI's ``RandAdjustContrast`` (same formula, same draw):
    torch's ``pow`` rounds the last bit differently in its vectorised and scalar loops, and where
    the loops split depends on the number of threads, so DataLoader workers (one thread each) and
    the main process gave different images. NumPy in float64, rounded to float32, does not.
    """
    values = plain_tensor(image).numpy().astype(np.float64)
    low = values.min()
    spread = values.max() - low
    out = ((values - low) / (spread + 1e-7)) ** gamma * spread + low
    return torch.from_numpy(out.astype(np.float32))


class RandGamma(SampledTransform):
    """With probability ``prob``: ``gamma_curve`` with a gamma uniform in ``gamma_range``."""

    def __init__(self, gamma_range: tuple[float, float], prob: float) -> None:
        SampledTransform.__init__(self, prob)
        self.gamma_range = gamma_range
        self._gamma = 1.0

    def randomize(self, data: object = None) -> None:
        super().randomize(None)
        if self._do_transform:
            self._gamma = self.R.uniform(*self.gamma_range)

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        return gamma_curve(image, self._gamma)


def intensity_curve(image: torch.Tensor, targets: np.ndarray) -> torch.Tensor:
    """Map [0, 1] values through the piecewise-linear curve through (i / n, targets[i]) for
    n + 1 = len(targets) evenly spaced control points; ``targets`` must be non-decreasing."""
    values = plain_tensor(image)
    knots = np.linspace(0.0, 1.0, len(targets))
    out = np.interp(values.numpy().ravel(), knots, targets).astype(np.float32)
    return torch.from_numpy(out.reshape(values.shape))


class RandHistogramShift(SampledTransform):
    """With probability ``prob``: a monotone intensity curve through ``points`` evenly spaced
    control points on the [0, 1] display scale, each moved by up to +-``shift``.

    Written here rather than taken from MONAI's ``RandHistogramShift``, whose control points
    span the image's own minimum to maximum (a flat image divides 0 by 0 and gives NaN) and
    move freely in between, which often erases the contrast of a whole band of intensities.
    """

    def __init__(self, points: int, shift: float, prob: float) -> None:
        SampledTransform.__init__(self, prob)
        self.points, self.shift = points, shift
        self._targets = np.linspace(0.0, 1.0, points)

    def randomize(self, data: object = None) -> None:
        super().randomize(None)
        if self._do_transform:
            knots = np.linspace(0.0, 1.0, self.points)
            moved = np.clip(knots + self.R.uniform(-self.shift, self.shift, self.points), 0.0, 1.0)
            self._targets = np.maximum.accumulate(moved)  # keep the curve monotone

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        return intensity_curve(image, self._targets)
