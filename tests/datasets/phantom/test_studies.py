"""Files built on a cohort: a domain-shift study's manifests and broken files to mix in."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from medxfer.datasets.phantom import BROKEN_FILES, CohortSummary, generate_cohort, write_broken_files, write_site_study


def test_a_site_study_gives_every_target_patient_one_role(tmp_path: Path) -> None:
    cohort = generate_cohort(tmp_path / "c", n_patients=30, seed=4, n_volumes=0, sites=("site-a", "site-b"))
    study = write_site_study(cohort, seed=1)

    def rows(path: Path) -> list[dict[str, str]]:
        with open(path, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))

    with open(cohort.manifest, newline="", encoding="utf-8") as handle:
        patient_of = {row["path"]: row["patient_id"] for row in csv.DictReader(handle)}
    source, unlabelled, test = rows(study.source), rows(study.target_unlabelled), rows(study.target_test)
    assert all(row["path"].startswith("images/site-a/") for row in source) and len(source) == study.n_source
    assert list(unlabelled[0]) == ["path"] and len(unlabelled) == study.n_target_unlabelled
    assert {"label", "patient_id"} <= set(test[0]) and len(test) == study.n_target_test
    adapt_patients = {patient_of[row["path"]] for row in unlabelled}
    test_patients = {row["patient_id"] for row in test}
    assert adapt_patients and test_patients and adapt_patients.isdisjoint(test_patients)
    assert len(unlabelled) + len(test) == cohort.site_counts["site-b"]
    with pytest.raises(ValueError, match="no scans of 'site-c'"):
        write_site_study(cohort, target="site-c")


def test_broken_files_are_each_unreadable_with_a_reason(tmp_path: Path, cohort: CohortSummary) -> None:
    from medxfer.datasets.reader import read_scan
    from medxfer.datasets.scan import UnreadableScanError

    written = write_broken_files(tmp_path, next(cohort.root.rglob("*.dcm")))
    assert sorted(p.name for p in written) == sorted(BROKEN_FILES)
    for path in written:
        with pytest.raises(UnreadableScanError) as caught:
            read_scan(path)
        assert caught.value.reason

