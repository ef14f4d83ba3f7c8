"""Reading DICOM radiographs: modality LUT -> VOI LUT or window -> one consistent polarity.

The grayscale path follows the DICOM display pipeline (PS3.4 N.2): pydicom applies the modality
LUT (rescale slope/intercept or Modality LUT Sequence) and the file's VOI LUT or window, and the
result is mapped onto [0, 1] from the *output range of that VOI transform*, not from the image's
own extremes, so that a film that is mostly dark stays mostly dark. Then MONOCHROME1 (bright =
low values) and Presentation LUT Shape ``INVERSE`` are resolved to "air dark, bone bright" by
inverting exactly once, whichever of the two (or both) the file declares.

This module owns opening a file (quietly: pydicom's messages can quote identifying values), its
non-identifying metadata, the display pipeline and ``read_dicom_header`` / ``read_dicom``; the
checks made before decoding (pixel budget, truncation, decoder) are ``medxfer.datasets.dicom_checks``.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi_lut,
    apply_windowing,
    pixel_array,
)
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from medxfer.datasets import header_text
from medxfer.datasets.dicom_checks import (
    check_codestream_sizes,
    check_declared_size,
    check_deflated_size,
    check_native_length,
    frame_count,
    integer_element,
    require_decoder,
    require_pixel_data,
    sop_class,
    transfer_syntax,
)
from medxfer.datasets.intensity import Window, parse_window, rescale_to_unit
from medxfer.datasets.metadata import normalise_sex, parse_age, patient_key, study_key
from medxfer.datasets.scan import Scan, UnreadableScanError

# Values bigger than this are not read when only the header is wanted (bytes).
_HEADER_DEFER_BYTES = 4096
# ITU-R BT.601 luma weights for RGB -> gray.
_LUMA = np.array([0.299, 0.587, 0.114])
# Far outside any stored range: where a window saturates, giving its output range.
_PROBE = np.array([-1e15, 1e15])


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence pydicom while medxfer reads a file: its value-validation warnings and log records
    quote element values, which for identifying elements (a PatientID with a wrong VR, a damaged
    UID running into the patient module...) would put them in the user's terminal or log files.
    medxfer reports every failure itself. Restores pydicom's settings afterwards (process-wide
    state: do not share one process between threads that read DICOM and rely on pydicom's log)."""
    settings = pydicom.config.settings
    mode, logger = settings.reading_validation_mode, logging.getLogger("pydicom")
    was_disabled = logger.disabled
    settings.reading_validation_mode = pydicom.config.IGNORE
    logger.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        settings.reading_validation_mode = mode
        logger.disabled = was_disabled


def _open(path: Path, *, header_only: bool, max_pixels: int | None = None) -> Dataset:
    """Parse the file (the pixel data is deferred when ``header_only``), with pydicom's warnings
    about a premature end of file turned into an error; deflated files are first checked against
    the pixel budget."""
    check_deflated_size(path, max_pixels)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(
                path, force=True, defer_size=_HEADER_DEFER_BYTES if header_only else None
            )
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on malformed input; each becomes a reason
        # Only the type: pydicom's messages quote element values, which can be identifying.
        raise UnreadableScanError(path, f"not a readable DICOM file ({type(exc).__name__})") from None
    for warning in caught:
        if "End of file reached" in str(warning.message):
            raise UnreadableScanError(path, "truncated: the file ends inside its pixel data")
    if len(ds) == 0:
        raise UnreadableScanError(path, "not a DICOM file: no data elements could be parsed")
    _ensure_transfer_syntax(ds)
    return ds


def _ensure_transfer_syntax(ds: Dataset) -> None:
    """A file without file meta (preamble-less) still needs a transfer syntax to decode pixels."""
    meta = ds.file_meta
    if meta.get("TransferSyntaxUID"):
        return
    implicit, little = ds.original_encoding
    meta.TransferSyntaxUID = (
        ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    )


