"""Reading PNG, JPEG and TIFF images (display images: exports, screenshots, public datasets) with Pillow.

- EXIF orientation is applied, so row 0 is the top of the image as a viewer shows it, whatever
  the format. Pillow (13) applies the TIFF Orientation tag itself: ``size`` is already the
  displayed size right after opening (while ``getexif()`` still holds the tag), and loading
  rotates the pixels and then drops the tag. Pillow does not do this for PNG or JPEG, so
  ``ImageOps.exif_transpose`` after loading applies the orientation exactly once either way.
  Files are opened from a file object rather than a path: for an uncompressed single-strip TIFF
  with orientation 5-8, Pillow's memory-mapped fast path (used only for paths) maps the stored
  bytes with the already-swapped size, which scrambles the pixels.
- Grayscale is kept as stored: 1-bit, 8-bit (``L``) and 16-bit (``I;16``, ``I;16B``, and ``I``
  with values in 0..65535). Colour (``RGB``, ``RGBA``, ``P``, ``LA``...) becomes gray with
  Pillow's ITU-R BT.601 luma (L = 0.299 R + 0.587 G + 0.114 B); alpha is ignored.
  32-bit samples (``F``, or ``I`` beyond 16 bits) are refused: they have no display range.
- ``"default"`` window: the full range of the stored bit depth (value / 255 for 8-bit,
  value / 65535 for 16-bit), because the file is already a display image whose contrast was
  chosen when it was exported. Other windows go through ``rescale_to_unit``.
- ``pixel_spacing`` is always ``None``: a DPI field is a print resolution that exporting software
  fills with a default (72, 96, 300 dpi), not the detector pixel pitch, so it is not used.
- A multi-page TIFF gives its first page; ``meta["pages"]`` says how many there are.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from medxfer.datasets.budget import check_budget
from medxfer.datasets.decoder_errors import Reasons, unreadable_on
from medxfer.datasets.intensity import Window, parse_window, rescale_to_unit
from medxfer.datasets.scan import Scan, UnreadableScanError, first_line

_PILLOW_FORMATS = ("PNG", "JPEG", "TIFF")
# Pillow format name -> meta["format"]; Pillow's JPEG opener returns "MPO" for a JPEG holding
# several pictures (camera exports).
_FORMATS = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "TIFF": "tiff"}
_EXIF_ORIENTATION = 0x0112
_TIFF_IMAGE_WIDTH, _TIFF_IMAGE_LENGTH = 256, 257
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
# Bits per gray sample known from the mode alone; other modes are 8-bit. Mode I holds 16-bit
# data only when its values fit, which the header cannot tell.
_MODE_BITS = {"1": 1, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": None}


def read_raster(path: Path, *, window: Window = "default", max_pixels: int | None = None) -> Scan:
    """Read a PNG, JPEG or TIFF file into a ``Scan`` with float32 (H, W) pixels in [0, 1].

    ``max_pixels``: the pixel budget (``medxfer.datasets.budget``), checked on the size the file
    declares before decoding. Raises ``UnreadableScanError`` for a missing, truncated, corrupt
    or unsupported file.
    """
    path = Path(path)
    window = parse_window(window)
    with _pillow_errors(path), _open(path) as image:
        meta = _meta(path, image, max_pixels)
        samples = _gray_samples(path, ImageOps.exif_transpose(image))
    if window == "default":
        full_scale = np.iinfo(samples.dtype).max
        pixels = (samples / np.float32(full_scale)).astype(np.float32)
        label = f"full range 0-{full_scale}"
    else:
        pixels, label = rescale_to_unit(samples, window)
    bits = 1 if image.mode == "1" else samples.dtype.itemsize * 8
    meta.update(bits_stored=bits, window=label, shape=pixels.shape)
    return Scan(pixels=pixels, meta=meta, path=path)


def read_raster_header(path: Path, *, max_pixels: int | None = None) -> dict[str, Any]:
    """Metadata of a PNG, JPEG or TIFF file without decoding its pixels.

    Runs Pillow's ``verify()``, which checks what the format allows without decoding (PNG chunk
    checksums; JPEG and TIFF only their structure as far as parsed). ``shape`` is (H, W) after
    EXIF orientation (for PNG, only an eXIf chunk placed before the image data is seen);
    ``bits_stored`` is ``None`` for mode ``I``, whose range is only known from the pixels.
    Raises ``UnreadableScanError``.
    """
    path = Path(path)
    with _pillow_errors(path):
        with _open(path) as image:
            image.verify()  # Pillow allows it only right after open, and the image is unusable after
        with _open(path) as image:
            meta = _meta(path, image, max_pixels)
            width, height = _displayed_size(image)
    meta.update(bits_stored=_MODE_BITS.get(image.mode, 8), shape=(height, width))
    return meta


def _displayed_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) after EXIF orientation, from an opened but not yet loaded image."""
    width, height = image.size
    if _exif_orientation(image) in _TRANSPOSING_ORIENTATIONS and not _size_already_oriented(image):
        width, height = height, width
    return width, height


