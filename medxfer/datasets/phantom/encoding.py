"""Writing a display image as a Part-10 DICOM file with a chosen encoding (bits, rescale, window,
photometric interpretation, pixel spacing), so that decoding it by the standard gives it back."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from medxfer.files import atomic_write_bytes

_SOP_CLASSES = {"CR": ComputedRadiographyImageStorage, "DX": DigitalXRayImageStorageForPresentation}
_SPACING_TAGS = ("PixelSpacing", "ImagerPixelSpacing")
_DEFAULT_PATIENT = {
    "PatientName": "PHANTOM^ANONYMOUS",
    "PatientID": "PHX-DEFAULT",
    "PatientBirthDate": "19800101",
    "AccessionNumber": "ACC-DEFAULT",
    "PatientSex": "O",
    "PatientAge": "044Y",
    "ViewPosition": "PA",
    "BodyPartExamined": "CHEST",
}
_DEFAULT_STUDY = {"StudyDate": "20240115", "StudyTime": "093000"}


def _ds_number(value: float) -> tuple[str, float]:
    """A DS string (at most 16 characters) for ``value`` and the number it actually means."""
    text = format_number_as_ds(float(value))
    return text, float(text)


def _full_range_window(slope: float, intercept: float, bits_stored: int) -> tuple[float, float]:
    """LINEAR (center, width) mapping the rescaled values of stored 0 and 2**bits-1 onto 0 and 1."""
    ends = (intercept, (2**bits_stored - 1) * slope + intercept)
    v_min, v_max = min(ends), max(ends)
    return (v_min + v_max) / 2.0 + 0.5, v_max - v_min + 1.0


def _stored_values(target: np.ndarray, *, slope: float, intercept: float, bits_stored: int,
                   center: float, width: float) -> np.ndarray:
    """Stored uint16 values whose modality LUT then LINEAR window (to [0, 1]) give ``target``.

    Targets of 0 and 1 are rounded outwards, onto or past the window's edges, so that they decode
    to exactly 0 and 1 (saturated) rather than to one quantisation step inside.
    """
    rescaled = (target.astype(np.float64) - 0.5) * (width - 1.0) + (center - 0.5)
    raw = (rescaled - intercept) / slope
    stored = np.rint(raw)
    down, up = (np.floor, np.ceil) if slope > 0 else (np.ceil, np.floor)  # to lower/higher rescaled values
    black, white = target <= 0.0, target >= 1.0
    stored[black], stored[white] = down(raw[black]), up(raw[white])
    return np.clip(stored, 0, 2**bits_stored - 1).astype(np.uint16)


def _uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=[str(part) for part in parts])


def _check_arguments(display: np.ndarray, *, modality: str, photometric: str, bits_stored: int,
                     spacing_tag: str) -> None:
    """Refuse, with a ``ValueError``, what ``encode_dicom`` cannot write."""
    if display.ndim not in (2, 3):
        raise ValueError(f"display must be (H, W) or (F, H, W), got shape {display.shape}")
    if modality not in _SOP_CLASSES:
        raise ValueError(f"modality must be one of {tuple(_SOP_CLASSES)}, got {modality!r}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    if not 10 <= bits_stored <= 16:
        raise ValueError(f"bits_stored must be 10 to 16, got {bits_stored}")
    if spacing_tag not in _SPACING_TAGS:
        raise ValueError(f"spacing_tag must be one of {_SPACING_TAGS}, got {spacing_tag!r}")


def _encode_pixels(display: np.ndarray, *, invert: bool, bits_stored: int, rescale_slope: float,
                   rescale_intercept: float, window: tuple[float, float] | None) -> tuple[np.ndarray, dict[str, str]]:
    """The stored values of ``display`` and the modality LUT and window elements (DS strings) that
    decode them back; the numbers used are those the DS strings mean."""
    slope_text, slope = _ds_number(rescale_slope)
    intercept_text, intercept = _ds_number(rescale_intercept)
    if slope == 0:
        raise ValueError("rescale_slope must not be zero")
    center, width = window if window is not None else _full_range_window(slope, intercept, bits_stored)
    center_text, center = _ds_number(center)
    width_text, width = _ds_number(width)
    if width < 1:
        raise ValueError(f"a LINEAR window width must be at least 1, got {width}")
    target = 1.0 - np.clip(display, 0.0, 1.0) if invert else np.clip(display, 0.0, 1.0)
    stored = _stored_values(target, slope=slope, intercept=intercept, bits_stored=bits_stored,
                            center=center, width=width)
    elements = {"RescaleSlope": slope_text, "RescaleIntercept": intercept_text, "RescaleType": "US",
                "WindowCenter": center_text, "WindowWidth": width_text, "VOILUTFunction": "LINEAR"}
    return stored, elements


def _dataset(path: Path, modality: str, patient: dict) -> FileDataset:
    """A dataset with the patient and study elements ``patient`` gives and the general series and
    image elements of one original radiograph."""
    ds = FileDataset(str(path), {}, file_meta=FileMetaDataset(), preamble=b"\x00" * 128)
    for keyword, value in patient.items():
        setattr(ds, keyword, value)
    ds.Modality = modality
    ds.Manufacturer = "MEDXFER PHANTOM"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PatientOrientation = ["L", "F"]
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    return ds


def _set_image_pixel(ds: FileDataset, stored: np.ndarray, *, photometric: str, bits_stored: int) -> None:
    """The image pixel module: unsigned ``bits_stored`` of 16 allocated, one sample, frames if 3D."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = stored.shape[-2:]
    if stored.ndim == 3:
        ds.NumberOfFrames = stored.shape[0]
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = stored.tobytes()


