from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fuzzing import assert_fails_cleanly, mutations
from nibabel.testing import data_path

from medxfer.datasets.intensity import rescale_to_unit
from medxfer.datasets.nifti import read_nifti, read_nifti_header
from medxfer.datasets.scan import UnreadableScanError

REAL_DATA = Path(data_path)
LPS = np.diag([-2.0, -3.0, 4.0, 1.0])
# Stored axes point to A (3 mm), I (4 mm) and R (2 mm): coronal-ish storage, axis codes "AIR".
PERMUTED = np.array([[0, 0, 2.0, 0], [3.0, 0, 0, 0], [0, -4.0, 0, 0], [0, 0, 0, 1]])
SCL_SLOPE_OFFSET, SROW_Y_OFFSET = 112, 296  # byte offsets in the NIfTI-1 header
DIM_OFFSET = 40  # dim[0..7], int16
NIFTI2_SROW_X_OFFSET = 400  # srow_x, 4 x float64, in the NIfTI-2 header


def save(image: nib.Nifti1Image, path: Path) -> Path:
    image.to_filename(path)
    return path


def canonical_display(image: nib.Nifti1Image) -> np.ndarray:
    """The documented layout, computed independently with nibabel.as_closest_canonical."""
    return nib.as_closest_canonical(image).get_fdata().transpose(2, 1, 0)[:, ::-1, ::-1]


def with_scaling(path: Path, slope: float, inter: float) -> Path:
    """Overwrite scl_slope/scl_inter in a saved little-endian NIfTI-1 file (nibabel recomputes them on save)."""
    raw = bytearray(path.read_bytes())
    raw[SCL_SLOPE_OFFSET:SCL_SLOPE_OFFSET + 8] = struct.pack("<ff", slope, inter)
    path.write_bytes(bytes(raw))
    return path


def ramp_volume(path: Path, values: np.ndarray) -> Path:
    return save(nib.Nifti1Image(values.astype(np.int16), np.eye(4)), path)


# --- orientation and layout -------------------------------------------------------------


def test_lps_volume_marker_lands_at_inferior_anterior_right_display_position(tmp_path):
    data = np.zeros((5, 6, 7), np.float32)
    data[1, 2, 3] = 1.0  # LPS voxel (i, j, k): 1 from the right, 2 from the front, 3 from the bottom
    scan = read_nifti(save(nib.Nifti1Image(data, LPS), tmp_path / "lps.nii"), window="minmax")

    assert scan.pixels.shape == (7, 6, 5)
    assert np.argwhere(scan.pixels == 1.0).tolist() == [[3, 2, 1]]
    assert scan.meta["orientation"] == "LPS"
    assert scan.meta["pixel_spacing"] == (3.0, 2.0)
    assert scan.meta["slice_spacing"] == 4.0


def test_ras_volume_is_flipped_in_plane_so_row0_is_anterior_and_column0_is_right(tmp_path):
    data = np.zeros((5, 6, 7), np.float32)
    data[4, 5, 0] = 1.0  # most right, most anterior, most inferior in RAS storage
    scan = read_nifti(save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "ras.nii"), window="minmax")

    assert np.argwhere(scan.pixels == 1.0).tolist() == [[0, 0, 0]]
    assert scan.meta["orientation"] == "RAS"


def test_permuted_axes_match_as_closest_canonical_layout_and_spacing(tmp_path):
    data = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    image = nib.Nifti1Image(data, PERMUTED)
    scan = read_nifti(save(image, tmp_path / "air.nii"), window="minmax")

    expected, _ = rescale_to_unit(canonical_display(image), "minmax")
    np.testing.assert_allclose(scan.pixels, expected, atol=1e-6)
    assert scan.meta["orientation"] == "AIR"
    assert scan.meta["shape"] == scan.pixels.shape == (6, 5, 7)
    assert scan.meta["pixel_spacing"] == (3.0, 2.0)
    assert scan.meta["slice_spacing"] == 4.0


