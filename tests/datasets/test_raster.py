from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fuzzing import assert_fails_cleanly, mutations
from PIL import Image

from medxfer.datasets.raster import read_raster, read_raster_header
from medxfer.datasets.scan import UnreadableScanError

EXIF_ORIENTATION = 0x0112


def bt601(rgb: tuple[int, int, int]) -> float:
    r, g, b = rgb
    return (0.299 * r + 0.587 * g + 0.114 * b) / 255.0


def save(image: Image.Image, path: Path, **params) -> Path:
    image.save(path, **params)
    return path


def rgb_stripes(size: int = 16) -> np.ndarray:
    """Three vertical stripes: pure red, green, blue, each ``size`` pixels wide and tall."""
    stripes = np.zeros((size, 3 * size, 3), np.uint8)
    for channel in range(3):
        stripes[:, channel * size:(channel + 1) * size, channel] = 255
    return stripes


def test_8bit_grayscale_png_default_window_is_value_over_255(tmp_path):
    values = np.array([[0, 51, 255], [1, 128, 254]], np.uint8)
    scan = read_raster(save(Image.fromarray(values), tmp_path / "g.png"))

    np.testing.assert_allclose(scan.pixels, values / 255.0, atol=1e-7)
    assert scan.pixels.dtype == np.float32
    assert scan.meta["format"] == "png"
    assert scan.meta["mode"] == "L"
    assert scan.meta["bits_stored"] == 8
    assert scan.meta["window"] == "full range 0-255"
    assert scan.meta["shape"] == (2, 3)
    assert scan.meta["pixel_spacing"] is None


def test_16bit_grayscale_png_default_window_is_value_over_65535(tmp_path):
    values = np.array([[0, 1000, 65535], [300, 40000, 65534]], np.uint16)
    scan = read_raster(save(Image.fromarray(values), tmp_path / "g16.png"))

    np.testing.assert_allclose(scan.pixels, values / 65535.0, atol=1e-7)
    assert scan.meta["bits_stored"] == 16
    assert scan.meta["mode"] == "I;16"
    assert scan.meta["window"] == "full range 0-65535"


def test_16bit_tiff_keeps_its_full_depth(tmp_path):
    values = np.array([[0, 257, 65535], [12345, 40000, 1]], np.uint16)
    scan = read_raster(save(Image.fromarray(values), tmp_path / "g16.tif"))

    np.testing.assert_allclose(scan.pixels, values / 65535.0, atol=1e-7)
    assert scan.meta["format"] == "tiff"
    assert scan.meta["bits_stored"] == 16


def test_big_endian_16bit_samples_are_read_as_values_not_bytes(tmp_path):
    values = np.array([[1, 256, 65280]], np.uint16)
    image = Image.fromarray(values.astype(">u2"))
    assert image.mode == "I;16B"
    scan = read_raster(save(image, tmp_path / "be.tif"))

    np.testing.assert_allclose(scan.pixels, values / 65535.0, atol=1e-7)


def test_32bit_integer_image_within_16bit_range_reads_as_16bit(tmp_path):
    values = np.array([[0, 1000, 65535]], np.int32)
    scan = read_raster(save(Image.fromarray(values), tmp_path / "i32.tif"))

    assert scan.meta["mode"] == "I" and scan.meta["bits_stored"] == 16
    np.testing.assert_allclose(scan.pixels, values / 65535.0, atol=1e-7)


def test_32bit_samples_beyond_16bit_range_or_float_are_refused(tmp_path):
    big = save(Image.fromarray(np.array([[0, 70000]], np.int32)), tmp_path / "big.tif")
    floats = save(Image.fromarray(np.array([[0.0, 0.5]], np.float32)), tmp_path / "f.tif")
    with pytest.raises(UnreadableScanError, match="outside 0..65535"):
        read_raster(big)
    for read in (read_raster, read_raster_header):
        with pytest.raises(UnreadableScanError, match="mode F"):
            read(floats)


def test_one_bit_png_maps_to_zero_and_one(tmp_path):
    values = np.array([[0, 1, 1], [1, 0, 0]], bool)
    scan = read_raster(save(Image.fromarray(values), tmp_path / "b.png"))

    np.testing.assert_array_equal(scan.pixels, values.astype(np.float32))
    assert scan.meta["mode"] == "1" and scan.meta["bits_stored"] == 1


def test_rgb_png_becomes_bt601_luma(tmp_path):
    scan = read_raster(save(Image.fromarray(rgb_stripes()), tmp_path / "rgb.png"))

    expected = [bt601((255, 0, 0)), bt601((0, 255, 0)), bt601((0, 0, 255))]
    np.testing.assert_allclose(scan.pixels[0, [0, 16, 32]], expected, atol=1 / 255)
    assert scan.meta["mode"] == "RGB" and scan.meta["bits_stored"] == 8
    assert scan.pixels.shape == (16, 48)


