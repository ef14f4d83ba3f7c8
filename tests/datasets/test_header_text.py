"""Free-text header values (site, manufacturer, view, modality, body part) never reach metadata
as written: sites and unknown vendors become pseudonymous keys, the rest defined terms or "other";
error reasons do not quote header values."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataelem import DataElement

from medxfer.datasets import header_text, phantom
from medxfer.datasets.reader import read_header, read_scan
from medxfer.datasets.scan import UnreadableScanError

NAME = "JANE DOE"


def dicom_naming_someone(path):
    """A phantom DICOM whose free-text fields all hold a person's name."""
    return phantom.encode_dicom(
        np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8), path,
        patient={"ViewPosition": f"AP {NAME}", "BodyPartExamined": NAME},
        extra={"InstitutionName": f"Practice of Dr {NAME}", "Manufacturer": NAME})


def test_no_free_text_header_value_reaches_the_metadata(tmp_path):
    path = dicom_naming_someone(tmp_path / "a.dcm")
    for meta in (read_header(path), read_scan(path).meta):
        text = repr(meta).upper()
        assert "JANE" not in text and "DOE" not in text
        assert meta["view"] == "AP" and meta["body_part"] == "other"
        assert meta["site"].startswith("site-") and meta["manufacturer"].startswith("vendor-")


def test_sites_and_unknown_vendors_keep_one_key_each():
    assert header_text.site_key("Northbrook General") == header_text.site_key(" northbrook  general ")
    assert header_text.site_key("Northbrook General") != header_text.site_key("Riverside Clinic")
    assert header_text.site_key("") is None and header_text.manufacturer(None) is None
    assert header_text.manufacturer("Acme Rays") == header_text.manufacturer("ACME RAYS") != \
        header_text.manufacturer("Other Co")


@pytest.mark.parametrize(("written", "shown"), [
    ("SIEMENS", "Siemens"), ("GE MEDICAL SYSTEMS", "GE"), ("GE Healthcare", "GE"), ("GE", "GE"),
    ("Philips Medical Systems", "Philips"), ("FUJIFILM Corporation", "Fujifilm"), ("Agfa", "Agfa"),
    ("CANON_MEC", "Canon"), ("Carestream Health", "Carestream"), ("KONICA MINOLTA", "Konica Minolta"),
])
def test_known_vendors_get_their_name(written, shown):
    assert header_text.manufacturer(written) == shown


def test_geoffrey_is_not_ge():
    assert header_text.manufacturer("Geoffrey Smith").startswith("vendor-")


@pytest.mark.parametrize(("value", "view"), [("PA", "PA"), ("ap", "AP"), ("AP SUPINE", "AP"), ("LATERAL", "LATERAL"),
                                             ("J.SMITH", "other"), ("  ", None), (None, None)])
def test_view_position_is_a_defined_term_or_other(value, view):
    assert header_text.view_position(value) == view


def test_modality_and_photometric_are_defined_terms_or_other():
    assert header_text.modality("DX") == "DX" and header_text.modality(NAME) == "other"
    assert header_text.photometric("MONOCHROME1") == "MONOCHROME1" and header_text.photometric(NAME) == "other"


def test_a_malformed_transfer_syntax_is_not_quoted_in_the_reason(tmp_path):
    path = dicom_naming_someone(tmp_path / "a.dcm")
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = NAME
    ds.save_as(path, enforce_file_format=False)
    with pytest.raises(UnreadableScanError) as caught:
        read_scan(path)
    assert "JANE" not in str(caught.value) and "not a UID" in caught.value.reason


def test_a_malformed_header_value_is_not_quoted_in_the_reason(tmp_path):
    path = dicom_naming_someone(tmp_path / "a.dcm")
    ds = pydicom.dcmread(path)
    ds["BitsStored"] = DataElement(0x00280101, "LO", NAME)  # a number that is text
    with pydicom.config.disable_value_validation():
        ds.save_as(path)
    assert read_header(path)["bits_stored"] is None  # unknown, not an error quoting it
    with pytest.raises(UnreadableScanError) as caught:
        read_scan(path)
    assert "JANE" not in str(caught.value) and "TypeError" in caught.value.reason