def test_pixels_are_contiguous_float32_in_unit_range(tmp_path):
    data = np.random.default_rng(1).normal(500, 200, (8, 9, 10))
    scan = read_nifti(save(nib.Nifti1Image(data, LPS), tmp_path / "v.nii.gz"))

    assert scan.pixels.dtype == np.float32
    assert scan.pixels.flags["C_CONTIGUOUS"]
    assert scan.pixels.min() == 0.0 and scan.pixels.max() == 1.0


@pytest.mark.parametrize("shape", [(4, 6), (4, 6, 1)])
def test_axial_2d_image_becomes_hw_with_anterior_top_and_right_left(tmp_path, shape):
    data = np.zeros(shape, np.float32)
    data[3, 5] = 1.0  # max x (right), max y (anterior)
    data[0, 0] = 0.5
    scan = read_nifti(save(nib.Nifti1Image(data, np.diag([0.5, 0.7, 1.0, 1.0])), tmp_path / "p.nii"), window="minmax")

    assert scan.pixels.shape == (6, 4)
    assert scan.pixels[0, 0] == 1.0 and scan.pixels[5, 3] == 0.5
    assert scan.meta["pixel_spacing"] == (0.7, 0.5)
    assert scan.meta["slice_spacing"] is None


def test_coronal_2d_image_shows_superior_at_top_and_right_at_left(tmp_path):
    # Stored axes: R (0.2 mm), S (0.3 mm); the third (A) is the through-plane axis: a radiograph.
    affine = np.array([[0.2, 0, 0, 0], [0, 0, 1.0, 0], [0, 0.3, 0, 0], [0, 0, 0, 1]])
    data = np.zeros((4, 6), np.float32)
    data[3, 5] = 1.0  # most right, most superior
    scan = read_nifti(save(nib.Nifti1Image(data, affine), tmp_path / "cxr.nii"), window="minmax")

    assert scan.pixels.shape == (6, 4)
    assert scan.pixels[0, 0] == 1.0
    assert scan.meta["pixel_spacing"] == (0.3, 0.2)


def test_degenerate_affine_is_refused(tmp_path):
    path = save(nib.Nifti1Image(np.ones((3, 4, 5), np.float32), np.eye(4)), tmp_path / "flat.nii")
    raw = bytearray(path.read_bytes())
    raw[SROW_Y_OFFSET:SROW_Y_OFFSET + 16] = bytes(16)  # the second axis maps to no direction
    path.write_bytes(bytes(raw))
    assert nib.load(path).header["qform_code"] == 0  # so nibabel's affine is this sform
    with pytest.raises(UnreadableScanError, match="degenerate"):
        read_nifti(path)


def test_spacing_in_microns_is_converted_to_mm(tmp_path):
    image = nib.Nifti1Image(np.ones((3, 4, 5), np.float32), np.diag([500.0, 250.0, 1000.0, 1.0]))
    image.header.set_xyzt_units("micron")
    meta = read_nifti_header(save(image, tmp_path / "um.nii"))
    assert meta["pixel_spacing"] == (0.25, 0.5)
    assert meta["slice_spacing"] == 1.0


# --- intensity ----------------------------------------------------------------------------


def test_scl_slope_and_inter_are_applied(tmp_path):
    raw = np.arange(11, dtype=np.int16).reshape(11, 1, 1) * np.ones((1, 2, 2), np.int16)  # 0..10
    path = with_scaling(ramp_volume(tmp_path / "s.nii", raw), slope=2.0, inter=100.0)  # -> 100..120
    scan = read_nifti(path, window=(110.5, 21.0))  # maps 100 -> 0, 110 -> 0.5, 120 -> 1

    column = scan.pixels[0, 0, ::-1]  # display columns run right to left, i.e. x descending
    np.testing.assert_allclose(column, np.arange(11) / 10.0, atol=1e-6)