def test_rgba_png_ignores_alpha(tmp_path):
    rgba = np.concatenate([rgb_stripes(), np.zeros((16, 48, 1), np.uint8)], axis=-1)  # fully transparent
    opaque = read_raster(save(Image.fromarray(rgb_stripes()), tmp_path / "rgb.png"))
    transparent = read_raster(save(Image.fromarray(rgba), tmp_path / "rgba.png"))

    assert transparent.meta["mode"] == "RGBA"
    np.testing.assert_array_equal(transparent.pixels, opaque.pixels)


def test_palette_png_becomes_luma_of_its_colours(tmp_path):
    image = Image.fromarray(rgb_stripes()).convert("P")
    scan = read_raster(save(image, tmp_path / "p.png"))

    assert scan.meta["mode"] == "P"
    np.testing.assert_allclose(scan.pixels[0, 16], bt601((0, 255, 0)), atol=1 / 255)


def test_rgb_jpeg_becomes_luma_within_compression_error(tmp_path):
    scan = read_raster(save(Image.fromarray(rgb_stripes()), tmp_path / "rgb.jpg", quality=95))

    assert scan.meta["format"] == "jpeg"
    np.testing.assert_allclose(scan.pixels[8, 24], bt601((0, 255, 0)), atol=4 / 255)
    np.testing.assert_allclose(scan.pixels[8, 40], bt601((0, 0, 255)), atol=4 / 255)


def exif_rotated_jpeg(tmp_path: Path) -> Path:
    """A 40 wide x 20 tall stored image, white 8x8 marker at its top-left, EXIF orientation 6."""
    stored = np.zeros((20, 40), np.uint8)
    stored[:8, :8] = 255
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # "rotate 90 degrees clockwise to display"
    return save(Image.fromarray(stored), tmp_path / "rot.jpg", exif=exif, quality=95)


def test_exif_orientation_6_rotates_the_marker_to_the_top_right(tmp_path):
    scan = read_raster(exif_rotated_jpeg(tmp_path))

    assert scan.pixels.shape == (40, 20)
    assert scan.pixels[:8, 12:].mean() > 0.9  # top-left of the stored image, turned clockwise
    assert scan.pixels[:8, :8].mean() < 0.1
    assert scan.pixels[-8:, 12:].mean() < 0.1


def test_header_reports_shape_after_exif_orientation(tmp_path):
    meta = read_raster_header(exif_rotated_jpeg(tmp_path))
    assert meta["shape"] == (40, 20)
    assert meta["format"] == "jpeg" and meta["bits_stored"] == 8


def test_png_exif_orientation_is_applied_by_reader_and_header(tmp_path):
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    path = save(Image.fromarray(np.zeros((20, 40), np.uint8)), tmp_path / "rot.png", exif=exif)
    assert read_raster(path).pixels.shape == read_raster_header(path)["shape"] == (40, 20)


def exif_rotated_tiff(tmp_path: Path, orientation: int, **params) -> Path:
    """As ``exif_rotated_jpeg``, as a TIFF whose Orientation tag is ``orientation``."""
    stored = np.zeros((20, 40), np.uint8)
    stored[:8, :8] = 255
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return save(Image.fromarray(stored), tmp_path / f"rot{orientation}.tif", exif=exif, **params)


# Where the stored top-left 8x8 marker must end up (rows, columns of the displayed image), and
# the displayed shape, for the TIFF tests below: 3 turns 180 degrees, 6 clockwise, 8 anticlockwise.
TIFF_MARKER = {
    3: ((20, 40), np.s_[-8:, -8:]),
    6: ((40, 20), np.s_[:8, -8:]),
    8: ((40, 20), np.s_[-8:, :8]),
}


@pytest.mark.parametrize("compression", [None, "tiff_deflate"])  # raw strips and libtiff decoding
@pytest.mark.parametrize("orientation", sorted(TIFF_MARKER))
def test_tiff_orientation_tag_moves_the_marker_like_exif_in_a_jpeg(tmp_path, orientation, compression):
    path = exif_rotated_tiff(tmp_path, orientation, compression=compression)
    shape, marker = TIFF_MARKER[orientation]
    scan = read_raster(path)

    assert scan.pixels.shape == shape
    assert scan.pixels[marker].mean() > 0.9
    assert scan.pixels.mean() == pytest.approx(64 / 800)  # the marker only, not scrambled rows
    assert read_raster_header(path)["shape"] == shape


def test_tiff_orientation_6_reads_like_the_same_jpeg(tmp_path):
    tiff = read_raster(exif_rotated_tiff(tmp_path, 6)).pixels
    jpeg = read_raster(exif_rotated_jpeg(tmp_path)).pixels
    assert tiff.shape == jpeg.shape == (40, 20)
    np.testing.assert_allclose(tiff, jpeg, atol=0.1)


