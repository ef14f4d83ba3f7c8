"""Reading NIfTI-1 and NIfTI-2 images (``.nii``, ``.nii.gz``, ``.hdr``/``.img``) with nibabel.

Layout. The image is reoriented to RAS+ (nibabel's closest canonical orientation), then shown
in radiological display convention:

- a volume becomes ``(D, H, W)``: D runs inferior -> superior, and in each axial slice row 0
  is the most anterior row and column 0 the patient's right, i.e.
  ``ras.transpose(2, 1, 0)[:, ::-1, ::-1]``;
- a single plane (any RAS axis of length 1, e.g. shape ``(X, Y)`` or ``(X, Y, 1)``) becomes
  ``(H, W)`` with the same rule applied to the two remaining axes: an axial plane has row 0
  anterior and column 0 right; a coronal plane (a radiograph) row 0 superior and column 0
  right; a sagittal plane row 0 superior and column 0 anterior.

Intensity. ``scl_slope``/``scl_inter`` are applied by nibabel; a slope of 0 or NaN means "no
scaling" (NIfTI-1 standard), and nibabel then also ignores the intercept. A valid slope with a
non-finite intercept is refused. ``"default"`` means ``"percentile"``: research volumes carry no
display window, and their raw range is often stretched by a few outliers (reconstruction
artefacts, metal, padding values), which a min-max window would let flatten everything else.

Non-finite voxels. NaN and -inf become the smallest finite value, +inf the largest, and their
number is reported in ``meta["nonfinite_voxels"]``; an image with no finite value is refused.

File names. nibabel picks its reader from the file name; a single-file NIfTI under another name
(no extension, or gzip content named ``.nii``) is read from its bytes in memory instead, since
files are routed here by content. A ``.hdr``/``.img`` pair needs its usual names.
"""

from __future__ import annotations

import gzip
import io
import math
import operator
import zlib
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from medxfer.datasets.budget import check_budget
from medxfer.datasets.decoder_errors import Reasons, unreadable_on
from medxfer.datasets.intensity import Window, parse_window, rescale_to_unit
from medxfer.datasets.scan import Scan, UnreadableScanError, first_line

# Suffixes nibabel decompresses: the stored size says nothing about the data size.
_COMPRESSED_SUFFIXES = (".gz", ".bz2", ".zst")
# NIfTI spatial units to millimetres; "unknown" (xyzt_units 0, common) is read as mm, as nibabel,
# FSL and ITK do.
_MM_PER_UNIT = {"meter": 1000.0, "mm": 1.0, "micron": 0.001, "unknown": 1.0}


def read_nifti(path: Path, *, window: Window = "default", volume_index: int | None = None,
               max_pixels: int | None = None) -> Scan:
    """Read a NIfTI file into a ``Scan`` with float32 pixels in [0, 1].

    ``pixels`` is ``(D, H, W)`` for a volume or ``(H, W)`` for a single plane (layout in the
    module docstring). A 4D or 5D file holds several volumes and is refused unless
    ``volume_index`` (0-based, counted in storage order, the 4th axis fastest) picks one.
    ``max_pixels``: the pixel budget (``medxfer.datasets.budget``), checked on the header's
    dimensions before any voxel is read.
    Raises ``UnreadableScanError`` for a missing, truncated, corrupt or unsupported file.
    """
    path = Path(path)
    window = parse_window(window)
    image = _load(path, max_pixels)
    volume = _select_volume(path, image, volume_index)
    ornt = _ras_orientation(path, image)
    with _nibabel_errors(path):
        data = volume.get_fdata()
    data, nonfinite = _replace_nonfinite(path, data)
    scaled, label = rescale_to_unit(data, "percentile" if window == "default" else window)
    pixels = _to_display(nib.orientations.apply_orientation(_as_3d(scaled), ornt))
    meta = _header_meta(image, ornt)
    meta.update(window=label, nonfinite_voxels=nonfinite, volume_index=volume_index)
    return Scan(pixels=pixels, meta=meta, path=path)


