"""Finding a file's format from its first bytes, not its extension."""

from __future__ import annotations

import gzip
import os
import stat
import struct
import zlib
from pathlib import Path

from medxfer.datasets.scan import UnreadableScanError

# Groups a dataset without the 128-byte preamble can start with: the file meta group, or the
# first element of the main dataset (identifying/patient/study/image groups), little endian.
_PREAMBLELESS_GROUPS = {0x0002, 0x0008, 0x0010, 0x0018, 0x0020, 0x0028}


def _looks_like_raw_dicom(head: bytes) -> bool:
    if len(head) < 8:
        return False
    group, element = struct.unpack("<HH", head[:4])
    if group not in _PREAMBLELESS_GROUPS or element > 0x0100:
        return False
    vr = head[4:6]
    if vr.isalpha() and vr.isupper():  # explicit VR
        return True
    (length,) = struct.unpack("<I", head[4:8])  # implicit VR: a plausible element length
    return length < 0x10000


def _nifti_header(head: bytes) -> bool:
    for endian in "<>":
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348:
            return head[344:348] in (b"n+1\x00", b"ni1\x00")
        if len(head) >= 8 and struct.unpack(endian + "i", head[:4])[0] == 540:
            return head[4:8] in (b"n+2\x00", b"ni2\x00")
    return False


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def read_head(path: Path, size: int) -> bytes:
    """The first ``size`` bytes of ``path``, which must be a regular file.

    Opened without blocking and checked on the open descriptor, so that a FIFO in a folder (whose
    ``open`` would wait forever for a writer) or a device is refused instead of hanging the job,
    and a file swapped for one after a check cannot slip through. Raises ``UnreadableScanError``.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise UnreadableScanError(path, f"cannot be opened: {exc.strerror or exc}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = next((name for test, name in _KINDS if test(mode)), "a special file")
        raise UnreadableScanError(path, f"is {kind}, not a regular file")
    os.set_blocking(fd, True)
    with os.fdopen(fd, "rb", buffering=0) as handle:
        try:
            return handle.read(size)
        except OSError as exc:
            raise UnreadableScanError(path, f"cannot be read: {exc.strerror or exc}") from None


def sniff_format(path: str | Path) -> str:
    """Return ``dicom``, ``nifti``, ``png``, ``jpeg`` or ``tiff`` for ``path``, judged from its content.

    Raises ``UnreadableScanError`` for an empty file, anything that is not a regular file (a
    directory, a FIFO, a device, a socket), or content that is none of them.
    """
    path = Path(path)
    head = read_head(path, 1024)
    if not head:
        raise UnreadableScanError(path, "empty file (0 bytes)")
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if _nifti_header(head):
        return "nifti"
    if head.startswith(b"\x1f\x8b"):
        try:
            with gzip.open(path, "rb") as handle:
                inner = handle.read(540)
        except (OSError, EOFError, zlib.error):
            raise UnreadableScanError(path, "gzip file that cannot be decompressed") from None
        if _nifti_header(inner):
            return "nifti"
        raise UnreadableScanError(path, "gzip file that does not contain a NIfTI image")
    if _looks_like_raw_dicom(head):
        return "dicom"
    raise UnreadableScanError(path, "unrecognised content: not DICOM, NIfTI, PNG, JPEG or TIFF")
