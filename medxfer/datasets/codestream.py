"""The image size a compressed DICOM frame declares inside its own codestream.

JPEG decoders allocate what the codestream's frame header says, not what the DICOM header
(Rows, Columns) says, so a file can declare a small image in its header and carry a frame that
decodes to gigabytes. pydicom checks the sizes only after decoding, and its JPEG parameter parser
is private, so the two frame headers are read here: the JPEG and JPEG-LS start-of-frame segment
(ITU T.81 B.2.2, T.87 5.2.2) and the JPEG 2000 SIZ segment (ITU T.800 A.5.1).
"""

from __future__ import annotations

import struct

# JPEG SOF0-SOF15 (not DHT C4, JPG C8, DAC CC) and JPEG-LS SOF55.
_START_OF_FRAME = (set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}) | {0xF7}
_STANDALONE = {0x01, 0xD8, *range(0xD0, 0xD8)}  # markers without a length field
_J2K_SIZ = b"\xff\x4f\xff\x51"  # start of codestream, then the image and tile size segment
_SOI_SEARCH = 64  # padding some writers put before a JPEG frame's start-of-image marker


def jpeg_size(data: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) from a JPEG or JPEG-LS codestream; None when none is found.
    Bytes that are not a marker between segments are skipped, as decoders do (libjpeg warns
    "extraneous bytes before marker" and goes on), so that they cannot hide the frame's size."""
    start = data.find(b"\xff\xd8", 0, _SOI_SEARCH)
    if start < 0:
        return None
    at = start + 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            at += 1
            continue
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in _START_OF_FRAME:
            if at + 10 > len(data):
                return None
            rows, columns = struct.unpack(">HH", data[at + 5:at + 9])
            return rows, columns, data[at + 9]
        if marker in _STANDALONE:
            at += 2
            continue
        (length,) = struct.unpack(">H", data[at + 2:at + 4])
        at += 2 + length
    return None


def j2k_size(data: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) from a JPEG 2000 codestream or JP2 file; None when none is found."""
    at = data.find(_J2K_SIZ)  # a JP2 file wraps the codestream after header boxes of any length
    if at < 0 or at + 4 + 38 > len(data):
        return None
    segment = data[at + 4:at + 4 + 38]
    _, _, width, height, x_offset, y_offset = struct.unpack(">HHIIII", segment[:20])
    (components,) = struct.unpack(">H", segment[36:38])
    return max(height - y_offset, 0), max(width - x_offset, 0), components