def pixel_spacing(ds: Dataset) -> tuple[tuple[float, float] | None, str | None]:
    """(row, column) spacing in mm and the tag it came from; ``(None, None)`` when absent or zero.

    PixelSpacing (calibrated at the patient) is preferred to ImagerPixelSpacing (at the detector).
    Zero, negative or malformed values such as the ``0\\0`` some CR systems write count as absent.
    """
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(tag)
        try:
            row, col = (float(v) for v in value)
        except (TypeError, ValueError):
            continue
        if row > 0 and col > 0 and np.isfinite(row) and np.isfinite(col):
            return (row, col), tag
    return None, None


def dicom_meta(ds: Dataset) -> dict[str, Any]:
    """Non-identifying metadata from a DICOM header (keys in ``medxfer.datasets.metadata``)."""
    with _quiet():
        spacing, spacing_tag = pixel_spacing(frame_view(ds, 0))
        return {
            "format": "dicom",
            "modality": header_text.modality(ds.get("Modality")),
            "view": header_text.view_position(ds.get("ViewPosition")),
            "sex": normalise_sex(ds.get("PatientSex")),
            "age": parse_age(ds.get("PatientAge")),
            "manufacturer": header_text.manufacturer(ds.get("Manufacturer")),
            "site": header_text.site_key(ds.get("InstitutionName")),
            "body_part": header_text.body_part(ds.get("BodyPartExamined")),
            "pixel_spacing": spacing,
            "pixel_spacing_tag": spacing_tag,
            "photometric_interpretation": header_text.photometric(ds.get("PhotometricInterpretation")),
            "bits_stored": integer_element(ds, "BitsStored"),
            "rows": integer_element(ds, "Rows"),
            "columns": integer_element(ds, "Columns"),
            "frames": frame_count(ds),
            "transfer_syntax": transfer_syntax(ds).name,
            "sop_class": sop_class(ds),
            "patient_key": patient_key(ds.get("PatientID")),
            "study_key": study_key(ds.get("StudyInstanceUID")),
        }


# Functional groups of enhanced multi-frame objects (PS3.3 C.7.6.16) that hold what classic
# objects keep at the top level: rescale, window and pixel spacing.
_FUNCTIONAL_GROUPS = {
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept", "RescaleType"),
    "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence"),
    "PixelMeasuresSequence": ("PixelSpacing",),
}


def has_functional_groups(ds: Dataset) -> bool:
    """True for enhanced multi-frame objects (enhanced CT/MR/XA, breast tomosynthesis...)."""
    return "SharedFunctionalGroupsSequence" in ds or "PerFrameFunctionalGroupsSequence" in ds


def frame_view(ds: Dataset, index: int) -> Dataset:
    """``ds`` itself for a classic object; for an enhanced one, a shallow copy whose top level
    carries frame ``index``'s rescale, window and spacing (shared groups, then the frame's own),
    so that pydicom's LUT functions, which read only the top level, apply them. ``ds`` is never
    modified."""
    if not has_functional_groups(ds):
        return ds
    view = copy.copy(ds)
    view._dict = dict(ds._dict)  # pydicom's copy shares the element dict: the view gets its own
    groups = list(ds.get("SharedFunctionalGroupsSequence") or [])[:1]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if index < len(per_frame):
        groups.append(per_frame[index])
    for group in groups:
        for sequence, keywords in _FUNCTIONAL_GROUPS.items():
            items = group.get(sequence)
            if items:
                for keyword in keywords:
                    if keyword in items[0]:
                        element = items[0][keyword]
                        view[element.tag] = element  # replaces the entry in the view's dict only
    return view


def _has_voi(ds: Dataset) -> bool:
    return "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)


