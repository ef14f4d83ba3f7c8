"""The pixel budget: a file that would decode to more pixels or voxels than allowed is refused
from its header (or its compressed frames' own headers), before anything large is allocated."""

from __future__ import annotations

import gzip
import tracemalloc

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from medxfer.datasets import budget, phantom
from medxfer.datasets.codestream import j2k_size, jpeg_size
from medxfer.datasets.reader import read_header, read_scan
from medxfer.datasets.scan import UnreadableScanError


def zeros_nifti(path, shape) -> None:
    """A NIfTI of zeros: megabytes of voxels gzip to a few kilobytes."""
    nib.save(nib.Nifti1Image(np.zeros(shape, np.uint8), np.eye(4)), path)


def test_a_small_gzip_nifti_that_decodes_huge_is_refused_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.nii.gz"
    zeros_nifti(bomb, (256, 256, 128))  # 8.4 M voxels (67 MB as float64), about 10 kB on disk
    assert bomb.stat().st_size < 100_000
    tracemalloc.start()
    for read in (read_scan, read_header):
        with pytest.raises(UnreadableScanError, match=r"256 x 256 x 128 voxels = 8,388,608 values, over the pixel "
                                                      r"budget of 1,000,000"):
            read(bomb, max_pixels=1_000_000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5_000_000  # nothing near the decoded size was allocated
    assert read_scan(bomb, max_pixels=10_000_000).pixels.shape == (128, 256, 256)


def test_nifti_read_from_its_content_decompresses_only_what_its_header_needs(tmp_path):
    image = tmp_path / "image.nii.gz"
    zeros_nifti(image, (8, 8, 4))
    # gzip content under a name nibabel does not know, followed by 20 MB of zeros in the same stream
    odd = tmp_path / "odd-name"
    odd.write_bytes(gzip.compress(gzip.decompress(image.read_bytes()) + bytes(20_000_000)))
    tracemalloc.start()
    scan = read_scan(odd, max_pixels=1000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert scan.pixels.shape == (4, 8, 8) and peak < 5_000_000
    with pytest.raises(UnreadableScanError, match="pixel budget of 100"):
        read_scan(odd, max_pixels=100)


def test_a_dicom_whose_size_tags_exceed_the_budget_is_refused_from_its_header(tmp_path):
    path = phantom.encode_dicom(np.zeros((3, 40, 50), np.float32), tmp_path / "frames.dcm")
    for read in (read_scan, read_header):
        with pytest.raises(UnreadableScanError, match=r"3 frame\(s\) of 40 x 50 pixels = 6,000 values"):
            read(path, max_pixels=5999)
    assert read_scan(path, max_pixels=6000).pixels.shape == (3, 40, 50)
    assert read_scan(path, frame=1, max_pixels=2000).pixels.shape == (40, 50)  # one frame is counted alone


@pytest.mark.parametrize("name", ["JPGLosslessP14SV1_1s_1f_8b.dcm", "MR_small_jp2klossless.dcm",
                                  "MR_small_jpeg_ls_lossless.dcm"])
def test_a_compressed_frame_larger_than_its_size_tags_is_refused_before_decoding(tmp_path, name):
    ds = pydicom.dcmread(get_testdata_file(name))
    rows, columns = int(ds.Rows), int(ds.Columns)
    ds.Rows, ds.Columns = 4, 4  # the header now claims 16 pixels; the codestream still holds them all
    path = tmp_path / "lying.dcm"
    ds.save_as(path)
    with pytest.raises(UnreadableScanError, match="sizes declared by its compressed frames"):
        read_scan(path, max_pixels=rows * columns - 1)


@pytest.mark.parametrize(("name", "parse"), [("JPGLosslessP14SV1_1s_1f_8b.dcm", jpeg_size),
                                             ("SC_rgb_jpeg_dcmtk.dcm", jpeg_size),
                                             ("MR_small_jpeg_ls_lossless.dcm", jpeg_size),
                                             ("JPEG2000.dcm", j2k_size), ("MR_small_jp2klossless.dcm", j2k_size)])
def test_codestream_sizes_match_the_size_tags_of_real_files(name, parse):
    ds = pydicom.dcmread(get_testdata_file(name))
    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    assert parse(frame) == (int(ds.Rows), int(ds.Columns), int(ds.SamplesPerPixel))
    assert parse(b"not a codestream") is None


def test_a_png_over_the_budget_is_refused_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    Image.new("L", (300, 200)).save(path)
    with pytest.raises(UnreadableScanError, match="300 x 200 pixels = 60,000 values"):
        read_scan(path, max_pixels=59_999)
    with pytest.raises(UnreadableScanError, match="pixel budget"):
        read_header(path, max_pixels=59_999)


def test_the_budget_comes_from_the_environment_unless_given(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("L", (100, 100)).save(path)
    monkeypatch.setenv(budget.BUDGET_ENV, "9_999")
    with pytest.raises(UnreadableScanError, match="budget of 9,999"):
        read_scan(path)
    assert read_scan(path, max_pixels=10_000).pixels.shape == (100, 100)
    monkeypatch.setenv(budget.BUDGET_ENV, "lots")
    with pytest.raises(ValueError, match="MEDXFER_MAX_PIXELS must be a whole number"):
        read_scan(path)
    monkeypatch.delenv(budget.BUDGET_ENV)
    assert budget.max_pixels() == budget.DEFAULT_MAX_PIXELS == 2**27
    with pytest.raises(ValueError, match="1 or more"):
        budget.max_pixels(0)


def test_bytes_before_the_start_of_frame_cannot_hide_a_frame_s_size(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))  # 100 x 100 x 3, JPEG baseline
    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    at = next(i for i in range(2, len(frame) - 1) if frame[i] == 0xFF and frame[i + 1] == 0xC0)
    padded = frame[:at] + b"\x00" + frame[at:]  # an extraneous byte, as libjpeg tolerates
    assert jpeg_size(padded) == (100, 100, 3)
    ds.PixelData = pydicom.encaps.encapsulate([padded])
    ds.Rows = ds.Columns = 10
    path = tmp_path / "hidden.dcm"
    ds.save_as(path)
    with pytest.raises(UnreadableScanError, match="sizes declared by its compressed frames"):
        read_scan(path, max_pixels=20_000)
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 64])  # no frame header at all
    ds.save_as(path)
    with pytest.raises(UnreadableScanError, match="declares no image size"):
        read_scan(path)


def test_a_deflated_dicom_that_inflates_beyond_the_budget_is_refused_before_inflating(tmp_path):
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    path = phantom.encode_dicom(np.zeros((8, 8), np.float32), tmp_path / "small.dcm")
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    assert read_header(path)["rows"] == 8 and read_scan(path).pixels.shape == (8, 8)  # read, not "truncated"
    ds.add_new(0x00091010, "OB", bytes(40_000_000))  # a private element of zeros: 40 MB in 40 kB
    bomb = tmp_path / "bomb.dcm"
    ds.save_as(bomb, enforce_file_format=True)
    assert bomb.stat().st_size < 200_000
    tracemalloc.start()
    for read in (read_header, read_scan):
        with pytest.raises(UnreadableScanError, match="deflated data expand beyond"):
            read(bomb, max_pixels=1000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 10_000_000