def read_nifti_header(path: Path, *, volume_index: int | None = None, max_pixels: int | None = None) -> dict[str, Any]:
    """Metadata of a NIfTI file from its header alone, without decoding the voxels.

    Returns the keys ``read_nifti`` sets except ``window``, ``nonfinite_voxels`` and
    ``volume_index``; ``shape`` is that of one volume as ``read_nifti`` would return it.
    Refuses what ``read_nifti`` refuses before decoding, with the same reason: in particular
    a 4D or 5D file without ``volume_index``, or with one out of range, so that a header-only
    check and a full read agree. For uncompressed data, checks that the file holds vox_offset
    plus every voxel; compressed data cannot be checked without decompressing it.
    Raises ``UnreadableScanError``.
    """
    path = Path(path)
    image = _load(path, max_pixels)
    _checked_volume_index(path, image, volume_index)
    return _header_meta(image, _ras_orientation(path, image))


# What nibabel, gzip and the OS raise on a damaged file, and the reason to report.
_NIBABEL_REASONS: Reasons = (
    (HeaderDataError, lambda exc: f"invalid NIfTI header: {first_line(exc)}"),
    ((EOFError, zlib.error, gzip.BadGzipFile), lambda exc: f"corrupt or truncated gzip data: {first_line(exc)}"),
    ((OSError, ValueError), lambda exc: f"unreadable NIfTI data: {first_line(exc)}"),
)


def _nibabel_errors(path: Path) -> AbstractContextManager[None]:
    """Turn what nibabel, gzip and the OS raise into ``UnreadableScanError`` with a one-line reason."""
    return unreadable_on(path, _NIBABEL_REASONS)


def _load(path: Path, max_pixels: int | None) -> nib.Nifti1Pair:
    """nibabel's image (header parsed, voxels not read yet), checked to be complete NIfTI and,
    one volume at a time, within the pixel budget."""
    with _nibabel_errors(path):
        try:
            image = nib.load(path)
        except ImageFileError:
            # nibabel picks its reader by file name, but files reach us by content (sniff_format):
            # NIfTI bytes without a .nii name, or gzip content named .nii, are read from memory.
            return _load_from_content(path, max_pixels)
        # Nifti1Pair is the base of NIfTI-1/2 single files and pairs; nib.load also opens MGH, MINC...
        if not isinstance(image, nib.Nifti1Pair):
            raise UnreadableScanError(path, f"not a NIfTI file ({type(image).__name__})")
        _check_header(path, image)
        _check_voxel_budget(path, image.shape[:3], max_pixels)
        data_file = Path(image.file_map["image"].filename)
        if data_file.suffix not in _COMPRESSED_SUFFIXES:  # compressed: size unknown until decompressed
            _check_complete(path, image, data_file.stat().st_size)
    return image


def _load_from_content(path: Path, max_pixels: int | None) -> nib.Nifti1Image:
    """A single-file NIfTI-1 or NIfTI-2 image from the file's (possibly gzip) bytes.

    The header is parsed first and every voxel (all volumes: they are all held in memory here)
    checked against the pixel budget; then only the bytes the header needs are decompressed, so
    that gzip data running on far beyond the image cannot fill the memory.
    """
    with open(path, "rb") as handle:
        gzipped = handle.read(2) == b"\x1f\x8b"
    with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as handle:
        head = handle.read(nib.Nifti2Header.sizeof_hdr)
        for klass in (nib.Nifti1Image, nib.Nifti2Image):
            size = klass.header_class.sizeof_hdr
            if klass.header_class.may_contain_header(head[:size]):
                header = klass.header_class.from_fileobj(io.BytesIO(head[:size]))
                shape = header.get_data_shape()
                _check_voxel_budget(path, shape, max_pixels)
                needed = int(header["vox_offset"]) + math.prod(shape) * header.get_data_dtype().itemsize
                raw = head + handle.read(max(needed - len(head), 0))
                image = klass.from_bytes(raw)
                _check_header(path, image)
                _check_complete(path, image, len(raw))
                return image
    raise UnreadableScanError(path, "not a NIfTI file: no valid NIfTI-1 or NIfTI-2 header")