# Each EXIF orientation as a numpy operation taking the stored array to the displayed one.
DISPLAYED = {
    1: lambda a: a,
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    4: np.flipud,
    5: lambda a: a.T,  # transpose: mirror about the main diagonal
    6: lambda a: np.rot90(a, -1),  # 90 degrees clockwise
    7: lambda a: np.rot90(a, 2).T,  # transverse: mirror about the other diagonal
    8: lambda a: np.rot90(a, 1),  # 90 degrees anticlockwise
}
LOSSLESS = {
    "png": {},
    "tif": {},
    "deflate.tif": {"compression": "tiff_deflate"},
}


@pytest.mark.parametrize("name", sorted(LOSSLESS))
@pytest.mark.parametrize("orientation", sorted(DISPLAYED))
def test_every_orientation_gives_the_exact_displayed_pixels_in_lossless_formats(tmp_path, name, orientation):
    stored = np.arange(6 * 10, dtype=np.uint8).reshape(6, 10) * 4  # every pixel distinct
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    path = save(Image.fromarray(stored), tmp_path / f"o{orientation}.{name}", exif=exif, **LOSSLESS[name])

    expected = DISPLAYED[orientation](stored) / 255.0
    scan = read_raster(path)
    np.testing.assert_allclose(scan.pixels, expected, atol=1e-7)
    assert read_raster_header(path)["shape"] == scan.meta["shape"] == expected.shape


@pytest.mark.parametrize("mode", ["I;16", "RGB"])
def test_tiff_orientation_applies_to_16bit_and_colour_tiffs(tmp_path, mode):
    stored = np.zeros((20, 40), np.uint16)
    stored[:8, :8] = 65535
    image = Image.fromarray(stored) if mode == "I;16" else Image.fromarray((stored >> 8).astype(np.uint8)).convert("RGB")
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    path = save(image, tmp_path / "rot.tif", exif=exif)

    scan = read_raster(path)
    assert scan.meta["mode"] == mode
    assert scan.pixels.shape == read_raster_header(path)["shape"] == (40, 20)
    assert scan.pixels[:8, -8:].mean() > 0.99 and scan.pixels.mean() == pytest.approx(64 / 800, abs=1e-3)


def test_multipage_tiff_orientation_applies_to_the_first_page(tmp_path):
    first = np.zeros((20, 40), np.uint8)
    first[:8, :8] = 255
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 8
    path = save(Image.fromarray(first), tmp_path / "pages.tif", exif=exif, save_all=True,
                append_images=[Image.fromarray(np.zeros((20, 40), np.uint8))])

    scan = read_raster(path)
    assert scan.meta["pages"] == 2
    assert scan.pixels.shape == read_raster_header(path)["shape"] == (40, 20)
    assert scan.pixels[-8:, :8].mean() > 0.9


def test_explicit_windows_go_through_rescale_to_unit(tmp_path):
    path = save(Image.fromarray(np.array([[50, 100, 150]], np.uint8)), tmp_path / "w.png")

    minmax = read_raster(path, window="minmax")
    linear = read_raster(path, window=(100.5, 101.0))  # 50 -> 0, 100 -> 0.5, 150 -> 1
    np.testing.assert_allclose(minmax.pixels, [[0.0, 0.5, 1.0]])
    np.testing.assert_allclose(linear.pixels, [[0.0, 0.5, 1.0]])
    assert minmax.meta["window"] == "minmax"
    assert linear.meta["window"] == "center=100.5 width=101"


def test_dpi_is_not_turned_into_pixel_spacing(tmp_path):
    path = save(Image.fromarray(np.zeros((4, 4), np.uint8)), tmp_path / "dpi.png", dpi=(300, 300))
    assert Image.open(path).info.get("dpi") is not None
    assert read_raster(path).meta["pixel_spacing"] is None


def test_multipage_tiff_reads_the_first_page_and_counts_pages(tmp_path):
    first = Image.fromarray(np.full((4, 5), 200, np.uint8))
    second = Image.fromarray(np.full((4, 5), 10, np.uint8))
    path = save(first, tmp_path / "pages.tif", save_all=True, append_images=[second])

    scan = read_raster(path)
    np.testing.assert_allclose(scan.pixels, 200 / 255.0)
    assert scan.meta["pages"] == 2
    assert read_raster_header(path)["pages"] == 2


def test_header_matches_reader_without_window(tmp_path):
    path = save(Image.fromarray(np.zeros((6, 9), np.uint16)), tmp_path / "h.png")
    header = read_raster_header(path)
    full = read_raster(path).meta
    assert header == {k: full[k] for k in header}
    assert set(full) - set(header) == {"window"}


