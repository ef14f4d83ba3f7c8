"""Files built on a cohort: the manifests of a domain-shift study, and broken files to mix in."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medxfer.csvfiles import write_csv
from medxfer.datasets.phantom.cohort import CohortSummary
from medxfer.files import atomic_write_bytes


@dataclass(frozen=True)
class SiteStudy:
    """The manifests of a domain-shift study on a cohort, written beside its ``manifest.csv``.

    ``source``: every labelled scan of the source site (to train on; ``medxfer train`` splits it
    by patient). ``target_unlabelled``: the target site's scans of one share of its patients,
    ``path`` only (what ``target_data`` takes for AdaBN or DANN). ``target_test``: the labelled
    scans of the target site's other patients, never seen during adaptation (for
    ``medxfer evaluate``). Counts are images.
    """

    source: Path
    target_unlabelled: Path
    target_test: Path
    n_source: int
    n_target_unlabelled: int
    n_target_test: int


def write_site_study(cohort: CohortSummary, *, source: str = "site-a", target: str = "site-b",
                     adapt_fraction: float = 0.5, seed: int = 0) -> SiteStudy:
    """Split a cohort into a source site and a target site whose patients are divided, at random
    (``seed``), into ``adapt_fraction`` of them for unlabelled adaptation and the rest for testing,
    so that no patient is in two roles. Writes ``manifest-<source>.csv``,
    ``manifest-<target>-unlabelled.csv`` and ``manifest-<target>-test.csv`` beside the cohort's
    manifest (atomically). Raises ``ValueError`` for a site without scans or a fraction that
    leaves either role without patients."""
    from sklearn.model_selection import GroupShuffleSplit

    with open(cohort.manifest, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    by_site = {name: [row for row in rows if row["path"].startswith(f"images/{name}/")] for name in (source, target)}
    for name, site_rows in by_site.items():
        if not site_rows:
            raise ValueError(f"{cohort.manifest}: no scans of {name!r} (sites here: {', '.join(cohort.site_counts)})")
    target_rows = by_site[target]
    patients = np.array([row["patient_id"] for row in target_rows])
    if not 0.0 < adapt_fraction < 1.0 or len(set(patients)) < 2:
        raise ValueError(f"adapt_fraction must be between 0 and 1 and {target!r} needs at least 2 patients, "
                         f"got {adapt_fraction} and {len(set(patients))}")
    splitter = GroupShuffleSplit(n_splits=1, train_size=adapt_fraction, random_state=seed)
    adapt, test = next(splitter.split(np.zeros(len(patients)), groups=patients))
    labelled = ("path", "label", "patient_id")
    root = cohort.manifest.parent
    return SiteStudy(
        source=write_csv(root / f"manifest-{source}.csv", labelled, by_site[source], ignore_extra=True),
        target_unlabelled=write_csv(root / f"manifest-{target}-unlabelled.csv", ("path",),
                                           [target_rows[i] for i in sorted(adapt)], ignore_extra=True),
        target_test=write_csv(root / f"manifest-{target}-test.csv", labelled,
                                     [target_rows[i] for i in sorted(test)], ignore_extra=True),
        n_source=len(by_site[source]),
        n_target_unlabelled=len(adapt),
        n_target_test=len(test),
    )


BROKEN_FILES = {
    "empty.dcm": "an empty file",
    "truncated.dcm": "a DICOM file cut off after 500 bytes",
    "random.dcm": "3,000 random bytes named like a DICOM file",
    "notes.txt": "a text file",
}


def write_broken_files(folder: str | Path, sample: str | Path, *, seed: int = 0) -> list[Path]:
    """Write the files of ``BROKEN_FILES`` into ``folder``, the truncated one cut from the DICOM
    file ``sample``; what a PACS export mixes in among good scans. Returns their paths."""
    folder, sample = Path(folder), Path(sample)
    content = {
        "empty.dcm": b"",
        "truncated.dcm": sample.read_bytes()[:500],
        "random.dcm": np.random.default_rng(seed).bytes(3000),
        "notes.txt": b"not an image at all\n",
    }
    return [atomic_write_bytes(folder / name, data) for name, data in content.items()]
