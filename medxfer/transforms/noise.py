"""Quantum (photon-counting) noise that mimics a lower dose.

MONAI has Gaussian and Rician noise but nothing signal-dependent, so this is written here.
Model: a display value ``x`` in [0, 1] is read as attenuation on a log scale, so a pixel
receives ``photons * exp(-ATTENUATION * x)`` photons (air, x = 0, receives ``photons``; the
densest value, x = 1, receives 1/50 of that). The detected count is Poisson-distributed and
mapped back through the same log, so noise is strongest in dense regions, as on a real film.
The standard deviation added at value x is about
``1 / (ATTENUATION * sqrt(photons * exp(-ATTENUATION * x)))``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from medxfer.transforms.base import SampledTransform, plain_tensor

ATTENUATION = math.log(50.0)


def quantum_noise(image: torch.Tensor, photons: float, rng: np.random.Generator) -> torch.Tensor:
    """Poisson noise for ``photons`` per pixel in unattenuated areas, drawn from ``rng``;
    ``image`` is (C, H, W) in [0, 1], the result is clipped to [0, 1]."""
    values = plain_tensor(image).clamp(0.0, 1.0).numpy().astype(np.float64)
    expected = photons * np.exp(-ATTENUATION * values)
    counts = np.maximum(rng.poisson(expected), 0.5)  # half a photon: the log of zero counts stays finite
    noisy = -np.log(counts / photons) / ATTENUATION
    return torch.from_numpy(np.clip(noisy, 0.0, 1.0).astype(np.float32))


class RandQuantumNoise(SampledTransform):
    """With probability ``prob``: quantum noise for a photon count log-uniform in
    ``photon_range`` (photons per pixel in unattenuated areas; lower means noisier)."""

    def __init__(self, photon_range: tuple[float, float], prob: float) -> None:
        SampledTransform.__init__(self, prob)
        self.photon_range = photon_range
        self._photons = photon_range[1]
        self._noise_seed = 0

    def randomize(self, data: object = None) -> None:
        super().randomize(None)
        if self._do_transform:
            low, high = np.log(self.photon_range)
            self._photons = float(np.exp(self.R.uniform(low, high)))
            self._noise_seed = int(self.R.randint(2**31))

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        return quantum_noise(image, self._photons, np.random.default_rng(self._noise_seed))