def test_truncated_png_is_refused_by_reader_and_header_reader(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), np.uint8)  # incompressible
    path = save(Image.fromarray(noise), tmp_path / "t.png")
    path.write_bytes(path.read_bytes()[:2000])
    for read in (read_raster, read_raster_header):
        with pytest.raises(UnreadableScanError, match="cannot be decoded") as err:
            read(path)
        assert "\n" not in str(err.value)


def test_truncated_jpeg_is_refused_though_its_header_alone_reads(tmp_path):
    noise = np.random.default_rng(1).integers(0, 256, (64, 64), np.uint8)
    path = save(Image.fromarray(noise), tmp_path / "t.jpg", quality=95)
    path.write_bytes(path.read_bytes()[:1500])
    with pytest.raises(UnreadableScanError, match="truncated"):
        read_raster(path)
    assert read_raster_header(path)["shape"] == (64, 64)  # the header reader decodes no pixels


def test_corrupt_png_chunk_is_caught_by_the_header_check(tmp_path):
    path = save(Image.fromarray(np.zeros((8, 8), np.uint8)), tmp_path / "crc.png")
    raw = bytearray(path.read_bytes())
    idat = raw.index(b"IDAT")
    raw[idat + 4] ^= 0xFF  # first data byte: the chunk's CRC no longer matches
    path.write_bytes(bytes(raw))
    with pytest.raises(UnreadableScanError, match="cannot be decoded"):
        read_raster_header(path)


def test_random_bytes_are_refused(tmp_path):
    path = tmp_path / "noise.png"
    path.write_bytes(np.random.default_rng(2).integers(0, 256, 500, np.uint8).tobytes())
    for read in (read_raster, read_raster_header):
        with pytest.raises(UnreadableScanError, match="not a PNG, JPEG or TIFF"):
            read(path)


def test_other_pillow_formats_are_refused(tmp_path):
    path = save(Image.fromarray(np.zeros((4, 4), np.uint8)), tmp_path / "x.gif")
    with pytest.raises(UnreadableScanError, match="not a PNG, JPEG or TIFF"):
        read_raster(path)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(UnreadableScanError, match="not found"):
        read_raster(tmp_path / "absent.png")


# --- every failure is an UnreadableScanError ------------------------------------------------


def fuzz_sources(tmp_path: Path) -> list[Path]:
    noise = np.random.default_rng(3).integers(0, 256, (24, 32), np.uint8)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    return [
        save(Image.fromarray(noise), tmp_path / "v.png"),
        save(Image.fromarray(noise), tmp_path / "v.tif", exif=exif),
        save(Image.fromarray(noise), tmp_path / "pages.tif", save_all=True, append_images=[Image.fromarray(noise)]),
        save(Image.fromarray(noise), tmp_path / "v.jpg", quality=90, exif=exif),
    ]


def test_damaged_bytes_raise_only_unreadable_scan_errors_with_one_line_reasons(tmp_path, recwarn):
    for seed, source in enumerate(fuzz_sources(tmp_path)):
        variants = mutations(source.read_bytes(), seed)
        assert_fails_cleanly([read_raster, read_raster_header], tmp_path / f"damaged{source.suffix}", variants, source.name)


def second_page_tags(raw: bytes) -> dict[int, int]:
    """Byte offset of each tag entry in the second IFD of a little-endian TIFF (Pillow writes "II")."""
    def entries(ifd: int) -> tuple[dict[int, int], int]:
        count = int.from_bytes(raw[ifd:ifd + 2], "little")
        tags = {int.from_bytes(raw[ifd + 2 + 12 * i:ifd + 4 + 12 * i], "little"): ifd + 2 + 12 * i for i in range(count)}
        return tags, int.from_bytes(raw[ifd + 2 + 12 * count:ifd + 6 + 12 * count], "little")

    _, second = entries(int.from_bytes(raw[4:8], "little"))
    return entries(second)[0]


@pytest.mark.parametrize("tag,field,value,reason", [
    (256, 0, 0xFE, "Missing dimensions"),  # ImageWidth renumbered to an unknown tag: Pillow raises TypeError
    (259, 8, 83, "KeyError 83"),  # Compression value 83: Pillow raises KeyError
])
def test_damaged_second_tiff_page_is_unreadable_not_a_pillow_error(tmp_path, tag, field, value, reason):
    page = Image.fromarray(np.zeros((4, 5), np.uint8))
    path = save(page, tmp_path / "pages.tif", save_all=True, append_images=[page])
    damaged = bytearray(path.read_bytes())
    entry = second_page_tags(bytes(damaged))[tag]
    damaged[entry + field:entry + field + 2] = value.to_bytes(2, "little")
    path.write_bytes(bytes(damaged))
    for read in (read_raster, read_raster_header):  # the page count is read by both
        with pytest.raises(UnreadableScanError, match=f"cannot be decoded: {reason}$"):
            read(path)
