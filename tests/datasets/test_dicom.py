"""DICOM reading on real files shipped by pydicom and pydicom-data, and on phantom twins."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from fuzzing import assert_fails_cleanly, dicom_with_invalid_patient_id, mutations
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from medxfer.datasets import dicom as dicom_module
from medxfer.datasets import dicom_checks, phantom, read_header, read_scan
from medxfer.datasets.scan import UnreadableScanError


def data(name: str) -> str:
    path = get_testdata_file(name)
    assert path is not None, f"{name} missing: is pydicom-data installed?"
    return path


def region(pixels: np.ndarray, rows: tuple[float, float], cols: tuple[float, float]) -> float:
    h, w = pixels.shape
    return float(pixels[int(rows[0] * h):int(rows[1] * h), int(cols[0] * w):int(cols[1] * w)].mean())


# --- polarity -------------------------------------------------------------------------------

def test_monochrome1_is_inverted_so_bone_is_bright_and_lungs_dark():
    scan = read_scan(data("RG1_UNCR.dcm"))  # Philips CR chest PA, MONOCHROME1
    assert scan.meta["photometric_interpretation"] == "MONOCHROME1"
    assert scan.meta["inverted"] is True
    mediastinum = region(scan.pixels, (0.35, 0.55), (0.45, 0.55))
    right_lung = region(scan.pixels, (0.30, 0.50), (0.20, 0.35))
    left_lung = region(scan.pixels, (0.30, 0.50), (0.65, 0.80))
    assert mediastinum > right_lung + 0.15
    assert mediastinum > left_lung + 0.15


def _monochrome2_twin(ds: pydicom.Dataset) -> pydicom.Dataset:
    """The same image stored the other way round: MONOCHROME2 with the window mirrored."""
    top = 2 ** int(ds.BitsStored) - 1
    twin = ds.copy()
    twin.PixelData = (top - ds.pixel_array.astype(np.int64)).astype(np.uint16).tobytes()
    twin.PhotometricInterpretation = "MONOCHROME2"
    twin.WindowCenter = top - float(ds.WindowCenter) + 1  # mirror of the LINEAR window
    return twin


def test_monochrome1_file_and_its_monochrome2_twin_decode_to_the_same_image(tmp_path):
    ds = pydicom.dcmread(data("RG1_UNCR.dcm"))
    twin_path = tmp_path / "rg1_mono2.dcm"
    _monochrome2_twin(ds).save_as(twin_path)
    original = read_scan(data("RG1_UNCR.dcm")).pixels
    twin = read_scan(twin_path)
    assert twin.meta["inverted"] is False
    np.testing.assert_allclose(twin.pixels, original, atol=1e-6)


def test_monochrome1_with_presentation_lut_inverse_is_inverted_only_once(tmp_path):
    ds = pydicom.dcmread(data("RG1_UNCR.dcm"))
    ds.PresentationLUTShape = "INVERSE"  # what DX requires beside MONOCHROME1: the same inversion
    both = tmp_path / "both.dcm"
    ds.save_as(both)
    np.testing.assert_array_equal(read_scan(both).pixels, read_scan(data("RG1_UNCR.dcm")).pixels)


def test_presentation_lut_inverse_on_monochrome2_inverts(tmp_path):
    ds = pydicom.dcmread(data("RG1_UNCR.dcm"))
    twin = _monochrome2_twin(ds)
    plain, inverse = tmp_path / "plain.dcm", tmp_path / "inverse.dcm"
    twin.save_as(plain)
    twin.PresentationLUTShape = "INVERSE"
    twin.save_as(inverse)
    np.testing.assert_allclose(read_scan(inverse).pixels, 1.0 - read_scan(plain).pixels, atol=1e-6)


@pytest.mark.parametrize("slope, intercept", [(1.0, 0.0), (0.5, -1024.0), (-1.0, 4095.0)])
def test_phantom_monochrome1_and_monochrome2_encodings_decode_to_the_display_image(tmp_path, slope, intercept):
    rng = np.random.default_rng(3)
    display = rng.random((40, 56)).astype(np.float32)
    bits = 12
    for photometric in ("MONOCHROME1", "MONOCHROME2"):
        path = phantom.encode_dicom(
            display, tmp_path / f"{photometric}.dcm", photometric=photometric, bits_stored=bits,
            rescale_slope=slope, rescale_intercept=intercept,
        )
        pixels = read_scan(path).pixels
        np.testing.assert_allclose(pixels, display, atol=1.0 / (2**bits - 1))


# --- modality LUT, VOI LUT and windows --------------------------------------------------------

def test_default_window_is_the_files_first_window():
    scan = read_scan(data("MR_small.dcm"))  # WindowCenter 600, WindowWidth 1600
    ds = pydicom.dcmread(data("MR_small.dcm"))
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    values = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    expected = np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    assert scan.meta["window"].startswith("file window center=600")
    np.testing.assert_allclose(scan.pixels, expected, atol=1e-6)


def test_voi_lut_sequence_is_applied_by_default():
    ds = pydicom.dcmread(data("vlut_04.dcm"))
    lut = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)
    table = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64)
    expected = (lut - table.min()) / (table.max() - table.min())
    scan = read_scan(data("vlut_04.dcm"))
    assert scan.meta["window"] == "file VOI LUT"
    np.testing.assert_allclose(scan.pixels, expected, atol=1e-6)


def test_modality_lut_sequence_is_applied_before_the_window():
    ds = pydicom.dcmread(data("mlut_18.dcm"))
    assert "ModalityLUTSequence" in ds
    values = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    scan = read_scan(data("mlut_18.dcm"), window="minmax")
    np.testing.assert_allclose(scan.pixels, (values - values.min()) / (values.max() - values.min()), atol=1e-6)


def test_window_options_minmax_percentile_and_explicit():
    path = data("RG1_UNCR.dcm")
    ds = pydicom.dcmread(path)
    values = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    minmax = read_scan(path, window="minmax").pixels
    # MONOCHROME1: the lowest stored value is the brightest
    assert minmax.min() == 0.0 and minmax.max() == 1.0
    assert minmax.flat[np.argmin(values)] == 1.0
    percentile = read_scan(path, window="percentile").pixels
    clipped = np.mean((percentile == 0.0) | (percentile == 1.0))
    assert 0.009 <= clipped <= 0.02  # 0.5% each side, plus ties at the limits
    explicit = read_scan(path, window=(20000, 4000))
    assert explicit.meta["window"] == "center=20000 width=4000"
    inside = (values > 18100) & (values < 21900)
    expected = 1.0 - ((values[inside] - 19999.5) / 3999 + 0.5)
    np.testing.assert_allclose(explicit.pixels[inside], expected, atol=1e-5)


def test_file_without_window_falls_back_to_minmax_and_says_so():
    scan = read_scan(data("emri_small.dcm"), frame=0)
    assert "no window" in scan.meta["window"]
    assert scan.pixels.min() == 0.0 and scan.pixels.max() == 1.0


# --- multi-frame, colour and compression -------------------------------------------------------

def test_multiframe_gives_all_frames_or_the_one_asked_for():
    path = data("emri_small.dcm")  # 10 frames, 64 x 64, no window
    every = read_scan(path, window=(500, 1000))
    assert every.pixels.shape == (10, 64, 64) and every.is_volume
    third = read_scan(path, window=(500, 1000), frame=3)
    assert third.pixels.shape == (64, 64)
    np.testing.assert_array_equal(third.pixels, every.pixels[3])
    assert not np.array_equal(every.pixels[3], every.pixels[4])


def test_frame_out_of_range_is_refused_with_the_frame_count():
    with pytest.raises(UnreadableScanError, match="frame 10 requested but the file has 10 frame"):
        read_scan(data("emri_small.dcm"), frame=10)


@pytest.mark.parametrize(
    "compressed, uncompressed",
    [
        ("RG1_J2KR.dcm", "RG1_UNCR.dcm"),  # JPEG 2000 lossless, real CR chest
        ("MR_small_jp2klossless.dcm", "MR_small.dcm"),  # JPEG 2000 lossless
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),  # JPEG-LS lossless
        ("MR_small_RLE.dcm", "MR_small.dcm"),  # RLE lossless
        ("emri_small_RLE.dcm", "emri_small.dcm"),  # RLE, multi-frame
    ],
)
def test_lossless_compressed_and_uncompressed_versions_agree(compressed, uncompressed):
    assert pydicom.dcmread(data(compressed)).file_meta.TransferSyntaxUID.is_compressed
    a = read_scan(data(compressed)).pixels
    b = read_scan(data(uncompressed)).pixels
    np.testing.assert_array_equal(a, b)


def test_lossy_jpeg2000_rg1_is_close_to_the_original():
    lossy = read_scan(data("RG1_J2KI.dcm")).pixels
    original = read_scan(data("RG1_UNCR.dcm")).pixels
    assert np.mean(np.abs(lossy - original)) < 0.01


@pytest.mark.parametrize("name", ["JPEG-LL.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm", "JPGExtended.dcm"])
def test_jpeg_lossless_and_extended_grayscale_decode(name):
    scan = read_scan(data(name))
    assert scan.pixels.ndim == 2 and scan.pixels.std() > 0.05
    assert 0.0 <= scan.pixels.min() and scan.pixels.max() <= 1.0


def test_rgb_baseline_jpeg_and_uncompressed_rgb_give_the_same_gray_image():
    jpeg = read_scan(data("SC_rgb_jpeg_dcmtk.dcm"))  # JPEG baseline, YBR_FULL
    rgb = read_scan(data("SC_rgb.dcm"))
    assert jpeg.pixels.shape == rgb.pixels.shape == (100, 100)
    assert np.mean(np.abs(jpeg.pixels - rgb.pixels)) < 0.02  # lossy
    # SC_rgb's top band is pure red: BT.601 luma 0.299
    assert rgb.pixels[5, 50] == pytest.approx(0.299, abs=1e-3)


def test_ybr_full_is_converted_to_rgb_before_gray():
    ybr = read_scan(data("SC_ybr_full_uncompressed.dcm")).pixels
    rgb = read_scan(data("SC_rgb.dcm")).pixels
    assert np.max(np.abs(ybr - rgb)) < 0.01


def test_palette_color_becomes_gray():
    scan = read_scan(data("OT-PAL-8-face.dcm"))  # also a preamble-less file
    assert scan.meta["photometric_interpretation"] == "PALETTE COLOR"
    assert scan.pixels.ndim == 2 and scan.pixels.std() > 0.05


# --- spacing, metadata, privacy -----------------------------------------------------------------

def test_zero_pixel_spacing_is_treated_as_absent():
    assert pydicom.dcmread(data("RG1_UNCR.dcm")).PixelSpacing == [0, 0]
    assert read_header(data("RG1_UNCR.dcm"))["pixel_spacing"] is None


def test_pixel_spacing_falls_back_to_imager_pixel_spacing(tmp_path):
    display = np.zeros((8, 8), np.float32)
    imager = phantom.encode_dicom(display, tmp_path / "a.dcm", pixel_spacing=(0.15, 0.16), spacing_tag="ImagerPixelSpacing")
    none = phantom.encode_dicom(display, tmp_path / "b.dcm", pixel_spacing=None)
    meta = read_header(imager)
    assert meta["pixel_spacing"] == pytest.approx((0.15, 0.16))
    assert meta["pixel_spacing_tag"] == "ImagerPixelSpacing"
    assert read_header(none)["pixel_spacing"] is None


def test_header_metadata_is_read_and_identifiers_are_not():
    ds = pydicom.dcmread(data("RG1_UNCR.dcm"))
    meta = read_header(data("RG1_UNCR.dcm"))
    assert meta["modality"] == "CR" and meta["view"] == "PA" and meta["sex"] == "F"
    assert meta["manufacturer"] == "Philips" and meta["body_part"] == "CHEST"  # a known vendor's name
    assert meta["bits_stored"] == 15 and meta["photometric_interpretation"] == "MONOCHROME1"
    assert meta["patient_key"].startswith("p") and len(meta["patient_key"]) == 17
    text = repr(meta)
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "AccessionNumber", "InstitutionName"):
        value = str(ds.get(keyword, "")).strip()
        if value:
            assert value not in text, keyword


def test_age_string_becomes_years(tmp_path):
    path = phantom.encode_dicom(np.zeros((4, 4), np.float32), tmp_path / "a.dcm", patient={"PatientAge": "006M"})
    assert read_header(path)["age"] == pytest.approx(0.5)


# --- refusals and broken files ----------------------------------------------------------------

@pytest.mark.parametrize("name, kind", [("test-SR.dcm", "SR"), ("rtstruct.dcm", "RT Structure Set")])
def test_objects_without_pixel_data_are_refused_with_that_reason(name, kind):
    with pytest.raises(UnreadableScanError, match=f"no pixel data: .*{kind}"):
        read_scan(data(name))
    with pytest.raises(UnreadableScanError, match="no pixel data"):
        read_header(data(name))


def test_key_object_selection_document_is_refused(tmp_path):
    path = phantom.encode_dicom(np.zeros((4, 4), np.float32), tmp_path / "kos.dcm")
    ds = pydicom.dcmread(path)
    del ds.PixelData, ds.Rows, ds.Columns
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.KeyObjectSelectionDocumentStorage
    ds.Modality = "KO"
    ds.save_as(path)
    with pytest.raises(UnreadableScanError, match="no pixel data: Key Object Selection Document"):
        read_scan(path)


def test_preambleless_dicom_is_recognised_from_its_content(tmp_path):
    ds = pydicom.dcmread(data("MR_small.dcm"))
    ds.preamble = None
    ds.file_meta = FileMetaDataset()
    raw = tmp_path / "no_preamble.png"  # wrong extension too
    pydicom.dcmwrite(raw, ds, enforce_file_format=False, implicit_vr=False, little_endian=True)
    assert raw.read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(read_scan(raw).pixels, read_scan(data("MR_small.dcm")).pixels)


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "RG1_J2KR.dcm"])
def test_truncated_file_is_refused_by_header_and_full_read(tmp_path, name):
    content = Path(data(name)).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(content[: len(content) // 2])
    with pytest.raises(UnreadableScanError, match="truncated"):
        read_header(cut)
    with pytest.raises(UnreadableScanError, match="truncated"):
        read_scan(cut)


def test_missing_decoder_is_named_with_how_to_install_one(monkeypatch):
    class NoDecoder:
        is_available = False

    monkeypatch.setattr(dicom_checks, "get_decoder", lambda syntax: NoDecoder())
    with pytest.raises(UnreadableScanError, match="JPEG 2000.*no decoder is installed.*pip install"):
        read_header(data("RG1_J2KR.dcm"))


def test_corrupt_rle_stream_is_refused_with_a_reason_not_a_crash(tmp_path):
    content = bytearray(Path(data("MR_small_RLE.dcm")).read_bytes())
    start = len(content) - 3000
    content[start:start + 1000] = b"\x00" * 1000  # makes the RLE decoder panic
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(bytes(content))
    read_header(broken)  # the header is fine: only decoding finds it
    with pytest.raises(UnreadableScanError, match="pixel data cannot be decoded"):
        read_scan(broken)


def test_undecodable_jpeg_gives_a_one_line_reason():
    with pytest.raises(UnreadableScanError) as caught:
        read_scan(data("JPEG-lossy.dcm"))  # 12-bit extended JPEG that no installed plugin decodes
    assert "pixel data cannot be decoded" in caught.value.reason
    assert "\n" not in caught.value.reason


def test_enhanced_multiframe_rescale_and_window_come_from_functional_groups():
    path = data("eCT_Supplemental.dcm")  # enhanced CT: intercept -1024, window 49/102 in shared groups
    ds = pydicom.dcmread(path)
    assert "RescaleIntercept" not in ds and "WindowCenter" not in ds
    scan = read_scan(path)
    assert scan.meta["window"].startswith("file window center=49 width=102")
    assert scan.meta["pixel_spacing"] == pytest.approx((0.388672, 0.388672))
    hounsfield = ds.pixel_array.astype(np.float64) - 1024.0
    explicit = read_scan(path, window=(40, 400)).pixels
    np.testing.assert_allclose(explicit, np.clip((hounsfield - 39.5) / 399 + 0.5, 0, 1), atol=1e-6)
    np.testing.assert_allclose(scan.pixels, np.clip((hounsfield - 48.5) / 101 + 0.5, 0, 1), atol=1e-6)
    np.testing.assert_array_equal(read_scan(path, frame=1).pixels, scan.pixels[1])


def test_ybr_full_422_uncompressed_passes_the_length_check():
    path = data("SC_ybr_full_422_uncompressed.dcm")  # 2 bytes per pixel, not 3
    assert read_header(path)["photometric_interpretation"] == "YBR_FULL_422"
    ybr = read_scan(path).pixels
    assert np.mean(np.abs(ybr - read_scan(data("SC_rgb.dcm")).pixels)) < 0.02


def test_dicomdir_is_refused_naming_its_sop_class():
    dicomdir = next(p for p in (Path(data("MR_small.dcm")).parent / "dicomdirtests").rglob("DICOMDIR"))
    with pytest.raises(UnreadableScanError, match="no pixel data: Media Storage Directory Storage"):
        read_header(dicomdir)


def test_invalid_identifier_values_do_not_leak_through_pydicom_warnings(tmp_path, recwarn):
    path = dicom_with_invalid_patient_id(tmp_path / "a.dcm")
    read_header(path)
    read_scan(path)
    assert not any("MRN12345" in str(w.message) for w in recwarn)


def test_malformed_files_only_ever_raise_unreadable_scan_error(tmp_path, recwarn):
    for seed, name in enumerate(["MR_small.dcm", "MR_small_jp2klossless.dcm", "emri_small_RLE.dcm"]):
        raw = Path(data(name)).read_bytes()
        variants = [v[:128] + b"DICM" + v[132:] for v in mutations(raw, seed, count=40)]  # keep the magic
        assert_fails_cleanly([read_header, read_scan], tmp_path / "fuzz.dcm", variants, name)


def _enhanced_with_per_frame_values(tmp_path, photometric="MONOCHROME2"):
    """eCT_Supplemental with its shared rescale and window replaced by different per-frame ones."""
    from pydicom.dataset import Dataset

    ds = pydicom.dcmread(data("eCT_Supplemental.dcm"))
    shared = ds.SharedFunctionalGroupsSequence[0]
    del shared.PixelValueTransformationSequence, shared.FrameVOILUTSequence
    for group, (slope, intercept, center, width) in zip(
        ds.PerFrameFunctionalGroupsSequence, [(1, -1024, 40, 80), (2, -2048, 300, 1500)], strict=True
    ):
        rescale, voi = Dataset(), Dataset()
        rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = slope, intercept, "HU"
        voi.WindowCenter, voi.WindowWidth = center, width
        group.PixelValueTransformationSequence = [rescale]
        group.FrameVOILUTSequence = [voi]
    ds.PhotometricInterpretation = photometric
    path = tmp_path / f"enhanced_{photometric}.dcm"
    ds.save_as(path)
    return path, ds.pixel_array.astype(np.float64)


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_enhanced_frames_each_get_their_own_rescale_and_window(tmp_path, photometric):
    path, stored = _enhanced_with_per_frame_values(tmp_path, photometric)
    expected = np.stack([
        np.clip((stored[0] - 1024 - 39.5) / 79 + 0.5, 0, 1),
        np.clip((2 * stored[1] - 2048 - 299.5) / 1499 + 0.5, 0, 1),
    ])
    if photometric == "MONOCHROME1":
        expected = 1.0 - expected
    scan = read_scan(path)
    np.testing.assert_allclose(scan.pixels, expected, atol=1e-6)
    assert "per frame" in scan.meta["window"]
    for k in (0, 1):
        np.testing.assert_array_equal(read_scan(path, frame=k).pixels, scan.pixels[k])


def test_reading_an_enhanced_object_does_not_modify_the_dataset(tmp_path):
    path, _ = _enhanced_with_per_frame_values(tmp_path)
    ds = pydicom.dcmread(path)
    before = {k: k in ds for k in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "PixelSpacing")}
    dicom_module.dicom_meta(ds)
    dicom_module.frame_view(ds, 1)
    assert {k: k in ds for k in before} == before == {k: False for k in before}


def test_pydicom_log_records_do_not_carry_identifiers(tmp_path, caplog):
    path = dicom_with_invalid_patient_id(tmp_path / "a.dcm")
    with caplog.at_level("DEBUG"):
        read_header(path)
        read_scan(path)
    assert "MRN12345" not in caplog.text


def test_warnings_raised_as_errors_do_not_put_their_text_in_the_reason(tmp_path, monkeypatch):
    path = phantom.encode_dicom(np.zeros((4, 4), np.float32), tmp_path / "a.dcm")

    def warn_with_identifier(*args, **kwargs):
        raise UserWarning("Invalid value for VR IS: 'MRN12345'")  # what -W error turns a warning into

    monkeypatch.setattr(dicom_module, "dicom_meta", warn_with_identifier)
    with pytest.raises(UnreadableScanError) as caught:
        read_header(path)
    assert "MRN12345" not in str(caught.value) and "UserWarning" in caught.value.reason