@pytest.mark.parametrize("slope", [0.0, float("nan")])
def test_zero_or_nan_slope_means_no_scaling_and_ignores_intercept(tmp_path, slope):
    raw = np.arange(11, dtype=np.int16).reshape(11, 1, 1) * np.ones((1, 2, 2), np.int16)
    path = with_scaling(ramp_volume(tmp_path / "s.nii", raw), slope=slope, inter=100.0)
    scan = read_nifti(path, window=(5.5, 11.0))  # raw 0 -> 0, 10 -> 1

    np.testing.assert_allclose(scan.pixels[0, 0, ::-1], np.arange(11) / 10.0, atol=1e-6)


def test_valid_slope_with_infinite_intercept_is_refused(tmp_path):
    path = with_scaling(ramp_volume(tmp_path / "s.nii", np.ones((3, 3, 3))), slope=2.0, inter=float("inf"))
    with pytest.raises(UnreadableScanError, match="invalid NIfTI header: .*intercept"):
        read_nifti(path)


def test_default_window_is_percentile_so_one_outlier_does_not_flatten_the_volume(tmp_path):
    data = np.tile(np.arange(100, dtype=np.float32).reshape(100, 1, 1), (1, 10, 10))
    data[0, 0, 0] = 1e6
    path = save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "o.nii")

    default = read_nifti(path)
    minmax = read_nifti(path, window="minmax")
    assert default.meta["window"].startswith("percentile")
    assert minmax.meta["window"] == "minmax"
    assert np.median(default.pixels) == pytest.approx(0.5, abs=0.02)
    assert np.median(minmax.pixels) < 1e-3


def test_nonfinite_voxels_take_the_finite_extremes_and_are_counted(tmp_path):
    data = np.full((4, 4, 4), 15.0, np.float32)
    data[0, 0, 0], data[1, 0, 0] = 10.0, 20.0
    data[2, 0, 0], data[3, 0, 0], data[0, 1, 0] = np.nan, -np.inf, np.inf
    scan = read_nifti(save(nib.Nifti1Image(data, LPS), tmp_path / "nf.nii"), window="minmax")

    values = scan.pixels[0, 0, :]  # LPS: display (k, j, i), so row j=0 of slice k=0 holds i=0..3
    np.testing.assert_allclose(values, [0.0, 1.0, 0.0, 0.0])
    assert scan.pixels[0, 1, 0] == 1.0  # +inf -> largest finite
    assert scan.meta["nonfinite_voxels"] == 3
    assert not np.isnan(scan.pixels).any()


def test_volume_without_any_finite_value_is_refused(tmp_path):
    path = save(nib.Nifti1Image(np.full((3, 3, 3), np.nan, np.float32), np.eye(4)), tmp_path / "nan.nii")
    with pytest.raises(UnreadableScanError, match="no finite voxel values"):
        read_nifti(path)


def test_finite_volume_reports_zero_nonfinite_voxels(tmp_path):
    scan = read_nifti(save(nib.Nifti1Image(np.ones((3, 3, 3), np.float32), np.eye(4)), tmp_path / "ok.nii"))
    assert scan.meta["nonfinite_voxels"] == 0
    assert scan.meta["format"] == "nifti" and scan.meta["modality"] is None


# --- several volumes ------------------------------------------------------------------------


def four_d(tmp_path: Path) -> Path:
    data = np.stack([np.full((3, 4, 5), float(v)) for v in (10, 20, 30)], axis=-1)
    return save(nib.Nifti1Image(data.astype(np.float32), np.eye(4)), tmp_path / "4d.nii")


def test_4d_image_without_volume_index_is_refused_with_the_volume_count(tmp_path):
    with pytest.raises(UnreadableScanError, match=r"4D NIfTI with 3 volumes: pass volume_index=\.\.\. to choose one"):
        read_nifti(four_d(tmp_path))


def test_volume_index_selects_that_volume(tmp_path):
    scan = read_nifti(four_d(tmp_path), volume_index=1, window=(20.5, 41.0))  # 10, 20, 30 -> 0.25, 0.5, 0.75
    assert scan.pixels.shape == (5, 4, 3)
    np.testing.assert_allclose(scan.pixels, 0.5)
    assert scan.meta["volume_index"] == 1 and scan.meta["volumes"] == 3


