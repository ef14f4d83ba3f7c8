"""Checks made on a DICOM file before its pixels are decoded, each refusing it with a reason.

A deflated dataset's inflated size, the pixel data's presence, a decoder for the transfer syntax,
uncompressed pixel data as long as its size tags say, and the pixels declared by the size tags and
by compressed frames' own headers, against the pixel budget (``medxfer.datasets.budget``). Also
the header readers these checks share with ``medxfer.datasets.dicom``: whole-number elements, the
frame count, the transfer syntax and the SOP class, none of which quotes an element's value.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels import get_decoder
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
)

from medxfer.datasets import budget
from medxfer.datasets.budget import check_budget
from medxfer.datasets.codestream import j2k_size, jpeg_size
from medxfer.datasets.scan import UnreadableScanError

PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Where a Part 10 file's dataset starts: preamble and "DICM", the (0002,0000) element, then the
# rest of the file meta group, whose length that element gives.
_PREAMBLE_AND_MAGIC, _GROUP_LENGTH_ELEMENT = 132, 12


def integer_element(ds: Dataset, keyword: str) -> int | None:
    """A whole-number element, or None when absent or malformed (never an error quoting it)."""
    try:
        value = ds.get(keyword)
        return int(value) if value is not None and value != "" else None
    except (TypeError, ValueError, OverflowError):
        return None


def frame_count(ds: Dataset) -> int:
    """NumberOfFrames, or 1 when absent or malformed."""
    try:
        return max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        return 1


def transfer_syntax(ds: Dataset, path: Path | None = None) -> UID:
    """The file's transfer syntax; ``UnreadableScanError`` (naming ``path``) when it is not one."""
    syntax = UID(str(ds.file_meta.TransferSyntaxUID))
    if not syntax.is_transfer_syntax:
        # quoted only when it is a well-formed UID (digits and dots), never free text
        shown = f" {syntax}" if syntax.is_valid else " (not a UID)"
        raise UnreadableScanError(path or Path("?"), f"unknown transfer syntax{shown}")
    return syntax


def sop_class(ds: Dataset) -> str | None:
    """Name of the SOP class, from the dataset or, for DICOMDIR and the like, its file meta."""
    sop = ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID")
    uid = UID(str(sop)) if sop else None
    return uid.name if uid is not None and uid.is_valid else None


def check_deflated_size(path: Path, max_pixels: int | None) -> None:
    """Refuse a Deflated Explicit VR file whose dataset inflates beyond 8 bytes per value of the
    pixel budget (plus 16 MiB for the header), measured by inflating it in a stream that keeps
    nothing, before pydicom inflates the whole of it into memory."""
    try:
        meta = pydicom.filereader.read_file_meta_info(path)
    except Exception:  # noqa: BLE001 - no file meta (preamble-less): not deflated, or dcmread says why
        return
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return
    length = integer_element(meta, "FileMetaInformationGroupLength")
    if length is None:
        raise UnreadableScanError(path, "deflated DICOM without a file meta group length: its size cannot be bounded")
    limit = budget.max_pixels(max_pixels) * 8 + (1 << 24)
    inflate, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
    with open(path, "rb") as handle:
        handle.seek(_PREAMBLE_AND_MAGIC + _GROUP_LENGTH_ELEMENT + length)
        pending = handle.read(1 << 20)
        while pending:
            try:
                total += len(inflate.decompress(pending, 1 << 20))
            except zlib.error:
                raise UnreadableScanError(path, "deflated data that cannot be decompressed") from None
            if total > limit:
                raise UnreadableScanError(path, f"deflated data expand beyond {limit:,} bytes (8 bytes per value of the "
                                                "pixel budget): too large to decode; raise --max-pixels if the file "
                                                "is genuine")
            pending = inflate.unconsumed_tail or handle.read(1 << 20)


def require_pixel_data(ds: Dataset, path: Path) -> None:
    if not any(tag in ds for tag in PIXEL_TAGS):
        kind = sop_class(ds) or "object of unknown SOP class"
        if "Rows" in ds or "Image Storage" in kind:
            raise UnreadableScanError(
                path, f"truncated: the header describes an image ({kind}) but the file ends before its pixel data"
            )
        raise UnreadableScanError(path, f"no pixel data: {kind} (not an image)")


def require_decoder(ds: Dataset, path: Path) -> None:
    syntax = transfer_syntax(ds, path)
    if syntax.is_compressed:
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            raise UnreadableScanError(path, f"unsupported transfer syntax {syntax.name}") from None
        if not decoder.is_available:
            raise UnreadableScanError(
                path,
                f"compressed with {syntax.name} and no decoder is installed "
                "(pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg, or python-gdcm)",
            )


def check_native_length(ds: Dataset, path: Path) -> None:
    """Header-only truncation check for uncompressed pixel data: declared vs present bytes."""
    raw = ds._dict.get(0x7FE00010)
    syntax = transfer_syntax(ds)
    if syntax.is_compressed or syntax.is_deflated or raw is None or not hasattr(raw, "value_tell"):
        return  # deflated: value_tell counts in the inflated stream, not in the file
    if raw.length in (None, 0xFFFFFFFF):
        return
    if os.path.getsize(path) < raw.value_tell + raw.length:
        raise UnreadableScanError(path, "truncated: the file ends inside its pixel data")
    expected = get_expected_length(ds, unit="bytes")  # knows YBR_FULL_422 and bit-packed data
    if raw.length < expected:
        raise UnreadableScanError(
            path, f"pixel data holds {raw.length} bytes but its size tags need {expected}"
        )


def check_declared_size(ds: Dataset, path: Path, frame: int | None, max_pixels: int | None) -> None:
    """Refuse a file whose size tags (one ``frame``, or every frame) exceed the pixel budget."""
    rows, columns = integer_element(ds, "Rows") or 0, integer_element(ds, "Columns") or 0
    samples = integer_element(ds, "SamplesPerPixel") or 1
    frames = 1 if frame is not None else frame_count(ds)
    what = f"{frames} frame(s) of {rows} x {columns} pixels" + (f" x {samples} samples" if samples > 1 else "")
    check_budget(path, rows * columns * frames * samples, max_pixels, what)


def check_codestream_sizes(ds: Dataset, path: Path, frame: int | None, max_pixels: int | None) -> None:
    """Refuse JPEG, JPEG-LS and JPEG 2000 frames that declare more pixels, together, than the budget,
    whatever the size tags say (see ``medxfer.datasets.codestream``)."""
    syntax = transfer_syntax(ds, path)
    if syntax in JPEG2000TransferSyntaxes:
        size_of = j2k_size
    elif syntax in JPEGTransferSyntaxes or syntax in JPEGLSTransferSyntaxes:
        size_of = jpeg_size
    else:
        return  # native, RLE and deflated data decode to the size the tags give
    total = 0
    try:
        frames = list(enumerate(generate_frames(ds.PixelData, number_of_frames=frame_count(ds))))
    except Exception:  # noqa: BLE001 - any damage to the encapsulation
        raise UnreadableScanError(path, "its compressed frames cannot be located (damaged encapsulation)") from None
    for index, codestream in frames:
        if frame is None or index == frame:
            size = size_of(codestream)
            if size is None:  # a decoder would still find one: refuse rather than decode blind
                raise UnreadableScanError(path, f"compressed frame {index} declares no image size that can be read")
            total += size[0] * size[1] * size[2]
    check_budget(path, total, max_pixels, "the sizes declared by its compressed frames")
