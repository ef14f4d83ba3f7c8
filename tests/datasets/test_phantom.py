"""The phantom cohort: determinism, realistic site variety, the DICOM encoding contract, a learnable
label, and the NIfTI volumes."""

from __future__ import annotations

import csv
import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, apply_windowing
from sklearn.metrics import roc_auc_score

from medxfer.datasets.phantom import (
    BROKEN_FILES,
    LABELS,
    SITES,
    CohortSummary,
    encode_dicom,
    generate_cohort,
    render_chest,
    write_broken_files,
    write_site_study,
)

SHAPE = (256, 256)  # rendered size for the image-statistics tests; 128 px per anatomical unit
# Regions in pixels of a SHAPE image (anatomical x, y in [-1, 1], y down, heart to the image right).
LUNG_ROWS = slice(57, 147)  # y in [-0.55, 0.15]
LUNG_COLS = np.r_[57:96, 160:198]  # |x| in [0.25, 0.55]
ABDOMEN = (slice(204, 230), slice(100, 156))  # below the diaphragm, y in [0.6, 0.8]
HEART_ROWS = slice(141, 166)  # y in [0.1, 0.3]
HEART_SIDE, OTHER_SIDE = slice(147, 173), slice(83, 109)  # x in [0.15, 0.35] and its mirror


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> CohortSummary:
    return generate_cohort(tmp_path_factory.mktemp("cohort"), n_patients=80, seed=0, n_volumes=2)


@pytest.fixture(scope="module")
def headers(cohort: CohortSummary) -> dict[str, pydicom.Dataset]:
    return {
        path.relative_to(cohort.root).as_posix(): pydicom.dcmread(path, stop_before_pixels=True)
        for path in sorted(cohort.root.rglob("*.dcm"))
    }