@pytest.mark.parametrize("index", [3, -1])
def test_out_of_range_volume_index_is_refused(tmp_path, index):
    with pytest.raises(UnreadableScanError, match=f"volume_index {index} out of range: .*3 volume"):
        read_nifti(four_d(tmp_path), volume_index=index)


def refusal(read, path: Path, **kwargs) -> str:
    with pytest.raises(UnreadableScanError) as err:
        read(path, **kwargs)
    return err.value.reason


@pytest.mark.parametrize("path", ["synthetic", "example4d.nii.gz"])
def test_header_reader_refuses_a_4d_image_without_volume_index_like_the_reader(tmp_path, path):
    path = four_d(tmp_path) if path == "synthetic" else REAL_DATA / path
    reason = refusal(read_nifti, path)
    assert "pass volume_index=... to choose one" in reason
    assert refusal(read_nifti_header, path) == reason


@pytest.mark.parametrize("path,volumes", [("synthetic", 3), ("example4d.nii.gz", 2)])
def test_header_reader_accepts_a_4d_image_with_a_valid_volume_index(tmp_path, path, volumes):
    path = four_d(tmp_path) if path == "synthetic" else REAL_DATA / path
    for index in range(volumes):
        header = read_nifti_header(path, volume_index=index)
        full = read_nifti(path, volume_index=index).meta
        assert header == {k: full[k] for k in header}
        assert header["volumes"] == volumes and len(header["shape"]) == 3


@pytest.mark.parametrize("path,index", [("synthetic", 3), ("synthetic", -1), ("example4d.nii.gz", 2), ("example4d.nii.gz", 99)])
def test_header_reader_refuses_an_out_of_range_volume_index_like_the_reader(tmp_path, path, index):
    path = four_d(tmp_path) if path == "synthetic" else REAL_DATA / path
    reason = refusal(read_nifti, path, volume_index=index)
    assert reason.startswith(f"volume_index {index} out of range")
    assert refusal(read_nifti_header, path, volume_index=index) == reason


def test_3d_image_takes_volume_index_0_only_in_both_readers(tmp_path):
    path = save(nib.Nifti1Image(np.ones((3, 4, 5), np.float32), np.eye(4)), tmp_path / "3d.nii")
    assert read_nifti_header(path, volume_index=0) == read_nifti_header(path)
    assert read_nifti(path, volume_index=np.int64(0)).meta["volume_index"] == 0
    assert refusal(read_nifti_header, path, volume_index=1) == refusal(read_nifti, path, volume_index=1)


def test_5d_volume_index_counts_in_storage_order_with_4th_axis_fastest(tmp_path):
    data = np.zeros((3, 4, 5, 2, 3), np.float32)
    for t in range(2):
        for c in range(3):
            data[..., t, c] = t + 2 * c  # the volume's number in storage order
    path = save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "5d.nii")

    with pytest.raises(UnreadableScanError, match="5D NIfTI with 6 volumes"):
        read_nifti(path)
    scan = read_nifti(path, volume_index=3, window=(3.5, 9.0))  # 2, 3, 4 -> 0.375, 0.5, 0.625
    np.testing.assert_allclose(scan.pixels, 0.5)  # volume 3 is (t=1, c=1)


# --- damaged and foreign files --------------------------------------------------------------


def test_truncated_nii_is_refused_by_reader_and_header_reader(tmp_path):
    path = ramp_volume(tmp_path / "t.nii", np.ones((10, 10, 10)))
    raw = path.read_bytes()
    path.write_bytes(raw[:-100])
    for read in (read_nifti, read_nifti_header):
        with pytest.raises(UnreadableScanError, match=r"^.*: truncated: \d+ bytes, the header needs 2352") as err:
            read(path)
        assert "\n" not in str(err.value)


def gz_volume(tmp_path: Path) -> Path:
    data = np.random.default_rng(2).random((20, 20, 20)).astype(np.float32)  # incompressible
    return save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "v.nii.gz")


