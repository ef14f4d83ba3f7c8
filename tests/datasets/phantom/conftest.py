"""Shared fixtures of the phantom tests: one 80-patient, three-site cohort for the session."""

from __future__ import annotations

import csv

import pydicom
import pytest

from medxfer.datasets.phantom import CohortSummary, generate_cohort


@pytest.fixture(scope="session")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> CohortSummary:
    return generate_cohort(tmp_path_factory.mktemp("cohort"), n_patients=80, seed=0, n_volumes=2)


@pytest.fixture(scope="session")
def headers(cohort: CohortSummary) -> dict[str, pydicom.Dataset]:
    return {
        path.relative_to(cohort.root).as_posix(): pydicom.dcmread(path, stop_before_pixels=True)
        for path in sorted(cohort.root.rglob("*.dcm"))
    }


@pytest.fixture(scope="session")
def manifest(cohort: CohortSummary) -> list[dict[str, str]]:
    with open(cohort.manifest, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))

