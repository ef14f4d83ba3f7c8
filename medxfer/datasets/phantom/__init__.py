"""Phantom cohort: synthetic chest radiographs written as real DICOM files, for the demo and tests.

Everything here is deterministic for a seed and needs no network. ``generate_cohort`` writes a
small multi-site cohort the way hospitals hand one over:

- ``images/<site>/imgNNNNN.dcm``: Part-10 DICOM files, one per radiograph. The three sites differ
  as real ones do (CR vs DX, MONOCHROME1 vs MONOCHROME2, MONOCHROME1 with Presentation LUT Shape
  INVERSE on DX, 10 to 16 stored bits, rescale slope/intercept, ImagerPixelSpacing vs
  PixelSpacing, exposure, gamma, blur, noise, image size), while the label is independent of site
  and view.
- ``manifest.csv``: ``path,label,patient_id`` (path relative to the manifest, sorted).
- ``volumes/*.nii.gz``: small unlabelled 3D NIfTI chest volumes (LPS-oriented, 1.5 mm voxels).

Every file is written atomically (a temporary file in the same folder, then a rename), so a reader
never sees half a file and an interrupted run leaves none.

Modules, by job: ``sites`` (the labels and the three site profiles), ``rendering`` (a radiograph
as a display image), ``encoding`` (a display image as a DICOM file), ``volumes`` (the NIfTI
volumes), ``cohort`` (``generate_cohort``) and ``studies`` (manifests of a domain-shift study
and broken files, built on a cohort).

The label is ``"normal"`` or ``"opacity"`` (patchy brighter blobs confined to the lung fields).
Patient identifiers (name, ID, birth date, accession number) are synthetic but present in every
file, so that the rest of the project can check they never leak into its outputs.
"""

from medxfer.datasets.phantom.cohort import CohortSummary, generate_cohort
from medxfer.datasets.phantom.encoding import encode_dicom
from medxfer.datasets.phantom.rendering import render_chest
from medxfer.datasets.phantom.sites import LABELS, SITES, SiteProfile
from medxfer.datasets.phantom.studies import BROKEN_FILES, SiteStudy, write_broken_files, write_site_study

__all__ = [
    "BROKEN_FILES",
    "LABELS",
    "SITES",
    "CohortSummary",
    "SiteProfile",
    "SiteStudy",
    "encode_dicom",
    "generate_cohort",
    "render_chest",
    "write_broken_files",
    "write_site_study",
]
