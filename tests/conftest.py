"""Shared test set-up: a fixed pseudonym salt, so no test reads or writes the user's own."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def fixed_salt(monkeypatch):
    monkeypatch.setenv("MEDXFER_SALT", "medxfer-tests-salt-0123456789")


@pytest.fixture(scope="session")
def cohort(tmp_path_factory):
    """A small phantom cohort (DICOM radiographs + manifest + NIfTI volumes), built once."""
    from medxfer.datasets import phantom

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDXFER_SALT", "medxfer-tests-salt-0123456789")
        return phantom.generate_cohort(tmp_path_factory.mktemp("cohort"), n_patients=40, seed=1, n_volumes=2)