def _set_uids(ds: FileDataset, modality: str) -> None:
    """Study, series and instance UIDs derived from the content where ``ds`` has none, and the
    file meta group (Explicit VR Little Endian)."""
    pixel_hash = hashlib.sha256(ds.PixelData).hexdigest()
    if "StudyInstanceUID" not in ds:
        ds.StudyInstanceUID = _uid("study", ds.PatientID, ds.AccessionNumber, ds.StudyDate)
    if "SeriesInstanceUID" not in ds:
        ds.SeriesInstanceUID = _uid("series", ds.StudyInstanceUID, modality, ds.SeriesNumber)
    ds.SOPClassUID = _SOP_CLASSES[modality]
    if "SOPInstanceUID" not in ds:
        ds.SOPInstanceUID = _uid("instance", ds.SeriesInstanceUID, ds.InstanceNumber, pixel_hash)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID


def encode_dicom(
    display: np.ndarray,
    path: Path,
    *,
    photometric: str = "MONOCHROME2",
    modality: str = "CR",
    bits_stored: int = 12,
    rescale_slope: float = 1.0,
    rescale_intercept: float = 0.0,
    window: tuple[float, float] | None = None,
    pixel_spacing: tuple[float, float] | None = (0.2, 0.2),
    spacing_tag: str = "PixelSpacing",
    presentation_lut_shape: str | None = None,
    patient: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write ``display`` (float32 in [0, 1], air dark; (H, W) or (F, H, W) frames) as a Part-10 DICOM.

    Explicit VR Little Endian, CR Image Storage (``modality="CR"``) or Digital X-Ray Image Storage -
    For Presentation (``"DX"``), 16 bits allocated, ``bits_stored`` (10 to 16) unsigned.

    Contract: modality LUT (``stored * rescale_slope + rescale_intercept``), then the written window
    with the DICOM LINEAR formula mapped to [0, 1], then one inversion if ``photometric`` is
    MONOCHROME1 or ``presentation_lut_shape`` is ``"INVERSE"``, gives back ``display`` within
    quantisation. ``window`` is (center, width) in rescaled units; ``None`` writes the window that
    maps the full stored range onto [0, 1]. Display values an explicit window clips stay clipped,
    as do rescaled values the stored range cannot reach.

    ``pixel_spacing`` is (row, column) in mm, written to ``spacing_tag`` (``PixelSpacing`` or
    ``ImagerPixelSpacing``), or omitted when ``None``. ``presentation_lut_shape`` ``None`` writes
    none for CR and the one the DX IOD requires (INVERSE for MONOCHROME1, else IDENTITY) for DX.
    ``patient`` overrides the synthetic
    PatientName, PatientID, PatientBirthDate, AccessionNumber, PatientSex, PatientAge, ViewPosition
    and BodyPartExamined; ``extra`` sets any further keyword (InstitutionName, StudyDate...).
    UIDs are derived from the content, so equal inputs give byte-identical files. The file is
    written atomically (a temporary file in the same folder, then a rename).
    """
    display = np.asarray(display, dtype=np.float32)
    _check_arguments(display, modality=modality, photometric=photometric, bits_stored=bits_stored,
                     spacing_tag=spacing_tag)
    invert = photometric == "MONOCHROME1" or presentation_lut_shape == "INVERSE"
    stored, lut_elements = _encode_pixels(display, invert=invert, bits_stored=bits_stored, rescale_slope=rescale_slope,
                                          rescale_intercept=rescale_intercept, window=window)
    ds = _dataset(path, modality, {**_DEFAULT_PATIENT, **_DEFAULT_STUDY, **(patient or {})})
    _set_image_pixel(ds, stored, photometric=photometric, bits_stored=bits_stored)
    for keyword, value in lut_elements.items():
        setattr(ds, keyword, value)
    if presentation_lut_shape is None and modality == "DX":  # required there; the same inversion
        presentation_lut_shape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
    if presentation_lut_shape is not None:
        ds.PresentationLUTShape = presentation_lut_shape
    if pixel_spacing is not None:
        setattr(ds, spacing_tag, [f"{float(s):.4f}" for s in pixel_spacing])
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    _set_uids(ds, modality)
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return atomic_write_bytes(path, buffer.getvalue())