@pytest.fixture(scope="module")
def manifest(cohort: CohortSummary) -> list[dict[str, str]]:
    with open(cohort.manifest, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _decode(path: Path) -> np.ndarray:
    """The DICOM display pipeline with pydicom: modality LUT, window scaled to [0, 1], polarity."""
    ds = pydicom.dcmread(path)
    values = apply_modality_lut(ds.pixel_array, ds)
    low, high = apply_windowing(np.array([-1e12, 1e12]), ds)  # the window's output range
    unit = (apply_windowing(values, ds) - low) / (high - low)
    inverse = ds.PhotometricInterpretation == "MONOCHROME1" or ds.get("PresentationLUTShape") == "INVERSE"
    return 1.0 - unit if inverse else unit


def _display(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A test display image: a smooth ramp plus noise, with exact 0 and 1 pixels."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, shape[-1], dtype=np.float32)
    image = np.clip(np.broadcast_to(ramp, shape) + rng.normal(0, 0.05, shape), 0, 1).astype(np.float32)
    image[..., 0, 0], image[..., 0, 1] = 0.0, 1.0
    return image


def _auroc_of(statistic: Callable[[np.ndarray], float], n_images: int = 100, seed: int = 7) -> float:
    """AUROC of ``statistic`` for the opacity label over rendered images from every site."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n_images) // 2 % 2  # labels in pairs, sites cycling across them
    images = [render_chest(rng, label=LABELS[y], shape=SHAPE, site=SITES[i % len(SITES)])
              for i, y in enumerate(labels)]
    scores = np.array([statistic(image) for image in images])
    return float(roc_auc_score(labels, scores))


# --------------------------------------------------------------------------- determinism


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    generate_cohort(tmp_path / "a", n_patients=10, seed=3, n_volumes=1)
    generate_cohort(tmp_path / "b", n_patients=10, seed=3, n_volumes=1)
    first, second = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert list(first) == list(second)
    assert any(name.endswith(".nii.gz") for name in first) and any(name.endswith(".dcm") for name in first)
    assert [name for name in first if first[name] != second[name]] == []


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medxfer.datasets import phantom

    written: list[Path] = []

    def spy(real: Callable[..., Path]) -> Callable[..., Path]:
        def write(path: Path, *args: object, **kwargs: object) -> Path:
            written.append(Path(path))
            return real(path, *args, **kwargs)
        return write

    for name in ("atomic_write_bytes", "write_csv"):
        monkeypatch.setattr(phantom, name, spy(getattr(phantom, name)))
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


# --------------------------------------------------------------------------- cohort layout and variety


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


def test_every_site_decodes_with_air_dark_and_uses_its_bit_depth(cohort: CohortSummary,
                                                                 headers: dict[str, pydicom.Dataset]) -> None:
    for site in SITES:
        names = [name for name in headers if name.startswith(f"images/{site.name}/")]
        assert {int(headers[name].BitsStored) for name in names} == set(site.bits_stored)
        for name in names[:3]:
            ds = pydicom.dcmread(cohort.root / name)
            assert ds.pixel_array.max() <= 2 ** int(ds.BitsStored) - 1
            image = _decode(cohort.root / name)
            rows, cols = image.shape
            air, body = image[:8, :8].mean(), image[rows // 2:, cols // 3: -cols // 3].mean()
            assert air < 0.3 and body > air + 0.2  # air in the corner dark, the lower trunk brighter


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


# --------------------------------------------------------------------------- encode_dicom contract


@pytest.mark.parametrize(
    ("photometric", "bits", "slope", "intercept"),
    [
        ("MONOCHROME2", 12, 1.0, 0.0),
        ("MONOCHROME1", 12, 1.0, 0.0),
        ("MONOCHROME2", 14, 0.5, -1024.0),
        ("MONOCHROME1", 10, -2.0, 1000.0),
        ("MONOCHROME2", 16, 1.0, -32768.0),
    ],
)
def test_encoding_decodes_back_to_display_with_full_range_window(
    tmp_path: Path, photometric: str, bits: int, slope: float, intercept: float
) -> None:
    display = _display((40, 52))
    path = encode_dicom(display, tmp_path / "x.dcm", photometric=photometric, bits_stored=bits,
                        rescale_slope=slope, rescale_intercept=intercept)
    ds = pydicom.dcmread(path)
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, bits, bits - 1, 0)
    assert ds.pixel_array.max() <= 2**bits - 1
    np.testing.assert_allclose(_decode(path), display, atol=1.0 / (2**bits - 1) + 1e-6)


def test_monochrome1_stores_bright_pixels_low(tmp_path: Path) -> None:
    display = _display((30, 30))
    mono1 = pydicom.dcmread(encode_dicom(display, tmp_path / "m1.dcm", photometric="MONOCHROME1")).pixel_array
    mono2 = pydicom.dcmread(encode_dicom(display, tmp_path / "m2.dcm", photometric="MONOCHROME2")).pixel_array
    bright = display > 0.9
    assert mono1[bright].max() < mono2[bright].min()
    np.testing.assert_allclose(_decode(tmp_path / "m1.dcm"), _decode(tmp_path / "m2.dcm"), atol=2 / 4095)


def test_explicit_window_is_honoured_and_clipped_values_stay_clipped(tmp_path: Path) -> None:
    display = _display((30, 40))
    path = encode_dicom(display, tmp_path / "w.dcm", bits_stored=12, window=(1500.0, 1001.0))
    ds = pydicom.dcmread(path)
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (1500.0, 1001.0)
    assert 999 <= ds.pixel_array.min() and ds.pixel_array.max() <= 2000  # the window's span only
    decoded = _decode(path)
    np.testing.assert_allclose(decoded, display, atol=1.0 / 1000 + 1e-6)
    assert decoded[display == 0].max() == 0.0 and decoded[display == 1].min() == 1.0


def test_presentation_lut_inverse_inverts_once(tmp_path: Path) -> None:
    display = _display((20, 24))
    path = encode_dicom(display, tmp_path / "inv.dcm", modality="DX", presentation_lut_shape="INVERSE")
    ds = pydicom.dcmread(path)
    assert ds.PresentationLUTShape == "INVERSE" and ds.PhotometricInterpretation == "MONOCHROME2"
    np.testing.assert_allclose(_decode(path), display, atol=1.0 / 4095 + 1e-6)


def test_multi_frame_input_writes_frames(tmp_path: Path) -> None:
    display = _display((3, 32, 40))
    path = encode_dicom(display, tmp_path / "mf.dcm", rescale_slope=0.5, rescale_intercept=-1024.0, bits_stored=14)
    ds = pydicom.dcmread(path)
    assert int(ds.NumberOfFrames) == 3 and ds.pixel_array.shape == (3, 32, 40)
    np.testing.assert_allclose(_decode(path), display, atol=1.0 / (2**14 - 1) + 1e-6)


def test_files_are_part10_with_sop_class_for_modality(tmp_path: Path) -> None:
    display = _display((16, 16))
    for modality, sop_class in (("CR", "1.2.840.10008.5.1.4.1.1.1"), ("DX", "1.2.840.10008.5.1.4.1.1.1.1")):
        path = encode_dicom(display, tmp_path / f"{modality}.dcm", modality=modality,
                            pixel_spacing=(0.15, 0.16), spacing_tag="ImagerPixelSpacing",
                            patient={"PatientID": "P-1"}, extra={"InstitutionName": "Test Clinic"})
        raw = path.read_bytes()
        assert raw[:128] == b"\x00" * 128 and raw[128:132] == b"DICM"
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == sop_class
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
        assert [float(v) for v in ds.ImagerPixelSpacing] == [0.15, 0.16] and "PixelSpacing" not in ds
        assert ds.PatientID == "P-1" and ds.InstitutionName == "Test Clinic"
        assert ds.PatientName and ds.PatientBirthDate and ds.AccessionNumber  # synthetic defaults
        assert ds.RescaleType == "US"
        assert ds.get("PresentationLUTShape") == {"CR": None, "DX": "IDENTITY"}[modality]


# --------------------------------------------------------------------------- rendering


def test_render_chest_gives_unit_float_image_of_requested_shape() -> None:
    image = render_chest(np.random.default_rng(0), label="opacity", shape=(200, 288), site=SITES[1])
    assert image.dtype == np.float32 and image.shape == (200, 288)
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0.1
    with pytest.raises(ValueError, match="label"):
        render_chest(np.random.default_rng(0), label="effusion", shape=(64, 64), site=SITES[0])


def test_rendered_anatomy_has_dark_lungs_and_heart_to_the_image_right() -> None:
    rng = np.random.default_rng(11)
    for index in range(6):
        image = render_chest(rng, label="normal", shape=SHAPE, site=SITES[index % len(SITES)])
        assert image[LUNG_ROWS][:, LUNG_COLS].mean() < image[ABDOMEN].mean() - 0.1
        assert image[HEART_ROWS, HEART_SIDE].mean() > image[HEART_ROWS, OTHER_SIDE].mean() + 0.05
        assert image[:8, :8].mean() < 0.3  # air in the corner is dark


def test_opacity_label_is_learnable_from_lung_brightness() -> None:
    def lung_over_abdomen(image: np.ndarray) -> float:
        return float(image[LUNG_ROWS][:, LUNG_COLS].mean() - image[ABDOMEN].mean())

    assert _auroc_of(lung_over_abdomen) > 0.85


def test_global_brightness_alone_does_not_give_the_label_away() -> None:
    assert 0.3 < _auroc_of(lambda image: float(image.mean())) < 0.75


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
