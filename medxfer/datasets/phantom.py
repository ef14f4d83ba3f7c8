"""Phantom cohort: synthetic chest radiographs written as real DICOM files, for the demo and tests.

Everything here is deterministic for a seed and needs no network. ``generate_cohort`` writes a
small multi-site cohort the way hospitals hand one over:

- ``images/<site>/imgNNNNN.dcm``: Part-10 DICOM files, one per radiograph. The three sites differ
  as real ones do (CR vs DX, MONOCHROME1 vs MONOCHROME2, MONOCHROME1 with Presentation LUT Shape
  INVERSE on DX, 10 to 16 stored bits, rescale slope/intercept, ImagerPixelSpacing vs
  PixelSpacing, exposure, gamma, blur, noise, image size), while the label is independent of site
  and view.
- ``manifest.csv``: ``path,label,patient_id`` (path relative to the manifest, sorted).
- ``volumes/*.nii.gz``: small unlabelled 3D NIfTI chest volumes (LPS-oriented, 1.5 mm voxels).

Every file is written atomically (a temporary file in the same folder, then a rename), so a reader
never sees half a file and an interrupted run leaves none.

The label is ``"normal"`` or ``"opacity"`` (patchy brighter blobs confined to the lung fields).
Patient identifiers (name, ID, birth date, accession number) are synthetic but present in every
file, so that the rest of the project can check they never leak into its outputs.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
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
from scipy import ndimage

from medxfer.csvfiles import write_csv
from medxfer.files import atomic_write_bytes

LABELS = ("normal", "opacity")

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
_FOLLOW_UP_SAME_LABEL = 0.8  # probability that a follow-up image keeps the patient's label
_IMAGES_PER_PATIENT = ((1, 2, 3), (0.5, 0.3, 0.2))
_PA_PROBABILITY = 0.75
_RIB_FIRST, _RIB_GAP, _RIB_COUNT = -0.66, 0.11, 8  # posterior ribs: first arc height, spacing, count
_GIVEN_NAMES = {"F": ("ANNA", "BEA", "CLARA", "DORA", "EVA"), "M": ("ALEX", "BEN", "CARL", "DAN", "ELI")}


@dataclass(frozen=True)
class SiteProfile:
    """How one (fictional) hospital acquires and encodes chest radiographs.

    Acquisition, applied to the rendered attenuation map ``a`` (about [0, 1]):
    ``display = clip(exposure + contrast * a, 0, 1) ** gamma``, then a Gaussian detector blur of
    ``blur_sigma`` pixels, then signal-dependent noise of standard deviation about ``noise``
    (display units), clipped to [0, 1].

    Encoding: unsigned stored bits drawn per image from ``bits_stored`` (one value, or several as
    when a site runs readers of two generations), modality LUT ``rescale_slope`` and
    ``rescale_intercept``, ``window`` (center, width) in rescaled units or ``None`` for the full stored range, pixel
    spacing written to ``spacing_tag`` and drawn uniformly from ``pixel_spacing_mm`` (low, high),
    image shape (rows, columns) drawn from ``image_sizes``.
    """

    name: str
    institution: str
    manufacturer: str
    modality: str
    photometric: str
    bits_stored: tuple[int, ...]
    rescale_slope: float
    rescale_intercept: float
    window: tuple[float, float] | None
    spacing_tag: str
    pixel_spacing_mm: tuple[float, float]
    image_sizes: tuple[tuple[int, int], ...]
    exposure: float
    contrast: float
    gamma: float
    noise: float
    blur_sigma: float


SITES: tuple[SiteProfile, ...] = (
    SiteProfile(
        name="site-a",
        institution="Northbrook General Hospital",
        manufacturer="Halcyon Imaging Systems",
        modality="CR",
        photometric="MONOCHROME1",
        bits_stored=(10, 12),  # older and newer CR readers
        rescale_slope=1.0,
        rescale_intercept=0.0,
        window=None,
        spacing_tag="ImagerPixelSpacing",
        pixel_spacing_mm=(0.14, 0.20),
        image_sizes=((256, 256), (320, 256), (288, 240), (240, 240)),
        exposure=0.10,
        contrast=0.95,
        gamma=0.8,
        noise=0.035,
        blur_sigma=0.6,
    ),
    SiteProfile(
        name="site-b",
        institution="Riverside Community Clinic",
        manufacturer="Vantor Medical",
        modality="DX",
        photometric="MONOCHROME2",
        bits_stored=(14,),
        rescale_slope=0.5,
        rescale_intercept=-1024.0,
        window=(3000.0, 6000.0),
        spacing_tag="PixelSpacing",
        pixel_spacing_mm=(0.16, 0.25),
        image_sizes=((224, 224), (256, 208), (192, 192), (320, 320), (208, 256)),
        exposure=0.0,
        contrast=1.05,
        gamma=1.25,
        noise=0.012,
        blur_sigma=1.1,
    ),
    SiteProfile(
        name="site-c",
        institution="Eastmere University Hospital",
        manufacturer="Orrin Radiologic",
        modality="DX",
        photometric="MONOCHROME1",  # encode_dicom adds Presentation LUT Shape INVERSE, as DX requires
        bits_stored=(16,),
        rescale_slope=1.0,
        rescale_intercept=-32768.0,
        window=(0.0, 52000.0),
        spacing_tag="ImagerPixelSpacing",
        pixel_spacing_mm=(0.11, 0.15),
        image_sizes=((256, 256), (288, 240), (240, 288), (272, 272)),
        exposure=0.05,
        contrast=0.9,
        gamma=1.05,
        noise=0.022,
        blur_sigma=0.35,
    ),
)


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


# --------------------------------------------------------------------------- rendering


def _soft(signed: np.ndarray, edge: float) -> np.ndarray:
    """Soft inside-mask from a signed field (negative inside): 1 inside, 0 outside, linear edge."""
    return np.clip(0.5 - signed / edge, 0.0, 1.0)


def _level(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float | np.ndarray, ay: float,
           power: int = 2, angle: float = 0.0) -> np.ndarray:
    """Superellipse level ``|dx/ax|**power + |dy/ay|**power`` (even ``power``) of the shape centred
    on (cx, cy) with semi-axes (ax, ay), rotated by ``angle`` radians: < 1 inside, 1 on the edge."""
    dx, dy = x - cx, y - cy
    if angle:
        cos, sin = float(np.cos(angle)), float(np.sin(angle))
        dx, dy = dx * cos + dy * sin, dy * cos - dx * sin
    return np.square(dx / ax) ** (power // 2) + np.square(dy / ay) ** (power // 2)


def _inside(level: np.ndarray, power: int, edge: float) -> np.ndarray:
    """Soft mask of a superellipse from its ``_level``; ``edge`` is the ramp width in radius units."""
    return _soft((level - 1.0) / power, edge)


def _grid(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, float]:
    """Anatomical coordinates of every pixel and the pixels per coordinate unit.

    The shorter image side spans [-1, 1]; x grows to the image right (patient's left in a PA view),
    y grows downwards. A random rotation (up to 3 degrees), scale (up to 4 %) and shift (up to
    4 % of the short side) model patient positioning.
    """
    rows, cols = shape
    unit = min(rows, cols) / 2.0
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    u, v = (xx - cols / 2.0) / unit, (yy - rows / 2.0) / unit
    angle = np.deg2rad(rng.uniform(-3.0, 3.0))
    cos, sin = float(np.cos(angle)), float(np.sin(angle))
    scale = rng.uniform(0.96, 1.04)
    sx, sy = (float(s) for s in rng.uniform(-0.04, 0.04, size=2))
    x = (cos * u + sin * v) / scale + sx
    y = (cos * v - sin * u) / scale + sy
    return x, y, unit


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Gaussian-filtered white noise normalised to unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma_px)
    return field / max(float(field.std()), 1e-6)


def _lungs(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Soft masks of both lung fields (left and right of the image) and of the heart, in [0, 1]."""
    lungs = np.zeros_like(x)
    half_width, top, height = rng.uniform(0.27, 0.32), rng.uniform(-0.78, -0.70), rng.uniform(1.1, 1.25)
    for side, dome_base in ((-1.0, rng.uniform(0.30, 0.38)), (1.0, rng.uniform(0.36, 0.44))):
        cx, cy = side * rng.uniform(0.39, 0.44), top + height / 2.0
        taper = 0.7 + 0.4 * np.clip((y - top) / height, 0.0, 1.0)  # narrow apex, wide base
        outline = _inside(_level(x, y, cx, cy, half_width * taper, height / 2.0), 2, 0.04)
        dome = dome_base + 0.18 * np.square((x - cx) / 0.34)  # diaphragm, highest mid-lung
        lungs = np.maximum(lungs, outline * _soft(y - dome, 0.03))
    heart = _inside(_level(x, y, rng.uniform(0.08, 0.14), rng.uniform(0.2, 0.26),
                           rng.uniform(0.3, 0.36), rng.uniform(0.22, 0.27), angle=-0.45), 2, 0.1)
    return lungs * (1.0 - heart), heart


def _bones(x: np.ndarray, y: np.ndarray, trunk: np.ndarray) -> np.ndarray:
    """Spine, posterior ribs and clavicles as an additive attenuation map (about 0 to 0.25)."""
    spine = _soft(np.abs(x) - 0.06, 0.02) * (0.08 + 0.03 * np.cos(2.0 * np.pi * y / 0.12))
    lateral = np.abs(x)
    rib_span = _soft(np.abs(lateral - 0.48) - 0.38, 0.08)
    along = y + 0.45 * lateral - 0.75 * np.square(lateral)  # constant along one rib's arc
    phase = (along - _RIB_FIRST) / _RIB_GAP
    ribs = _soft(np.abs(phase - np.rint(phase)) * _RIB_GAP - 0.02, 0.02)
    ribs *= _soft(np.abs(phase - (_RIB_COUNT - 1) / 2.0) - _RIB_COUNT / 2.0, 0.3) * rib_span
    clavicle_centre = -0.74 - 0.12 * lateral + 0.25 * np.square(lateral)
    clavicles = _soft(np.abs(y - clavicle_centre) - 0.028, 0.02) * _soft(np.abs(lateral - 0.36) - 0.3, 0.04)
    return (spine + 0.06 * ribs + 0.1 * clavicles) * trunk


def _anatomy(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, unit: float) -> tuple[np.ndarray, np.ndarray]:
    """Attenuation map (about [0, 1], air 0) of a normal chest and the soft lung-field mask."""
    trunk = _inside(_level(x, y, 0.0, 0.25, rng.uniform(0.86, 0.94), 1.25, power=4), 4, 0.03)
    neck = _soft(np.abs(x) - 0.24, 0.03) * _soft(y + 0.6, 0.05)
    body = np.maximum(trunk, neck)
    thickness = np.sqrt(np.clip(1.0 - np.square(x / 0.95), 0.0, 1.0))
    lungs, heart = _lungs(rng, x, y)
    trachea = _soft(np.abs(x) - 0.03, 0.015) * _soft(y + 0.35, 0.05)
    mediastinum = _soft(np.abs(x - 0.02) - 0.12, 0.05) * _soft(y - 0.1, 0.1)
    hila = np.exp(-(np.square(np.abs(x) - 0.17) / 0.006 + np.square(y + 0.02) / 0.02))
    vessels = _smooth_noise(rng, x.shape, 0.015 * unit)
    att = body * (0.22 + 0.2 * thickness)
    att += 0.05 * heart + 0.04 * mediastinum - 0.06 * trachea
    att -= lungs * (0.26 - 0.02 * vessels - 0.06 * hila)
    att += _bones(x, y, trunk)
    return np.clip(att, 0.0, 1.0), lungs


def _opacities(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, lungs: np.ndarray, unit: float) -> np.ndarray:
    """Patchy consolidation: 3 to 7 irregular soft blobs inside the lung fields (about 0 to 0.3)."""
    inside = np.flatnonzero(lungs.ravel() > 0.5)
    patch = np.zeros_like(x)
    for index in rng.choice(inside, size=int(rng.integers(3, 8))):
        radius = rng.uniform(0.06, 0.16)
        d2 = np.square(x.ravel()[index] - x) + np.square(y.ravel()[index] - y)
        patch = np.maximum(patch, rng.uniform(0.16, 0.3) * np.exp(-d2 / radius**2))
    texture = 1.0 + 0.6 * _smooth_noise(rng, x.shape, 0.04 * unit)
    return np.clip(patch * texture, 0.0, 0.32) * lungs


def _acquire(rng: np.random.Generator, att: np.ndarray, site: SiteProfile) -> np.ndarray:
    """The site's detector response: exposure and contrast (with +-4 % per-image jitter), gamma,
    blur and signal-dependent noise. Returns float32 in [0, 1]."""
    exposure = site.exposure + rng.uniform(-0.04, 0.04)
    contrast = site.contrast * rng.uniform(0.96, 1.04)
    display = np.clip(exposure + contrast * att, 0.0, 1.0) ** site.gamma
    if site.blur_sigma > 0:
        display = ndimage.gaussian_filter(display, site.blur_sigma)
    display += site.noise * np.sqrt(0.25 + display) * rng.standard_normal(display.shape, dtype=np.float32)
    return np.clip(display, 0.0, 1.0).astype(np.float32)


def render_chest(rng: np.random.Generator, *, label: str, shape: tuple[int, int], site: SiteProfile) -> np.ndarray:
    """A synthetic PA chest radiograph as a display image: float32 (rows, columns) in [0, 1].

    Air is dark and bone bright; the heart shadow lies towards the image right (patient's left, as a
    PA view is conventionally displayed). ``label="opacity"`` adds patchy brighter blobs confined to
    the lung fields; ``"normal"`` has none. Anatomy, positioning and the blobs are drawn from
    ``rng``; the look (exposure, gamma, blur, noise) comes from ``site``.
    """
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, got {label!r}")
    x, y, unit = _grid(rng, shape)
    att, lungs = _anatomy(rng, x, y, unit)
    if label == "opacity":
        att = np.clip(att + _opacities(rng, x, y, lungs, unit), 0.0, 1.0)
    return _acquire(rng, att, site)


# --------------------------------------------------------------------------- DICOM encoding


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
    slope_text, slope = _ds_number(rescale_slope)
    intercept_text, intercept = _ds_number(rescale_intercept)
    if slope == 0:
        raise ValueError("rescale_slope must not be zero")
    center, width = window if window is not None else _full_range_window(slope, intercept, bits_stored)
    center_text, center = _ds_number(center)
    width_text, width = _ds_number(width)
    if width < 1:
        raise ValueError(f"a LINEAR window width must be at least 1, got {width}")
    invert = photometric == "MONOCHROME1" or presentation_lut_shape == "INVERSE"
    target = 1.0 - np.clip(display, 0.0, 1.0) if invert else np.clip(display, 0.0, 1.0)
    stored = _stored_values(target, slope=slope, intercept=intercept, bits_stored=bits_stored,
                            center=center, width=width)

    ds = FileDataset(str(path), {}, file_meta=FileMetaDataset(), preamble=b"\x00" * 128)
    for keyword, value in {**_DEFAULT_PATIENT, **_DEFAULT_STUDY, **(patient or {})}.items():
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
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = display.shape[-2:]
    if display.ndim == 3:
        ds.NumberOfFrames = display.shape[0]
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope_text, intercept_text, "US"
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = center_text, width_text, "LINEAR"
    if presentation_lut_shape is None and modality == "DX":  # required there; the same inversion
        presentation_lut_shape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
    if presentation_lut_shape is not None:
        ds.PresentationLUTShape = presentation_lut_shape
    if pixel_spacing is not None:
        setattr(ds, spacing_tag, [f"{float(s):.4f}" for s in pixel_spacing])
    ds.PixelData = stored.tobytes()
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)

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
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return atomic_write_bytes(path, buffer.getvalue())