def _check_voxel_budget(path: Path, shape: Sequence[int], max_pixels: int | None) -> None:
    dims = [int(n) for n in shape] or [0]
    check_budget(path, math.prod(dims), max_pixels, f"{' x '.join(map(str, dims))} voxels")


def _check_header(path: Path, image: nib.Nifti1Pair) -> None:
    """Refuse what nibabel accepts in a header but cannot turn into one gray value per voxel.

    A zero or negative axis length (a damaged header), and RGB/RGBA voxels, which nibabel
    stores as a structured dtype that ``get_fdata`` cannot convert (it raises ``TypeError``).
    """
    if any(n < 1 for n in image.shape):
        raise UnreadableScanError(path, f"invalid NIfTI header: axis lengths {tuple(image.shape)} must all be at least 1")
    if image.get_data_dtype().fields is not None:
        kind = image.header.get_value_label("datatype")
        raise UnreadableScanError(path, f"unsupported voxel type {kind}: only one value per voxel (grayscale) is read")


def _check_complete(path: Path, image: nib.Nifti1Pair, stored: int) -> None:
    """Refuse data shorter (``stored`` bytes) than the header promises, before nibabel fails mid-read."""
    # The loaded header's vox_offset is reset by nibabel; the array proxy keeps the real one.
    offset = int(image.dataobj.offset)
    voxels = math.prod(image.shape)
    itemsize = image.get_data_dtype().itemsize
    needed = offset + voxels * itemsize
    if stored < needed:
        raise UnreadableScanError(
            path, f"truncated: {stored} bytes, the header needs {needed} (vox_offset {offset} + {voxels} voxels x {itemsize} bytes)"
        )


def _select_volume(path: Path, image: nib.Nifti1Pair, volume_index: int | None) -> nib.Nifti1Pair:
    """The image itself, or its volume ``volume_index`` when it has axes beyond the third."""
    volume_index = _checked_volume_index(path, image, volume_index)
    extra = image.shape[3:]
    if not extra:
        return image
    # NIfTI stores volumes in Fortran order, so the 4th axis varies fastest.
    index = tuple(int(i) for i in np.unravel_index(volume_index, extra, order="F"))
    with _nibabel_errors(path):
        return image.slicer[(slice(None),) * 3 + index]


def _checked_volume_index(path: Path, image: nib.Nifti1Pair, volume_index: int | None) -> int:
    """``volume_index`` (0 when ``None`` and the image holds one volume), refused when it picks none.

    Shared by both readers so that they refuse the same files with the same reason.
    """
    extra = image.shape[3:]
    count = math.prod(extra)
    if volume_index is not None:
        volume_index = operator.index(volume_index)  # numpy integers too; a float is a caller's bug
    if volume_index is None:
        if count > 1:
            raise UnreadableScanError(
                path, f"{len(image.shape)}D NIfTI with {count} volumes: pass volume_index=... to choose one"
            )
        volume_index = 0
    if not 0 <= volume_index < count:
        raise UnreadableScanError(
            path, f"volume_index {volume_index} out of range: the image has {count} volume(s), 0..{count - 1}"
        )
    return volume_index


def _ras_orientation(path: Path, image: nib.Nifti1Pair) -> np.ndarray:
    """nibabel's orientation array taking the image's axes to the closest RAS+ axes.

    This is what ``nibabel.as_closest_canonical`` applies; computed here from the affine alone
    so that the header reader and a 2D image (which ``as_closest_canonical`` refuses) share it.
    """
    affine = image.affine
    if not np.isfinite(affine).all():  # numpy's SVD would raise LinAlgError on it
        raise UnreadableScanError(path, "affine has non-finite (NaN or infinite) values: orientation unknown")
    ornt = nib.orientations.io_orientation(affine)
    if np.isnan(ornt).any():
        raise UnreadableScanError(path, "affine has a degenerate (zero) axis: orientation unknown")
    return ornt


