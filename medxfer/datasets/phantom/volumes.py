"""Small unlabelled chest CT-like volumes written as gzipped NIfTI (LPS-oriented, 1.5 mm voxels)."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np

from medxfer.datasets.phantom.rendering import superellipse_level
from medxfer.files import atomic_write_bytes


def _volume(rng: np.random.Generator, shape: tuple[int, int, int] = (48, 48, 24)) -> np.ndarray:
    """A small chest CT-like volume in HU (i: right to left, j: anterior to posterior, k: up).

    An elliptic body cylinder of soft tissue (40 HU) in air (-1000 HU), two darker lungs
    (-850 HU) and a bright spine (700 HU) posteriorly, plus 15 HU noise.
    """
    i, j, k = np.meshgrid(*(np.linspace(-1.0, 1.0, n) for n in shape), indexing="ij")
    hu = np.full(shape, -1000.0)
    hu[superellipse_level(i, j, 0.0, 0.0, rng.uniform(0.8, 0.9), rng.uniform(0.6, 0.7)) < 1.0] = 40.0
    for side in (-1.0, 1.0):
        hu[superellipse_level(i, j, side * 0.4, -0.05, 0.3, 0.4) + np.square(k / 1.3) < 1.0] = -850.0
    hu[superellipse_level(i, j, 0.0, 0.5, 0.1, 0.1) < 1.0] = 700.0
    return hu + rng.normal(0.0, 15.0, shape)


def write_volume(rng: np.random.Generator, path: Path) -> Path:
    """Write one phantom volume as gzipped single-file int16 NIfTI with scl_slope 2, scl_inter
    -1024 (HU) and an LPS-oriented affine with 1.5 mm voxels centred on the origin, atomically and
    byte-identically for the same ``rng`` state (the gzip header carries no time or name)."""
    hu = _volume(rng)
    spacing = 1.5
    affine = np.diag([-spacing, -spacing, spacing, 1.0])
    affine[:3, 3] = [spacing * (hu.shape[0] - 1) / 2, spacing * (hu.shape[1] - 1) / 2, -spacing * (hu.shape[2] - 1) / 2]
    raw = np.clip(np.rint((hu + 1024.0) / 2.0), -32768, 32767).astype(np.int16)
    image = nib.Nifti1Image(raw, affine)
    image.header.set_slope_inter(2.0, -1024.0)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return atomic_write_bytes(path, gzip.compress(image.to_bytes(), mtime=0))
