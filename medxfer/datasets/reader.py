"""One entry point for every supported format: the format is found from the file's content."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from medxfer.datasets import budget
from medxfer.datasets.dicom import read_dicom, read_dicom_header
from medxfer.datasets.intensity import Window, parse_window
from medxfer.datasets.metadata import SaltError
from medxfer.datasets.nifti import read_nifti, read_nifti_header
from medxfer.datasets.raster import read_raster, read_raster_header
from medxfer.datasets.scan import Scan, UnreadableScanError
from medxfer.datasets.sniff import sniff_format

T = TypeVar("T")


def _guarded(path: Path, read: Callable[[], T]) -> T:
    """Run ``read``; any failure that is not already an ``UnreadableScanError`` becomes one naming
    ``path``, so callers handle one exception type whatever library failed underneath."""
    try:
        return read()
    except (UnreadableScanError, SaltError, KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - also Rust decoder panics, which are BaseExceptions
        if isinstance(exc, Warning):  # a warning raised as an error (-W error) may quote header values
            raise UnreadableScanError(path, f"cannot be read ({type(exc).__name__} raised as an error)") from None
        # Only the type: a library's message can quote header values, and this is the fallback
        # for failures no reader anticipated.
        raise UnreadableScanError(path, f"cannot be read (unexpected {type(exc).__name__})") from None


def read_scan(
    path: str | Path,
    *,
    window: Window = "default",
    frame: int | None = None,
    volume_index: int | None = None,
    max_pixels: int | None = None,
) -> Scan:
    """Read a DICOM, NIfTI, PNG, JPEG or TIFF file into a ``Scan`` (float32 pixels in [0, 1]).

    ``window`` (all formats): ``"default"``, ``"minmax"``, ``"percentile"`` or ``(center, width)``;
    ``frame`` (DICOM): one frame of a multi-frame object, ``None`` for all;
    ``volume_index`` (NIfTI): the volume of a 4D image, required for 4D;
    ``max_pixels`` (all formats): the most pixels or voxels the file may decode to, checked
    before decoding (default ``medxfer.datasets.budget.DEFAULT_MAX_PIXELS`` or
    ``$MEDXFER_MAX_PIXELS``).
    Only regular files are opened (a FIFO or a device is refused, never waited on).
    Raises ``UnreadableScanError`` naming the file and the reason, and no other exception for a
    bad file (a bad argument, such as an unknown window, is a ``ValueError``).
    """
    path = Path(path)
    window = parse_window(window)
    max_pixels = budget.max_pixels(max_pixels)
    kind = sniff_format(path)
    if kind == "dicom":
        return _guarded(path, lambda: read_dicom(path, window=window, frame=frame, max_pixels=max_pixels))
    if kind == "nifti":
        return _guarded(path, lambda: read_nifti(path, window=window, volume_index=volume_index,
                                                 max_pixels=max_pixels))
    return _guarded(path, lambda: read_raster(path, window=window, max_pixels=max_pixels))


_HEADER_READERS: dict[str, Callable[..., dict[str, Any]]] = {
    "dicom": read_dicom_header,
    "nifti": read_nifti_header,
}


def read_header(path: str | Path, *, max_pixels: int | None = None) -> dict[str, Any]:
    """Metadata of a file without decoding its pixels (for scanning large folders).

    Refuses what ``read_scan`` with default options (and the same ``max_pixels``) would refuse,
    as far as headers tell. Raises ``UnreadableScanError`` for files that are not readable images.
    """
    path = Path(path)
    max_pixels = budget.max_pixels(max_pixels)
    read = _HEADER_READERS.get(sniff_format(path), read_raster_header)
    return _guarded(path, lambda: read(path, max_pixels=max_pixels))


__all__ = ["Scan", "UnreadableScanError", "read_header", "read_scan"]
