from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from medxfer.datasets.scan import UnreadableScanError
from medxfer.datasets.sniff import sniff_format


def test_dicom_with_preamble_is_recognised_whatever_its_name(tmp_path):
    target = tmp_path / "scan.jpg"
    target.write_bytes(Path(get_testdata_file("MR_small.dcm")).read_bytes())
    assert sniff_format(target) == "dicom"


def test_png_named_dcm_is_a_png(tmp_path):
    target = tmp_path / "image.dcm"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(target, format="PNG")
    assert sniff_format(target) == "png"


@pytest.mark.parametrize("fmt, name", [("JPEG", "jpeg"), ("TIFF", "tiff")])
def test_jpeg_and_tiff_magic(tmp_path, fmt, name):
    target = tmp_path / "image.bin"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(target, format=fmt)
    assert sniff_format(target) == name


def test_nifti_plain_and_gzipped(tmp_path):
    import nibabel as nib

    image = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4))
    nib.save(image, tmp_path / "a.nii")
    nib.save(image, tmp_path / "b.nii.gz")
    (tmp_path / "c.dat").write_bytes((tmp_path / "b.nii.gz").read_bytes())
    assert [sniff_format(tmp_path / n) for n in ("a.nii", "b.nii.gz", "c.dat")] == ["nifti"] * 3


@pytest.mark.parametrize(
    "content, reason",
    [(b"", "empty file"), (np.random.default_rng(0).bytes(4096), "unrecognised content"),
     (b"patient,label\n1,normal\n", "unrecognised content"), (gzip.compress(b"hello" * 100), "does not contain a NIfTI")],
)
def test_unrecognised_files_are_refused_with_a_reason(tmp_path, content, reason):
    target = tmp_path / "x.dcm"
    target.write_bytes(content)
    with pytest.raises(UnreadableScanError, match=reason) as caught:
        sniff_format(target)
    assert caught.value.path == target


def test_directory_is_refused(tmp_path):
    with pytest.raises(UnreadableScanError, match="is a directory"):
        sniff_format(tmp_path)


def _sniff_within(path, seconds: float = 10.0):
    """sniff_format(path) in a thread: the test fails instead of hanging if it blocks."""
    import threading

    result: list = []

    def run() -> None:
        try:
            result.append(sniff_format(path))
        except UnreadableScanError as exc:
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"sniff_format({path}) blocked"
    return result[0]


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    import os

    fifo = tmp_path / "scan.dcm"
    os.mkfifo(fifo)
    outcome = _sniff_within(fifo)
    assert isinstance(outcome, UnreadableScanError) and "FIFO" in outcome.reason and "not a regular file" in outcome.reason


def test_a_device_is_refused():
    outcome = _sniff_within("/dev/zero")  # would otherwise read as 1024 zero bytes
    assert isinstance(outcome, UnreadableScanError) and "character device" in outcome.reason