def read_dicom_header(path: str | Path, *, max_pixels: int | None = None) -> dict[str, Any]:
    """Metadata of a DICOM image without decoding its pixels.

    Checks what can be checked cheaply: the file parses, holds pixel data, a decoder exists for
    its transfer syntax, uncompressed pixel data is as long as its size tags say, and the size
    tags (and a deflated dataset's inflated size) stay within the pixel budget
    (``medxfer.datasets.budget``). A corrupt compressed stream, and compressed frames larger
    than the size tags say, are only found with the pixel data (``read_dicom``, ``inspect
    --decode``).
    """
    path = Path(path)
    with _quiet():
        ds = _open(path, header_only=True, max_pixels=max_pixels)
        require_pixel_data(ds, path)
        require_decoder(ds, path)
        check_declared_size(ds, path, None, max_pixels)
        check_native_length(ds, path)
        return dicom_meta(ds)


def _decode(ds: Dataset, path: Path, frame: int | None) -> np.ndarray:
    frames = frame_count(ds)
    if frame is not None and not 0 <= frame < frames:
        raise UnreadableScanError(path, f"frame {frame} requested but the file has {frames} frame(s)")
    try:
        return pixel_array(ds, index=frame)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001
        # Decoders raise many types, and the Rust RLE decoder panics with a BaseException on some
        # corrupt streams: each becomes a reason (UnreadableScanError makes it one line) instead
        # of ending a batch job.
        # Only the type: decoder messages can quote header values.
        raise UnreadableScanError(path, f"pixel data cannot be decoded ({type(exc).__name__})") from None


def _color_to_gray(arr: np.ndarray, ds: Dataset) -> tuple[np.ndarray, str]:
    """RGB, YBR (pydicom has converted it to RGB) or palette colour to luma in [0, 1]."""
    photometric = str(ds.PhotometricInterpretation)
    shown = header_text.photometric(photometric)
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
    else:
        rgb, bits = arr, int(ds.BitsStored)
    gray = rgb.astype(np.float64) @ _LUMA / (2**bits - 1)
    return np.clip(gray, 0.0, 1.0), f"{shown} to gray (BT.601 luma)"


