"""One entry point for every supported format: the format is found from the file's content."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medxfer.datasets.dicom import read_dicom, read_dicom_header
from medxfer.datasets.intensity import Window
from medxfer.datasets.nifti import read_nifti, read_nifti_header
from medxfer.datasets.raster import read_raster, read_raster_header
from medxfer.datasets.scan import Scan, UnreadableScanError
from medxfer.datasets.sniff import sniff_format


def read_scan(
    path: str | Path,
    *,
    window: Window = "default",
    frame: int | None = None,
    volume_index: int | None = None,
) -> Scan:
    """Read a DICOM, NIfTI, PNG, JPEG or TIFF file into a ``Scan`` (float32 pixels in [0, 1]).

    ``window`` (all formats): ``"default"``, ``"minmax"``, ``"percentile"`` or ``(center, width)``;
    ``frame`` (DICOM): one frame of a multi-frame object, ``None`` for all;
    ``volume_index`` (NIfTI): the volume of a 4D image, required for 4D.
    Raises ``UnreadableScanError`` naming the file and the reason.
    """
    path = Path(path)
    kind = sniff_format(path)
    if kind == "dicom":
        return read_dicom(path, window=window, frame=frame)
    if kind == "nifti":
        return read_nifti(path, window=window, volume_index=volume_index)
    return read_raster(path, window=window)


def read_header(path: str | Path) -> dict[str, Any]:
    """Metadata of a file without decoding all its pixels (for scanning large folders).

    Raises ``UnreadableScanError`` for files that are not readable images.
    """
    path = Path(path)
    kind = sniff_format(path)
    if kind == "dicom":
        return read_dicom_header(path)
    if kind == "nifti":
        return read_nifti_header(path)
    return read_raster_header(path)


__all__ = ["read_scan", "read_header", "Scan", "UnreadableScanError"]
