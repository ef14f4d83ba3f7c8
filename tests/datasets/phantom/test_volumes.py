"""The phantom's NIfTI volumes: shape, LPS affine, 1.5 mm voxels and HU values."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from medxfer.datasets.phantom import CohortSummary


def test_volumes_load_with_intended_shape_and_lps_affine(cohort: CohortSummary) -> None:
    assert len(cohort.volumes) == 2
    for path in cohort.volumes:
        image = nib.load(path)
        hu = image.get_fdata()
        assert path.parent == cohort.root / "volumes"
        assert image.shape == (48, 48, 24)
        assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
        np.testing.assert_allclose(image.header.get_zooms(), (1.5, 1.5, 1.5))
        np.testing.assert_allclose(image.affine @ [23.5, 23.5, 11.5, 1], [0, 0, 0, 1], atol=1e-6)
        assert image.get_data_dtype() == np.int16
        assert -1100 < hu.min() < -900 and hu.max() > 500  # air and bone, in HU via scl_slope
        assert hu[12, 24, 12] < -700 < 0 < hu[24, 36, 12]  # a lung is dark, the spine bright

