"""The whole path from scan pixels to network input, with training augmentation when asked for.

Order of the steps (each augmentation runs with its own probability):

1. resize keeping the aspect ratio (``InputSpec.fit``);
2. display and exposure: window jitter, CLAHE, gamma, contrast, brightness, histogram shift;
3. detector and dose: blur, sharpening, Gaussian noise, quantum noise;
4. pad or crop to the square input (steps 2-3 come first so the letterbox border stays black,
   as it is at inference);
5. positioning: isotropic affine, random resized crop, horizontal flip (only if asked for);
6. coarse dropout;
7. clip to [0, 1], give the channels the network takes, normalise with its mean and std.

Augmentation is reproducible per image: ``pipeline(pixels, seed=s)`` gives the same tensor for
the same ``s`` in any process and with any number of threads, which is how
``AugmentedDataset`` makes batches independent of the number of DataLoader workers.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from monai.transforms import (
    Compose,
    RandCoarseDropout,
    RandFlip,
    RandGaussianNoise,
    RandGaussianSmooth,
    RandShiftIntensity,
)

from medxfer.transforms.base import plain_tensor
from medxfer.transforms.detector import RandUnsharpMask
from medxfer.transforms.display import RandCLAHE, RandContrast, RandGamma, RandHistogramShift, RandWindowJitter
from medxfer.transforms.geometry import RandIsotropicAffine, RandResizedCrop
from medxfer.transforms.noise import RandQuantumNoise
from medxfer.transforms.preparation import InputSpec, normalise, resize_to_fit, to_channels, to_square
from medxfer.transforms.presets import PRESETS, AugmentParams, augmentation


def _exposure_steps(p: AugmentParams) -> list:
    return [
        RandWindowJitter(p.window_center, p.window_width, prob=p.window_prob),
        RandCLAHE(p.clahe_clip, prob=p.clahe_prob),
        RandGamma(p.gamma, prob=p.gamma_prob),
        RandContrast(p.contrast, prob=p.contrast_prob),
        RandShiftIntensity(offsets=p.brightness, prob=p.brightness_prob),
        RandHistogramShift(p.histogram_points, p.histogram_shift, prob=p.histogram_prob),
    ]


def _detector_steps(p: AugmentParams) -> list:
    return [
        RandGaussianSmooth(sigma_x=p.blur_sigma, sigma_y=p.blur_sigma, prob=p.blur_prob),
        RandUnsharpMask(p.sharpen_sigma, p.sharpen_amount, prob=p.sharpen_prob),
        RandGaussianNoise(prob=p.noise_prob, mean=0.0, std=p.noise_std),
        RandQuantumNoise(p.quantum_photons, prob=p.quantum_prob),
    ]


def _positioning_steps(p: AugmentParams, image_size: int) -> list:
    return [
        RandIsotropicAffine(p.rotation, p.scale, p.translation, prob=p.affine_prob),
        RandResizedCrop(p.crop_area, p.crop_aspect, prob=p.crop_prob),
        RandFlip(prob=p.hflip_prob, spatial_axis=1),  # axis 1 of (H, W): left-right
        RandCoarseDropout(
            holes=p.dropout_holes, spatial_size=max(1, round(p.dropout_size * image_size)),
            fill_value=0.0, prob=p.dropout_prob,
        ),
    ]


class XrayPipeline:
    """Scan pixels (H, W) in [0, 1], or a (3, H, W) 2.5D input, to a network input tensor
    (``spec.channels``, S, S), augmented by ``augment`` (parameters or a preset name).

    With preset ``none`` the output is exactly ``prepare_input(pixels, spec)``.
    """

    def __init__(self, spec: InputSpec | None = None, augment: AugmentParams | str = "none") -> None:
        self.spec = spec if spec is not None else InputSpec()
        self.augment = augment if isinstance(augment, AugmentParams) else augmentation(augment)
        p = self.augment
        before = [*_exposure_steps(p), *_detector_steps(p)]
        after = _positioning_steps(p, self.spec.image_size)
        self._before_square, self._after_square = Compose(before), Compose(after)
        # One generator shared by every step, re-seeded per image: the steps draw from it in a
        # fixed order, so a seed fixes every draw. (MONAI's Compose.set_random_state would build
        # a new generator for each of the 14 steps, a third of the cost of a light preset.)
        self._rng = np.random.RandomState()
        self._rng_pid = os.getpid()
        for step in (*before, *after):
            step.set_random_state(state=self._rng)

    @property
    def augments(self) -> bool:
        """False when the pipeline only prepares the input (preset ``none``)."""
        return not self.augment.is_identity

    def display(self, pixels: np.ndarray | torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        """The augmented image as a person would see it: (C, S, S) in [0, 1], before channel
        replication and normalisation. ``seed`` fixes every random draw (same seed, same
        image); ``None`` continues the pipeline's own random stream."""
        spec = self.spec
        image = resize_to_fit(pixels, spec)
        if not self.augments:
            return to_square(image, spec)
        if seed is not None:
            self._rng.seed(int(seed) % 2**32)
        elif os.getpid() != self._rng_pid:
            # A DataLoader worker got a copy of the parent's generator; without re-seeding every
            # worker would repeat the others' draws. torch seeds each worker differently.
            self._rng.seed(torch.initial_seed() % 2**32)
            self._rng_pid = os.getpid()
        image = plain_tensor(self._before_square(image)).clamp(0.0, 1.0)
        image = plain_tensor(self._after_square(to_square(image, spec))).clamp(0.0, 1.0)
        if not torch.isfinite(image).all():  # a safety net: no step should ever produce this
            raise RuntimeError(f"augmentation produced non-finite values ({self!r}, seed {seed})")
        return image.contiguous()

    def __call__(self, pixels: np.ndarray | torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        """The network input (``spec.channels``, S, S), float32, normalised."""
        image = self.display(pixels, seed=seed)
        return normalise(to_channels(image, self.spec.channels), self.spec.mean, self.spec.std)

    def __repr__(self) -> str:
        name = next((k for k, v in PRESETS.items() if v == self.augment), "custom")
        return f"XrayPipeline(spec={self.spec}, augment={name})"
