"""The phantom cohort: determinism, atomic writes, the manifest, realistic site variety,
follow-ups, labels independent of site and view, and synthetic identifiers."""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medxfer.datasets.phantom import LABELS, SITES, CohortSummary, generate_cohort


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    generate_cohort(tmp_path / "a", n_patients=10, seed=3, n_volumes=1)
    generate_cohort(tmp_path / "b", n_patients=10, seed=3, n_volumes=1)
    first, second = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert list(first) == list(second)
    assert any(name.endswith(".nii.gz") for name in first) and any(name.endswith(".dcm") for name in first)
    assert [name for name in first if first[name] != second[name]] == []


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medxfer.datasets.phantom import cohort, encoding, volumes

    written: list[Path] = []

    def spy(real: Callable[..., Path]) -> Callable[..., Path]:
        def write(path: Path, *args: object, **kwargs: object) -> Path:
            written.append(Path(path))
            return real(path, *args, **kwargs)
        return write

    for module, name in ((encoding, "atomic_write_bytes"), (volumes, "atomic_write_bytes"), (cohort, "write_csv")):
        monkeypatch.setattr(module, name, spy(getattr(module, name)))
    summary = generate_cohort(tmp_path / "out", n_patients=6, seed=2, n_volumes=1)
    files = sorted(p for p in summary.root.rglob("*") if p.is_file())
    assert [p for p in summary.root.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")] == []
    assert sorted(written) == files  # every DICOM, NIfTI volume and the manifest went through it
    assert summary.manifest in files and summary.volumes[0] in files


def test_nonsensical_arguments_are_a_clear_error(tmp_path: Path) -> None:
    for kwargs, match in (({"n_patients": 0}, "n_patients"), ({"n_patients": -3}, "n_patients"),
                          ({"n_volumes": -1}, "n_volumes"), ({"seed": -1}, "seed")):
        with pytest.raises(ValueError, match=match):
            generate_cohort(tmp_path / "bad", **{"n_patients": 2, "n_volumes": 0, **kwargs})
    with pytest.raises(TypeError, match="n_patients"):
        generate_cohort(tmp_path / "bad", n_patients=2.5)
    assert not (tmp_path / "bad").exists()


def test_different_seed_gives_different_pixels(tmp_path: Path) -> None:
    a = generate_cohort(tmp_path / "a", n_patients=4, seed=0, n_volumes=0)
    b = generate_cohort(tmp_path / "b", n_patients=4, seed=1, n_volumes=0)

    def pixel_hashes(summary: CohortSummary) -> set[str]:
        return {hashlib.sha256(pydicom.dcmread(p).PixelData).hexdigest() for p in summary.root.rglob("*.dcm")}

    assert pixel_hashes(a).isdisjoint(pixel_hashes(b))


def test_manifest_lists_exactly_the_dicom_files_sorted(cohort: CohortSummary, manifest: list[dict[str, str]],
                                                       headers: dict[str, pydicom.Dataset]) -> None:
    paths = [row["path"] for row in manifest]
    assert list(manifest[0]) == ["path", "label", "patient_id"]
    assert paths == sorted(paths) == sorted(headers)
    assert all(re.fullmatch(r"images/site-[a-z]/img\d{5}\.dcm", p) for p in paths)
    assert {p.split("/")[1] for p in paths} == {site.name for site in SITES}
    assert {row["label"] for row in manifest} == set(LABELS)
    assert all(headers[row["path"]].PatientID == row["patient_id"] for row in manifest)
    assert cohort.n_images == len(manifest)
    assert cohort.n_patients == len({row["patient_id"] for row in manifest}) == 80
    assert cohort.label_counts == dict(Counter(row["label"] for row in manifest))
    assert sum(cohort.site_counts.values()) == cohort.n_images
    assert cohort.site_counts == dict(Counter(p.split("/")[1] for p in paths))


def test_cohort_spans_three_sites_with_different_encodings(headers: dict[str, pydicom.Dataset]) -> None:
    values = list(headers.values())
    assert len(SITES) >= 3
    assert {ds.InstitutionName for ds in values} == {site.institution for site in SITES}
    assert len({ds.Manufacturer for ds in values}) >= 3
    assert {ds.PhotometricInterpretation for ds in values} == {"MONOCHROME1", "MONOCHROME2"}
    assert {ds.Modality for ds in values} == {"CR", "DX"}
    assert {int(ds.BitsStored) for ds in values} == {10, 12, 14, 16}  # the "10-16 bit" range, ends included
    assert all(int(ds.HighBit) == int(ds.BitsStored) - 1 for ds in values)
    assert len({(float(ds.RescaleSlope), float(ds.RescaleIntercept)) for ds in values}) >= 3
    assert sum("ImagerPixelSpacing" in ds for ds in values) and sum("PixelSpacing" in ds for ds in values)
    # DX requires Presentation LUT Shape INVERSE with MONOCHROME1 and IDENTITY with MONOCHROME2.
    dx_shapes = {(ds.PhotometricInterpretation, ds.PresentationLUTShape) for ds in values if ds.Modality == "DX"}
    assert dx_shapes == {("MONOCHROME1", "INVERSE"), ("MONOCHROME2", "IDENTITY")}


def test_cohort_has_varied_sizes_and_spacings(headers: dict[str, pydicom.Dataset]) -> None:
    shapes = {(ds.Rows, ds.Columns) for ds in headers.values()}
    spacings = {float((ds.get("PixelSpacing") or ds.ImagerPixelSpacing)[0]) for ds in headers.values()}
    assert len(shapes) >= 4 and any(rows != cols for rows, cols in shapes)
    assert all(192 <= side <= 320 for shape in shapes for side in shape)
    assert len(spacings) >= 10 and all(0.1 <= s <= 0.3 for s in spacings)


def test_patients_have_follow_ups_that_usually_keep_their_label(manifest: list[dict[str, str]]) -> None:
    by_patient: dict[str, list[str]] = defaultdict(list)
    for row in manifest:
        by_patient[row["patient_id"]].append(row["label"])
    follow_ups = [labels for labels in by_patient.values() if len(labels) > 1]
    mixed = [labels for labels in follow_ups if len(set(labels)) > 1]
    assert len(follow_ups) >= 10 and max(len(labels) for labels in follow_ups) == 3
    assert 0 < len(mixed) < len(follow_ups) / 2


def test_labels_are_balanced_and_independent_of_site_and_view(manifest: list[dict[str, str]],
                                                              headers: dict[str, pydicom.Dataset]) -> None:
    opacity = np.array([row["label"] == "opacity" for row in manifest])
    sites = np.array([row["path"].split("/")[1] for row in manifest])
    views = np.array([headers[row["path"]].ViewPosition for row in manifest])
    assert 0.4 <= opacity.mean() <= 0.6
    assert set(views) == {"PA", "AP"}
    for group in (*(sites == s for s in set(sites)), *(views == v for v in set(views))):
        assert 0.3 <= opacity[group].mean() <= 0.7


def test_headers_carry_demographics_and_synthetic_identifiers(headers: dict[str, pydicom.Dataset]) -> None:
    for ds in headers.values():
        assert ds.PatientSex in ("M", "F")
        assert re.fullmatch(r"\d{3}Y", ds.PatientAge) and 18 <= int(ds.PatientAge[:3]) <= 91
        assert re.fullmatch(r"\d{8}", ds.PatientBirthDate) and re.fullmatch(r"\d{8}", ds.StudyDate)
        assert str(ds.PatientName) and ds.PatientID and ds.AccessionNumber
        assert ds.BodyPartExamined == "CHEST" and ds.ViewPosition in ("PA", "AP")
    assert {ds.PatientSex for ds in headers.values()} == {"M", "F"}
    assert len({ds.AccessionNumber for ds in headers.values()}) == len(headers)
    assert len({ds.SOPInstanceUID for ds in headers.values()}) == len(headers)


def test_a_two_site_cohort_holds_only_the_sites_named(tmp_path: Path) -> None:
    summary = generate_cohort(tmp_path / "two", n_patients=12, seed=0, n_volumes=0, sites=("site-a", "site-b"))
    folders = {p.parent.name for p in (summary.root / "images").rglob("*.dcm")}
    assert folders == set(summary.site_counts) == {"site-a", "site-b"}
    assert sum(summary.site_counts.values()) == summary.n_images and min(summary.site_counts.values()) > 0


def test_unknown_or_repeated_sites_are_refused_before_writing(tmp_path: Path) -> None:
    for sites in (("site-a", "site-z"), ("site-a", "site-a"), ()):
        with pytest.raises(ValueError, match="sites must be"):
            generate_cohort(tmp_path / "bad", n_patients=4, n_volumes=0, sites=sites)
    assert not (tmp_path / "bad").exists()

