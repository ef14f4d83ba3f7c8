"""The DICOM encoding contract: standard decoding (modality LUT, window, polarity) gives the
display image back, for every site of the cohort and every encoding option."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, apply_windowing

from medxfer.datasets.phantom import SITES, CohortSummary, encode_dicom


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