def _as_3d(data: np.ndarray) -> np.ndarray:
    """A 2D plane gets a third axis of length 1 so it can be reoriented like a volume."""
    return data.reshape(data.shape + (1,) * (3 - data.ndim))


def _in_ras_order(per_axis: list[Any], ornt: np.ndarray) -> list[Any]:
    """Per stored axis values (lengths, zooms) of the three spatial axes, reordered to R, A, S."""
    ras = [None, None, None]
    for axis, target in enumerate(ornt[:, 0]):
        ras[int(target)] = per_axis[axis]
    return ras


def _spatial_geometry(image: nib.Nifti1Pair, ornt: np.ndarray) -> tuple[list[int], list[float]]:
    """Length (voxels) and voxel size (mm) along R, A, S; a 2D image has a third axis of 1 voxel."""
    pad = 3 - min(3, len(image.shape))
    shape = [int(n) for n in image.shape[:3]] + [1] * pad
    # Spatial unit code is xyzt_units % 8 (NIfTI-1 XYZT_TO_SPACE). Not get_xyzt_units(): it raises
    # on an undefined code, temporal ones included; an undefined spatial code is read as unknown.
    unit = nib.nifti1.unit_codes.label.get(int(image.header["xyzt_units"]) % 8, "unknown")
    to_mm = _MM_PER_UNIT[unit]
    # NIfTI-1 zooms are float32: rounding drops the float32 noise (2.2 -> 2.2000000477).
    zooms = [round(float(z) * to_mm, 6) for z in image.header.get_zooms()[:3]] + [1.0] * pad
    return _in_ras_order(shape, ornt), _in_ras_order(zooms, ornt)


def _display_layout(ras_shape: Sequence[int]) -> tuple[tuple[int, int, int], bool]:
    """RAS axes shown as (depth, rows, columns), and whether the image is a single plane.

    A volume is (S, A, R). A plane, found by its length-1 axis (S, then A, then R), keeps that
    axis as depth and shows the higher remaining RAS axis as rows, the lower as columns.
    """
    for through in (2, 1, 0):
        if ras_shape[through] == 1:
            low, high = (axis for axis in range(3) if axis != through)
            return (through, high, low), True
    return (2, 1, 0), False


def _to_display(ras: np.ndarray) -> np.ndarray:
    """Radiological display array: both in-plane axes reversed (anterior/superior first, right first)."""
    layout, is_plane = _display_layout(ras.shape)
    shown = ras.transpose(layout)[:, ::-1, ::-1]
    # Contiguous: negative strides would trip torch.from_numpy downstream.
    return np.ascontiguousarray(shown[0] if is_plane else shown, dtype=np.float32)


def _replace_nonfinite(path: Path, data: np.ndarray) -> tuple[np.ndarray, int]:
    """NaN and -inf to the smallest finite value, +inf to the largest; returns the data and the count."""
    finite = np.isfinite(data)
    count = int(data.size - np.count_nonzero(finite))
    if count == data.size:
        raise UnreadableScanError(path, "no finite voxel values (all NaN or infinite, or empty)")
    if count:
        values = data[finite]
        low, high = float(values.min()), float(values.max())
        data = np.nan_to_num(data, nan=low, neginf=low, posinf=high)
    return data, count


def _header_meta(image: nib.Nifti1Pair, ornt: np.ndarray) -> dict[str, Any]:
    """Meta both readers set, from the header and affine only."""
    ras_shape, zooms = _spatial_geometry(image, ornt)
    (depth, rows, cols), is_plane = _display_layout(ras_shape)
    shape = (ras_shape[rows], ras_shape[cols])
    return {
        "format": "nifti",
        "modality": None,
        "shape": shape if is_plane else (ras_shape[depth], *shape),
        "pixel_spacing": (zooms[rows], zooms[cols]),
        "slice_spacing": None if is_plane else zooms[depth],
        "orientation": "".join(nib.orientations.aff2axcodes(image.affine)),
        "volumes": math.prod(image.shape[3:]),
    }
