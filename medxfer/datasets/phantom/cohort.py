"""The cohort: patients spread over sites, their images written as DICOM, a manifest and volumes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medxfer.csvfiles import write_csv
from medxfer.datasets.phantom.encoding import encode_dicom
from medxfer.datasets.phantom.rendering import render_chest
from medxfer.datasets.phantom.sites import LABELS, SITES, SiteProfile
from medxfer.datasets.phantom.volumes import write_volume

_FOLLOW_UP_SAME_LABEL = 0.8  # probability that a follow-up image keeps the patient's label
_IMAGES_PER_PATIENT = ((1, 2, 3), (0.5, 0.3, 0.2))
_PA_PROBABILITY = 0.75
_GIVEN_NAMES = {"F": ("ANNA", "BEA", "CLARA", "DORA", "EVA"), "M": ("ALEX", "BEN", "CARL", "DAN", "ELI")}


@dataclass(frozen=True)
class CohortSummary:
    """What ``generate_cohort`` wrote: counts per label (``LABELS``) and per site name, and paths."""

    root: Path
    manifest: Path
    n_images: int
    n_patients: int
    label_counts: dict[str, int]
    site_counts: dict[str, int]
    volumes: tuple[Path, ...]


def _age_on(birth: dt.date, day: dt.date) -> int:
    """Completed years between ``birth`` and ``day``."""
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def _patient_images(rng: np.random.Generator, base_label: str) -> list[tuple[str, int]]:
    """(label, days after the first study) for each of one patient's 1 to 3 images."""
    counts, weights = _IMAGES_PER_PATIENT
    images = [(base_label, 0)]
    days = 0
    for _ in range(int(rng.choice(counts, p=weights)) - 1):
        days += int(rng.integers(7, 120))
        flip = rng.random() >= _FOLLOW_UP_SAME_LABEL
        images.append((LABELS[1 - LABELS.index(base_label)] if flip else base_label, days))
    return images


def _write_patient(rng: np.random.Generator, out_dir: Path, *, index: int, seed: int, site: SiteProfile,
                   base_label: str, first_image: int) -> list[tuple[str, str, str]]:
    """Render and write one patient's images; returns (relative path, label, patient ID) for each."""
    sex = "F" if rng.random() < 0.5 else "M"
    age = int(rng.integers(18, 91))
    first_study = dt.date(2023, 1, 2) + dt.timedelta(days=int(rng.integers(0, 360)))
    birth = dt.date(first_study.year - age, first_study.month, min(first_study.day, 28))
    birth -= dt.timedelta(days=int(rng.integers(0, 300)))
    patient_id = f"PHX{seed:03d}{index:05d}"
    rows = []
    for number, (label, days) in enumerate(_patient_images(rng, base_label)):
        study = first_study + dt.timedelta(days=days)
        shape = site.image_sizes[int(rng.integers(len(site.image_sizes)))]
        spacing = round(float(rng.uniform(*site.pixel_spacing_mm)), 3)
        bits_stored = site.bits_stored[int(rng.integers(len(site.bits_stored)))]
        image_number = first_image + number
        relative = f"images/{site.name}/img{image_number:05d}.dcm"
        encode_dicom(
            render_chest(rng, label=label, shape=shape, site=site),
            out_dir / relative,
            photometric=site.photometric, modality=site.modality, bits_stored=bits_stored,
            rescale_slope=site.rescale_slope, rescale_intercept=site.rescale_intercept,
            window=site.window, pixel_spacing=(spacing, spacing), spacing_tag=site.spacing_tag,
            patient={
                "PatientName": f"PHANTOM{index:04d}^{_GIVEN_NAMES[sex][index % 5]}",
                "PatientID": patient_id,
                "PatientBirthDate": birth.strftime("%Y%m%d"),
                "AccessionNumber": f"ACC{seed:03d}{image_number:06d}",
                "PatientSex": sex,
                "PatientAge": f"{_age_on(birth, study):03d}Y",
                "ViewPosition": "PA" if rng.random() < _PA_PROBABILITY else "AP",
                "BodyPartExamined": "CHEST",
            },
            extra={
                "InstitutionName": site.institution,
                "Manufacturer": site.manufacturer,
                "StudyDate": study.strftime("%Y%m%d"),
                "StudyTime": "093000",
                "SeriesNumber": number + 1,
            },
        )
        rows.append((relative, label, patient_id))
    return rows


def _site_profiles(names: Sequence[str] | None) -> tuple[SiteProfile, ...]:
    if names is None:
        return SITES
    known = {site.name: site for site in SITES}
    unknown = [name for name in names if name not in known]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"sites must be distinct names from {', '.join(known)}, got {list(names)}")
    return tuple(known[name] for name in names)


def generate_cohort(out_dir: str | Path, *, n_patients: int = 80, seed: int = 0, n_volumes: int = 3,
                    sites: Sequence[str] | None = None) -> CohortSummary:
    """Write a deterministic three-site phantom cohort under ``out_dir`` and summarise it.

    Each patient has one site, a sex, an age (18 to 90 years) and 1 to 3 images (follow-ups keep
    the patient's label with probability 0.8). Labels are balanced across patients and drawn
    independently of site and view. Same ``seed`` gives byte-identical files. Files already under
    ``out_dir`` are overwritten when their names match and left alone otherwise, so write into an
    empty or new folder. Every file is written atomically. ``sites``: names from ``SITES`` that
    patients are spread over in turn (default: all three; ``("site-a", "site-b")`` gives the
    two-site cohort of the demo and the domain-shift notebook).

    Raises ``ValueError`` when ``n_patients`` is below 1, ``n_volumes`` below 0, ``seed``
    negative or a site unknown, and ``TypeError`` when a count is not an integer.
    """
    for name, value, low in (("n_patients", n_patients, 1), ("n_volumes", n_volumes, 0), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an integer, got {value!r}")
        if value < low:
            raise ValueError(f"{name} must be at least {low}, got {value}")
    profiles = _site_profiles(sites)
    root = Path(out_dir)
    seeds = np.random.SeedSequence(seed).spawn(n_patients + n_volumes + 1)
    assign = np.random.default_rng(seeds[0])
    base_labels = assign.permutation(np.arange(n_patients) % len(LABELS))
    site_of = assign.permutation(np.arange(n_patients) % len(profiles))
    rows: list[tuple[str, str, str]] = []
    for index in range(n_patients):
        rows += _write_patient(np.random.default_rng(seeds[1 + index]), root, index=index, seed=seed,
                               site=profiles[site_of[index]], base_label=LABELS[base_labels[index]],
                               first_image=len(rows))
    rows.sort()
    columns = ("path", "label", "patient_id")
    manifest = write_csv(root / "manifest.csv", columns, (dict(zip(columns, row, strict=True)) for row in rows))
    volumes = tuple(
        write_volume(np.random.default_rng(seed_seq), root / "volumes" / f"phantom-chest-{v:02d}.nii.gz")
        for v, seed_seq in enumerate(seeds[1 + n_patients:])
    )
    return CohortSummary(
        root=root,
        manifest=manifest,
        n_images=len(rows),
        n_patients=n_patients,
        label_counts={label: sum(row[1] == label for row in rows) for label in LABELS},
        site_counts={site.name: sum(row[0].startswith(f"images/{site.name}/") for row in rows) for site in profiles},
        volumes=volumes,
    )