def test_corrupted_gzip_data_is_refused_with_a_gzip_reason(tmp_path):
    path = gz_volume(tmp_path)
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + 64] = bytes(b ^ 0xFF for b in raw[middle:middle + 64])
    path.write_bytes(bytes(raw))
    with pytest.raises(UnreadableScanError, match="gzip") as err:
        read_nifti(path)
    assert "\n" not in str(err.value)


def test_truncated_gzip_is_refused_but_its_intact_header_still_reads(tmp_path):
    path = gz_volume(tmp_path)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])

    with pytest.raises(UnreadableScanError, match="gzip"):
        read_nifti(path)
    assert read_nifti_header(path)["shape"] == (20, 20, 20)  # the header reader decodes no voxels


def test_unknown_datatype_is_an_invalid_header(tmp_path):
    path = ramp_volume(tmp_path / "dt.nii", np.ones((3, 3, 3)))
    raw = bytearray(path.read_bytes())
    raw[70:72] = struct.pack("<h", 999)  # datatype
    path.write_bytes(bytes(raw))
    with pytest.raises(UnreadableScanError, match="invalid NIfTI header: data code 999"):
        read_nifti(path)


def test_non_nifti_bytes_are_refused(tmp_path):
    path = tmp_path / "junk.nii"
    path.write_bytes(b"\x00" * 400)
    with pytest.raises(UnreadableScanError, match="not a NIfTI file"):
        read_nifti(path)


def test_other_nibabel_formats_are_refused():
    with pytest.raises(UnreadableScanError, match=r"not a NIfTI file \(MGHImage\)"):
        read_nifti(REAL_DATA / "test.mgz")


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(UnreadableScanError, match="not found"):
        read_nifti(tmp_path / "absent.nii")


@pytest.mark.parametrize("name,source", [("scan_0001", "v.nii"), ("gzipped.nii", "v.nii.gz")])
def test_nifti_content_under_another_name_is_read_from_its_bytes(tmp_path, name, source):
    data = np.random.default_rng(3).random((4, 5, 6)).astype(np.float32)
    original = save(nib.Nifti1Image(data, LPS), tmp_path / source)
    renamed = tmp_path / name
    shutil.copy(original, renamed)

    np.testing.assert_array_equal(read_nifti(renamed).pixels, read_nifti(original).pixels)
    assert read_nifti_header(renamed) == read_nifti_header(original)


def test_truncated_nifti_under_another_name_is_refused(tmp_path):
    path = ramp_volume(tmp_path / "t.nii", np.ones((10, 10, 10)))
    renamed = tmp_path / "blob"
    renamed.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UnreadableScanError, match="truncated"):
        read_nifti(renamed)


@pytest.mark.parametrize("length", [0, -30712])
def test_zero_or_negative_axis_length_is_an_invalid_header_for_both_readers(tmp_path, length):
    path = ramp_volume(tmp_path / "dim.nii", np.ones((3, 4, 5)))
    raw = bytearray(path.read_bytes())
    raw[DIM_OFFSET + 6:DIM_OFFSET + 8] = struct.pack("<h", length)  # dim[3]
    path.write_bytes(bytes(raw))
    for read in (read_nifti, read_nifti_header):
        with pytest.raises(UnreadableScanError, match=rf"invalid NIfTI header: axis lengths \(3, 4, {length}\) must all be at least 1"):
            read(path)