def _size_already_oriented(image: Image.Image) -> bool:
    """Whether Pillow reports a TIFF's ``size`` with its orientation already applied (Pillow 13 does).

    Told from the stored ImageWidth/ImageLength tags rather than Pillow's version: ``size``
    differs from them only when Pillow has swapped it.
    """
    if image.format != "TIFF":
        return False
    stored = (image.tag_v2.get(_TIFF_IMAGE_WIDTH), image.tag_v2.get(_TIFF_IMAGE_LENGTH))
    return image.size != stored


def _exif_orientation(image: Image.Image) -> int | None:
    """EXIF orientation tag without decoding pixels (PNG ``getexif`` decodes to find a late eXIf)."""
    if image.format == "PNG" and "exif" not in image.info:
        return None
    return image.getexif().get(_EXIF_ORIENTATION)


# What Pillow raises on a damaged or unsupported file, and the reason to report. Pillow reports
# damage as OSError ("image file is truncated"), SyntaxError ("broken PNG file"), ValueError,
# EOFError or struct.error depending on the plugin and where it is; its TIFF plugin also raises
# TypeError ("Missing dimensions") for a missing ImageWidth tag and KeyError for an unknown
# Compression value when it reaches a later page (counting pages); on the first page Image.open
# turns them into UnidentifiedImageError. A LookupError's message is only the key or index, so
# its reason names the error.
_PILLOW_REASONS: Reasons = (
    (Image.UnidentifiedImageError, lambda exc: "not a PNG, JPEG or TIFF image Pillow can identify"),
    (Image.DecompressionBombError, lambda exc: f"too large to decode safely: {exc}"),
    ((OSError, SyntaxError, ValueError, EOFError, struct.error, TypeError),
     lambda exc: f"cannot be decoded: {first_line(exc)}"),
    (LookupError, lambda exc: f"cannot be decoded: {type(exc).__name__} {first_line(exc)}"),
)


def _pillow_errors(path: Path) -> AbstractContextManager[None]:
    """Turn what Pillow and the OS raise into ``UnreadableScanError`` with a one-line reason."""
    return unreadable_on(path, _PILLOW_REASONS)


@contextmanager
def _open(path: Path) -> Iterator[Image.Image]:
    """The image opened from a file object, so Pillow never memory-maps it (see module docstring)."""
    with path.open("rb") as file, Image.open(file, formats=_PILLOW_FORMATS) as image:
        yield image


def _meta(path: Path, image: Image.Image, max_pixels: int | None) -> dict[str, Any]:
    """Meta known before decoding; refuses floating-point samples, which have no display range,
    and a first page over the pixel budget."""
    if image.mode == "F":
        raise UnreadableScanError(path, "32-bit floating-point samples (mode F) are not supported")
    width, height = image.size
    samples = len(image.getbands())  # counted like DICOM's samples per pixel: RGB is three values a pixel
    check_budget(path, width * height * samples, max_pixels,
                 f"{width} x {height} pixels" + (f" x {samples} samples" if samples > 1 else ""))
    return {
        "format": _FORMATS[image.format],
        "mode": image.mode,
        "pages": getattr(image, "n_frames", 1),
        "pixel_spacing": None,
        "modality": None,
    }


def _gray_samples(path: Path, image: Image.Image) -> np.ndarray:
    """The first page as a (H, W) uint8 or uint16 array of gray values as stored."""
    if image.mode.startswith("I;16"):
        return np.asarray(image).astype(np.uint16)  # I;16B is big-endian: make it native
    if image.mode == "I":
        samples = np.asarray(image)
        if samples.min() < 0 or samples.max() > np.iinfo(np.uint16).max:
            raise UnreadableScanError(path, "32-bit integer samples outside 0..65535 are not supported")
        return samples.astype(np.uint16)
    # 1-bit becomes 0/255; colour modes go through Pillow's BT.601 luma; alpha is dropped.
    return np.asarray(image.convert("L"))
