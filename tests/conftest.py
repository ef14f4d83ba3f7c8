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


@pytest.fixture(scope="session")
def run(cohort, tmp_path_factory):
    """A finished two-epoch training run at 32 pixels on ``cohort`` (report with 200 bootstrap
    resamples), shared by the evaluate, predict and export tests; they only read it (export may add
    files under ``exports/``)."""
    from medxfer.pipeline.runs.config import load_config
    from medxfer.pipeline.training.trainer import train

    out = tmp_path_factory.mktemp("trained") / "run"
    config = load_config(None, {"data": str(cohort.manifest), "out": str(out), "validation": "holdout",
                                "image_size": 32, "epochs": 2,
                                "batch_size": 8, "cache_views": 1, "workers": 0, "augment": "light",
                                "bootstrap": 200}).validate(need_data=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDXFER_SALT", "medxfer-tests-salt-0123456789")
        train(config, log=lambda _: None)
    return out