def test_rgb_voxels_are_refused_by_both_readers(tmp_path):
    rgb = np.zeros((3, 4, 5), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    path = save(nib.Nifti1Image(rgb, np.eye(4)), tmp_path / "rgb.nii")
    for read in (read_nifti, read_nifti_header):
        with pytest.raises(UnreadableScanError, match="unsupported voxel type RGB: only one value per voxel"):
            read(path)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_affine_is_refused_by_both_readers(tmp_path, value):
    path = save(nib.Nifti2Image(np.ones((3, 4, 5), np.float32), np.eye(4)), tmp_path / "naff.nii")
    raw = bytearray(path.read_bytes())
    assert nib.load(path).header["sform_code"] > 0  # so nibabel's affine is this sform
    raw[NIFTI2_SROW_X_OFFSET:NIFTI2_SROW_X_OFFSET + 8] = struct.pack("<d", value)
    path.write_bytes(bytes(raw))
    assert not np.isfinite(nib.load(path).affine).all()
    for read in (read_nifti, read_nifti_header):
        with pytest.raises(UnreadableScanError, match="affine has non-finite"):
            read(path)


def fuzz_sources(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(4)
    return [
        save(nib.Nifti1Image(rng.random((6, 7, 8)).astype(np.float32), LPS), tmp_path / "v.nii.gz"),
        save(nib.Nifti1Image((rng.random((6, 7, 8)) * 100).astype(np.int16), PERMUTED), tmp_path / "v.nii"),
        save(nib.Nifti2Image(rng.random((4, 5, 6)).astype(np.float32), np.eye(4)), tmp_path / "v2.nii"),
    ]


def test_damaged_bytes_raise_only_unreadable_scan_errors_with_one_line_reasons(tmp_path, recwarn):
    for seed, source in enumerate(fuzz_sources(tmp_path)):
        variants = mutations(source.read_bytes(), seed)
        assert_fails_cleanly([read_nifti, read_nifti_header], tmp_path / f"damaged_{source.name}", variants, source.name)


def test_damaged_gzip_content_raises_only_unreadable_scan_errors(tmp_path, recwarn):
    """Mutations of the decompressed header, recompressed: what a .nii.gz with a bad header looks like."""
    source = fuzz_sources(tmp_path)[0]
    variants = [gzip.compress(raw) for raw in mutations(gzip.decompress(source.read_bytes()), seed=7)]
    assert_fails_cleanly([read_nifti, read_nifti_header], tmp_path / "damaged.nii.gz", variants, source.name)


# --- header reader ----------------------------------------------------------------------------


def test_header_meta_matches_reader_meta(tmp_path):
    path = save(nib.Nifti1Image(np.ones((5, 6, 7), np.float32), PERMUTED), tmp_path / "h.nii")
    header = read_nifti_header(path)
    full = read_nifti(path).meta
    assert header == {k: full[k] for k in header}
    assert set(full) - set(header) == {"window", "nonfinite_voxels", "volume_index"}


# --- nibabel's shipped test images ----------------------------------------------------------


def test_real_anatomical_volume_matches_canonical_percentile_layout():
    image = nib.load(REAL_DATA / "anatomical.nii")
    scan = read_nifti(REAL_DATA / "anatomical.nii")

    expected, _ = rescale_to_unit(canonical_display(image), "percentile")
    assert scan.pixels.shape == (25, 41, 33)
    np.testing.assert_allclose(scan.pixels, expected, atol=1e-6)
    assert scan.meta["orientation"] == "LAS"
    assert scan.meta["pixel_spacing"] == (2.0, 2.0)


def test_real_4d_image_is_refused_without_index_and_read_with_one():
    path = REAL_DATA / "example4d.nii.gz"
    with pytest.raises(UnreadableScanError, match="4D NIfTI with 2 volumes"):
        read_nifti(path)
    scan = read_nifti(path, volume_index=1)

    expected, _ = rescale_to_unit(canonical_display(nib.load(path).slicer[..., 1]), "percentile")
    np.testing.assert_allclose(scan.pixels, expected, atol=1e-6)
    assert scan.meta["slice_spacing"] == pytest.approx(2.2, abs=1e-5)
    assert read_nifti_header(path, volume_index=1)["volumes"] == 2


def test_real_nifti2_volume_is_read():
    scan = read_nifti(REAL_DATA / "example_nifti2.nii.gz", volume_index=0)
    assert scan.pixels.shape == (12, 20, 32)
    assert scan.pixels.min() == 0.0 and scan.pixels.max() == 1.0