def _default_voi(values: np.ndarray, ds: Dataset) -> tuple[np.ndarray, str]:
    """The file's first VOI LUT or window, mapped to [0, 1] by that transform's output range.

    pydicom returns values in the window's nominal output bit range (or the LUT's entries); the
    range is read back by sending the transform values far outside it, so that the mapping to
    [0, 1] stays exactly the file's (a hand-written copy of pydicom's range rules would drift).
    """
    if "VOILUTSequence" in ds:
        item = ds.VOILUTSequence[0]
        entries, first = int(item.LUTDescriptor[0]) or 2**16, int(item.LUTDescriptor[1])
        table = apply_voi_lut(np.arange(first, first + entries), ds, prefer_lut=True)
        # The table's own extremes, not its descriptor's nominal bit depth: some writers declare
        # 16 bits for 12-bit entries, which would leave the image in the bottom 1/16 of [0, 1].
        lo, hi = float(table.min()), float(table.max())
        out = apply_voi_lut(np.rint(values).astype(np.int64), ds, prefer_lut=True)
        label = "file VOI LUT"
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        try:
            lo, hi = (float(v) for v in apply_windowing(_PROBE.copy(), ds))
            out = apply_windowing(values, ds)
        except (ValueError, TypeError) as exc:
            scaled, how = rescale_to_unit(values, "minmax")
            return scaled, f"{how} (file window unusable: {type(exc).__name__})"
        centers, widths = ds["WindowCenter"], ds["WindowWidth"]
        center = centers.value[0] if centers.VM > 1 else centers.value
        width = widths.value[0] if widths.VM > 1 else widths.value
        label = f"file window center={float(center):g} width={float(width):g}"
        function = ds.get("VOILUTFunction")
        if function:
            label += f" {function}"
    else:
        scaled, how = rescale_to_unit(values, "minmax")
        return scaled, f"{how} (file has no window or VOI LUT)"
    if hi == lo:
        return np.zeros(values.shape, np.float32), f"{label} (constant output)"
    return np.clip((out.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0), label


def needs_inversion(ds: Dataset) -> bool:
    """True when the stored polarity is bright-for-low-values: MONOCHROME1, or a Presentation
    LUT Shape of INVERSE. Both mean the same inversion (DX requires INVERSE with MONOCHROME1),
    so a file that declares both is inverted once, never twice."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    shape = str(ds.get("PresentationLUTShape", "")).strip().upper()
    return photometric == "MONOCHROME1" or shape == "INVERSE"


def _grayscale(arr: np.ndarray, ds: Dataset, window: Window) -> tuple[np.ndarray, str]:
    """Modality LUT, then the file's VOI transform or the requested window, for one frame's
    dataset view; [0, 1] output in the stored polarity."""
    values = apply_modality_lut(arr, ds).astype(np.float64)
    if window == "default":
        return _default_voi(values, ds)
    return rescale_to_unit(values, window)


def _enhanced_frames(arr: np.ndarray, ds: Dataset, window: Window) -> tuple[np.ndarray, str]:
    """Every frame of an enhanced object with its own rescale; the default window is each
    frame's own VOI where the file gives one, and min-max over all frames where it gives none
    (as for classic multi-frame objects)."""
    views = [frame_view(ds, i) for i in range(len(arr))]
    values = np.stack([apply_modality_lut(a, v) for a, v in zip(arr, views, strict=True)]).astype(np.float64)
    if window != "default":
        return rescale_to_unit(values, window)
    if not any(_has_voi(v) for v in views):
        return _default_voi(values, views[0])
    frames = [_default_voi(values[i], views[i]) for i in range(len(views))]
    labels = list(dict.fromkeys(label for _, label in frames))
    how = labels[0] if len(labels) == 1 else f"file window per frame ({len(labels)} different; frame 0: {labels[0]})"
    return np.stack([gray for gray, _ in frames]), how


def read_dicom(path: str | Path, *, window: Window = "default", frame: int | None = None,
               max_pixels: int | None = None) -> Scan:
    """Decode a DICOM image to a ``Scan`` with pixels in [0, 1], air dark and bone bright.

    ``window``: ``"default"`` uses the file's first VOI LUT, else its first window, else min-max;
    ``"minmax"``, ``"percentile"`` or ``(center, width)`` in modality units replace it.
    ``frame``: index of one frame of a multi-frame object; ``None`` returns every frame, giving
    (frames, H, W) pixels for a multi-frame object and (H, W) for a single-frame one.
    Enhanced multi-frame objects get each frame's own rescale and window from their functional
    groups. ``max_pixels``: the pixel budget (``medxfer.datasets.budget``), checked on the size
    tags and on the compressed frames' own sizes before anything is decoded.
    """
    path = Path(path)
    window = parse_window(window)
    with _quiet():
        return _read(path, window, frame, max_pixels)


def _read(path: Path, window: Window, frame: int | None, max_pixels: int | None) -> Scan:
    ds = _open(path, header_only=False, max_pixels=max_pixels)
    require_pixel_data(ds, path)
    require_decoder(ds, path)
    check_declared_size(ds, path, frame, max_pixels)
    check_codestream_sizes(ds, path, frame, max_pixels)
    arr = _decode(ds, path, frame)
    meta = dicom_meta(ds)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    is_color = int(ds.get("SamplesPerPixel", 1) or 1) > 1 or photometric == "PALETTE COLOR"
    if is_color:
        gray, how = _color_to_gray(arr, ds)
        if window != "default":
            gray, how = rescale_to_unit(gray, window)
    elif has_functional_groups(ds) and frame is None and arr.ndim == 3:
        gray, how = _enhanced_frames(arr, ds, window)
    else:
        gray, how = _grayscale(arr, frame_view(ds, frame or 0), window)
    inverted = not is_color and needs_inversion(ds)
    if inverted:
        gray = 1.0 - gray
    pixels = np.ascontiguousarray(gray, dtype=np.float32)
    meta.update(window=how, inverted=inverted, frame=frame, shape=tuple(pixels.shape))
    return Scan(pixels=pixels, meta=meta, path=path)