# --------------------------------------------------------------------------- cohort


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


def _volume(rng: np.random.Generator, shape: tuple[int, int, int] = (48, 48, 24)) -> np.ndarray:
    """A small chest CT-like volume in HU (i: right to left, j: anterior to posterior, k: up).

    An elliptic body cylinder of soft tissue (40 HU) in air (-1000 HU), two darker lungs
    (-850 HU) and a bright spine (700 HU) posteriorly, plus 15 HU noise.
    """
    i, j, k = np.meshgrid(*(np.linspace(-1.0, 1.0, n) for n in shape), indexing="ij")
    hu = np.full(shape, -1000.0)
    hu[_level(i, j, 0.0, 0.0, rng.uniform(0.8, 0.9), rng.uniform(0.6, 0.7)) < 1.0] = 40.0
    for side in (-1.0, 1.0):
        hu[_level(i, j, side * 0.4, -0.05, 0.3, 0.4) + np.square(k / 1.3) < 1.0] = -850.0
    hu[_level(i, j, 0.0, 0.5, 0.1, 0.1) < 1.0] = 700.0
    return hu + rng.normal(0.0, 15.0, shape)


def _write_volume(rng: np.random.Generator, path: Path) -> Path:
    """Write one phantom volume as gzipped single-file int16 NIfTI with scl_slope 2, scl_inter
    -1024 (HU) and an LPS-oriented affine with 1.5 mm voxels centred on the origin, atomically and
    byte-identically for the same ``rng`` state (the gzip header carries no time or name)."""
    hu = _volume(rng)
    spacing = 1.5
    affine = np.diag([-spacing, -spacing, spacing, 1.0])
    affine[:3, 3] = [spacing * (hu.shape[0] - 1) / 2, spacing * (hu.shape[1] - 1) / 2, -spacing * (hu.shape[2] - 1) / 2]
    raw = np.clip(np.rint((hu + 1024.0) / 2.0), -32768, 32767).astype(np.int16)
    image = nib.Nifti1Image(raw, affine)
    image.header.set_slope_inter(2.0, -1024.0)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return atomic_write_bytes(path, gzip.compress(image.to_bytes(), mtime=0))


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
        _write_volume(np.random.default_rng(seed_seq), root / "volumes" / f"phantom-chest-{v:02d}.nii.gz")
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


# --------------------------------------------------------------------------- studies built on a cohort


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
